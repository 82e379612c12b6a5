"""recoveryd.tree: the namespace rebuilt from records (sans-IO, hand-made records)."""

from __future__ import annotations

import itertools

import pytest

from logstore.pb.journal_pb2 import Attr, Op, Record
from logstore.stamp import Stamp
from recoveryd.tree import DIR, FIFO, LNK, REG, Tree

ROOT = b"fh-root"
BASELINE = Stamp(1000, 0, 1).to_bytes()


class Feed:
    """Builds records with increasing stamps and applies them to a tree."""

    def __init__(self, tree: Tree | None = None) -> None:
        self.tree = tree or Tree()
        self._wall = itertools.count(2000)

    def stamp(self) -> bytes:
        return Stamp(next(self._wall), 0, 1).to_bytes()

    def __call__(self, op: int, ok: bool = True, **fields) -> Record:
        attrs = {k: fields.pop(k) for k in ("attr", "dir_attr", "to_dir_attr") if k in fields}
        record = Record(stamp=self.stamp(), op=op, ok=ok, **fields)
        for name, value in attrs.items():
            getattr(record, name).CopyFrom(value)
        self.tree.apply(record)
        return record

    def baseline_root(self, **kw) -> None:
        self(Op.BASELINE, fh=ROOT, baseline_id=BASELINE, baseline_first=True,
             attr=Attr(type=DIR, mode=0o755, **kw))

    def piece(self, fh: bytes, dir_fh: bytes, name: str, type_: int = REG, first: bool = True,
              **kw) -> None:
        self(Op.BASELINE, fh=fh, dir_fh=dir_fh, name=name, baseline_id=BASELINE,
             baseline_first=first, attr=Attr(type=type_, **kw))


@pytest.fixture
def feed() -> Feed:
    f = Feed()
    f.baseline_root()
    return f


def names(tree: Tree, fh: bytes = ROOT) -> dict[str, bytes]:
    return dict(tree.nodes[fh].entries)


def paths(tree: Tree) -> list[str]:
    return [rel for rel, _, _ in tree.walk()]


# -- baseline ----------------------------------------------------------------------


def test_baseline_builds_the_tree(feed):
    feed.piece(b"d", ROOT, "dir", DIR, mode=0o750)
    feed.piece(b"f", b"d", "file", REG, mode=0o640, size=5)
    feed.piece(b"l", ROOT, "link", LNK)
    t = feed.tree
    assert t.root == ROOT
    assert t.lookup("") == t.lookup("/") == ROOT
    assert t.lookup("dir/file") == t.lookup("/dir//file") == b"f"
    assert t.lookup("dir/missing") is None and t.lookup("dir/file/x") is None
    assert paths(t) == ["", "dir", "dir/file", "link"]
    assert t.nodes[b"f"].attr.mode == 0o640 and t.nodes[b"f"].type == REG
    assert t.nodes[b"d"].type == DIR
    assert t.paths_of(b"f") == ["dir/file"]
    assert t.paths_of(ROOT) == [""]


def test_baseline_symlink_target_and_content_pieces(feed):
    feed(Op.BASELINE, fh=b"l", dir_fh=ROOT, name="l", baseline_id=BASELINE, baseline_first=True,
         symlink_target="../there", attr=Attr(type=LNK))
    feed.piece(b"f", ROOT, "f", REG, size=3 << 20)
    # Content pieces after the first: no binding, not the root.
    feed(Op.BASELINE, fh=b"f", baseline_id=BASELINE, offset=1 << 20, attr=Attr(type=REG, size=3 << 20))
    assert feed.tree.root == ROOT
    assert feed.tree.nodes[b"l"].symlink_target == "../there"
    assert names(feed.tree) == {"l": b"l", "f": b"f"}


def test_baseline_first_starts_the_object_afresh(feed):
    feed.piece(b"d", ROOT, "d", DIR)
    feed(Op.CREATE, fh=b"x", dir_fh=b"d", name="x", attr=Attr(type=REG))
    feed(Op.CREATE, fh=b"y", dir_fh=b"d", name="y", attr=Attr(type=REG))
    # The baseline reaches d (again): its entries reset, then its listing comes as pieces.
    feed.piece(b"d", ROOT, "d", DIR, mode=0o700)
    assert names(feed.tree, b"d") == {}
    feed.piece(b"y", b"d", "y")
    assert names(feed.tree, b"d") == {"y": b"y"}
    assert feed.tree.nodes[b"d"].attr.mode == 0o700


def test_baseline_second_name_is_a_hard_link(feed):
    feed.piece(b"f", ROOT, "a")
    feed.piece(b"f", ROOT, "b", first=False)
    assert feed.tree.paths_of(b"f") == ["a", "b"]
    assert feed.tree.link_count(b"f") == 2


def test_pieces_of_another_baseline_are_ignored():
    f = Feed(Tree(baseline_id=BASELINE))
    f.baseline_root()
    f.piece(b"d", ROOT, "d", DIR)
    f(Op.CREATE, fh=b"x", dir_fh=b"d", name="x")
    other = Stamp(5000, 0, 1).to_bytes()
    f(Op.BASELINE, fh=b"d", dir_fh=ROOT, name="d", baseline_id=other, baseline_first=True,
      attr=Attr(type=DIR))
    assert names(f.tree, b"d") == {"x": b"x"}


# -- namespace ops ----------------------------------------------------------------------


def test_create_kinds(feed):
    feed(Op.MKDIR, fh=b"d", dir_fh=ROOT, name="d", attr=Attr(type=DIR, mode=0o711))
    feed(Op.CREATE, fh=b"f", dir_fh=b"d", name="f", attr=Attr(type=REG, mode=0o600))
    feed(Op.SYMLINK, fh=b"l", dir_fh=b"d", name="l", symlink_target="f")
    feed(Op.MKNOD, fh=b"p", dir_fh=b"d", name="p", mknod_type=FIFO)
    feed(Op.MKNOD, fh=b"c", dir_fh=b"d", name="c", mknod_type=4, rdev_major=1, rdev_minor=3)
    t = feed.tree
    assert paths(t) == ["", "d", "d/c", "d/f", "d/l", "d/p"]
    assert [t.nodes[x].type for x in (b"d", b"f", b"l", b"p", b"c")] == [DIR, REG, LNK, FIFO, 4]
    assert t.nodes[b"l"].symlink_target == "f"
    assert t.nodes[b"c"].rdev == (1, 3)
    assert t.nodes[b"d"].attr.mode == 0o711


def test_create_without_a_handle_binds_nothing(feed):
    feed(Op.CREATE, dir_fh=ROOT, name="f")
    assert names(feed.tree) == {}


def test_unchecked_create_of_an_existing_file_keeps_it(feed):
    feed(Op.CREATE, fh=b"f", dir_fh=ROOT, name="f", attr=Attr(type=REG, mode=0o600))
    feed(Op.LINK, fh=b"f", to_dir_fh=ROOT, to_name="g")
    feed(Op.CREATE, fh=b"f", dir_fh=ROOT, name="f", attr=Attr(type=REG, mode=0o600, size=0))
    assert feed.tree.paths_of(b"f") == ["f", "g"]


def test_remove_and_rmdir(feed):
    feed(Op.MKDIR, fh=b"d", dir_fh=ROOT, name="d")
    feed(Op.CREATE, fh=b"f", dir_fh=b"d", name="f")
    feed(Op.REMOVE, dir_fh=b"d", name="f", object_fh=b"f", dir_attr=Attr(type=DIR, mtime_ns=7))
    feed(Op.RMDIR, dir_fh=ROOT, name="d")
    assert names(feed.tree) == {}
    assert feed.tree.lookup("d") is None
    assert feed.tree.paths_of(b"f") == [] and feed.tree.paths_of(b"d") == []
    assert feed.tree.nodes[b"d"].attr.mtime_ns == 7  # dir_attr belongs to dir_fh


def test_remove_of_an_unknown_name_is_harmless(feed):
    feed(Op.REMOVE, dir_fh=ROOT, name="never-seen")
    feed(Op.REMOVE, dir_fh=b"unknown-dir", name="x")
    assert names(feed.tree) == {}


def test_rename_within_a_directory(feed):
    feed(Op.CREATE, fh=b"f", dir_fh=ROOT, name="a")
    feed(Op.RENAME, dir_fh=ROOT, name="a", to_dir_fh=ROOT, to_name="b")
    assert names(feed.tree) == {"b": b"f"}


def test_rename_across_directories_moves_the_subtree(feed):
    feed(Op.MKDIR, fh=b"d1", dir_fh=ROOT, name="d1")
    feed(Op.MKDIR, fh=b"d2", dir_fh=ROOT, name="d2")
    feed(Op.MKDIR, fh=b"sub", dir_fh=b"d1", name="sub")
    feed(Op.CREATE, fh=b"f", dir_fh=b"sub", name="f")
    feed(Op.RENAME, dir_fh=b"d1", name="sub", to_dir_fh=b"d2", to_name="moved",
         dir_attr=Attr(type=DIR, mtime_ns=1), to_dir_attr=Attr(type=DIR, mtime_ns=2))
    t = feed.tree
    assert paths(t) == ["", "d1", "d2", "d2/moved", "d2/moved/f"]
    assert t.paths_of(b"f") == ["d2/moved/f"]
    assert t.nodes[b"d1"].attr.mtime_ns == 1 and t.nodes[b"d2"].attr.mtime_ns == 2
    assert t.link_count(b"d1") == 2 and t.link_count(b"d2") == 3


def test_rename_over_an_existing_name_replaces_it(feed):
    feed(Op.CREATE, fh=b"a", dir_fh=ROOT, name="a")
    feed(Op.CREATE, fh=b"victim", dir_fh=ROOT, name="victim")
    feed(Op.RENAME, dir_fh=ROOT, name="a", to_dir_fh=ROOT, to_name="victim")
    t = feed.tree
    assert names(t) == {"victim": b"a"}
    assert t.paths_of(b"victim") == [] and t.link_count(b"victim") == 0


def test_rename_onto_another_name_of_the_same_file_does_nothing(feed):
    feed(Op.CREATE, fh=b"f", dir_fh=ROOT, name="a")
    feed(Op.LINK, fh=b"f", to_dir_fh=ROOT, to_name="b")
    feed(Op.RENAME, dir_fh=ROOT, name="a", to_dir_fh=ROOT, to_name="b")
    assert names(feed.tree) == {"a": b"f", "b": b"f"}


def test_rename_of_an_unknown_name_uses_object_fh(feed):
    feed.piece(b"f", ROOT, "known")  # the tree knows f under another name
    feed(Op.MKDIR, fh=b"d", dir_fh=ROOT, name="d")
    feed(Op.RENAME, dir_fh=b"elsewhere", name="old", to_dir_fh=b"d", to_name="new", object_fh=b"f")
    assert feed.tree.paths_of(b"f") == ["d/new", "known"]


def test_rename_of_an_unknown_object_clears_the_target(feed):
    feed(Op.CREATE, fh=b"t", dir_fh=ROOT, name="target")
    feed(Op.RENAME, dir_fh=b"elsewhere", name="old", to_dir_fh=ROOT, to_name="target")
    assert names(feed.tree) == {}


def test_hard_links_and_link_counts(feed):
    feed(Op.MKDIR, fh=b"d", dir_fh=ROOT, name="d")
    feed(Op.CREATE, fh=b"f", dir_fh=ROOT, name="f")
    feed(Op.LINK, fh=b"f", to_dir_fh=ROOT, to_name="f2", attr=Attr(type=REG, nlink=2))
    feed(Op.LINK, fh=b"f", to_dir_fh=b"d", to_name="f3", attr=Attr(type=REG, nlink=3))
    t = feed.tree
    assert t.link_count(b"f") == 3
    assert t.paths_of(b"f") == ["d/f3", "f", "f2"]
    assert [rel for rel, fh, _ in t.walk() if fh == b"f"] == ["d/f3", "f", "f2"]
    feed(Op.REMOVE, dir_fh=ROOT, name="f2")
    feed(Op.RENAME, dir_fh=b"d", name="f3", to_dir_fh=b"d", to_name="f4")
    assert t.link_count(b"f") == 2
    assert t.paths_of(b"f") == ["d/f4", "f"]
    assert t.link_count(ROOT) == 3  # ., its entry in the parent, d/..


def test_walk_a_subtree(feed):
    feed(Op.MKDIR, fh=b"d", dir_fh=ROOT, name="d")
    feed(Op.MKDIR, fh=b"e", dir_fh=b"d", name="e")
    feed(Op.CREATE, fh=b"f", dir_fh=b"e", name="f")
    feed(Op.CREATE, fh=b"g", dir_fh=ROOT, name="g")
    assert [rel for rel, _, _ in feed.tree.walk(b"d")] == ["", "e", "e/f"]
    assert [rel for rel, _, _ in feed.tree.walk(b"d", prefix="d")] == ["d", "d/e", "d/e/f"]


# -- what does not count -------------------------------------------------------------------


def test_failed_records_change_nothing(feed):
    feed(Op.CREATE, fh=b"f", dir_fh=ROOT, name="f", attr=Attr(type=REG, mode=0o600))
    feed(Op.REMOVE, ok=False, dir_fh=ROOT, name="f", status=13)
    feed(Op.RENAME, ok=False, dir_fh=ROOT, name="f", to_dir_fh=ROOT, to_name="g")
    feed(Op.MKDIR, ok=False, fh=b"d", dir_fh=ROOT, name="d", status=17)
    feed(Op.SETATTR, ok=False, fh=b"f", attr=Attr(type=REG, mode=0o777, ctime_ns=10**18))
    assert names(feed.tree) == {"f": b"f"}
    assert feed.tree.nodes[b"f"].attr.mode == 0o600


def test_bind_records_are_not_applied(feed):
    feed(Op.CREATE, fh=b"f", dir_fh=ROOT, name="f", attr=Attr(type=REG, size=10))
    # A LOOKUP reply stamped after a REMOVE that raced it must not resurrect the name.
    feed(Op.REMOVE, dir_fh=ROOT, name="f")
    feed(Op.BIND, fh=b"f", dir_fh=ROOT, name="f", attr=Attr(type=REG, size=1, ctime_ns=10**18))
    feed(Op.BIND, fh=b"z", dir_fh=ROOT, name="z")
    assert names(feed.tree) == {}
    assert b"z" not in feed.tree
    assert feed.tree.nodes[b"f"].attr.size == 10


# -- attributes -------------------------------------------------------------------------------


def test_the_latest_attributes_win(feed):
    feed(Op.CREATE, fh=b"f", dir_fh=ROOT, name="f", attr=Attr(type=REG, mode=0o600),
         dir_attr=Attr(type=DIR, mode=0o755, mtime_ns=5))
    feed(Op.SETATTR, fh=b"f", attr=Attr(type=REG, mode=0o644))
    feed(Op.WRITE, fh=b"f", attr=Attr(type=REG, mode=0o644, size=9))
    t = feed.tree
    assert (t.nodes[b"f"].attr.mode, t.nodes[b"f"].attr.size) == (0o644, 9)
    assert t.nodes[ROOT].attr.mtime_ns == 5


def test_attributes_follow_the_nas_change_time_before_the_stamp(feed):
    # Two concurrent WRITEs: the later-stamped one was applied first (smaller ctime).
    feed(Op.CREATE, fh=b"f", dir_fh=ROOT, name="f", attr=Attr(type=REG, ctime_ns=100))
    feed(Op.WRITE, fh=b"f", attr=Attr(type=REG, size=200, ctime_ns=300))
    feed(Op.WRITE, fh=b"f", attr=Attr(type=REG, size=100, ctime_ns=200))
    assert feed.tree.nodes[b"f"].attr.size == 200
    feed(Op.SETATTR, fh=b"f", attr=Attr(type=REG, size=200, mode=0o600, ctime_ns=300))
    assert feed.tree.nodes[b"f"].attr.mode == 0o600  # equal ctime: the later stamp wins


def test_records_must_come_in_stamp_order():
    tree = Tree()
    tree.apply(Record(stamp=Stamp(2, 0, 0).to_bytes(), op=Op.BASELINE_BEGIN, ok=True))
    with pytest.raises(ValueError):
        tree.apply(Record(stamp=Stamp(1, 0, 0).to_bytes(), op=Op.BASELINE_END, ok=True))


def test_lookup_without_a_root():
    assert Tree().lookup("x") is None
    assert list(Tree().walk()) == []


def test_names_no_file_system_holds_are_never_bound(feed):
    for bad in ("", ".", "..", "a/b", "../../etc", "nul\0"):
        feed(Op.CREATE, fh=b"f" + bad.encode(), dir_fh=ROOT, name=bad)
        feed.piece(b"p" + bad.encode(), ROOT, bad)
        feed(Op.LINK, fh=b"l", to_dir_fh=ROOT, to_name=bad)
    assert names(feed.tree) == {}
    assert paths(feed.tree) == [""]
