"""`nfsj restore --to-nas`: the tree as it was at T, written back onto the NAS over NFS.

The stack and the tree are test_export.py's (`restorable`): real ganesha,
two shards and the proxy; a tree made partly before and partly after the
baseline, the truth snapshotted at T, more changes after T. Push-back writes
to the NAS itself (`--nas`, the proxy's `--backend` syntax), and the result
is judged from ganesha's export directory, never through the code under
test:

* `--into restored1`: a new subdirectory holding the whole tree as it was at
  T (paths, types, contents, sizes, modes, owners, symlink targets, link
  counts and hard-link groups, mtimes of regular files); nothing else on the
  export changes; the same `--into` again is refused;
* without `--into`: a name deleted or renamed after T comes back in its
  original place; a path that exists is refused with one line, and nothing
  changes; `--path P --into S` puts one subtree beside the live one.
"""

from __future__ import annotations

import shutil

import pytest

from e2e.test_export import Restorable, nfsj, restorable, stack  # noqa: F401  (fixtures)
from e2e.treecompare import Entry, diff, snapshot
from nfsproxy.nas.client import NfsClient
from nfsproxy.nas.pushback import PushbackError, push_to_nas

pytestmark = [pytest.mark.ganesha, pytest.mark.timeout(900)]


def nas_address(r: Restorable) -> str:
    nas = r.stack.nas
    return f"127.0.0.1:{nas.nfs_port}:{nas.mount_port}:/export"


def push(r: Restorable, *args: str):
    return nfsj("restore", "--at", str(r.at), "--to-nas", "--nas", nas_address(r), "--quiet",
                *r.stack.shard_args, *args, timeout_s=300)


def one_line_error(done) -> str:
    assert done.returncode == 2, f"exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("nfsj: error: "), done.stderr
    return lines[0]


def subtree(tree: dict[str, Entry], prefix: str) -> dict[str, Entry]:
    """The entries below `prefix`, re-rooted (prefix itself becomes "")."""
    out = {}
    for rel, e in tree.items():
        if rel == prefix:
            out[""] = e
        elif rel.startswith(prefix + "/"):
            out[rel[len(prefix) + 1:]] = e
    return out


def without(tree: dict[str, Entry], prefix: str) -> dict[str, Entry]:
    return {rel: e for rel, e in tree.items()
            if rel and rel != prefix and not rel.startswith(prefix + "/")}


def test_push_into_a_new_subdirectory_gives_the_tree_at_t(restorable):
    r = restorable
    done = push(r, "--into", "restored1")
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}"
    assert f"delivered cut {r.at} " in done.stderr

    restored_dir = r.stack.nas.export_dir / "restored1"
    restored = snapshot(restored_dir, mtimes=True)
    problems = diff(r.truth, restored, names=("the truth at T", "restored1"))
    assert not problems, "restored1 differs from the truth at T:\n" + "\n".join(problems[:60])
    mtimes = {rel: e.mtime_ns for rel, e in restored.items() if e.type == "reg"}
    assert mtimes == r.truth_mtimes
    assert restored["tree/x/linked-2"].link_group == ("tree/a/linked", "tree/x/linked-2",
                                                      "tree/x/linked-3")
    assert restored["tree/x/pipe"].type == "fifo"
    assert restored["tree/a/b/deep-moved"].uid == 4242

    # Nothing else on the export changed.
    now = snapshot(r.stack.nas.export_dir)
    assert not diff(without(r.later, "restored1"), without(now, "restored1"))

    # A second push into the same name is refused, and changes nothing.
    again = push(r, "--into", "restored1")
    assert "restored1 already exists" in one_line_error(again)
    assert not diff(restored, snapshot(restored_dir, mtimes=True), mtimes=True)


def test_push_back_in_place_restores_what_was_deleted_and_never_overwrites(restorable):
    r = restorable
    export_dir = r.stack.nas.export_dir
    # Deleted, renamed away, and one name of a hard-linked file: all gone after T.
    for path in ("many/f001", "tree/a/one", "tree/x/linked-2"):
        assert not (export_dir / path).exists()
        done = push(r, "--path", path)
        assert done.returncode == 0, f"{path}: {done.stdout}\n{done.stderr}"
        got = snapshot(export_dir / path.rpartition("/")[0])[path.rpartition("/")[2]]
        want = r.truth[path]
        for field in ("type", "mode", "uid", "gid", "size", "sha256"):
            assert getattr(got, field) == getattr(want, field), (path, field)

    # A file whose directories are gone too: they come back with their modes at T.
    done = push(r, "--path", "gone/sub/file")
    assert done.returncode == 0, done.stderr
    back = snapshot(export_dir / "gone")
    for rel, want in subtree(r.truth, "gone").items():
        assert (back[rel].type, back[rel].mode, back[rel].sha256) == \
            (want.type, want.mode, want.sha256), rel

    # Whatever exists is refused, with one line, and nothing changes.
    before = snapshot(export_dir)
    for path in ("tree/a", "many/f000", "big/big.bin"):
        line = one_line_error(push(r, "--path", path))
        assert f"{path} exists on the NAS" in line and "--into" in line
    line = one_line_error(push(r))
    assert "export root" in line and "--into" in line
    assert not diff(before, snapshot(export_dir))

    # A subtree beside the live one.
    done = push(r, "--path", "tree/a", "--into", "tree-a-at-t")
    assert done.returncode == 0, done.stderr
    got = snapshot(export_dir / "tree-a-at-t")
    want = subtree(r.truth, "tree/a")
    strip = lambda t: {k: (e.type, e.mode, e.uid, e.gid, e.size, e.sha256, e.target)  # noqa: E731
                       for k, e in t.items()}
    assert strip(got) == strip(want)


def test_library_push_reports_progress_and_counts(restorable):
    from recoveryd.restore import RestoreClient, Shards
    r = restorable
    nas = r.stack.nas
    calls = []
    with RestoreClient(Shards([s.address for s in r.stack.shards])) as client:
        try:
            cut = client.cut(r.at)
            with NfsClient("127.0.0.1", nas.nfs_port, nas.mount_port, "/export") as nfs:
                result = push_to_nas(client, cut, nfs, path="tree", into="lib-tree",
                                     progress=lambda *a: calls.append(a))
                with pytest.raises(PushbackError, match="did not exist at the cut"):
                    push_to_nas(client, cut, nfs, path="later", into="lib-later")
                with pytest.raises(PushbackError, match="parent .* does not exist"):
                    push_to_nas(client, cut, nfs, path="tree", into="no/such/place")
        finally:
            client.shards.close()
    want = subtree(r.truth, "tree")
    assert result.target == "lib-tree"
    assert result.files == sum(1 for e in want.values() if e.type == "reg") - result.hard_links
    assert result.symlinks == sum(1 for e in want.values() if e.type == "lnk")
    assert result.specials == 1 and result.hard_links >= 1 and not result.skipped
    assert result.dirs == sum(1 for e in want.values() if e.type == "dir") - 1
    assert calls and calls[-1][0] == result.objects


def test_files_filled_over_many_connections_give_the_same_tree(restorable):
    from recoveryd.restore import RestoreClient, Shards
    r = restorable
    nas = r.stack.nas
    opened = []

    def connect():
        opened.append(NfsClient("127.0.0.1", nas.nfs_port, nas.mount_port, "/export"))
        return opened[-1]

    with RestoreClient(Shards([s.address for s in r.stack.shards])) as client:
        try:
            cut = client.cut(r.at)
            with NfsClient("127.0.0.1", nas.nfs_port, nas.mount_port, "/export") as nfs:
                result = push_to_nas(client, cut, nfs, into="many-fillers", connect=connect, fillers=3)
        finally:
            client.shards.close()
    assert 1 < len(opened) <= 3
    pushed = snapshot(nas.export_dir / "many-fillers", mtimes=True)
    assert not diff(r.truth, pushed, names=("the truth at T", "pushed"))
    assert {rel: e.mtime_ns for rel, e in pushed.items() if e.type == "reg"} == r.truth_mtimes
    assert result.files == sum(1 for e in r.truth.values() if e.type == "reg") - result.hard_links


def test_contents_stream_ahead_of_the_fillers_in_bounded_fills(restorable, monkeypatch):
    """The files' contents come in bulk fills of at most FILL_BYTES, at most
    READ_AHEAD_BYTES ahead of what is written, and are dropped from the read
    cache once written: the fillers find them there, not fetched alone."""
    from e2e.test_restore import CallCounting
    from nfsproxy.nas import pushback
    from recoveryd.restore import RestoreClient
    r = restorable
    nas = r.stack.nas
    biggest = max(e.size for e in r.truth.values() if e.type == "reg")
    monkeypatch.setattr(pushback, "FILL_BYTES", 64 << 10)   # tens of the small files a fill
    monkeypatch.setattr(pushback, "READ_AHEAD_BYTES", 2 * biggest)
    with CallCounting([s.address for s in r.stack.shards]) as shards, RestoreClient(shards) as client:
        cut = client.cut(r.at)
        with NfsClient("127.0.0.1", nas.nfs_port, nas.mount_port, "/export") as nfs:
            result = push_to_nas(client, cut, nfs, into="read-ahead", fillers=3,
                                 connect=lambda: NfsClient("127.0.0.1", nas.nfs_port, nas.mount_port,
                                                           "/export"))
        held = client._cache._cache_used   # noqa: SLF001  what the push left in the read cache
    pushed = snapshot(nas.export_dir / "read-ahead", mtimes=True)
    assert not diff(r.truth, pushed, names=("the truth at T", "pushed"))
    fills = [c for c in shards.calls if c == "FilesRecordChunks"]
    alone = [who for c, who in zip(shards.calls, shards.callers)
             if c == "FileRecordChunks" and who.startswith("nfsj-push-fill")]
    assert len(fills) >= 2 * len(r.stack.shards), shards.calls     # several fills, not one
    assert len(alone) <= len(r.stack.shards) * max(1, result.files // 10), alone
    assert held == 0


def test_push_prints_plain_progress_lines_when_not_on_a_terminal(restorable, monkeypatch):
    r = restorable
    monkeypatch.setenv("NFSJ_PROGRESS_INTERVAL", "0")  # a line at every step
    target = r.stack.nas.export_dir / "restored-progress"
    try:
        done = nfsj("restore", "--at", str(r.at), "--to-nas", "--nas", nas_address(r),
                    "--into", "restored-progress", *r.stack.shard_args, timeout_s=300)
        assert done.returncode == 0, done.stderr
        lines = done.stderr.splitlines()
        assert any(line.startswith("push: ") and " objects" in line for line in lines), done.stderr
        assert "\r" not in done.stderr and "\x1b" not in done.stderr
        final = [line for line in lines if line.startswith("push: done: ")]
        assert len(final) == 1 and " objects (" in final[0] and "onto 127.0.0.1:" in final[0], done.stderr
        assert not diff(r.truth, snapshot(target, mtimes=True), names=("the truth at T", "pushed"))
    finally:
        shutil.rmtree(target, ignore_errors=True)


class CountingNfs(NfsClient):
    """An NfsClient that counts its COMMITs and the stability of its WRITEs."""

    def __init__(self, *args, counts: dict, **kwargs):
        super().__init__(*args, **kwargs)
        self.counts = counts

    def write(self, fh, offset, data, stable, *args, **kwargs):
        self.counts[stable.name] = self.counts.get(stable.name, 0) + 1
        return super().write(fh, offset, data, stable, *args, **kwargs)

    def commit(self, *args, **kwargs):
        self.counts["COMMIT"] = self.counts.get("COMMIT", 0) + 1
        return super().commit(*args, **kwargs)


def test_a_file_of_one_write_is_pushed_file_sync_without_a_commit(restorable):
    # Most files of a tree are smaller than one WRITE: each is written
    # FILE_SYNC, and no COMMIT round trip follows. Larger files keep
    # UNSTABLE WRITEs and one COMMIT each.
    from recoveryd.restore import RestoreClient, Shards
    r = restorable
    nas = r.stack.nas
    counts: dict = {}

    def connect():
        return CountingNfs("127.0.0.1", nas.nfs_port, nas.mount_port, "/export", counts=counts)

    with RestoreClient(Shards([s.address for s in r.stack.shards])) as client:
        try:
            cut = client.cut(r.at)
            with connect() as nfs:
                push_to_nas(client, cut, nfs, into="file-sync", connect=connect, fillers=2)
        finally:
            client.shards.close()
    pushed = snapshot(nas.export_dir / "file-sync", mtimes=True)
    assert not diff(r.truth, pushed, names=("the truth at T", "pushed"))
    files = [e for e in r.truth.values() if e.type == "reg"]
    small = sum(1 for e in files if e.nlink == 1 and 0 < e.size < (1 << 20))   # one name: one write
    large = sum(1 for e in files if e.size >= (1 << 20))
    assert small and counts.get("FILE_SYNC", 0) >= small, counts
    assert counts.get("COMMIT", 0) <= large, counts
