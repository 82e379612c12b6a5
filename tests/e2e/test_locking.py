"""NFSv3 locking (NLM) through the proxy, with the NAS and the proxy on separate hosts.

The hosts are network namespaces (tests/e2e/netns_fixture.py): ganesha with
NLM and its rpc.statd on one; on the other the proxy answers port 111 and
relays NLM and NSM, and two Linux kernel clients under qemu mount it without
`nolock`. A kernel asks port 111 of the address it mounted for NLM, and only
the proxy answers there, so every lock goes through it (the proxy's own
counters show it; a lock that stayed on a client would let both hold it).
"""

from __future__ import annotations

import re
import sys
import threading
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from e2e.netns_fixture import host_pair, nas_host_factory  # noqa: F401  (fixtures)
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
flock -x /mnt/lockfile -c 'echo "B: granted after A: $(cat /mnt/a-state)"; grep -q released /mnt/a-state'
echo "B: done"
"""


def _scrape_in(host, port: int) -> dict:
    done = host.run([sys.executable, "-c", "import sys, urllib.request; "
                     "print(urllib.request.urlopen(sys.argv[1], timeout=10).read().decode())",
                     f"http://127.0.0.1:{port}/metrics"])
    assert done.returncode == 0, done.stderr
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(done.stdout) for s in family.samples}


def _prepare(export: Path) -> None:
    for name in ("lockfile", "a-state", "b-state"):
        (export / name).write_text("")


def test_two_kernel_clients_exclude_each_other_through_the_proxy(
        host_pair, nas_host_factory, kernel_image, tmp_path: Path):
    nas = nas_host_factory(_prepare)
    proxy = ProxyProcess(nas, tmp_path / "log", launcher=host_pair.proxy.command(),
                         listen="0.0.0.0:2049",
                         extra=["--portmap", "0.0.0.0:111", "--metrics", f"127.0.0.1:{METRICS_PORT}"])
    proxy.start()
    try:
        results = {}

        def boot(name: str, script: str) -> None:
            guest = Guest(kernel_image, tmp_path / name, launcher=host_pair.proxy.command())
            results[name] = guest.run(script, [mount_line(proxy.port, "/mnt", options=LOCK_OPTIONS)],
                                      before_mount=_before_mount(name))

        threads = [threading.Thread(target=boot, args=args)
                   for args in (("guest-a", HOLDER), ("guest-b", WAITER))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        samples = _scrape_in(host_pair.proxy, METRICS_PORT)
    finally:
        proxy.stop()
    for name in ("guest-a", "guest-b"):
        assert results[name].exit_code == 0, f"{name} failed:\n{results[name].console[-3000:]}"
    console = results["guest-b"].console
    assert "B: non-blocking try: exit 11" in console
    assert re.search(r"B: granted after A: released", console)
    # Through the proxy: the lock calls, and the NAS's callback for the blocked one
    # (it cannot reach a guest behind qemu's NAT: the guest's own retry got the lock).
    assert value(samples, "nfsj_proxy_calls_total", program="nlm", procedure="LOCK") >= 3
    assert value(samples, "nfsj_proxy_calls_total", program="nlm", procedure="UNLOCK") >= 2
    assert value(samples, "nfsj_proxy_calls_total", program="nlm", procedure="GRANTED_MSG") >= 1
