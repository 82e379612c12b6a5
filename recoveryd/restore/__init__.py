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

Each name below loads its module when first used: `nfsj cat` needs the cut,
the path and one file's replay, not the tree writer, the bulk path or
history (tests/unit/test_cli_startup.py).
"""

import sys

_HOMES = {
    "Shards": "shards", "RestoreClient": "client", "Cut": "cut", "RestoreError": "errors",
    "RestoreRefused": "errors", "ShardError": "errors", "RestoreProgress": "local",
    "RestoreSummary": "local", "HistoryEntry": "history", "TREE_OPS": "namespace",
    "DEFAULT_CACHE_BYTES": "cache", "check_dest": "local", "rename_noreplace": "local",
}

__all__ = list(_HOMES)


def __getattr__(name: str):
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    # The import statement's path, not importlib's: `python -X importtime` reports only that one.
    home = f"{__name__}.{_HOMES[name]}"
    __import__(home)
    value = getattr(sys.modules[home], name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_HOMES))
