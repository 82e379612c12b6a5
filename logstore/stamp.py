"""The stamp: the one value that orders every record in nfs-journal.

A stamp is ``(wall_ns, logical, node_id)``, compared lexicographically; it is
unique and totally ordered (README.md, "The guarantee").
``logstore.hlc`` issues them; everything else only carries, stores and compares
them. That is why the type lives here, in the lowest layer: logstore and
recoveryd must be able to use stamps without importing nfsproxy.

Two encodings, both exact inverses:

* ``to_bytes()``: 16 bytes, big-endian ``wall_ns u64 | logical u32 | node_id u32``,
  so comparing the bytes compares the stamps (RocksDB keys rely on this);
* ``str()``: ``"<wall_ns>.<logical>@<node_id>"``, e.g. ``1700000000123456789.0@3``,
  the single printed form used in log lines, the CLI and error messages.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import ClassVar

__all__ = ["Stamp", "predecessor"]

_U64_MAX = (1 << 64) - 1
_U32_MAX = (1 << 32) - 1
_BYTES = struct.Struct(">QII")
_TEXT = re.compile(r"([0-9]+)\.([0-9]+)@([0-9]+)")
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


@dataclass(frozen=True, slots=True, order=True)
class Stamp:
    """A point in nfs-journal's total order of records.

    ``wall_ns`` is nanoseconds since the Unix epoch (u64), ``logical`` orders
    stamps sharing a wall time (u32), ``node_id`` makes stamps from different
    nodes distinct (u32). Construction checks every range.
    """

    wall_ns: int
    logical: int
    node_id: int

    BYTES: ClassVar[int] = _BYTES.size
    ZERO: ClassVar[Stamp]
    MAX: ClassVar[Stamp]

    def __post_init__(self) -> None:
        _check_field("wall_ns", self.wall_ns, _U64_MAX)
        _check_field("logical", self.logical, _U32_MAX)
        _check_field("node_id", self.node_id, _U32_MAX)

    def to_bytes(self) -> bytes:
        """16 bytes whose byte order is the stamp order."""
        return _BYTES.pack(self.wall_ns, self.logical, self.node_id)

    @classmethod
    def from_bytes(cls, data: bytes | bytearray | memoryview) -> Stamp:
        """Inverse of ``to_bytes``; raises ``ValueError`` unless given exactly 16 bytes."""
        if len(data) != _BYTES.size:
            raise ValueError(f"a stamp is {_BYTES.size} bytes, got {len(data)}")
        return cls(*_BYTES.unpack(data))

    def __str__(self) -> str:
        return f"{self.wall_ns}.{self.logical}@{self.node_id}"

    @classmethod
    def parse(cls, text: str) -> Stamp:
        """Inverse of ``str()``: ``"<wall_ns>.<logical>@<node_id>"``.

        Raises ``ValueError`` naming the expected form if ``text`` does not match
        or a field is out of range.
        """
        match = _TEXT.fullmatch(text) if isinstance(text, str) else None
        if match is None:
            raise ValueError(
                f"invalid stamp {text!r}: expected '<wall_ns>.<logical>@<node_id>' "
                "with decimal fields, e.g. '1700000000123456789.0@1'")
        wall_ns, logical, node_id = (int(g) for g in match.groups())
        try:
            return cls(wall_ns, logical, node_id)
        except ValueError as exc:
            raise ValueError(f"invalid stamp {text!r}: {exc}") from None

    def iso(self) -> str:
        """The wall time as ISO-8601 UTC with microseconds, e.g.
        ``2023-11-14T22:13:20.123456Z`` (nanoseconds are truncated)."""
        seconds, ns = divmod(self.wall_ns, 1_000_000_000)
        moment = _EPOCH + timedelta(seconds=seconds, microseconds=ns // 1000)
        return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _check_field(name: str, value: object, maximum: int) -> None:
    # bool is an int subclass; a True node_id is always a bug, not a 1.
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"Stamp.{name} must be an int, got {type(value).__name__}")
    if not 0 <= value <= maximum:
        raise ValueError(f"Stamp.{name} must be in [0, {maximum}], got {value}")


def predecessor(stamp: Stamp) -> Stamp | None:
    """The greatest stamp below `stamp` (None below ZERO): turns an inclusive
    lower bound into the exclusive one the shards' record scans take."""
    wall, logical, node = stamp.wall_ns, stamp.logical, stamp.node_id
    if node:
        return Stamp(wall, logical, node - 1)
    if logical:
        return Stamp(wall, logical - 1, (1 << 32) - 1)
    if wall:
        return Stamp(wall - 1, (1 << 32) - 1, (1 << 32) - 1)
    return None


Stamp.ZERO = Stamp(0, 0, 0)
Stamp.MAX = Stamp(_U64_MAX, _U32_MAX, _U32_MAX)
