"""The conflict table (`nfsproxy.relay.conflict`), against a model of the relay.

A Hypothesis state machine plays calls from many sessions arriving, replies
coming back in any order, and calls abandoned while in flight or while held
(a client that disconnects). The claims come from a small world (two files,
byte ranges in 0..16, size changes, two directories with two names each) so
that conflicts are frequent. Checked after every step:

* no two conflicting calls are out (sent to the NAS) at once;
* a call is held exactly when it conflicts with an earlier call still in
  the table: non-conflicting calls never wait, and a later conflicting call
  never overtakes a waiting one (FIFO per conflict);
* `release` hands back only held calls, in arrival order, and exactly those
  that no longer wait for anything.

At the end every call still out is replied to, round after round, until the
table is empty: every call is eventually released and sent.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from logstore.record import Op, Record
from nfsproxy.relay.conflict import Claims, ConflictTable, claims_of
from nfsproxy.wire.nfs3 import CreateMode

FHS = (b"file-a", b"file-b")
ENTRIES = tuple((d, n) for d in (b"dir-1", b"dir-2") for n in ("x", "y"))


@st.composite
def claims(draw) -> Claims:
    kind = draw(st.sampled_from(["write", "size", "names", "nothing"]))
    if kind == "write":
        start = draw(st.integers(0, 16))
        return Claims(fh=draw(st.sampled_from(FHS)), written=(start, draw(st.integers(start, 16))))
    if kind == "size":
        return Claims(fh=draw(st.sampled_from(FHS)), size=True)
    if kind == "names":
        return Claims(entries=tuple(draw(st.lists(st.sampled_from(ENTRIES), min_size=1, max_size=2))))
    return Claims()


class Relay(RuleBasedStateMachine):
    """Model: `present` holds every call admitted and not released, in arrival order."""

    @initialize()
    def setup(self) -> None:
        self.table = ConflictTable()
        self.next_token = 0
        self.present: dict[int, Claims] = {}  # insertion order is arrival order
        self.out: set[int] = set()
        self.sent: set[int] = set()
        self.admitted: set[int] = set()

    def _earlier_conflicts(self, token: int) -> list[int]:
        mine = self.present[token]
        found = []
        for t, c in self.present.items():
            if t == token:
                return found
            if c.conflicts(mine):
                found.append(t)
        raise AssertionError("token not present")

    @rule(c=claims())
    def arrive(self, c: Claims) -> None:
        token, self.next_token = self.next_token, self.next_token + 1
        self.admitted.add(token)
        may_go = self.table.admit(token, c)
        if c.empty:
            assert may_go
            self.sent.add(token)
            return
        self.present[token] = c
        assert may_go == (not self._earlier_conflicts(token))
        if may_go:
            self.out.add(token)
            self.sent.add(token)

    def _release(self, token: int) -> None:
        del self.present[token]
        self.out.discard(token)
        freed = self.table.release(token)
        assert self.table.release(token) == []  # a second release path is harmless
        should = [t for t in self.present if t not in self.out and not self._earlier_conflicts(t)]
        assert freed == should, (freed, should)
        self.out.update(freed)
        self.sent.update(freed)

    @precondition(lambda self: self.out)
    @rule(data=st.data())
    def reply(self, data) -> None:
        self._release(data.draw(st.sampled_from(sorted(self.out))))

    @precondition(lambda self: len(self.present) > len(self.out))
    @rule(data=st.data())
    def abandon_held(self, data) -> None:
        token = data.draw(st.sampled_from(sorted(set(self.present) - self.out)))
        self.sent.add(token)  # never sent: it leaves with its session
        self._release(token)

    @invariant()
    def conflicting_calls_are_never_out_together(self) -> None:
        out = sorted(self.out)
        for i, a in enumerate(out):
            for b in out[i + 1:]:
                assert not self.present[a].conflicts(self.present[b]), (a, b)

    @invariant()
    def held_exactly_when_an_earlier_call_conflicts(self) -> None:
        for t in self.present:
            held = bool(self._earlier_conflicts(t))
            assert self.table.is_held(t) == held
            assert (t in self.out) == (not held)
        assert self.table.held_now == len(self.present) - len(self.out)
        assert len(self.table) == len(self.present)

    def teardown(self) -> None:
        while self.out:
            self._release(min(self.out))
        assert not self.present and len(self.table) == 0 and self.table.held_now == 0
        assert self.sent == self.admitted


TestConflictTable = Relay.TestCase
TestConflictTable.settings = settings(max_examples=300, stateful_step_count=40, deadline=None)


# -- claims of records ----------------------------------------------------------------


def _record(op: Op, **fields) -> Record:
    r = Record(op=op)
    for name, value in fields.items():
        if name in ("size", "mode"):
            setattr(r.set, name, value)
        else:
            setattr(r, name, value)
    return r


@pytest.mark.parametrize("a, b, conflict", [
    (_record(Op.WRITE, fh=b"f", offset=0, count=1 << 20), _record(Op.WRITE, fh=b"f", offset=4096, count=4096), True),
    (_record(Op.WRITE, fh=b"f", offset=0, count=4096), _record(Op.WRITE, fh=b"f", offset=4096, count=4096), False),
    (_record(Op.WRITE, fh=b"f", offset=0, count=4096), _record(Op.WRITE, fh=b"g", offset=0, count=4096), False),
    (_record(Op.WRITE, fh=b"f", offset=1 << 30, count=0), _record(Op.SETATTR, fh=b"f", size=0), True),
    (_record(Op.SETATTR, fh=b"f", size=10), _record(Op.SETATTR, fh=b"f", size=0), True),
    (_record(Op.SETATTR, fh=b"f", mode=0o600), _record(Op.WRITE, fh=b"f", offset=0, count=1), False),
    (_record(Op.SETATTR, fh=b"f", mode=0o600), _record(Op.SETATTR, fh=b"f", size=0), False),
    (_record(Op.COMMIT, fh=b"f", offset=0, count=0), _record(Op.SETATTR, fh=b"f", size=0), False),
    (_record(Op.CREATE, dir_fh=b"d", name=b"x"), _record(Op.REMOVE, dir_fh=b"d", name=b"x"), True),
    (_record(Op.CREATE, dir_fh=b"d", name=b"x"), _record(Op.REMOVE, dir_fh=b"d", name=b"y"), False),
    (_record(Op.CREATE, dir_fh=b"d", name=b"x"), _record(Op.REMOVE, dir_fh=b"e", name=b"x"), False),
    (_record(Op.MKDIR, dir_fh=b"d", name=b"x"), _record(Op.RMDIR, dir_fh=b"d", name=b"x"), True),
    (_record(Op.RENAME, dir_fh=b"d", name=b"a", to_dir_fh=b"e", to_name=b"x"),
     _record(Op.SYMLINK, dir_fh=b"e", name=b"x"), True),
    (_record(Op.RENAME, dir_fh=b"d", name=b"a", to_dir_fh=b"e", to_name=b"x"),
     _record(Op.MKNOD, dir_fh=b"d", name=b"a"), True),
    (_record(Op.LINK, fh=b"f", to_dir_fh=b"d", to_name=b"x"), _record(Op.REMOVE, dir_fh=b"d", name=b"x"), True),
    (_record(Op.LINK, fh=b"f", to_dir_fh=b"d", to_name=b"x"), _record(Op.WRITE, fh=b"f", offset=0, count=9), False),
])
def test_claims_of_records(a: Record, b: Record, conflict: bool):
    assert claims_of(a).conflicts(claims_of(b)) is conflict
    assert claims_of(b).conflicts(claims_of(a)) is conflict


def test_an_unchecked_create_with_a_size_truncates_the_file_it_names():
    create = _record(Op.CREATE, dir_fh=b"d", name=b"x", size=0)
    known = {(b"d", b"x"): b"f"}.get
    write = claims_of(_record(Op.WRITE, fh=b"f", offset=0, count=1))
    assert claims_of(create, lambda d, n: known((d, n))).conflicts(write)
    assert not claims_of(create).conflicts(write)  # a name the proxy has not seen: the entry only
    assert not claims_of(_record(Op.CREATE, dir_fh=b"d", name=b"x"), lambda d, n: known((d, n))).conflicts(write)
    guarded = _record(Op.CREATE, dir_fh=b"d", name=b"x", size=0, create_mode=CreateMode.GUARDED)
    assert not claims_of(guarded, lambda d, n: known((d, n))).conflicts(write)  # fails if x exists


@given(claims(), claims())
def test_conflict_is_symmetric(a: Claims, b: Claims):
    assert a.conflicts(b) == b.conflicts(a)


def test_a_held_call_goes_when_the_earlier_reply_is_back_and_the_later_one_waits_behind_it():
    table = ConflictTable()
    big, small, later = Claims(fh=b"f", written=(0, 1 << 20)), Claims(fh=b"f", written=(0, 4096)), \
        Claims(fh=b"f", written=(4096, 8192))
    assert table.admit("A", big)
    assert not table.admit("B", small)
    assert not table.admit("C", later)       # conflicts with A (still out)
    assert table.admit("D", Claims(fh=b"f", written=(2 << 20, (2 << 20) + 1)))
    assert table.release("A") == ["B", "C"]  # B and C do not conflict with each other
    assert table.holds_total == 2 and table.held_now == 0


def test_fifo_per_conflict():
    table = ConflictTable()
    assert table.admit(1, Claims(fh=b"f", written=(0, 10)))
    assert not table.admit(2, Claims(fh=b"f", size=True))
    assert not table.admit(3, Claims(fh=b"f", written=(20, 30)))  # only 2 stands in its way
    assert table.release(1) == [2]
    assert table.release(2) == [3]


def test_a_call_abandoned_while_held_frees_those_behind_it():
    table = ConflictTable()
    entry = (b"d", "x")
    assert table.admit(1, Claims(entries=(entry,)))
    assert not table.admit(2, Claims(entries=(entry,)))
    assert not table.admit(3, Claims(entries=(entry, (b"d", "y"))))
    assert table.release(2) == []  # 3 still waits for 1
    assert table.is_held(3)
    assert table.release(1) == [3]
    assert table.release(3) == [] and len(table) == 0


def test_claims_refuse_nonsense():
    with pytest.raises(ValueError):
        Claims(written=(0, 1))
    with pytest.raises(ValueError):
        Claims(fh=b"f", written=(5, 1))
    table = ConflictTable()
    table.admit("t", Claims(fh=b"f", size=True))
    with pytest.raises(ValueError):
        table.admit("t", Claims(fh=b"f", size=True))
