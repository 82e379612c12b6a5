"""Flow control: why a connection is not being read, kept in one place.

As in uvicorn's ``FlowControl``, one object per connection decides when its
transport reads. Here a connection can be paused for several reasons at
once: a client connection stops being read while any of its NAS
connections has a full write buffer and while one of its calls is held for
LOG space; a NAS connection stops being read while its client's write
buffer is full. Each reason is paused and resumed on its own, and reading
resumes only when none is left, so one reason clearing never undoes
another (a drained NAS buffer must not let a client flood a full LOG).
"""

from __future__ import annotations

import asyncio
from collections.abc import Hashable

__all__ = ["FlowControl"]


class FlowControl:
    """The set of reasons a transport's reading is paused."""

    __slots__ = ("_transport", "_reasons")

    def __init__(self) -> None:
        self._transport: asyncio.Transport | None = None
        self._reasons: set[Hashable] = set()

    def attach(self, transport: asyncio.Transport) -> None:
        """Control `transport` from now on; reasons given before it existed apply at once."""
        self._transport = transport
        if self._reasons:
            transport.pause_reading()

    def pause(self, reason: Hashable) -> None:
        if not self._reasons and self._transport is not None and not self._transport.is_closing():
            self._transport.pause_reading()
        self._reasons.add(reason)

    def resume(self, reason: Hashable) -> None:
        if reason not in self._reasons:
            return
        self._reasons.discard(reason)
        if not self._reasons and self._transport is not None and not self._transport.is_closing():
            self._transport.resume_reading()

    @property
    def paused(self) -> bool:
        return bool(self._reasons)
