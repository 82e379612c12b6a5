"""Progress of a long command (restore, push-back, baseline) on stderr.

On a terminal: one bar, redrawn in place at most ten times a second and
erased at the end (the command then prints its one-line summary). Anywhere
else (a log file, a pipe, systemd): plain lines, one every ``interval_s``
seconds while the work runs (``NFSJ_PROGRESS_INTERVAL``, default 10; the
first after one interval, so a quick command that fails still prints its
error as its only line) and a final one that says what was done, so a log
shows that a long restore is alive and where it is.

It imports nothing heavy (no rich): a command pays only for what it draws.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from typing import Callable, TextIO

__all__ = ["Progress", "human_bytes"]

REDRAW_S = 0.1
LINE_INTERVAL_S = 10.0
INTERVAL_ENV = "NFSJ_PROGRESS_INTERVAL"


def human_bytes(n: float) -> str:
    """Bytes for people: 512 B, 4.0 KiB, 1.5 GiB."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


class Progress:
    """Where a long command is, shown on ``stream`` (default stderr).

    ``label`` names the work ("restore", "push", "baseline"); ``items`` what
    is counted ("files", "objects"). Call ``update`` as often as you like
    (it draws only when due) and ``finish`` once at the end with what was
    done. ``quiet`` shows nothing; ``tty`` overrides the terminal check.
    """

    def __init__(self, label: str, *, items: str = "files", quiet: bool = False,
                 stream: TextIO | None = None, tty: bool | None = None,
                 interval_s: float | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.label = label
        self.items = items
        self._stream = stream if stream is not None else sys.stderr
        self._quiet = quiet
        self._tty = _is_tty(self._stream) if tty is None else tty
        self._interval = _interval() if interval_s is None else interval_s
        self._clock = clock
        self._start = clock()
        self._next = self._start if self._tty else self._start + self._interval
        self._drawn = False
        self.done_bytes = 0
        self.total_bytes: int | None = None
        self.done_items = 0
        self.total_items: int | None = None
        self.phase = ""
        self.current = ""

    def update(self, *, done_bytes: int | None = None, total_bytes: int | None = None,
               done_items: int | None = None, total_items: int | None = None,
               phase: str | None = None, current: str | None = None) -> None:
        """Record where the work is; redraw (or print a line) when due."""
        if done_bytes is not None:
            self.done_bytes = done_bytes
        if total_bytes is not None:
            self.total_bytes = total_bytes or None
        if done_items is not None:
            self.done_items = done_items
        if total_items is not None:
            self.total_items = total_items or None
        if current is not None:
            self.current = current
        if phase is not None:
            self.phase = phase
        now = self._clock()
        if self._quiet or now < self._next:
            return
        self._next = now + (REDRAW_S if self._tty else self._interval)
        self._draw(now)

    def note(self, text: str) -> None:
        """A message that must stay, even with ``quiet`` (why the work has not begun, say)."""
        self._erase()
        self._stream.write(f"{text}\n")
        self._stream.flush()

    def finish(self, summary: str | None = None) -> None:
        """End the display; on a non-terminal, a final line says what was done."""
        if self._quiet:
            return
        self._erase()
        if not self._tty:
            elapsed = self._clock() - self._start
            text = summary if summary is not None else self._counts()
            self._stream.write(f"{self.label}: done: {text} in {elapsed:.1f}s\n")
            self._stream.flush()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, kind, *exc: object) -> None:
        if kind is not None and not self._quiet:
            self._erase()  # the error's own line follows

    # -- drawing -----------------------------------------------------------------------------

    def _counts(self) -> str:
        parts = []
        if self.done_items or self.total_items:
            of = f"/{self.total_items}" if self.total_items else ""
            parts.append(f"{self.done_items}{of} {self.items}")
        of = f"/{human_bytes(self.total_bytes)}" if self.total_bytes else ""
        parts.append(f"{human_bytes(self.done_bytes)}{of}")
        return ", ".join(parts)

    def _fraction(self) -> float | None:
        if self.total_bytes:
            return min(1.0, self.done_bytes / self.total_bytes)
        if self.total_items:
            return min(1.0, self.done_items / self.total_items)
        return None

    def _line(self, now: float) -> str:
        elapsed = now - self._start
        rate = f"{self.done_bytes / elapsed / 1e6:.1f} MB/s" if elapsed > 0.5 and self.done_bytes else ""
        fraction = self._fraction()
        fields = [self._counts()]
        if fraction is not None:
            fields.append(f"{fraction:.0%}")
        if rate:
            fields.append(rate)
        fields.append(f"{elapsed:.0f}s")
        head = f"{self.label}" + (f" ({self.phase})" if self.phase else "")
        return f"{head}: {', '.join(fields)}" + (f": {self.current}" if self.current else "")

    def _draw(self, now: float) -> None:
        line = self._line(now)
        if not self._tty:
            self._stream.write(line + "\n")
            self._stream.flush()
            return
        width = shutil.get_terminal_size((80, 24)).columns
        fraction = self._fraction()
        if fraction is not None and width >= 60:
            cells = 20
            full = int(fraction * cells)
            line = f"[{'#' * full}{'.' * (cells - full)}] {line}"
        self._stream.write("\r\x1b[K" + line[:width - 1])
        self._stream.flush()
        self._drawn = True

    def _erase(self) -> None:
        if self._tty and self._drawn:
            self._stream.write("\r\x1b[K")
            self._stream.flush()
            self._drawn = False


def _interval() -> float:
    try:
        return max(0.0, float(os.environ.get(INTERVAL_ENV, LINE_INTERVAL_S)))
    except ValueError:
        return LINE_INTERVAL_S


def _is_tty(stream: TextIO) -> bool:
    try:
        return stream.isatty() and os.environ.get("TERM") != "dumb"
    except (AttributeError, ValueError):
        return False
