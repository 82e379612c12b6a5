"""The proxy's hybrid logical clock, kept in the native core.

The specification is ``logstore.hlc``'s docstring; shards use that Python
class. The proxy's clock is this one: the same interface and semantics (the
same persisted-upper-bound file, refusals and jumps counted), backed by
``nfsproxy._dataplane.HLC`` so that the native relay and the Python baseline
take stamps from ONE clock. Native code gets the clock itself from ``native``.
"""

from __future__ import annotations

import os
import time
from typing import Callable

from logstore.hlc import (
    DEFAULT_MAX_OFFSET_NS, DEFAULT_PERSIST_INTERVAL_NS, ClockStamp, UntrustworthyStampError,
)
from nfsproxy import _dataplane

__all__ = [
    "HLC", "ClockStamp", "UntrustworthyStampError",
    "DEFAULT_MAX_OFFSET_NS", "DEFAULT_PERSIST_INTERVAL_NS",
]


class HLC:
    """A hybrid logical clock for one node (see ``logstore.hlc.HLC``). Thread-safe.

    ``physical_clock`` defaults to the system clock read natively; a Python
    callable (tests drive the clock by hand) is called for every reading.
    """

    def __init__(
        self,
        node_id: int,
        *,
        physical_clock: Callable[[], int] = time.time_ns,
        max_offset_ns: int = DEFAULT_MAX_OFFSET_NS,
        persist_path: str | os.PathLike[str] | None = None,
        persist_interval_ns: int = DEFAULT_PERSIST_INTERVAL_NS,
        forward_jump_threshold_ns: int | None = None,
    ) -> None:
        self._native = _dataplane.HLC(
            node_id, physical_clock=None if physical_clock is time.time_ns else physical_clock,
            max_offset_ns=max_offset_ns,
            persist_path=os.fspath(persist_path) if persist_path is not None else None,
            persist_interval_ns=persist_interval_ns,
            forward_jump_threshold_ns=forward_jump_threshold_ns)

    @property
    def native(self) -> _dataplane.HLC:
        """The native clock, for the native relay to stamp with."""
        return self._native

    def now(self) -> ClockStamp:
        """Stamp a local or send event; strictly greater than every stamp this
        clock handed out before (and, with ``persist_path``, before a restart).

        Raises ``OSError`` if the upper bound must be persisted and cannot be.
        """
        try:
            return ClockStamp(*self._native.now())
        except OSError as e:
            e.add_note(str(e.strerror))  # "... (persisting HLC upper bound B to PATH)"
            raise

    def update(self, remote: ClockStamp) -> None:
        """Merge a peer's clock reading; ``TypeError`` unless a ``ClockStamp``,
        ``UntrustworthyStampError`` (counted, clock unchanged) if it is more
        than ``max_offset_ns`` ahead."""
        if not isinstance(remote, ClockStamp):
            raise TypeError(
                f"HLC.update() takes a ClockStamp, not {type(remote).__name__} "
                f"({remote!s}): only clock readings may move a clock, and a "
                "plain Stamp (a query bound, a stable stamp) never does")
        try:
            self._native.update(remote.wall_ns, remote.logical, remote.node_id)
        except _dataplane.NativeUntrustworthyStamp as e:
            _, physical_ns, offset_ns, max_offset_ns = e.args
            raise UntrustworthyStampError(remote, physical_ns, offset_ns, max_offset_ns) from None

    def check_physical(self) -> None:
        """Read the physical clock for jump detection and ``offset_ns`` only."""
        self._native.check_physical()

    @property
    def node_id(self) -> int:
        return self._native.node_id

    @property
    def max_offset_ns(self) -> int:
        return self._native.max_offset_ns

    @property
    def offset_ns(self) -> int:
        return self._native.offset_ns

    @property
    def rejections_total(self) -> int:
        return self._native.rejections_total

    @property
    def backward_jumps_total(self) -> int:
        return self._native.backward_jumps_total

    @property
    def max_backward_jump_ns(self) -> int:
        return self._native.max_backward_jump_ns

    @property
    def forward_jumps_total(self) -> int:
        return self._native.forward_jumps_total

    @property
    def persisted_bound_ns(self) -> int | None:
        return self._native.persisted_bound_ns
