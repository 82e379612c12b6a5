"""Rebuilding, after an unclean stop, the records write-ahead intents stand for.

In ``sync`` durability the native relay writes a mutation's intent (its
record as the call made it) to the LOG when the call goes to the NAS, and
the reply waits for the intent's fsync, not the record's: the fsync overlaps
the NAS's work. The record follows when the NAS answers and is fsynced a
moment later. A crash in that moment leaves an intent whose client may have
seen success while its record is lost. The next start turns each such
orphan into its record, before anything else is appended:

* the NAS's reply is unknown, so the record says so (``status`` is
  ``OUTCOME_UNKNOWN``) and is replayed as applied (``ok``): its client may
  have acted on the success, and a mutation that failed on the NAS changed
  nothing a restore would show differently, save a name it then creates;
* a CREATE's new handle came only in the reply, so the rebuilt record binds
  no name (the restore can only miss it, never invent it);
* the unclean stop's gap spans these stamps, so a cut among them is marked
  unproven until a baseline heals it, as for any unclean stop.

Only the last run's intents are searched: a start notes the seq it began at
(``RUNNING``), and settles the intents before it.
"""

from __future__ import annotations

import logging

from logstore.record import Op, parse_record, record_parts

from nfsproxy.native.log import NativeLog
from nfsproxy.relay.journal import frame_fields

__all__ = ["OUTCOME_UNKNOWN", "rebuild_orphans"]

logger = logging.getLogger(__name__)

#: ``Record.status`` of a record rebuilt from its intent: no nfsstat3 (those
#: are below 0x10000) and no RPC failure (0x10000 + accept_stat).
OUTCOME_UNKNOWN = 0x20000


def rebuild_orphans(log: NativeLog, from_seq: int) -> int:
    """Append (and sync) the record of every intent from ``from_seq`` on that
    no record followed; returns how many."""
    orphans = log.orphan_intents(from_seq)
    for seq, _stamp, payload in orphans:
        record = parse_record(payload)
        record.ok = True
        record.status = OUTCOME_UNKNOWN
        log.append(record_parts(record), **frame_fields(record))
        logger.warning("LOG seq %d: the write-ahead intent of a %s had no record: rebuilt, its outcome unknown",
                       seq, Op.Name(record.op))
    if orphans:
        log.sync()
    return len(orphans)
