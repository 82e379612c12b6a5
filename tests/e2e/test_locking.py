"""NFSv3 locking (NLM) through the proxy, with the NAS and the proxy on separate hosts.

The hosts are network namespaces (tests/e2e/netns_fixture.py): ganesha with
NLM and its rpc.statd on one; on the other the proxy answers port 111 and
relays NLM and NSM, and two Linux kernel clients under qemu mount it without
`nolock`. A kernel asks port 111 of the address it mounted for NLM, and only
the proxy answers there, so every lock goes through it (the proxy's own
counters show it; a lock that stayed on a client would let both hold it).

Guests on taps can be called back (the NAS's grant of a blocked lock reaches
the kernel through the proxy); guests behind qemu's user-mode NAT cannot, and
get a blocked lock by their own retry (the restart test). Callbacks and
reboot notices are also driven with our own NLM codec (tests/e2e/nlm_peer.py).

Every proxy here is started with `--portmap` and no `--data-plane`, as the
README says to lock through the proxy: that runs the Python data plane, the
one that relays NLM (NFSJ_DATA_PLANE does not override it).
"""

from __future__ import annotations

import queue
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from e2e.proxy_fixture import ProxyProcess
from e2e.test_metrics import value
from kernel_guest import Guest, mount_line

pytestmark = pytest.mark.ganesha

METRICS_PORT = 9111

# The README's mount line without `nolock`; the guest runs the rpcbind and
# rpc.statd a locking NFSv3 client needs, under its own name (NLM tells
# clients apart by it).
LOCK_OPTIONS = "vers=3,proto=tcp"


def _before_mount(name: str) -> str:
    return f"hostname {name}\nrpcbind\nrpc.statd\n"


# A holds the lock until B has tried; B's try must fail with EAGAIN (flock -n
# exits 11, never an error message), and B's blocking lock is granted only
# after A let go (A writes "released" before it unlocks). Files for the
# handshake exist before the NAS serves, so every look is an open (close-to-open).
HOLDER = r"""
flock -x /mnt/lockfile -c 'echo held > /mnt/a-state; until grep -q tried /mnt/b-state; do sleep 1; done; echo released > /mnt/a-state'
echo "A: released"
"""

WAITER = r"""
until grep -q held /mnt/a-state; do sleep 1; done
rc=0
flock -n -E 11 -x /mnt/lockfile true 2>/tmp/err || rc=$?
echo "B: non-blocking try: exit $rc, $(cat /tmp/err)"
[ "$rc" = 11 ] && [ ! -s /tmp/err ]
echo tried > /mnt/b-state
t0=$(cut -d' ' -f1 /proc/uptime)
flock -x /mnt/lockfile -c 'echo "B: granted after A: $(cat /mnt/a-state)"; grep -q released /mnt/a-state'
echo "B: done, blocked from $t0 to $(cut -d' ' -f1 /proc/uptime) s of uptime"
"""


# In the two-client test A lets go only once the host has seen B's blocking
# LOCK reach the proxy, so the NAS grants it by NLM_GRANTED_MSG. Let go on B's
# "tried" alone, A could release before B's blocking call left B's kernel;
# B's lock was then granted at once, with no callback (seen once, on a loaded
# CI host).
HOLDER_UNTIL_B_BLOCKS = HOLDER.replace("grep -q tried /mnt/b-state", "grep -q blocked /mnt/go")


def _release_once_b_blocks(nas, host, threads: list[threading.Thread]) -> None:
    """Tell A to let go (the file `go`) once the proxy has relayed three NLM
    LOCKs: A's, B's non-blocking try, and B's blocking one."""
    while any(t.is_alive() for t in threads):
        samples = _scrape_in(host, METRICS_PORT)
        locks = sum(v for (n, ls), v in samples.items() if n == "nfsj_proxy_calls_total"
                    and ("program", "nlm") in ls and ("procedure", "LOCK") in ls)
        if locks >= 3:
            (nas.export_dir / "go").write_text("blocked\n")
            return
        time.sleep(0.2)


def _scrape_in(host, port: int) -> dict:
    done = host.run([sys.executable, "-c", "import sys, urllib.request; "
                     "print(urllib.request.urlopen(sys.argv[1], timeout=10).read().decode())",
                     f"http://127.0.0.1:{port}/metrics"])
    assert done.returncode == 0, done.stderr
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(done.stdout) for s in family.samples}


def _prepare(export: Path) -> None:
    for name in ("lockfile", "a-state", "b-state", "go"):
        (export / name).write_text("")


def _kernel_proxy(nas, host_pair, tmp_path: Path) -> ProxyProcess:
    """The proxy as the guests' server: port 2049, and port 111 for their lock managers."""
    return ProxyProcess(nas, tmp_path / "log", launcher=host_pair.proxy.command(),
                        listen="0.0.0.0:2049",
                        extra=["--portmap", "0.0.0.0:111", "--metrics", f"127.0.0.1:{METRICS_PORT}"])


def _boot(kernel_image, host_pair, tmp_path: Path, name: str, script: str, results: dict) -> threading.Thread:
    def run() -> None:
        guest = Guest(kernel_image, tmp_path / name, launcher=host_pair.proxy.command())
        results[name] = guest.run(script, [mount_line(2049, "/mnt", options=LOCK_OPTIONS)],
                                  before_mount=_before_mount(name))
    thread = threading.Thread(target=run)
    thread.start()
    return thread


def _assert_excluded(results: dict) -> None:
    for name in ("guest-a", "guest-b"):
        assert results[name].exit_code == 0, f"{name} failed:\n{results[name].console[-3000:]}"
    console = results["guest-b"].console
    assert "B: non-blocking try: exit 11" in console
    assert re.search(r"B: granted after A: released", console)


# Guests on taps of a bridge at 10.0.2.2 in the proxy's host (the address the
# mount line names), each with its own address, so the proxy can call them back.
TAP_GUESTS = {"guest-a": ("nfsjta", "52:54:00:00:00:0a", "10.0.2.15"),
              "guest-b": ("nfsjtb", "52:54:00:00:00:0b", "10.0.2.16")}


def test_two_kernel_clients_exclude_each_other_through_the_proxy(
        host_pair, nas_host_factory, kernel_image, tmp_path: Path):
    """A holds, B's try fails with EAGAIN, B's blocking lock is granted when A lets go:
    by the NAS's NLM_GRANTED_MSG, which the proxy passes on to B's kernel."""
    nas = nas_host_factory(_prepare)
    host_pair.proxy.tap_bridge("10.0.2.2", [tap for tap, _, _ in TAP_GUESTS.values()])
    proxy = _kernel_proxy(nas, host_pair, tmp_path).start()
    try:
        results: dict = {}

        def boot(name: str, script: str) -> None:
            tap, mac, address = TAP_GUESTS[name]
            guest = Guest(kernel_image, tmp_path / name, launcher=host_pair.proxy.command(),
                          netdev=f"tap,id=n0,ifname={tap},script=no,downscript=no", mac=mac)
            readdress = f"ip addr flush dev eth0\nip addr add {address}/24 dev eth0\n"
            results[name] = guest.run(script, [mount_line(2049, "/mnt", options=LOCK_OPTIONS)],
                                      before_mount=readdress + _before_mount(name))
        threads = [threading.Thread(target=boot, args=args)
                   for args in (("guest-a", HOLDER_UNTIL_B_BLOCKS), ("guest-b", WAITER))]
        for t in threads:
            t.start()
        _release_once_b_blocks(nas, host_pair.proxy, threads)
        for t in threads:
            t.join()
        samples = _scrape_in(host_pair.proxy, METRICS_PORT)
    finally:
        proxy.stop()
    _assert_excluded(results)
    # Through the proxy: the lock calls, the NAS's grant passed to B, and B's answer to it.
    assert value(samples, "nfsj_proxy_calls_total", program="nlm", procedure="LOCK") >= 3
    assert value(samples, "nfsj_proxy_calls_total", program="nlm", procedure="UNLOCK") >= 2
    assert value(samples, "nfsj_proxy_lock_callbacks_total", procedure="GRANTED_MSG",
                 outcome="passed") >= 1
    assert value(samples, "nfsj_proxy_calls_total", program="nlm", procedure="GRANTED_RES") >= 1


def test_a_held_lock_outlives_a_proxy_restart(host_pair, nas_host_factory, kernel_image, tmp_path: Path):
    """The NAS holds locks for the proxy's address, not for its connections: a proxy
    killed and restarted under a held lock leaves it held, and its owner's unlock
    after the restart (over a new connection) frees it for the waiter."""
    nas = nas_host_factory(_prepare)
    proxy = _kernel_proxy(nas, host_pair, tmp_path).start()
    results: dict = {}
    threads = [_boot(kernel_image, host_pair, tmp_path, "guest-a", HOLDER, results)]
    try:
        state = nas.export_dir / "a-state"
        deadline = time.monotonic() + 300
        while "held" not in state.read_text() and threads[0].is_alive() and time.monotonic() < deadline:
            time.sleep(0.5)
        assert "held" in state.read_text(), "guest A never took the lock"
        proxy.kill()
        proxy = _kernel_proxy(nas, host_pair, tmp_path).start()
        threads.append(_boot(kernel_image, host_pair, tmp_path, "guest-b", WAITER, results))
        for t in threads:
            t.join()
    finally:
        proxy.stop()
    _assert_excluded(results)


PEER = str(Path(__file__).with_name("nlm_peer.py"))


def _peer(host, address: str, name: str, mode: str, port: int) -> subprocess.Popen:
    peer = subprocess.Popen(host.command([sys.executable, PEER, address, name, str(port), "lockfile",
                                          mode]),
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    peer.lines = queue.Queue()

    def read() -> None:
        for line in peer.stdout:
            peer.lines.put(line.rstrip())
        peer.lines.put(None)
    threading.Thread(target=read, daemon=True).start()
    return peer


def _expect(peer: subprocess.Popen, want: str, seen: list[str]) -> None:
    """Read the peer's lines until one starts with `want` (a hang guard, not a timing claim)."""
    while True:
        try:
            line = peer.lines.get(timeout=120)
        except queue.Empty:
            line = None
        if line is None:
            break
        seen.append(line)
        if line.startswith(want):
            return
    raise AssertionError(f"expected {want!r}; the peer said:\n" + "\n".join(seen))


def test_the_nas_callback_for_a_blocked_lock_reaches_the_client_that_waits(
        host_pair, nas_host_factory, tmp_path: Path):
    """Two client hosts (our own NLM codec) behind the proxy: when the holder lets go,
    the NAS's NLM_GRANTED_MSG goes to the proxy, which passes it to the waiter alone."""
    nas = nas_host_factory(_prepare)
    proxy = ProxyProcess(nas, tmp_path / "log", launcher=host_pair.proxy.command(),
                         listen="0.0.0.0:2049",
                         extra=["--portmap", host_pair.proxy.address,
                                "--metrics", f"127.0.0.1:{METRICS_PORT}"])
    proxy.start()
    holder = waiter = None
    said: dict[str, list[str]] = {"holder": [], "waiter": []}
    try:
        holder = _peer(host_pair.proxy, "127.0.0.2", "peer-a", "hold", proxy.port)
        _expect(holder, "held", said["holder"])
        waiter = _peer(host_pair.proxy, "127.0.0.3", "peer-b", "wait", proxy.port)
        _expect(waiter, "blocked", said["waiter"])
        # Another client forging the NAS's grant for the waiter's lock is refused.
        forger = _peer(host_pair.proxy, "127.0.0.4", "peer-b", "forge", proxy.port)
        _expect(forger, "refused", said.setdefault("forger", []))
        holder.stdin.write("release\n")
        holder.stdin.flush()
        _expect(waiter, "granted by callback", said["waiter"])
        _expect(holder, "callbacks", said["holder"])
        assert waiter.wait(30) == 0, said["waiter"]
        assert holder.wait(30) == 0, said["holder"]
        samples = _scrape_in(host_pair.proxy, METRICS_PORT)
    finally:
        for peer in (holder, waiter):
            if peer is not None and peer.poll() is None:
                peer.kill()
                peer.wait()
        proxy.stop()
    assert said["holder"][-1] == "callbacks 0", said["holder"]  # nothing for the holder
    callbacks = [line for line in said["waiter"] if line.startswith("callback")]
    assert len(callbacks) == 1 and callbacks[0].startswith("callback GRANTED_MSG svid=8 "), said
    assert b"forged".hex() not in callbacks[0]  # the NAS's grant, not the forger's
    assert value(samples, "nfsj_proxy_lock_callbacks_total", procedure="GRANTED_MSG",
                 outcome="passed") >= 1
    assert value(samples, "nfsj_proxy_calls_total", program="nlm", procedure="GRANTED_RES") >= 1


def _peer_proxy(nas, host_pair, tmp_path: Path) -> ProxyProcess:
    """The proxy for `nlm_peer` clients: they own port 111 of their 127.0.0.x, so the
    proxy answers port 111 only on its veth address and 127.0.0.1."""
    return ProxyProcess(nas, tmp_path / "log", launcher=host_pair.proxy.command(),
                        listen="0.0.0.0:2049",
                        extra=["--portmap", host_pair.proxy.address, "--portmap", "127.0.0.1",
                               "--metrics", f"127.0.0.1:{METRICS_PORT}"]).start()


def test_a_rebooted_clients_locks_are_released_on_the_nas(host_pair, nas_host_factory, tmp_path: Path):
    """The NAS monitors the proxy, not the clients behind it: when a client that died
    holding a lock comes back and says so (SM_NOTIFY over UDP, as sm-notify sends
    it), the proxy unlocks what it held, and the waiter is granted."""
    nas = nas_host_factory(_prepare)
    proxy = _peer_proxy(nas, host_pair, tmp_path)
    holder = waiter = None
    said: dict[str, list[str]] = {"holder": [], "waiter": [], "reboot": []}
    try:
        holder = _peer(host_pair.proxy, "127.0.0.2", "peer-a", "hold", proxy.port)
        _expect(holder, "held", said["holder"])
        holder.kill()  # dies holding the lock
        holder.wait()
        waiter = _peer(host_pair.proxy, "127.0.0.3", "peer-b", "wait", proxy.port)
        _expect(waiter, "blocked", said["waiter"])
        rebooted = _peer(host_pair.proxy, "127.0.0.2", "peer-a", "reboot", proxy.port)
        _expect(rebooted, "notified", said["reboot"])
        assert rebooted.wait(30) == 0, said["reboot"]
        _expect(waiter, "granted by callback", said["waiter"])
        assert waiter.wait(30) == 0, said["waiter"]
        samples = _scrape_in(host_pair.proxy, METRICS_PORT)
    finally:
        for peer in (holder, waiter):
            if peer is not None and peer.poll() is None:
                peer.kill()
                peer.wait()
        proxy.stop()
    assert value(samples, "nfsj_proxy_lock_reboot_unlocks_total") == 1


def test_the_nas_reboot_notice_reaches_the_clients_that_lock_through_the_proxy(
        host_pair, nas_host_factory, tmp_path: Path):
    """The NAS's status monitor notifies the proxy (whose address it monitors); the
    proxy tells each client behind it that its server, as that client knows it, rebooted."""
    nas = nas_host_factory(_prepare)
    proxy = _peer_proxy(nas, host_pair, tmp_path)
    holder = None
    said: list[str] = []
    try:
        holder = _peer(host_pair.proxy, "127.0.0.2", "peer-a", "hold", proxy.port)
        _expect(holder, "held", said)
        done = host_pair.nas.run(["sm-notify", "-f", "-d"], timeout_s=60)
        _expect(holder, "callback NOTIFY", said)
        samples = _scrape_in(host_pair.proxy, METRICS_PORT)
    finally:
        if holder is not None and holder.poll() is None:
            holder.kill()
            holder.wait()
        proxy.stop()
    assert said[-1] == "callback NOTIFY mon_name=127.0.0.1", (said, done.stdout, done.stderr)
    assert value(samples, "nfsj_proxy_lock_callbacks_total", procedure="NOTIFY", outcome="passed") == 1
