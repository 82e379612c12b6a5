"""recoveryd.restore.cache.FileCache: files built once per key, and files a
bulk fill has promised waited for rather than built alone."""

from __future__ import annotations

import os
import threading
from pathlib import Path

from recoveryd.restore.cache import FileCache
from recoveryd.restore.replay import BufferOut


def builder(data: bytes, calls: list[bytes]):
    def build(fd: int) -> int:
        calls.append(data)
        os.write(fd, data)
        return len(data)
    return build


def test_a_file_is_built_once_and_read_at_any_offset(tmp_path):
    cache, calls = FileCache(tmp_path), []
    assert cache.read("k", 2, 3, builder(b"abcdefg", calls)) == b"cde"
    assert cache.read("k", 5, 100, builder(b"other", calls)) == b"fg"
    assert calls == [b"abcdefg"]


def test_a_read_of_a_promised_file_waits_for_the_bulk_fill_instead_of_building_it(tmp_path):
    cache, calls = FileCache(tmp_path), []
    cache.promise(["k"])
    got = []
    reader = threading.Thread(target=lambda: got.append(cache.read("k", 0, 10, builder(b"alone", calls))))
    reader.start()
    reader.join(0.2)
    assert reader.is_alive() and not calls   # waiting, not building
    cache.staging("k").write_bytes(b"from bulk")
    cache.add("k", len(b"from bulk"))
    reader.join(10)
    assert got == [b"from bulk"] and calls == []


def test_a_promise_the_fill_did_not_keep_lets_the_read_build_the_file(tmp_path):
    cache, calls = FileCache(tmp_path), []
    cache.promise(["k", "j"])
    got = []
    reader = threading.Thread(target=lambda: got.append(cache.read("k", 0, 10, builder(b"alone", calls))))
    reader.start()
    reader.join(0.2)
    assert reader.is_alive()
    cache.settle(["k", "j"])                 # the fill failed before reaching it
    reader.join(10)
    assert got == [b"alone"] and calls == [b"alone"]
    assert cache.read("j", 0, 10, builder(b"jj", calls)) == b"jj"   # nothing left to wait for


def test_a_key_is_promised_to_one_fill_only(tmp_path):
    cache = FileCache(tmp_path)
    cache.staging("held").write_bytes(b"x")
    cache.add("held", 1)
    assert cache.promise(["a", "held", "b", "a"]) == ["a", "b"]
    assert cache.promise(["b", "c"]) == ["c"]          # b is on its way already
    assert cache.expects("a") and cache.expects("held") and not cache.expects("d")
    cache.settle(["a", "b", "c"])
    assert not cache.expects("a")


def test_close_leaves_a_callers_directory_as_it_found_it(tmp_path):
    mine = tmp_path / "ab"              # a name the cache could pick for a subdirectory of its own
    mine.mkdir()
    (mine / "keep").write_bytes(b"the caller's")
    cache = FileCache(tmp_path, cache_bytes=8)
    for k in range(40):                 # built, evicted past the budget, built again
        assert cache.read(f"k{k}", 0, 3, builder(b"abc", [])) == b"abc"
    cache.staging("bulk").write_bytes(b"xy")
    cache.add("bulk", 2)
    cache.close()
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")) == ["ab", "ab/keep"]


def test_small_files_of_a_fill_are_held_in_memory_within_its_budget(tmp_path):
    cache = FileCache(tmp_path, memory_bytes=10)
    small, other, big = cache.staging("s", 6), cache.staging("o", 6), cache.staging("b", 10 << 20)
    assert isinstance(small, BufferOut)
    assert isinstance(other, Path) and isinstance(big, Path)   # over the memory budget; too large
    small.write(b"abcdef", 0)
    cache.add("s", 6)
    other.write_bytes(b"ghijkl")
    cache.add("o", 6)
    assert cache.read("s", 2, 3, builder(b"never", [])) == b"cde"
    assert cache.read("o", 4, 9, builder(b"never", [])) == b"kl"
    assert not any(p.is_file() and p.read_bytes() == b"abcdef" for p in tmp_path.rglob("*"))


def test_memory_set_aside_for_a_fill_that_failed_is_given_back(tmp_path):
    cache = FileCache(tmp_path, memory_bytes=10)
    cache.promise(["a"])
    assert isinstance(cache.staging("a", 10), BufferOut)
    assert isinstance(cache.staging("b", 1), Path)    # all of it set aside for "a"
    cache.settle(["a"])                                # the fill never finished "a"
    assert isinstance(cache.staging("c", 10), BufferOut)


def test_files_in_memory_are_evicted_past_the_budget_like_files_on_disk(tmp_path):
    cache = FileCache(tmp_path, cache_bytes=8, memory_bytes=8)
    for k in "ab":
        out = cache.staging(k, 4)
        assert isinstance(out, BufferOut), k
        out.write(k.encode() * 4, 0)
        cache.add(k, 4)
    third = cache.staging("c", 4)
    assert isinstance(third, Path)                     # the memory is held until something goes
    third.write_bytes(b"cccc")
    cache.add("c", 4)                                  # ... which "a" does now
    assert not cache.holds("a") and cache.holds("b") and cache.holds("c")
    assert isinstance(cache.staging("d", 4), BufferOut)   # its memory given back
    calls: list[bytes] = []
    assert cache.read("a", 0, 4, builder(b"AAAA", calls)) == b"AAAA" and calls == [b"AAAA"]
