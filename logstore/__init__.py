"""The journal's durable LOG: stamps, framed segments, recovery, cursors.

The proxy writes the LOG through its native core (group commit included);
this package specifies the format (FORMAT.md) and reads, recovers and checks it.

The lowest layer of nfs-journal: it imports neither recoveryd nor nfsproxy.
"""

import importlib

#: Where each name lives. Loaded on first use, so that `logstore.stamp`
#: alone (as the CLI needs it) does not load the LOG and its CRC code.
_HOME = {
    "Durability": "commit",
    "DEFAULT_MAX_RECORD_BYTES": "log", "DEFAULT_SEGMENT_BYTES": "log", "Log": "log",
    "LogClosedError": "log", "LogCursor": "log", "LogGapError": "log", "SegmentInfo": "log",
    "TornTail": "log",
    "LogCorruptError": "segment", "LogError": "segment",
    "Stamp": "stamp",
}


def __getattr__(name: str):
    home = _HOME.get(name)
    if home is None:
        raise AttributeError(f"module 'logstore' has no attribute {name!r}")
    return getattr(importlib.import_module(f"logstore.{home}"), name)


__all__ = [
    "DEFAULT_MAX_RECORD_BYTES", "DEFAULT_SEGMENT_BYTES", "Durability",
    "Log", "LogClosedError", "LogCorruptError", "LogCursor", "LogError", "LogGapError",
    "SegmentInfo", "Stamp", "TornTail",
]
