"""Names are bytes: names, symlink targets and AUTH_SYS machine names that are not
UTF-8 are relayed, journaled and restored byte for byte, end to end.

Real processes throughout: nfs-ganesha, two `nfsj recoveryd` shards and
`nfsj proxy` in front of ganesha (test_export.py's `stack`). Our own codec
client (nfsproxy/nas/client.py) sends what an ordinary client library will not:
names like b"caf\\xe9" (Latin-1, not UTF-8), a 255-byte name, names holding a
newline, a backslash or a leading "-", a symlink target that is not UTF-8, and
an AUTH_SYS machine name that is not UTF-8. Some names are made straight on
the NAS (not through the proxy), so the proxy first meets them in a
READDIRPLUS reply and journals them as BINDs.

Then: the directory is listed through the proxy; a baseline is taken; more is
made, renamed, linked and removed through the proxy; T is a stamp above all
of it, and the truth at T is ganesha's export directory. Judged from the
outside: the LOG holds the exact bytes; `nfsj restore --to DIR`, push-back
(`--to-nas --into` a non-UTF-8 name) and `nfsj export` (read with our client)
give the names, contents and targets of the truth at T; `nfsj history` and
`nfsj cat` take such a path as a command-line argument.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from e2e.proxy_fixture import read_log
from e2e.test_export import (ExportProcess, Stack, check_same, proxy_newest_after,  # noqa: F401
                             run_baseline, stack, wait_until_proven)
from e2e.treecompare import snapshot
from logstore.record import Op
from nfsproxy.nas.client import NfsClient, created_fh
from nfsproxy.wire.nfs3 import Ftype3

pytestmark = [pytest.mark.ganesha, pytest.mark.timeout(900)]

MACHINE = b"host-\xe9\xff\\\n"                 # AUTH_SYS machine name, not UTF-8
TOP = b"caf\xe9"                                # a directory, Latin-1
NAMES = [b"caf\xe9", b"N" * 255, b"new\nline", b"back\\slash", b"-leading-dash",
         b"\xff\xfe\x80", b"\xed\xa0\x80", "plain ✓".encode()]
TARGET = b"../\xe9t\xe9/\xff\nnot utf-8"          # a symlink target, not UTF-8
DIRECT = b"direct-\xe9"                         # made on the NAS, met by the proxy in READDIRPLUS
DIRECT_NAMES = [b"pre-\xe9xisting", b"-\\\n\xfe"]
AFTER = b"after-\xe9\n"
INTO = b"restored-\xe9"


def run(*args: bytes | str, timeout_s: float = 300) -> subprocess.CompletedProcess:
    """`nfsj ARGS` with arguments as raw bytes, the way a shell passes $'caf\\xe9'."""
    return subprocess.run([sys.executable, "-m", "nfsproxy", *args], capture_output=True,
                          timeout=timeout_s)


def ok(done: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert done.returncode == 0, (f"exit {done.returncode}\n{done.stdout.decode(errors='replace')}\n"
                                  f"{done.stderr.decode(errors='replace')}")
    return done


def client_of(port: int, *, machine_name: bytes = MACHINE) -> NfsClient:
    c = NfsClient("127.0.0.1", port, port, "/export", machine_name=machine_name, timeout_s=30)
    c.mount()
    return c


def content(name: bytes, phase: bytes) -> bytes:
    return phase + b":" + name * 3


def listing(c: NfsClient, dir_fh: bytes) -> dict[bytes, bytes]:
    """name -> handle, by READDIRPLUS."""
    return {e.name: e.name_handle for e in c.readdirplus(dir_fh)}


def make_on_the_nas(nas) -> None:
    """Names the proxy has never seen (its first sight of them is a READDIRPLUS reply)."""
    with NfsClient("127.0.0.1", nas.nfs_port, nas.mount_port, "/export", timeout_s=30) as c:
        c.mount()
        d = created_fh(c, c.mkdir(c.root, DIRECT, 0o755), c.root, DIRECT)
        for name in DIRECT_NAMES:
            fh = created_fh(c, c.create(d, name, 0o644), d, name)
            c.write_all(fh, content(name, b"direct"))


def make_before_baseline(c: NfsClient) -> None:
    top = created_fh(c, c.mkdir(c.root, TOP, 0o755), c.root, TOP)
    for name in NAMES:
        fh = created_fh(c, c.create(top, name, 0o644), top, name)
        c.write_all(fh, content(name, b"before"))
    sub = created_fh(c, c.mkdir(top, b"sub\n\xe9", 0o750), top, b"sub\n\xe9")
    c.mkdir(sub, b"-d\\", 0o700)
    c.symlink(top, b"link-\xe9", TARGET)
    c.symlink(top, b"L" * 255, b"caf\xe9")


def make_after_baseline(c: NfsClient) -> None:
    """Changes the journal must replay on top of the baseline."""
    top = c.lookup(c.root, TOP).object
    after = created_fh(c, c.mkdir(c.root, AFTER, 0o755), c.root, AFTER)
    for name in NAMES:
        fh = created_fh(c, c.create(after, name, 0o600), after, name)
        c.write_all(fh, content(name, b"after"))
    c.symlink(after, b"-s\\\xfe", b"\xfe\xff")
    c.rename(top, b"back\\slash", after, b"renamed-\xe9\\")
    c.link(c.lookup(top, b"caf\xe9").object, after, b"hard-\xe9")
    c.remove(top, b"\xff\xfe\x80")
    c.mkdir(c.lookup(top, b"sub\n\xe9").object, b"-d\xe9", 0o700)


def make_after_t(c: NfsClient) -> None:
    """Changes after T, which no view of T may show."""
    top = c.lookup(c.root, TOP).object
    c.remove(top, NAMES[1])
    c.create(top, b"later-\xe9", 0o644)


def bytes_tree(root: Path) -> dict[bytes, tuple]:
    """Every path below `root` as bytes, with its type and its content or target,
    read with bytes paths (nothing is decoded)."""
    out: dict[bytes, tuple] = {}
    stack = [b""]
    base = os.fsencode(root)
    while stack:
        rel = stack.pop()
        for name in os.listdir(base + b"/" + rel if rel else base):
            child = rel + b"/" + name if rel else name
            path = base + b"/" + child
            if os.path.islink(path):
                out[child] = ("lnk", os.readlink(path))
            elif os.path.isdir(path):
                out[child] = ("dir", None)
                stack.append(child)
            else:
                with open(path, "rb") as f:
                    out[child] = ("reg", f.read())
    return out


def export_tree(c: NfsClient) -> dict[bytes, tuple]:
    """What `bytes_tree` gives, read over NFS (READDIRPLUS, READ, READLINK)."""
    out: dict[bytes, tuple] = {}
    stack = [(b"", c.root)]
    while stack:
        rel, fh = stack.pop()
        for e in c.readdirplus(fh):
            child = rel + b"/" + e.name if rel else e.name
            kind = e.name_attributes.type
            if kind is Ftype3.NF3DIR:
                out[child] = ("dir", None)
                stack.append((child, e.name_handle))
            elif kind is Ftype3.NF3LNK:
                out[child] = ("lnk", c.readlink(e.name_handle).data)
            else:
                out[child] = ("reg", c.read_all(e.name_handle))
    return out


def test_byte_names_are_relayed_journaled_and_restored_exactly(stack: Stack, tmp_path: Path):
    nas, proxy = stack.nas, stack.proxy
    make_on_the_nas(nas)
    with client_of(proxy.port) as c:
        make_before_baseline(c)
        # Listed through the proxy: the names come back exactly, and the
        # connection (hard-mount clients would retry forever) stays up.
        top = c.lookup(c.root, TOP).object
        assert set(listing(c, top)) == {*NAMES, b"sub\n\xe9", b"link-\xe9", b"L" * 255}
        direct = c.lookup(c.root, DIRECT).object
        assert set(listing(c, direct)) == set(DIRECT_NAMES)
        assert TOP in listing(c, c.root)
        assert c.readlink(c.lookup(top, b"link-\xe9").object).data == TARGET
    run_baseline(stack)
    with client_of(proxy.port) as c:
        make_after_baseline(c)
    at = proxy_newest_after(proxy, time.time_ns())
    truth = snapshot(nas.export_dir)
    truth_bytes = bytes_tree(nas.export_dir)
    assert b"caf\xe9/" + b"N" * 255 in truth_bytes and AFTER + b"/renamed-\xe9\\" in truth_bytes
    with client_of(proxy.port) as c:
        make_after_t(c)
    wait_until_proven(stack, at)

    # Restore to a directory: the truth at T, byte for byte.
    dest = tmp_path / "restored"
    ok(run("restore", "--at", str(at), "--to", str(dest), "--quiet", *stack.shard_args))
    check_same(truth, snapshot(dest), "restore --to")
    assert bytes_tree(dest) == truth_bytes

    # One subtree, named by a path that is not UTF-8 on the command line.
    one = tmp_path / "one"
    ok(run("restore", "--at", str(at), "--to", str(one), "--path", AFTER, "--quiet",
           *stack.shard_args))
    assert bytes_tree(one) == {k[len(AFTER) + 1:]: v for k, v in truth_bytes.items()
                               if k.startswith(AFTER + b"/")}

    # Push-back into a new subdirectory whose own name is not UTF-8.
    ok(run("restore", "--at", str(at), "--to-nas", "--nas", proxy.backend, "--into", INTO,
           "--quiet", *stack.shard_args))
    pushed = nas.export_dir / os.fsdecode(INTO)
    check_same(truth, snapshot(pushed), "push-back")
    assert bytes_tree(pushed) == truth_bytes

    # The read-only export of T, read with our client.
    export = ExportProcess(str(at), stack.shard_args, tmp_path / "export.stderr")
    try:
        with client_of(export.port) as c:
            assert export_tree(c) == truth_bytes
            assert c.lookup(c.lookup(c.root, TOP).object, NAMES[1]).object
    finally:
        assert export.stop() == 0, export.stderr_text()

    # `cat` and `history` of paths given as raw bytes.
    path = TOP + b"/new\nline"
    assert ok(run("cat", "--at", str(at), path, *stack.shard_args)).stdout == \
        content(b"new\nline", b"before")
    done = ok(run("history", AFTER + b"/caf\xe9", "--json", *stack.shard_args))
    entries = [json.loads(line) for line in done.stdout.decode().splitlines()]
    ops = [e["op"] for e in entries]
    assert "CREATE" in ops and "WRITE" in ops, entries
    create = next(e for e in entries if e["op"] == "CREATE")
    # Shown escaped (never lossy): \xe9 for the byte, \n and \\ for the others.
    assert create["details"] == "/after-\\xe9\\n/caf\\xe9", create
    done = ok(run("history", TOP + b"/link-\xe9", *stack.shard_args))
    assert "-> ../\\xe9t\\xe9/\\xff\\nnot utf-8" in done.stdout.decode()

    # The LOG holds the exact bytes: names, targets, machine names, bindings.
    assert proxy.stop() == 0, proxy.stderr_text()  # the LOG is locked while it runs
    records = [r for _, r in read_log(proxy.log_dir)]
    created = {r.name for r in records if r.op == Op.CREATE and r.ok}
    assert set(NAMES) <= created
    assert {r.machine_name for r in records if r.op == Op.CREATE} == {MACHINE}
    assert TARGET in {r.symlink_target for r in records if r.op == Op.SYMLINK}
    assert (b"back\\slash", b"renamed-\xe9\\") in {(r.name, r.to_name) for r in records
                                                   if r.op == Op.RENAME}
    assert set(DIRECT_NAMES) <= {r.name for r in records if r.op == Op.BIND}
    assert set(NAMES) - {b"back\\slash", b"\xff\xfe\x80"} <= {
        r.name for r in records if r.op == Op.BASELINE}
