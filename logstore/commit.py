"""Durability: when an append counts as done.

Group commit itself is native (the proxy's data plane,
``nfsproxy/dataplane/src/log/commit.rs``, reached from asyncio through
``nfsproxy.native.log.NativeCommitter``): one fsync thread shares each
fsync among every record written while the previous one ran.

* ``sync`` (RPO 0): an append resolves only once its record is fsynced.
* ``async``: an append resolves right after the write; a background flush
  follows within ``flush_interval_s``. The records not yet fsynced are the
  RPO window, which the committer measures.
* ``strict``: appends resolve as in ``sync``; it tells the relay that every
  mutation's reply waits for its record's fsync, an UNSTABLE WRITE's too
  (``sync`` on the native data plane answers those at once, as NFS allows).
"""

from __future__ import annotations

import enum

__all__ = ["Durability"]


class Durability(str, enum.Enum):
    """When an append resolves (after the fsync, or after the write), and which
    replies the relay holds for it."""

    SYNC = "sync"
    ASYNC = "async"
    STRICT = "strict"
