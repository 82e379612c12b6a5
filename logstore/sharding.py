"""Which recovery shard a record belongs to. Sans-IO: records in, shard numbers out.

The rule (README.md, "How it works"): records are sharded by file handle,
so that everything a restore needs to rebuild one file, or one directory's
entries, lies on one shard.

* Data and attribute calls (WRITE, SETATTR, COMMIT, NFSACL's SETACL) go by the object they
  change: ``fh``.
* Namespace calls (CREATE, MKDIR, SYMLINK, MKNOD, REMOVE, RMDIR, RENAME) go by
  the directory whose entries they change: ``dir_fh`` (for RENAME, the source
  directory). LINK adds an entry to ``to_dir_fh``, so it goes by that.
* BIND (the proxy learned that ``fh`` is ``name`` in ``dir_fh``) is namespace
  knowledge about ``dir_fh``'s entries: ``dir_fh``.
* BASELINE pieces carry an object's content as the baseline read it: ``fh``,
  so a file's baseline lies beside the WRITEs replayed on top of it.
* BASELINE_BEGIN and BASELINE_END mark a whole baseline and name no handle,
  and a GAP marker may stand for a lost record of any shard: they go to
  *every* shard (``EVERY_SHARD``), so each shard knows which
  baselines exist and ended. The same record (same stamp) then sits on
  several shards; whoever merges shards' records dedupes by stamp.

The shard is ``crc32c(handle) % n_shards``: stable across processes, hosts
and Python versions (unlike ``hash()``), and cheap. Changing the number of
shards moves most handles; there is no resharding yet.

The rule is the table ``ROUTING_FIELD``; a new record op (e.g. a baseline
op) gets one line there. An op missing from the table raises
``UnroutableRecordError``: guessing a handle would scatter a file's history.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

import crc32c

from logstore.record import Op, Record
from logstore.segment import ROUTE_EVERY_SHARD, ROUTE_HANDLE, ROUTE_UNKNOWN

__all__ = ["ROUTING_FIELD", "EVERY_SHARD", "UnroutableRecordError", "routing_handle",
           "shard_of_handle", "shard_of", "shards_of", "belongs_to", "frame_route"]

EVERY_SHARD = "*"  # ROUTING_FIELD value: the record goes to all shards


class UnroutableRecordError(ValueError):
    """The record's op has no routing rule (a bug, or a LOG written by a newer version)."""


ROUTING_FIELD: Mapping[int, str] = MappingProxyType({
    # data and attributes: the object itself
    Op.WRITE: "fh",
    Op.SETATTR: "fh",
    Op.COMMIT: "fh",
    Op.SETACL: "fh",          # an attribute of the object (NFSACL)
    # namespace: the directory whose entries change
    Op.CREATE: "dir_fh",
    Op.MKDIR: "dir_fh",
    Op.SYMLINK: "dir_fh",
    Op.MKNOD: "dir_fh",
    Op.REMOVE: "dir_fh",
    Op.RMDIR: "dir_fh",
    Op.RENAME: "dir_fh",      # the source directory
    Op.LINK: "to_dir_fh",     # the directory that gains the new name
    # learned names belong with the directory's entries
    Op.BIND: "dir_fh",
    # baselines
    Op.BASELINE: "fh",
    Op.BASELINE_BEGIN: EVERY_SHARD,
    Op.BASELINE_END: EVERY_SHARD,
    # a gap may hide a record of any shard: every shard learns it
    Op.GAP: EVERY_SHARD,
})


def _field(record: Record) -> str:
    field = ROUTING_FIELD.get(record.op)
    if field is None:
        name = Op.Name(record.op) if record.op in Op.values() else "unknown"
        raise UnroutableRecordError(f"no sharding rule for record op {record.op} ({name})")
    return field


def routing_handle(record: Record) -> bytes:
    """The file handle that decides ``record``'s shard (see the module docstring).

    Raises ``UnroutableRecordError`` for an op without a rule, or one that
    goes to every shard.
    """
    field = _field(record)
    if field == EVERY_SHARD:
        raise UnroutableRecordError(f"{Op.Name(record.op)} records go to every shard; "
                                    "use shards_of")
    return getattr(record, field)


def shard_of_handle(handle: bytes, n_shards: int) -> int:
    """``crc32c(handle) % n_shards``."""
    if n_shards < 1:
        raise ValueError(f"n_shards must be >= 1, got {n_shards}")
    return crc32c.crc32c(handle) % n_shards


def shard_of(record: Record, n_shards: int) -> int:
    """The shard (0-based) that stores ``record``, out of ``n_shards``.

    For ops that go to every shard this raises ``UnroutableRecordError``;
    ``shards_of`` and ``belongs_to`` handle every op.
    """
    return shard_of_handle(routing_handle(record), n_shards)


def shards_of(record: Record, n_shards: int) -> range:
    """Every shard that stores ``record``: one, or all of them."""
    if _field(record) == EVERY_SHARD:
        if n_shards < 1:
            raise ValueError(f"n_shards must be >= 1, got {n_shards}")
        return range(n_shards)
    k = shard_of(record, n_shards)
    return range(k, k + 1)


def frame_route(record: Record) -> tuple[int, int]:
    """``(route_kind, route)`` for ``record``'s LOG frame header (logstore/FORMAT.md).

    A shipper routes the frame without parsing the record: ``ROUTE_HANDLE``
    frames go to shard ``route % n_shards`` (``route`` is the routing handle's
    crc32c, as ``shard_of_handle`` computes), ``ROUTE_EVERY_SHARD`` frames to
    all, ``ROUTE_UNKNOWN`` ones (an op without a rule) must be parsed.
    """
    field = ROUTING_FIELD.get(record.op)
    if field is None:
        return ROUTE_UNKNOWN, 0
    if field == EVERY_SHARD:
        return ROUTE_EVERY_SHARD, 0
    return ROUTE_HANDLE, crc32c.crc32c(getattr(record, field))


def belongs_to(record: Record, shard: int, n_shards: int) -> bool:
    """Whether shard ``shard`` (of ``n_shards``) stores ``record``."""
    return shard in shards_of(record, n_shards)
