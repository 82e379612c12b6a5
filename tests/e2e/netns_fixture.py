"""Two hosts on one machine: a NAS and a proxy in their own network namespaces.

Locking (NLM) is found through port 111 of the server's address, so a proxy
on the NAS's own host would be bypassed: the kernel's lock manager asks the
host's rpcbind, where the NAS registered its own NLM. Here each host is a
network namespace (`ip netns`) joined by a veth pair, with its own address,
loopback and private /run and /var/lib/nfs (a mount namespace held open by a
`sleep`), so each can run its own rpcbind and rpc.statd:

* `nas_host`: rpcbind, rpc.statd and ganesha with NLM on, bound to its veth
  address;
* `proxy_host`: the proxy, answering port 111 itself (`--portmap`), and the
  kernel guests' qemu: with user-mode networking the guests sit behind the
  proxy host's loopback (and cannot be called back); on taps of a bridge
  (`Host.tap_bridge`) they have their own addresses and can.

`Host.command(argv)` prefixes a command to run inside a host. Needs root
(CAP_NET_ADMIN, CAP_SYS_ADMIN); the tests that use it fail without.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import subprocess
import time
from pathlib import Path

import pytest

from nfsproxy.demo.ganesha import Ganesha, GaneshaInstance

__all__ = ["Host", "HostPair", "host_pair", "nas_host_factory", "nas_host_ganesha", "make_host_pair",
           "remove_host_pair"]

_PAIRS = itertools.count(1)


class NetnsError(RuntimeError):
    pass


def _ip(*args: str) -> None:
    done = subprocess.run(["ip", *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise NetnsError(f"ip {' '.join(args)}: {done.stderr.strip()}")


@dataclasses.dataclass
class Host:
    """One namespace host: `address` on its veth; processes started in it are stopped at the end."""

    netns: str
    address: str
    holder: subprocess.Popen | None = None
    processes: list[subprocess.Popen] = dataclasses.field(default_factory=list)

    def command(self, argv: list[str] | tuple[str, ...] = ()) -> list[str]:
        """`argv` run inside this host (its network, its /run and /var/lib/nfs)."""
        return ["nsenter", "-t", str(self.holder.pid), "-n", "-m", *argv]

    def start(self, argv: list[str], log: Path) -> subprocess.Popen:
        with open(log, "ab") as out:
            proc = subprocess.Popen(self.command(argv), stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        self.processes.append(proc)
        return proc

    def run(self, argv: list[str], timeout_s: float = 30.0) -> subprocess.CompletedProcess:
        return subprocess.run(self.command(argv), capture_output=True, text=True, timeout=timeout_s)

    def tap_bridge(self, address: str, taps: list[str]) -> None:
        """A bridge at `address`/24 with a tap device per name, for qemu guests
        (`-netdev tap,ifname=NAME`) that servers on this host can call back."""
        _ip("-n", self.netns, "link", "add", "nfsjbr", "type", "bridge")
        _ip("-n", self.netns, "addr", "add", f"{address}/24", "dev", "nfsjbr")
        _ip("-n", self.netns, "link", "set", "nfsjbr", "up")
        for tap in taps:
            _ip("-n", self.netns, "tuntap", "add", "dev", tap, "mode", "tap")
            _ip("-n", self.netns, "link", "set", tap, "master", "nfsjbr")
            _ip("-n", self.netns, "link", "set", tap, "up")

    def wait_registered(self, program: str, timeout_s: float = 20.0) -> None:
        """Wait until this host's rpcbind lists `program` (a number)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            done = self.run(["rpcinfo", "-p", "127.0.0.1"])
            if done.returncode == 0 and any(line.split()[:1] == [program]
                                            for line in done.stdout.splitlines()):
                return
            time.sleep(0.1)
        raise NetnsError(f"{self.netns}: program {program} never registered with rpcbind")

    def stop(self) -> None:
        for proc in reversed(self.processes):
            if proc.poll() is None:
                proc.terminate()
                try:  # ganesha with NLM clients left can take 10 s to stop: not worth waiting
                    proc.wait(3)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        if self.holder is not None and self.holder.poll() is None:
            self.holder.kill()
            self.holder.wait()


@dataclasses.dataclass
class HostPair:
    nas: Host
    proxy: Host


_HOLDER = ("mount -t tmpfs nfsj-run /run && mount -t tmpfs nfsj-nfs /var/lib/nfs && "
           "mkdir -p /run/rpcbind /var/lib/nfs/sm /var/lib/nfs/sm.bak && echo ready && exec sleep infinity")


def _make_host(netns: str, veth: str, address: str) -> Host:
    _ip("link", "set", veth, "netns", netns)
    _ip("-n", netns, "addr", "add", f"{address}/24", "dev", veth)
    _ip("-n", netns, "link", "set", veth, "up")
    _ip("-n", netns, "link", "set", "lo", "up")
    holder = subprocess.Popen(["ip", "netns", "exec", netns, "unshare", "-m", "--propagation", "private",
                               "sh", "-c", _HOLDER], stdout=subprocess.PIPE, stdin=subprocess.DEVNULL,
                              text=True)
    if holder.stdout.readline().strip() != "ready":
        holder.kill()
        raise NetnsError(f"{netns}: could not make its private /run and /var/lib/nfs")
    return Host(netns, address, holder)


def make_host_pair() -> HostPair:
    """A NAS host and a proxy host joined by a veth pair (10.231.0.1 and .2: each pair
    lives in namespaces of its own, so pairs made at once do not collide)."""
    tag = f"{os.getpid() % 100000}x{next(_PAIRS)}"
    nas_ns, proxy_ns = f"nfsj-nas-{tag}", f"nfsj-px-{tag}"
    made: list[str] = []
    hosts: list[Host] = []
    try:
        for ns in (nas_ns, proxy_ns):
            _ip("netns", "add", ns)
            made.append(ns)
        _ip("link", "add", f"nj{tag}a", "type", "veth", "peer", "name", f"nj{tag}b")
        hosts.append(_make_host(nas_ns, f"nj{tag}a", "10.231.0.1"))
        hosts.append(_make_host(proxy_ns, f"nj{tag}b", "10.231.0.2"))
    except BaseException:
        for host in hosts:
            host.stop()
        for ns in made:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        raise
    return HostPair(*hosts)


def remove_host_pair(pair: HostPair) -> None:
    for host in (pair.proxy, pair.nas):
        host.stop()
        subprocess.run(["ip", "netns", "del", host.netns], capture_output=True)


@pytest.fixture
def host_pair():
    """A NAS host and a proxy host (`HostPair`), removed afterwards with what ran in them."""
    if os.geteuid() != 0:
        pytest.fail("network namespaces need root", pytrace=False)
    pair = make_host_pair()
    try:
        yield pair
    finally:
        remove_host_pair(pair)


def nas_host_ganesha(host: Host, export_dir: Path, workdir: Path) -> GaneshaInstance:
    """rpcbind, rpc.statd and ganesha (NLM on) in `host`, exporting `export_dir`."""
    workdir.mkdir(parents=True, exist_ok=True)
    host.start(["rpcbind", "-f", "-w"], workdir / "rpcbind.out")
    host.wait_registered("100000")
    host.start(["rpc.statd", "-F", "--no-notify"], workdir / "statd.out")
    host.wait_registered("100024")
    # A fresh host: the usual ports are free (and picking free ones would look in ours).
    nas = Ganesha(export_dir, workdir, 2049, 20048, bind=host.address, nlm=True,
                  launcher=tuple(host.command())).start()
    host.processes.append(nas.process)
    host.wait_registered("100021")
    return nas


@pytest.fixture
def nas_host_factory(host_pair, tmp_path):
    """`factory(prepare)` -> ganesha in the NAS host; `prepare(export_dir)` runs before it serves."""
    def factory(prepare=None) -> GaneshaInstance:
        export = tmp_path / "export"
        export.mkdir()
        if prepare is not None:
            prepare(export)
        return nas_host_ganesha(host_pair.nas, export, tmp_path / "ganesha")
    return factory
