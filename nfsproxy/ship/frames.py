"""One LOG read shared by every shard's shipper.

Each ``Shipper`` walks the whole LOG (its shard's records are spread over
all of it), so with N shards every frame would be read, CRC-checked and
copied N times. A ``FrameWindow`` keeps the frames most recently read by any
shipper, by seq, up to a byte bound: shippers that go at about the same pace
(the usual case, and a backlog caught up after a restart) read each frame
once between them, and the split of a record from its data is found once.
A shipper that is far behind (a rewind, a shard catching up alone) misses
the window and reads privately, as before; nothing depends on a hit.
Shippers read only synced frames, which the LOG never rewrites, so a seq
in the window always names the bytes the LOG holds (or held, if trimmed
since: a shipper decides to send a gap before it reads).

Thread-safe: shippers read the LOG in their own worker threads.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

from logstore.record import data_field_at
from logstore.segment import Frame

__all__ = ["FrameWindow", "ReadFrame"]

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


class FrameWindow:
    """The last ``max_bytes`` of frames read from one LOG, by seq (see the module docstring)."""

    def __init__(self, max_bytes: int = 64 << 20):
        if max_bytes < 1:
            raise ValueError("FrameWindow.max_bytes must be >= 1")
        self.max_bytes = max_bytes
        self._frames: OrderedDict[int, ReadFrame] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits_total = 0
        self.misses_total = 0

    def get(self, seq: int) -> ReadFrame | None:
        with self._lock:
            frame = self._frames.get(seq)
            if frame is None:
                self.misses_total += 1
            else:
                self.hits_total += 1
            return frame

    def put(self, frame: ReadFrame) -> None:
        """Keep ``frame``; the frames put longest ago go once the window is full."""
        with self._lock:
            if frame.seq in self._frames:
                return
            self._frames[frame.seq] = frame
            self._bytes += len(frame.payload)
            while self._bytes > self.max_bytes and len(self._frames) > 1:
                _, old = self._frames.popitem(last=False)
                self._bytes -= len(old.payload)

    def __len__(self) -> int:
        with self._lock:
            return len(self._frames)
