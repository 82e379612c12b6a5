"""LOG frames as a shipper holds them between reading and sending.

A ``ReadFrame`` is a frame whose payload was copied out of the reader's
buffer, so it outlives the read; it finds the record's data split once, when
the record is shipped.
"""

from __future__ import annotations

from logstore.record import data_field_at
from logstore.segment import Frame

__all__ = ["ReadFrame"]

_UNKNOWN = -1  # ReadFrame.data_at not looked for yet


class ReadFrame:
    """A validated LOG frame, its payload copied out of the read buffer."""

    __slots__ = ("seq", "payload", "stamp", "route_kind", "route", "_data_at")

    def __init__(self, frame: Frame):
        self.seq = frame.seq
        self.payload = bytes(frame.payload)
        self.stamp = frame.stamp
        self.route_kind = frame.route_kind
        self.route = frame.route
        self._data_at = _UNKNOWN

    def data_at(self) -> int | None:
        """Where the record's trailing data field starts (``data_field_at``), found once."""
        if self._data_at == _UNKNOWN:
            at = data_field_at(self.payload)
            self._data_at = 0 if at is None else at
        return self._data_at or None
