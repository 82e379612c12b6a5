"""Conflict holds: conflicting mutations reach the NAS one at a time, in arrival order.

Why. Restore replays records in stamp order, so for two mutations whose
order changes the result, stamp order must be the order in which the NAS
applied them. Two calls in flight at once may be applied in either order
(the NAS runs each on its own worker thread; a 1 MiB WRITE that arrived
first is often applied after a 4 KiB WRITE that arrived 10 us later). So a
mutation that conflicts with one still in flight is sent only after the
earlier one's reply is back, and is stamped then: its stamp is taken after
the NAS applied the earlier call, so the two stamps are in the NAS's order.

What conflicts (`Claims.conflicts`):

* on one file handle: WRITEs with overlapping byte ranges, and a size change
  (SETATTR with a size, or an UNCHECKED CREATE with a size over a name whose
  handle the proxy knows) against any WRITE or size change;
* on one file handle: two NFSACL SETACLs that set the same ACL (access or
  default): restore replays them in stamp order, the last one wins;
* any two calls naming the same directory entry (dir fh, name): CREATE,
  MKDIR, SYMLINK, MKNOD, REMOVE and RMDIR their name, RENAME both names,
  LINK the new name.

Nothing else waits. Other attributes (mode, owner, times) need no hold:
restore keeps an object's attributes from the record with the newest ctime,
which is the NAS's order whatever the stamps say. COMMIT changes no content. A SETACL does not wait for a mode change (nor
the other way round) although a chmod rewrites an ACL's owner, mask and
other entries: restore sets the ACL first and the newest mode after it, so
those entries come out as the NAS's last word whichever call was first.

Order. A call waits for every earlier call it conflicts with that is still
in the table, in flight or itself waiting, so a later conflicting call never
overtakes a waiting one (FIFO per conflict), and every wait points back in
arrival order: there is no cycle, and every call goes once the calls before
it are released.

Sans-IO, as the rest of the relay core: no sockets, no clock. The relay asks
`admit` before sending a mutation, calls `release` when its reply is back or
when it is abandoned (disconnect, an undecodable reply, close), and sends
the calls `release` hands back.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Hashable

from logstore.record import Op, Record

from nfsproxy.wire.nfs3 import CreateMode

__all__ = ["Claims", "ConflictTable", "claims_of"]

Entry = tuple[bytes, bytes]  # (dir fh, name)


@dataclasses.dataclass(frozen=True, slots=True)
class Claims:
    """What one mutation touches: a file's bytes or size, and directory entries."""

    fh: bytes | None = None
    written: tuple[int, int] | None = None  # [start, end) a WRITE changes (may be empty)
    size: bool = False                      # changes the file's size (SETATTR size)
    entries: tuple[Entry, ...] = ()
    acl: int = 0                            # the ACLs a SETACL replaces (NFSACL mask bits)

    def __post_init__(self) -> None:
        if (self.written is not None or self.size or self.acl) and self.fh is None:
            raise ValueError("a data claim needs a file handle")
        if self.written is not None and not 0 <= self.written[0] <= self.written[1]:
            raise ValueError(f"bad byte range {self.written}")

    @property
    def empty(self) -> bool:
        return self.written is None and not self.size and not self.entries and not self.acl

    def conflicts(self, other: "Claims") -> bool:
        """True when the NAS's result depends on the order of the two calls."""
        if self.entries and other.entries and not set(self.entries).isdisjoint(other.entries):
            return True
        if self.fh is None or self.fh != other.fh:
            return False
        if self.acl & other.acl:
            return True
        if self.size:
            return other.size or other.written is not None
        if other.size:
            return self.written is not None
        if self.written is None or other.written is None:
            return False
        (a0, a1), (b0, b1) = self.written, other.written
        return a0 < b1 and b0 < a1


def claims_of(record: Record, handle_of: Callable[[bytes, Any], bytes | None] | None = None) -> Claims:
    """The claims of a mutation's record, as capture builds it when the call arrives.

    `handle_of(dir_fh, name)` (the proxy's binding cache) names the file an
    UNCHECKED CREATE with a size would truncate, if the name exists.
    """
    op = record.op
    if op == Op.WRITE:
        return Claims(fh=record.fh, written=(record.offset, record.offset + record.count))
    if op == Op.SETATTR:
        return Claims(fh=record.fh, size=True) if record.set.HasField("size") else Claims()
    if op == Op.CREATE and record.create_mode == CreateMode.UNCHECKED and record.set.HasField("size") \
            and handle_of is not None:
        existing = handle_of(record.dir_fh, record.name)
        if existing is not None:
            return Claims(fh=existing, size=True, entries=((record.dir_fh, record.name),))
    if op in (Op.CREATE, Op.MKDIR, Op.SYMLINK, Op.MKNOD, Op.REMOVE, Op.RMDIR):
        return Claims(entries=((record.dir_fh, record.name),))
    if op == Op.RENAME:
        return Claims(entries=((record.dir_fh, record.name), (record.to_dir_fh, record.to_name)))
    if op == Op.LINK:
        return Claims(entries=((record.to_dir_fh, record.to_name),))
    if op == Op.SETACL:
        return Claims(fh=record.fh, acl=record.acl_mask) if record.acl_mask else Claims()
    return Claims()


def _claims_fh(claims: Claims) -> bool:
    """Whether the claims touch their file handle's bytes, size or ACLs."""
    return claims.fh is not None and (claims.written is not None or claims.size or bool(claims.acl))


@dataclasses.dataclass(slots=True, eq=False)
class _Call:
    token: Hashable
    seq: int
    claims: Claims
    waits_for: set[Hashable]
    blocks: list[Hashable] = dataclasses.field(default_factory=list)

    @property
    def out(self) -> bool:
        return not self.waits_for


class ConflictTable:
    """The mutations of all client sessions of one proxy that are in flight or held.

    Tokens are any hashable the caller chooses, unique while in the table.
    """

    def __init__(self) -> None:
        self._calls: dict[Hashable, _Call] = {}
        self._by_fh: dict[bytes, set[Hashable]] = {}
        self._by_entry: dict[Entry, set[Hashable]] = {}
        self._seq = 0
        self.holds_total = 0  # calls that had to wait
        self.held_now = 0     # calls waiting right now

    def admit(self, token: Hashable, claims: Claims) -> bool:
        """Register a mutation about to go to the NAS: True if it may go now,
        False if it must wait (a later `release` hands it back)."""
        if token in self._calls:
            raise ValueError(f"token {token!r} is already in the table")
        if claims.empty:
            return True  # touches nothing another call could reorder
        earlier = set()
        if _claims_fh(claims):
            earlier |= self._by_fh.get(claims.fh, set())
        for entry in claims.entries:
            earlier |= self._by_entry.get(entry, set())
        waits_for = {t for t in earlier if claims.conflicts(self._calls[t].claims)}
        self._seq += 1
        self._calls[token] = _Call(token, self._seq, claims, waits_for)
        for t in waits_for:
            self._calls[t].blocks.append(token)
        if _claims_fh(claims):
            self._by_fh.setdefault(claims.fh, set()).add(token)
        for entry in claims.entries:
            self._by_entry.setdefault(entry, set()).add(token)
        if waits_for:
            self.holds_total += 1
            self.held_now += 1
            return False
        return True

    def release(self, token: Hashable) -> list[Hashable]:
        """Forget a call (replied, or abandoned whether sent or still held).

        Returns the held calls that may go now, in arrival order. Unknown
        tokens (calls that claimed nothing, or were released already) are
        ignored, so every release path may call this.
        """
        call = self._calls.pop(token, None)
        if call is None:
            return []
        self._unindex(token, call.claims)
        if call.waits_for:  # abandoned while held
            self.held_now -= 1
            for t in call.waits_for:
                self._calls[t].blocks.remove(token)
        freed = []
        for t in call.blocks:
            later = self._calls[t]
            later.waits_for.discard(token)
            if later.out:
                freed.append(later)
        self.held_now -= len(freed)
        freed.sort(key=lambda c: c.seq)
        return [c.token for c in freed]

    def is_held(self, token: Hashable) -> bool:
        """True while `token` waits for an earlier conflicting call."""
        call = self._calls.get(token)
        return call is not None and not call.out

    def __len__(self) -> int:
        return len(self._calls)

    def _unindex(self, token: Hashable, claims: Claims) -> None:
        keys = [(self._by_entry, e) for e in claims.entries]
        if _claims_fh(claims):
            keys.append((self._by_fh, claims.fh))
        for index, key in keys:
            tokens = index.get(key)
            if tokens is not None:
                tokens.discard(token)
                if not tokens:
                    del index[key]
