"""recoveryd.tree: the namespace rebuilt from records (sans-IO, hand-made records)."""

from __future__ import annotations

import itertools

import pytest

from logstore.pb.journal_pb2 import Attr, Op, Record
from logstore.stamp import Stamp
from recoveryd.tree import DIR, FIFO, LNK, REG, Tree, show_name

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

    def piece(self, fh: bytes, dir_fh: bytes, name: bytes, type_: int = REG, first: bool = True,
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
    feed.piece(b"d", ROOT, b"dir", DIR, mode=0o750)
    feed.piece(b"f", b"d", b"file", REG, mode=0o640, size=5)
    feed.piece(b"l", ROOT, b"link", LNK)
    t = feed.tree
    assert t.root == ROOT
    assert t.lookup("") == t.lookup("/") == ROOT
    assert t.lookup("dir/file") == t.lookup("/dir//file") == b"f"
    assert t.lookup("dir/missing") is None and t.lookup("dir/file/x") is None
    assert paths(t) == [b"", b"dir", b"dir/file", b"link"]
    assert t.nodes[b"f"].attr.mode == 0o640 and t.nodes[b"f"].type == REG
    assert t.nodes[b"d"].type == DIR
    assert t.paths_of(b"f") == [b"dir/file"]
    assert t.paths_of(ROOT) == [b""]


def test_baseline_symlink_target_and_content_pieces(feed):
    feed(Op.BASELINE, fh=b"l", dir_fh=ROOT, name=b"l", baseline_id=BASELINE, baseline_first=True,
         symlink_target=b"../there", attr=Attr(type=LNK))
    feed.piece(b"f", ROOT, b"f", REG, size=3 << 20)
    # Content pieces after the first: no binding, not the root.
    feed(Op.BASELINE, fh=b"f", baseline_id=BASELINE, offset=1 << 20, attr=Attr(type=REG, size=3 << 20))
    assert feed.tree.root == ROOT
    assert feed.tree.nodes[b"l"].symlink_target == b"../there"
    assert names(feed.tree) == {b"l": b"l", b"f": b"f"}


def test_baseline_first_starts_the_object_afresh(feed):
    feed.piece(b"d", ROOT, b"d", DIR)
    feed(Op.CREATE, fh=b"x", dir_fh=b"d", name=b"x", attr=Attr(type=REG))
    feed(Op.CREATE, fh=b"y", dir_fh=b"d", name=b"y", attr=Attr(type=REG))
    # The baseline reaches d (again): its entries reset, then its listing comes as pieces.
    feed.piece(b"d", ROOT, b"d", DIR, mode=0o700)
    assert names(feed.tree, b"d") == {}
    feed.piece(b"y", b"d", b"y")
    assert names(feed.tree, b"d") == {b"y": b"y"}
    assert feed.tree.nodes[b"d"].attr.mode == 0o700


def test_baseline_second_name_is_a_hard_link(feed):
    feed.piece(b"f", ROOT, b"a")
    feed.piece(b"f", ROOT, b"b", first=False)
    assert feed.tree.paths_of(b"f") == [b"a", b"b"]
    assert feed.tree.link_count(b"f") == 2


def test_pieces_of_another_baseline_are_ignored():
    f = Feed(Tree(baseline_id=BASELINE))
    f.baseline_root()
    f.piece(b"d", ROOT, b"d", DIR)
    f(Op.CREATE, fh=b"x", dir_fh=b"d", name=b"x")
    other = Stamp(5000, 0, 1).to_bytes()
    f(Op.BASELINE, fh=b"d", dir_fh=ROOT, name=b"d", baseline_id=other, baseline_first=True,
      attr=Attr(type=DIR))
    assert names(f.tree, b"d") == {b"x": b"x"}


# -- namespace ops ----------------------------------------------------------------------


def test_create_kinds(feed):
    feed(Op.MKDIR, fh=b"d", dir_fh=ROOT, name=b"d", attr=Attr(type=DIR, mode=0o711))
    feed(Op.CREATE, fh=b"f", dir_fh=b"d", name=b"f", attr=Attr(type=REG, mode=0o600))
    feed(Op.SYMLINK, fh=b"l", dir_fh=b"d", name=b"l", symlink_target=b"f")
    feed(Op.MKNOD, fh=b"p", dir_fh=b"d", name=b"p", mknod_type=FIFO)
    feed(Op.MKNOD, fh=b"c", dir_fh=b"d", name=b"c", mknod_type=4, rdev_major=1, rdev_minor=3)
    t = feed.tree
    assert paths(t) == [b"", b"d", b"d/c", b"d/f", b"d/l", b"d/p"]
    assert [t.nodes[x].type for x in (b"d", b"f", b"l", b"p", b"c")] == [DIR, REG, LNK, FIFO, 4]
    assert t.nodes[b"l"].symlink_target == b"f"
    assert t.nodes[b"c"].rdev == (1, 3)
    assert t.nodes[b"d"].attr.mode == 0o711


def test_create_without_a_handle_binds_nothing(feed):
    feed(Op.CREATE, dir_fh=ROOT, name=b"f")
    assert names(feed.tree) == {}


def test_unchecked_create_of_an_existing_file_keeps_it(feed):
    feed(Op.CREATE, fh=b"f", dir_fh=ROOT, name=b"f", attr=Attr(type=REG, mode=0o600))
    feed(Op.LINK, fh=b"f", to_dir_fh=ROOT, to_name=b"g")
    feed(Op.CREATE, fh=b"f", dir_fh=ROOT, name=b"f", attr=Attr(type=REG, mode=0o600, size=0))
    assert feed.tree.paths_of(b"f") == [b"f", b"g"]


def test_remove_and_rmdir(feed):
    feed(Op.MKDIR, fh=b"d", dir_fh=ROOT, name=b"d")
    feed(Op.CREATE, fh=b"f", dir_fh=b"d", name=b"f")
    feed(Op.REMOVE, dir_fh=b"d", name=b"f", object_fh=b"f", dir_attr=Attr(type=DIR, mtime_ns=7))
    feed(Op.RMDIR, dir_fh=ROOT, name=b"d")
    assert names(feed.tree) == {}
    assert feed.tree.lookup("d") is None
    assert feed.tree.paths_of(b"f") == [] and feed.tree.paths_of(b"d") == []
    assert feed.tree.nodes[b"d"].attr.mtime_ns == 7  # dir_attr belongs to dir_fh


def test_remove_of_an_unknown_name_is_harmless(feed):
    feed(Op.REMOVE, dir_fh=ROOT, name=b"never-seen")
    feed(Op.REMOVE, dir_fh=b"unknown-dir", name=b"x")
    assert names(feed.tree) == {}


def test_rename_within_a_directory(feed):
    feed(Op.CREATE, fh=b"f", dir_fh=ROOT, name=b"a")
    feed(Op.RENAME, dir_fh=ROOT, name=b"a", to_dir_fh=ROOT, to_name=b"b")
    assert names(feed.tree) == {b"b": b"f"}


def test_rename_across_directories_moves_the_subtree(feed):
    feed(Op.MKDIR, fh=b"d1", dir_fh=ROOT, name=b"d1")
    feed(Op.MKDIR, fh=b"d2", dir_fh=ROOT, name=b"d2")
    feed(Op.MKDIR, fh=b"sub", dir_fh=b"d1", name=b"sub")
    feed(Op.CREATE, fh=b"f", dir_fh=b"sub", name=b"f")
    feed(Op.RENAME, dir_fh=b"d1", name=b"sub", to_dir_fh=b"d2", to_name=b"moved",
         dir_attr=Attr(type=DIR, mtime_ns=1), to_dir_attr=Attr(type=DIR, mtime_ns=2))
    t = feed.tree
    assert paths(t) == [b"", b"d1", b"d2", b"d2/moved", b"d2/moved/f"]
    assert t.paths_of(b"f") == [b"d2/moved/f"]
    assert t.nodes[b"d1"].attr.mtime_ns == 1 and t.nodes[b"d2"].attr.mtime_ns == 2
    assert t.link_count(b"d1") == 2 and t.link_count(b"d2") == 3


def test_rename_over_an_existing_name_replaces_it(feed):
    feed(Op.CREATE, fh=b"a", dir_fh=ROOT, name=b"a")
    feed(Op.CREATE, fh=b"victim", dir_fh=ROOT, name=b"victim")
    feed(Op.RENAME, dir_fh=ROOT, name=b"a", to_dir_fh=ROOT, to_name=b"victim")
    t = feed.tree
    assert names(t) == {b"victim": b"a"}
    assert t.paths_of(b"victim") == [] and t.link_count(b"victim") == 0


def test_rename_onto_another_name_of_the_same_file_does_nothing(feed):
    feed(Op.CREATE, fh=b"f", dir_fh=ROOT, name=b"a")
    feed(Op.LINK, fh=b"f", to_dir_fh=ROOT, to_name=b"b")
    feed(Op.RENAME, dir_fh=ROOT, name=b"a", to_dir_fh=ROOT, to_name=b"b")
    assert names(feed.tree) == {b"a": b"f", b"b": b"f"}


def test_rename_of_an_unknown_name_uses_object_fh(feed):
    feed.piece(b"f", ROOT, b"known")  # the tree knows f under another name
    feed(Op.MKDIR, fh=b"d", dir_fh=ROOT, name=b"d")
    feed(Op.RENAME, dir_fh=b"elsewhere", name=b"old", to_dir_fh=b"d", to_name=b"new", object_fh=b"f")
    assert feed.tree.paths_of(b"f") == [b"d/new", b"known"]


def test_rename_of_an_unknown_object_clears_the_target(feed):
    feed(Op.CREATE, fh=b"t", dir_fh=ROOT, name=b"target")
    feed(Op.RENAME, dir_fh=b"elsewhere", name=b"old", to_dir_fh=ROOT, to_name=b"target")
    assert names(feed.tree) == {}


def test_hard_links_and_link_counts(feed):
    feed(Op.MKDIR, fh=b"d", dir_fh=ROOT, name=b"d")
    feed(Op.CREATE, fh=b"f", dir_fh=ROOT, name=b"f")
    feed(Op.LINK, fh=b"f", to_dir_fh=ROOT, to_name=b"f2", attr=Attr(type=REG, nlink=2))
    feed(Op.LINK, fh=b"f", to_dir_fh=b"d", to_name=b"f3", attr=Attr(type=REG, nlink=3))
    t = feed.tree
    assert t.link_count(b"f") == 3
    assert t.paths_of(b"f") == [b"d/f3", b"f", b"f2"]
    assert [rel for rel, fh, _ in t.walk() if fh == b"f"] == [b"d/f3", b"f", b"f2"]
    feed(Op.REMOVE, dir_fh=ROOT, name=b"f2")
    feed(Op.RENAME, dir_fh=b"d", name=b"f3", to_dir_fh=b"d", to_name=b"f4")
    assert t.link_count(b"f") == 2
    assert t.paths_of(b"f") == [b"d/f4", b"f"]
    assert t.link_count(ROOT) == 3  # ., its entry in the parent, d/..


def test_walk_a_subtree(feed):
    feed(Op.MKDIR, fh=b"d", dir_fh=ROOT, name=b"d")
    feed(Op.MKDIR, fh=b"e", dir_fh=b"d", name=b"e")
    feed(Op.CREATE, fh=b"f", dir_fh=b"e", name=b"f")
    feed(Op.CREATE, fh=b"g", dir_fh=ROOT, name=b"g")
    assert [rel for rel, _, _ in feed.tree.walk(b"d")] == [b"", b"e", b"e/f"]
    assert [rel for rel, _, _ in feed.tree.walk(b"d", prefix=b"d")] == [b"d", b"d/e", b"d/e/f"]


# -- what does not count -------------------------------------------------------------------


def test_failed_records_change_nothing(feed):
    feed(Op.CREATE, fh=b"f", dir_fh=ROOT, name=b"f", attr=Attr(type=REG, mode=0o600))
    feed(Op.REMOVE, ok=False, dir_fh=ROOT, name=b"f", status=13)
    feed(Op.RENAME, ok=False, dir_fh=ROOT, name=b"f", to_dir_fh=ROOT, to_name=b"g")
    feed(Op.MKDIR, ok=False, fh=b"d", dir_fh=ROOT, name=b"d", status=17)
    feed(Op.SETATTR, ok=False, fh=b"f", attr=Attr(type=REG, mode=0o777, ctime_ns=10**18))
    assert names(feed.tree) == {b"f": b"f"}
    assert feed.tree.nodes[b"f"].attr.mode == 0o600


def test_bind_records_are_not_applied(feed):
    feed(Op.CREATE, fh=b"f", dir_fh=ROOT, name=b"f", attr=Attr(type=REG, size=10))
    # A LOOKUP reply stamped after a REMOVE that raced it must not resurrect the name.
    feed(Op.REMOVE, dir_fh=ROOT, name=b"f")
    feed(Op.BIND, fh=b"f", dir_fh=ROOT, name=b"f", attr=Attr(type=REG, size=1, ctime_ns=10**18))
    feed(Op.BIND, fh=b"z", dir_fh=ROOT, name=b"z")
    assert names(feed.tree) == {}
    assert b"z" not in feed.tree
    assert feed.tree.nodes[b"f"].attr.size == 10


# -- attributes -------------------------------------------------------------------------------


def test_the_latest_attributes_win(feed):
    feed(Op.CREATE, fh=b"f", dir_fh=ROOT, name=b"f", attr=Attr(type=REG, mode=0o600),
         dir_attr=Attr(type=DIR, mode=0o755, mtime_ns=5))
    feed(Op.SETATTR, fh=b"f", attr=Attr(type=REG, mode=0o644))
    feed(Op.WRITE, fh=b"f", attr=Attr(type=REG, mode=0o644, size=9))
    t = feed.tree
    assert (t.nodes[b"f"].attr.mode, t.nodes[b"f"].attr.size) == (0o644, 9)
    assert t.nodes[ROOT].attr.mtime_ns == 5


def test_attributes_follow_the_nas_change_time_before_the_stamp(feed):
    # Two concurrent WRITEs: the later-stamped one was applied first (smaller ctime).
    feed(Op.CREATE, fh=b"f", dir_fh=ROOT, name=b"f", attr=Attr(type=REG, ctime_ns=100))
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
    for bad in (b"", b".", b"..", b"a/b", b"../../etc", b"nul\0"):
        feed(Op.CREATE, fh=b"f" + bad, dir_fh=ROOT, name=bad)
        feed.piece(b"p" + bad, ROOT, bad)
        feed(Op.LINK, fh=b"l", to_dir_fh=ROOT, to_name=bad)
    assert names(feed.tree) == {}
    assert paths(feed.tree) == [b""]


def test_names_are_bytes_and_paths_too(feed):
    """Names that are not UTF-8 are kept as they are; a str path is os.fsencoded."""
    feed(Op.MKDIR, fh=b"d", dir_fh=ROOT, name=b"caf\xe9")
    feed(Op.CREATE, fh=b"f", dir_fh=b"d", name=b"-\n\\\xff")
    feed(Op.SYMLINK, fh=b"l", dir_fh=b"d", name=b"L" * 255, symlink_target=b"\xfe/x")
    assert feed.tree.paths_of(b"f") == [b"caf\xe9/-\n\\\xff"]
    assert feed.tree.lookup(b"caf\xe9/-\n\\\xff") == feed.tree.lookup("caf\udce9/-\n\\\udcff") == b"f"
    assert feed.tree.nodes[b"l"].symlink_target == b"\xfe/x"
    assert show_name(b"/caf\xe9/-\n\\\xff") == "/caf\\xe9/-\\n\\\\\\xff"
    assert show_name("caf\udce9 ✓\t") == "caf\\xe9 ✓\\t"


# -- sizes from changes without post-op attributes ----------------------------------

def test_a_write_without_attributes_still_moves_the_size(feed):
    """NFSv3 lets a NAS omit post-op attributes, and a record rebuilt from its
    write-ahead intent has none: the file's size still follows the write."""
    feed.piece(b"f", ROOT, b"f", size=100, ctime_ns=1)
    feed(Op.WRITE, fh=b"f", offset=100, count=50)
    assert feed.tree.nodes[b"f"].attr.size == 150
    feed(Op.WRITE, fh=b"f", offset=0, count=10)  # inside the file: no change
    assert feed.tree.nodes[b"f"].attr.size == 150
    feed(Op.SETATTR, fh=b"f", set={"size": 20})
    assert feed.tree.nodes[b"f"].attr.size == 20
    feed(Op.WRITE, fh=b"f", offset=0, count=5, attr=Attr(type=REG, size=5, ctime_ns=9))
    assert feed.tree.nodes[b"f"].attr.size == 5, "attributes that came back are the NAS's truth"
