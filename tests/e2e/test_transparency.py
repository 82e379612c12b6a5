"""The proxy is transparent: a workload through it leaves what it leaves without it.

The same deterministic workload (`workload.run_workload`) runs twice on one
ganesha export: once straight at ganesha into ``direct/``, once through a
running `nfsj proxy` into ``proxied/``. Both subtrees start empty and get
the same calls, so read back from the export's local directory they must be
identical (contents, sizes, modes, owners, symlink targets, link counts and
which names share an inode; not mtimes or inode numbers), and each provoked
failure must fail the same way.

"Transparent" also means that the proxy got there without dropping a
connection: nfs-rs silently retries calls that are safe to retry, so equal
trees alone would hide a proxy that closes clients. Hence the proxy's log
must show no warning or error.
"""

from __future__ import annotations

import pytest

from e2e.proxy_fixture import read_log
from e2e.treecompare import diff, hard_link_groups, snapshot
from e2e.workload import SCRIPTED_ERRORS, connect, run_workload
from logstore.record import Op

pytestmark = pytest.mark.ganesha

#: Random operations added to the scripted workload (see workload.py).
RANDOM_OPS = 150
SEED = {"sync": 11, "async": 12}
MiB = 1 << 20


def _proxy_problems(proxy) -> list[str]:
    """Lines of the proxy's log that say something went wrong."""
    return [line for line in proxy.stderr_text().splitlines()
            if " WARNING " in line or " ERROR " in line or " CRITICAL " in line
            or line.startswith("Traceback")]


@pytest.mark.parametrize("durability", ["sync", "async"])
def test_workload_through_proxy_leaves_the_same_tree(nas, proxy_factory, tmp_path, durability):
    proxy = proxy_factory(durability=durability)
    seed = SEED[durability]

    direct_errors = run_workload(nas.url(), "direct", seed, random_ops=RANDOM_OPS,
                                 tmp_dir=tmp_path)
    proxied_errors = run_workload(proxy.url(), "proxied", seed, random_ops=RANDOM_OPS,
                                  tmp_dir=tmp_path)

    # The test bed itself: the scripted failures happened as scripted.
    assert [(e.call, e.path, e.proc, e.code_name) for e in direct_errors[:len(SCRIPTED_ERRORS)]] \
        == list(SCRIPTED_ERRORS)

    assert proxied_errors == direct_errors

    direct = snapshot(nas.export_dir / "direct")
    proxied = snapshot(nas.export_dir / "proxied")
    # The workload did its work (holds for any seed).
    assert {"big/b2.bin", "many/f199", "libnfs/in.bin", "random"} <= direct.keys()
    assert hard_link_groups(direct)
    problems = diff(direct, proxied, names=("direct", "proxied"))
    assert not problems, "trees differ:\n" + "\n".join(problems)

    assert proxy.alive(), proxy.stderr_text()
    assert not _proxy_problems(proxy), "\n".join(_proxy_problems(proxy))

    # The proxied run really went through the proxy (and only it did).
    assert proxy.stop() == 0, proxy.stderr_text()
    records = read_log(proxy.log_dir)
    roots = {r.name for _, r in records
             if r.op == Op.MKDIR and r.ok and r.name in (b"direct", b"proxied")}
    assert roots == {b"proxied"}


@pytest.mark.parametrize("direction", ["write", "read"])
def test_full_size_nfs_rs_transfers_pass_through(nas, proxy, direction):
    """nfs-rs moves up to 4 MiB per READ and WRITE (its own cap; ganesha offers 64 MiB).

    A 4 MiB WRITE call, or a 4 MiB READ reply, is an RPC message a little
    over 4 MiB (payload plus headers). The proxy must relay it as ganesha
    takes it directly. "write" writes one 4 MiB WRITE through the proxy;
    "read" reads, through the proxy, a file written straight to ganesha.
    """
    data = bytes(range(256)) * (4 * MiB // 256)
    outcomes = {}
    for name, url in (("direct", nas.url()), ("proxied", proxy.url())):
        try:
            if direction == "read":
                with connect(nas.url()) as client, client.open(f"{name}.bin", "wb") as f:
                    for pos in range(0, len(data), MiB):
                        f.write_at(data[pos:pos + MiB], pos)
            with connect(url) as client:
                if direction == "write":
                    with client.open(f"{name}.bin", "wb") as f:
                        f.write_at(data, 0)  # one 4 MiB WRITE
                with client.open(f"{name}.bin", "rb") as f:
                    back = f.read_at(0, len(data))  # one 4 MiB READ
            outcomes[name] = "same bytes back" if back == data else "other bytes back"
        except Exception as e:  # noqa: BLE001 - the outcome is what we compare
            outcomes[name] = f"{type(e).__name__}: {e}"
    assert outcomes["direct"] == "same bytes back"
    assert outcomes["proxied"] == outcomes["direct"], (
        f"through the proxy: {outcomes['proxied']}\n"
        "proxy log:\n" + "\n".join(_proxy_problems(proxy)))
    assert not _proxy_problems(proxy), "\n".join(_proxy_problems(proxy))
    assert (nas.export_dir / "proxied.bin").read_bytes() == data
