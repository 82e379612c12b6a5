"""BindingCache stays bounded in both directions, whatever the workload does.

The workload that broke it: write a temporary name, rename it over the real
one, forever (editors, atomic saves, log rotation). Every cycle leaves a new
handle and a name that no longer exists.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from nfsproxy.wire import nfs3
from nfsproxy.relay.capture import BindingCache, Capture
from nfsproxy.wire.nfs3 import CreateMode, Diropargs3, Nfsstat3, Proc3

from unit.test_capture import DIR, Driver, sattr3, wcc


def test_write_then_rename_cycles_keep_both_maps_within_capacity():
    cache = BindingCache(capacity=1000)
    for i in range(200_000):
        fh = i.to_bytes(8, "big")
        cache.learn(fh, DIR, f"file.tmp{i}")
        cache.unbind(DIR, f"file.tmp{i}")  # the RENAME's source name is gone
        cache.learn(fh, DIR, "file")
    assert len(cache) <= 1000 and cache.names_known <= 1000
    assert cache.handle_of(DIR, "file") == (199_999).to_bytes(8, "big")


def test_write_then_rename_without_unbind_is_still_bounded():
    cache = BindingCache(capacity=1000)
    for i in range(200_000):
        fh = i.to_bytes(8, "big")
        cache.learn(fh, DIR, f"file.tmp{i}")
        cache.learn(fh, DIR, "file")
    assert len(cache) <= 1000 and cache.names_known <= 1000


def test_capture_forgets_names_that_removes_and_renames_take_away():
    drv = Driver(Capture(BindingCache(capacity=100)))
    for i in range(3000):
        fh = b"\x20" + i.to_bytes(8, "big")
        drv.roundtrip(Proc3.CREATE,
                      nfs3.CREATE3args(Diropargs3(DIR, f"t{i}"), nfs3.Createhow3(CreateMode.UNCHECKED, sattr3())),
                      nfs3.CREATE3res(Nfsstat3.NFS3_OK, nfs3.CREATE3resok(fh, None, wcc(None))))
        record, _ = drv.roundtrip(Proc3.RENAME, nfs3.RENAME3args(Diropargs3(DIR, f"t{i}"), Diropargs3(DIR, "file")),
                                  nfs3.RENAME3res(Nfsstat3.NFS3_OK, nfs3.RENAME3resok(wcc(None), wcc(None))))
        assert record.object_fh == fh  # the cache still knew what the temporary name held
        drv.messages.clear()
    cache = drv.capture.bindings
    assert cache.names_known == 1 and len(cache) <= 100
    drv.roundtrip(Proc3.REMOVE, nfs3.REMOVE3args(Diropargs3(DIR, "file")),
                  nfs3.REMOVE3res(Nfsstat3.NFS3_OK, nfs3.REMOVE3resok(wcc(None))))
    assert cache.handle_of(DIR, "file") is None


ops = st.lists(st.tuples(st.sampled_from(["learn", "unbind"]),
                         st.integers(0, 30), st.integers(0, 30)), max_size=300)


@settings(max_examples=300)
@given(capacity=st.integers(1, 8), steps=ops)
def test_any_sequence_stays_within_capacity_and_answers_only_what_it_learned(capacity, steps):
    cache = BindingCache(capacity=capacity)
    truth: dict[str, bytes] = {}
    for op, fh_n, name_n in steps:
        fh, name = bytes([fh_n]), f"n{name_n}"
        if op == "learn":
            cache.learn(fh, DIR, name)
            truth[name] = fh
        else:
            cache.unbind(DIR, name)
            truth.pop(name, None)
        assert len(cache) <= capacity and cache.names_known <= capacity
        for n in (f"n{k}" for k in range(31)):
            got = cache.handle_of(DIR, n)
            assert got is None or got == truth.get(n), "a name answers with a handle it never had"
