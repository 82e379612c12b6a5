"""The journal's durable LOG: stamps, framed segments, recovery, cursors, group commit.

The lowest layer of nfs-journal: it imports neither recoveryd nor nfsproxy.
"""

from logstore.commit import Durability, GroupCommitter
from logstore.log import (
    DEFAULT_MAX_RECORD_BYTES, DEFAULT_SEGMENT_BYTES, Log, LogClosedError, LogCursor,
    LogGapError, SegmentInfo, TornTail,
)
from logstore.segment import LogCorruptError, LogError
from logstore.stamp import Stamp

__all__ = [
    "DEFAULT_MAX_RECORD_BYTES", "DEFAULT_SEGMENT_BYTES", "Durability", "GroupCommitter",
    "Log", "LogClosedError", "LogCorruptError", "LogCursor", "LogError", "LogGapError",
    "SegmentInfo", "Stamp", "TornTail",
]
