"""Moments users type (`--at`, `--since`, `--until`) as query-bound stamps.

Accepted forms (``FORMS``, also the text of every error):

* ISO-8601: ``2026-01-05T10:00:00Z``, ``2026-01-05T12:00:00.123456789+02:00``,
  ``2026-01-05 10:00``, ``2026-01-05``. A time without a zone is UTC (not
  the local zone: a restore must not depend on the machine's TZ setting).
  Up to nine fraction digits are kept (``datetime`` keeps only six).
* relative to now: ``-30s``, ``-10m``, ``-2h``, ``-1d``, combined as
  ``-1h30m``;
* ``now``;
* an exact stamp as nfs-journal prints it: ``<wall_ns>.<logical>@<node>``.

A parsed time is a *query bound*, a plain ``Stamp``: it only selects records
(stamp <= bound) and must never be fed to a clock (logstore/hlc.py:
types mark capability). A wall time given without logical and node covers
everything stamped in that nanosecond: it becomes
``Stamp(wall_ns, 2**32-1, 2**32-1)``, the greatest stamp of that nanosecond.

``format_time`` is the inverse for messages: ISO-8601 UTC with all nine
fraction digits, so a bound printed by an error message can be pasted back
and still covers the moment it names.
"""

from __future__ import annotations

import re
import time
from datetime import datetime, timedelta, timezone

from logstore.stamp import Stamp

__all__ = ["parse_time", "format_time", "FORMS", "END_OF_NS"]

_U32_MAX = (1 << 32) - 1

#: (logical, node) of the greatest stamp in a nanosecond.
END_OF_NS = (_U32_MAX, _U32_MAX)

FORMS = ("ISO-8601 (e.g. 2026-01-05T10:00:00Z; without a zone it is UTC), "
         "relative to now (-30s, -10m, -2h, -1d, -1h30m), 'now', "
         "or an exact stamp <wall_ns>.<logical>@<node>")

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_RELATIVE = re.compile(r"-((?:[0-9]+[smhdw])+)")
_RELATIVE_PART = re.compile(r"([0-9]+)([smhdw])")
_UNIT_NS = {"s": 1_000_000_000, "m": 60_000_000_000, "h": 3_600_000_000_000,
            "d": 86_400_000_000_000, "w": 7 * 86_400_000_000_000}
_STAMP = re.compile(r"[0-9]+\.[0-9]+@[0-9]+")
# The fraction of the seconds, so that nanoseconds survive datetime.
_FRACTION = re.compile(r"(T?[0-9]{2}:?[0-9]{2}:?[0-9]{2})[.,]([0-9]+)")


def _end_of(wall_ns: int) -> Stamp:
    if not 0 <= wall_ns < 1 << 64:
        raise ValueError(f"{wall_ns} ns since the epoch is out of range")
    return Stamp(wall_ns, *END_OF_NS)


def _error(text: str, why: str = "") -> ValueError:
    why = f" ({why})" if why else ""
    return ValueError(f"cannot read time {text!r}{why}; give {FORMS}")


def parse_time(text: str, now_ns: int | None = None) -> Stamp:
    """The query bound `text` names; raises ValueError listing the accepted forms.

    ``now_ns`` (default: the wall clock) anchors ``now`` and relative times.
    """
    if not isinstance(text, str):
        raise _error(repr(text), "not text")
    t = text.strip()
    if not t:
        raise _error(text, "empty")
    if now_ns is None:
        now_ns = time.time_ns()
    if t.lower() == "now":
        return _end_of(now_ns)
    if m := _RELATIVE.fullmatch(t.lower()):
        delta_ns = sum(int(n) * _UNIT_NS[u] for n, u in _RELATIVE_PART.findall(m.group(1)))
        if delta_ns > now_ns:
            raise _error(text, "before 1970")
        return _end_of(now_ns - delta_ns)
    if _STAMP.fullmatch(t):
        try:
            return Stamp.parse(t)
        except ValueError as e:
            raise _error(text, str(e).split(": ", 1)[-1]) from None
    return _end_of(_iso_ns(text, t))


def _iso_ns(text: str, t: str) -> int:
    extra_ns = 0
    if m := _FRACTION.search(t):
        digits = m.group(2)
        if len(digits) > 9:
            raise _error(text, "more than nine fraction digits")
        extra_ns = int(digits.ljust(9, "0"))
        t = t[:m.start()] + m.group(1) + t[m.end():]
    if t.endswith(("z", "Z")):
        t = t[:-1] + "+00:00"
    try:
        moment = datetime.fromisoformat(t)
    except ValueError:
        raise _error(text) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    delta = moment - _EPOCH
    wall_ns = (delta // timedelta(microseconds=1)) * 1000 + extra_ns
    if wall_ns < 0:
        raise _error(text, "before 1970")
    try:
        return _end_of(wall_ns).wall_ns
    except ValueError as e:
        raise _error(text, str(e)) from None


def format_time(stamp: Stamp | int) -> str:
    """A stamp's (or a wall time's) moment as ISO-8601 UTC with nanoseconds,
    e.g. ``2026-01-05T10:00:00.123456789Z``; ``parse_time`` reads it back to a
    bound at or above the stamp."""
    wall_ns = stamp.wall_ns if isinstance(stamp, Stamp) else stamp
    seconds, ns = divmod(wall_ns, 1_000_000_000)
    moment = _EPOCH + timedelta(seconds=seconds)
    return moment.strftime("%Y-%m-%dT%H:%M:%S") + f".{ns:09d}Z"
