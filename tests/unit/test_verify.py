"""recoveryd.verify: the journal's view against the NAS's, and the window (sans-IO)."""

from __future__ import annotations

import dataclasses

from hypothesis import given, strategies as st

from logstore.pb.journal_pb2 import Attr, Op, Record
from logstore.stamp import Stamp
from recoveryd.tree import DIR, LNK, REG, Tree
from recoveryd.verify import (Described, Window, compare, describe_tree, needs_content, read_result,
                              write_result)

ROOT = b"fh-root"


def d(fh: bytes, kind: int = REG, binding=(ROOT, b""), **kw) -> Described:
    kw.setdefault("mode", 0o644)
    kw.setdefault("mtime_ns", 1_700_000_000_000_000_000)
    return Described(fh, kind, binding, **kw)


def sides():
    """A small export: /, /docs, /docs/a, /docs/link, /b, as both sides see it."""
    tree = {
        b"": d(ROOT, DIR, (b"", b""), mode=0o755),
        b"docs": d(b"fh-docs", DIR, (ROOT, b"docs"), mode=0o755),
        b"docs/a": d(b"fh-a", REG, (b"fh-docs", b"a"), size=5, sha256="aa"),
        b"docs/link": d(b"fh-l", LNK, (b"fh-docs", b"link"), target=b"a"),
        b"b": d(b"fh-b", REG, (ROOT, b"b"), size=1, sha256="bb"),
    }
    return dict(tree), dict(tree)


def test_equal_sides_have_no_difference():
    j, n = sides()
    result = compare(j, n, Window())
    assert result.differences == [] and result.checked == 5 and result.skipped == 0


def test_each_field_is_reported_with_its_path():
    j, n = sides()
    n[b"docs/a"] = dataclasses.replace(n[b"docs/a"], sha256="zz")
    n[b"b"] = dataclasses.replace(n[b"b"], mode=0o600, uid=7, size=2)
    n[b"docs/link"] = dataclasses.replace(n[b"docs/link"], target=b"\xffelsewhere")
    result = compare(j, n, Window())
    shown = [str(x) for x in result.differences]
    assert shown[0].startswith("/b: mode 0644 in the journal, 0600 on the NAS; uid 0 in the journal, 7")
    assert "size 1 in the journal, 2 on the NAS" in shown[0]
    assert shown[1].startswith("/docs/a: content differs")
    assert shown[2] == ("/docs/link: symlink target 'a' in the journal, '\\xffelsewhere' on the NAS")


def test_names_are_bytes_and_shown_escaped():
    j, n = sides()
    n[b"caf\xe9\n"] = d(b"fh-x", REG, (ROOT, b"caf\xe9\n"))
    (diff,) = compare(j, n, Window()).differences
    assert diff.path == b"caf\xe9\n"
    assert str(diff) == "/caf\\xe9\\n: reg on the NAS but not in the journal"


def test_a_missing_directory_is_reported_once_at_its_top():
    j, n = sides()
    for p in (b"docs", b"docs/a", b"docs/link"):
        del n[p]
    result = compare(j, n, Window())
    assert [str(x) for x in result.differences] == ["/docs: dir in the journal but not on the NAS"]


def test_a_missing_path_is_hidden_only_by_a_missing_ancestor_not_by_a_name_it_begins_with():
    j, n = sides()
    j[b"docs-old"] = d(b"fh-old", DIR, (ROOT, b"docs-old"), mode=0o755)
    j[b"docs-old/x"] = d(b"fh-x", REG, (b"fh-old", b"x"))
    for p in (b"docs", b"docs/a", b"docs/link"):
        del n[p]
    result = compare(j, n, Window())
    assert [str(x) for x in result.differences] == ["/docs: dir in the journal but not on the NAS",
                                                    "/docs-old: dir in the journal but not on the NAS"]


def test_scattered_missing_files_are_each_reported():
    j, n = sides()
    for k in range(300):
        j[b"docs/gone%03d" % k] = d(b"fh-g%d" % k, REG, (b"fh-docs", b"gone%03d" % k))
    result = compare(j, n, Window())
    assert len(result.differences) == 300 and all("not on the NAS" in str(x) for x in result.differences)


def test_a_replaced_object_is_a_difference():
    j, n = sides()
    n[b"b"] = dataclasses.replace(n[b"b"], fh=b"fh-new")
    (diff,) = compare(j, n, Window()).differences
    assert "file handle differs" in diff.what


def test_changed_objects_are_skipped_not_reported():
    j, n = sides()
    n[b"b"] = dataclasses.replace(n[b"b"], size=99, sha256="new")
    window = Window.from_records([Record(op=Op.WRITE, fh=b"fh-b", ok=True)])
    result = compare(j, n, window)
    assert result.differences == [] and result.skipped == 1 and result.checked == 4


def test_a_directory_whose_entries_changed_keeps_its_other_entries_compared():
    j, n = sides()
    n[b"docs"] = dataclasses.replace(n[b"docs"], mtime_ns=5)            # a new entry moved it
    n[b"docs/new"] = d(b"fh-new", REG, (b"fh-docs", b"new"))
    n[b"docs/a"] = dataclasses.replace(n[b"docs/a"], sha256="bypass")   # not in the window
    window = Window.from_records([Record(op=Op.CREATE, dir_fh=b"fh-docs", name=b"new", fh=b"fh-new",
                                         ok=True)])
    result = compare(j, n, window)
    assert [x.path for x in result.differences] == [b"docs/a"]
    assert result.skipped == 1  # docs/new


def test_a_rename_in_the_window_skips_both_subtrees():
    j, n = sides()
    for p in (b"docs", b"docs/a", b"docs/link"):
        old = n.pop(p)
        new = b"moved" + p[4:]
        binding = (ROOT, b"moved") if p == b"docs" else old.binding
        n[new] = dataclasses.replace(old, binding=binding)
    window = Window.from_records([Record(op=Op.RENAME, dir_fh=ROOT, name=b"docs", to_dir_fh=ROOT,
                                         to_name=b"moved", ok=True)])
    result = compare(j, n, window)
    assert result.differences == [] and result.skipped == 6


def test_failed_calls_count_and_readings_do_not():
    window = Window.from_records([
        Record(op=Op.SETATTR, fh=b"fh-1", ok=False),        # the reply may never have come
        Record(op=Op.BIND, dir_fh=ROOT, name=b"x", fh=b"fh-2", ok=True),
        Record(op=Op.BASELINE, dir_fh=ROOT, name=b"y", fh=b"fh-3", ok=True)])
    assert window.objects == {b"fh-1"} and window.bindings == set() and window.records == 1


def test_sampled_paths_only_are_compared():
    j, n = sides()
    n[b"b"] = dataclasses.replace(n[b"b"], sha256="other")
    assert compare(j, n, Window(), [b"docs/a"]).differences == []
    assert [x.path for x in compare(j, n, Window(), [b"b"]).differences] == [b"b"]
    del n[b"docs/a"]
    assert [str(x) for x in compare(j, n, Window(), [b"docs/a"]).differences] == [
        "/docs/a: reg in the journal but not on the NAS"]


def test_needs_content_only_for_files_of_equal_size_outside_the_window():
    j, n = sides()
    n[b"b"] = dataclasses.replace(n[b"b"], size=3)
    assert needs_content(j, n, Window()) == [b"docs/a"]
    assert needs_content(j, n, Window(objects={b"fh-a"})) == []


def test_describe_tree_gives_paths_handles_and_entries():
    tree = Tree()
    stamp = iter(range(1, 100))

    def apply(**kw):
        attr = kw.pop("attr", None)
        r = Record(stamp=Stamp(next(stamp), 0, 1).to_bytes(), ok=True, **kw)
        if attr is not None:
            r.attr.CopyFrom(attr)
        tree.apply(r)

    apply(op=Op.BASELINE, fh=ROOT, baseline_first=True, attr=Attr(type=DIR, mode=0o40755))
    apply(op=Op.MKDIR, dir_fh=ROOT, name=b"d", fh=b"fh-d", attr=Attr(type=DIR, mode=0o700))
    apply(op=Op.SYMLINK, dir_fh=b"fh-d", name=b"s", fh=b"fh-s", symlink_target=b"../x",
          attr=Attr(type=LNK, mode=0o777))
    described = describe_tree(tree)
    assert set(described) == {b"", b"d", b"d/s"}
    assert described[b""].mode == 0o755 and described[b"d"].binding == (ROOT, b"d")
    assert described[b"d/s"].binding == (b"fh-d", b"s") and described[b"d/s"].target == b"../x"
    assert set(describe_tree(tree, b"d")) == {b"d", b"d/s"}
    assert describe_tree(tree, b"nowhere") == {}


@given(st.dictionaries(st.binary(min_size=1, max_size=3).filter(lambda b: b"/" not in b),
                       st.tuples(st.integers(0, 0o7777), st.integers(0, 3), st.booleans()), max_size=8),
       st.data())
def test_every_change_outside_the_window_is_reported_and_none_inside(files, data):
    j = {b"": d(ROOT, DIR, (b"", b""))}
    for name, (mode, size, _) in files.items():
        j[name] = d(b"fh-" + name, REG, (ROOT, name), mode=mode, size=size, sha256="s")
    n = dict(j)
    changed = set()
    for name, (mode, size, in_window) in files.items():
        if data.draw(st.booleans()):
            n[name] = dataclasses.replace(n[name], mode=(mode + 1) & 0o7777)
            changed.add((name, in_window))
    window = Window.from_records([Record(op=Op.SETATTR, fh=b"fh-" + name, ok=True)
                                  for name, (_, _, w) in files.items() if w])
    result = compare(j, n, window)
    assert {x.path for x in result.differences} == {name for name, w in changed if not w}
    assert result.checked + result.skipped == len(j)


def test_the_result_file_round_trips(tmp_path):
    assert read_result(tmp_path) is None
    write_result(tmp_path, {"finished_unix_ns": 5, "checked": 3, "skipped": 1, "differences": 0})
    assert read_result(tmp_path)["checked"] == 3
    (tmp_path / "verify.json").write_text("not json")
    assert read_result(tmp_path) is None
