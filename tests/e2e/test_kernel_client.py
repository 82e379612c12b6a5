"""The Linux kernel's NFS client through the proxy, as users mount it.

A Debian kernel booted under qemu (tests/kernel_guest.py) mounts, in one
boot, a second ganesha directly and the proxy in front of the test NAS, and
runs the same workload in both: tar round trips, renames across directories,
symlinks, hard links, chmod/chown/utimes, truncate, holes, an 8 MiB file,
`sync` and a drop of the guest's page cache. Then:

* the proxied NAS equals the direct one (types, modes, owners, sizes,
  contents, link targets, hard-link groups; mtimes where the workload set
  them, the rest differ by when each run happened);
* a restore at a moment after the workload equals the proxied NAS, mtimes of
  every entry included.

The mount line is the one the README gives (with the guest's view of the
host's address, 10.0.2.2).
"""

from __future__ import annotations

import dataclasses
import re
import signal
import subprocess
from pathlib import Path

import pytest

from e2e.test_acceptance import NFSJ, nfsj, now_bound, run_baseline, wait_proven
from e2e.test_metrics import _free_port, scrape, value
from e2e.test_up import _read_until, free_port_run
from e2e.treecompare import diff, snapshot
from kernel_guest import HOST_FROM_GUEST, mount_line
from nfsproxy.demo.ganesha import start_ganesha

# One workload, run in the directory given as $1. Deterministic content, so the
# direct and the proxied run write the same bytes.
WORKLOAD = r"""
# The seed tree, made once in the guest's tmpfs with pinned mtimes, so that
# both runs write byte-identical archives (ganesha keeps no mtime set on a symlink).
mkdir -p /tmp/seed/src/a/b /tmp/seed/src/c /tmp/seed/src/empty-dir
cd /tmp/seed
awk 'BEGIN { for (i = 0; i < 20000; i++) printf "%08d\n", (i * 7919) % 1000003 }' > src/a/numbers
yes nfs-journal-kernel-client | head -c 8388608 > src/big
echo hello > src/a/b/hello
: > src/empty
ln -s ../a/b/hello src/c/link
ln -s /no/such/target src/dangling
ln src/a/numbers src/c/hardlink
find src -exec touch -h -d "2023-05-06 07:08:09" {} +
cd /

work() {
    cd "$1"
    cp -a /tmp/seed/src src
    (cd /tmp/seed && tar -cf - src) > tree.tar
    mkdir copy
    tar -xf tree.tar -C copy
    rm -rf /tmp/back && mkdir /tmp/back
    tar -cf - -C copy src | tar -xf - -C /tmp/back
    cmp /tmp/back/src/big src/big
    cmp /tmp/back/src/a/numbers /tmp/seed/src/a/numbers
    mv src/a/b/hello src/c/hello2
    mv copy/src/a copy/a-moved
    mv src/c/link src/a/b/link-moved
    chmod 0640 src/a/numbers
    chmod 0711 src/c
    chmod 4755 copy/a-moved/numbers
    chown 4242:4243 src/c/hello2
    chown 4242 copy/src/empty
    touch -d "2024-01-02 03:04:05" src/c/hello2 src/a/numbers
    touch -d "2020-02-29 12:00:00" copy/src/c
    truncate -s 100 copy/src/big
    truncate -s 5000000 copy/src/big
    dd if=/dev/zero of=holey bs=4096 seek=256 count=1 2>/dev/null
    printf tail | dd of=holey bs=1 seek=3000000 conv=notrunc 2>/dev/null
    printf head | dd of=holey bs=1 conv=notrunc 2>/dev/null
    rm copy/src/dangling
    rm -r copy/src/empty-dir
    ln copy/src/big copy/big-link
    sync
    echo 3 > /proc/sys/vm/drop_caches
    cmp /tmp/back/src/a/numbers src/a/numbers
    cd /
}
work /mnt/direct
work /mnt/proxied
echo 3 > /proc/sys/vm/drop_caches
cd /mnt/direct && md5sum src/big copy/src/big holey src/a/numbers tree.tar > /tmp/direct.sums
cd /mnt/proxied && md5sum src/big copy/src/big holey src/a/numbers tree.tar > /tmp/proxied.sums
cmp /tmp/direct.sums /tmp/proxied.sums
echo workload done
"""

# Entries whose mtimes the workload sets (touch, or tar -x): equal in both runs.
EXPLICIT_MTIMES = ("src/c/hello2", "src/a/numbers", "src/big", "copy/src/c", "copy/src/empty")


@dataclasses.dataclass
class _Addresses:
    addresses: list[str]


@pytest.fixture
def other_nas(tmp_path):
    nas = start_ganesha(tmp_path / "direct-export", tmp_path / "direct-ganesha")
    try:
        yield nas
    finally:
        nas.stop()


def _mount_nas(nas, mountpoint: str) -> str:
    return mount_line(nas.nfs_port, mountpoint, mount_port=nas.mount_port)


def test_kernel_client_workload_through_the_proxy_equals_direct_and_restores(
        nas, other_nas, proxy_factory, shard_factory, guest, tmp_path: Path):
    shard = shard_factory(0)
    proxy = proxy_factory(extra=["--shard", shard.address])
    run_baseline(proxy)

    result = guest.run(WORKLOAD, [_mount_nas(other_nas, "/mnt/direct"),
                                  mount_line(proxy.port, "/mnt/proxied")])
    assert result.exit_code == 0, f"the guest's workload failed:\n{result.console[-4000:]}"
    assert "workload done" in result.console

    direct = snapshot(other_nas.export_dir)
    proxied = snapshot(nas.export_dir)
    assert len(proxied) > 20
    assert not (problems := diff(direct, proxied)), "\n".join(problems)
    for path in EXPLICIT_MTIMES:
        assert snapshot(other_nas.export_dir, mtimes=True)[path].mtime_ns == \
            snapshot(nas.export_dir, mtimes=True)[path].mtime_ns, path

    at = now_bound()
    wait_proven(_Addresses([shard.address]), at, cli=False)
    restored = tmp_path / "restored"
    done = nfsj("restore", "--at", str(at), "--to", str(restored), "--shard", shard.address)
    assert done.returncode == 0, done.stderr
    problems = diff(snapshot(nas.export_dir, mtimes=True), snapshot(restored, mtimes=True),
                    mtimes=True)
    assert not problems, "\n".join(problems)


# Four writers at once over one mount with nconnect=4: the kernel spreads its
# calls over four TCP connections, so the proxy sees one client as four.
NCONNECT_WORKLOAD = r"""
grep -q nconnect=4 /proc/mounts
cd /mnt
for w in 1 2 3 4; do
    (
        mkdir d$w
        for i in 1 2 3 4 5 6 7 8; do
            yes "writer $w pass $i" | head -c $((i * 200000)) > d$w/f$i
        done
        # the same range rewritten again and again: the last write must win
        for i in 1 2 3 4 5 6; do
            yes "shared $w round $i" | head -c 300000 | dd of=shared-$w bs=65536 conv=notrunc 2>/dev/null
        done
        truncate -s 123457 shared-$w
        mv d$w/f1 d$w/f1-renamed
        rm d$w/f2
    ) &
done
wait
sync
echo 3 > /proc/sys/vm/drop_caches
md5sum shared-* > /dev/null
echo nconnect done
"""


def test_nconnect_spreads_one_client_over_four_connections_and_restores(
        nas, proxy_factory, shard_factory, guest, tmp_path: Path):
    shard = shard_factory(0)
    metrics_port = _free_port()
    proxy = proxy_factory(extra=["--shard", shard.address, "--metrics", f"127.0.0.1:{metrics_port}"])
    run_baseline(proxy)

    result = guest.run(NCONNECT_WORKLOAD, [mount_line(proxy.port, "/mnt",
                                                      options="vers=3,proto=tcp,nolock,nconnect=4")])
    assert result.exit_code == 0, f"the guest's workload failed:\n{result.console[-4000:]}"
    assert "nconnect done" in result.console

    # One mount, one client: four connections, each relayed on its own NAS connection.
    assert value(scrape(metrics_port), "nfsj_proxy_sessions_total") >= 4
    truth = snapshot(nas.export_dir, mtimes=True)
    assert {f"shared-{w}" for w in range(1, 5)} <= truth.keys()
    assert all(truth[f"shared-{w}"].size == 123457 for w in range(1, 5))
    at = now_bound()
    wait_proven(_Addresses([shard.address]), at, cli=False)
    restored = tmp_path / "restored"
    done = nfsj("restore", "--at", str(at), "--to", str(restored), "--shard", shard.address)
    assert done.returncode == 0, done.stderr
    assert not (problems := diff(truth, snapshot(restored, mtimes=True), mtimes=True)), \
        "\n".join(problems)


@pytest.mark.ganesha
def test_the_mount_line_nfsj_up_prints_works_in_the_kernel_client(guest, tmp_path: Path):
    port, shard_base = _free_port(), free_port_run(2)
    proc = subprocess.Popen([*NFSJ, "up", "--data", str(tmp_path / "data"),
                             "--listen", f"127.0.0.1:{port}", "--shard-base-port", str(shard_base)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        banner = "".join(_read_until(proc, r"^baseline: "))
        line = re.search(r"^  mount +(mount .*)$", banner, re.M).group(1)
        # As printed; only the host's loopback is 10.0.2.2 from inside the guest.
        result = guest.run("echo through-the-printed-line > /mnt/hello\ngrep ' /mnt nfs' /proc/mounts",
                           [line.replace("127.0.0.1:", f"{HOST_FROM_GUEST}:")])
        assert result.exit_code == 0, f"{line}\n{result.console[-3000:]}"
        assert (tmp_path / "data" / "demo-export" / "hello").read_text() == "through-the-printed-line\n"
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=60)
    assert proc.returncode == 0
