"""Point-in-time reconstruction: the client side of the Restore API.

Everything that gives the past back goes through here: ``nfsj restore``,
``nfsj cat`` and ``nfsj history`` (nfsproxy/cli/restore.py), the read-only
point-in-time NFS export, push-back to the NAS and verify. They are thin
clients of this package, which is itself a client of every shard's Restore
service (proto/journal.proto, recoveryd/restore_service.py).

One module per concept:

* ``shards``: gRPC channels to every shard, calls fanned out, streams merged
  in stamp order;
* ``cut``: the cut at a moment and its proof (baseline, consistent point,
  gaps), and a cut's records of one handle;
* ``namespace``: the one tree builder (the namespace and attributes at a
  cut), and one path resolved from its directories' own records;
* ``replay``: one file's bytes at a cut from its records, pure;
* ``cache``: materialised files for reads at any offset;
* ``local``: the writer of a restore into a local directory;
* ``history``: what changed a path, when, from whom;
* ``client``: ``RestoreClient``, which ties them together.
"""

from __future__ import annotations

from .cache import DEFAULT_CACHE_BYTES
from .client import RestoreClient
from .cut import Cut
from .errors import RestoreError, RestoreRefused, ShardError
from .history import HistoryEntry
from .local import RestoreProgress, RestoreSummary, check_dest, rename_noreplace
from .namespace import TREE_OPS
from .shards import Shards

__all__ = [
    "Shards", "RestoreClient", "Cut", "RestoreError", "RestoreRefused", "ShardError",
    "RestoreProgress", "RestoreSummary", "HistoryEntry", "TREE_OPS", "DEFAULT_CACHE_BYTES",
    "check_dest", "rename_noreplace",
]
