"""Point-in-time reconstruction: the client side of the Restore API.

Everything that gives the past back goes through here: ``nfsj restore``,
``nfsj cat`` and ``nfsj history`` (nfsproxy/cli/restore.py), the read-only
point-in-time NFS export and push-back to the NAS. They are thin clients of
this module, which is itself a client of every shard's Restore service
(proto/journal.proto, recoveryd/restore_service.py).

The cut (README.md, "The guarantee")
-------------------------------------
A restore at ``T`` delivers every record stamped at or below ``T`` and none
above: the *cut* at ``T``. ``RestoreClient.cut`` decides whether ``T`` can
be delivered, and proves it:

* a *complete* baseline must have ended at or before ``T``. Complete means
  every shard holds its ``BASELINE_END`` (the markers go to every shard;
  shipping is in LOG order, so a shard holding the END holds every earlier
  piece of it). The restore starts from the newest such baseline. Before the
  first one ended nothing can be restored: the journal alone holds only
  changes. Refused, naming the valid range.
* ``T`` must lie below the *consistent point*, the least frontier over every
  shard and stream (recoveryd/status.py, ``overall``): only then does every
  shard provably hold every record stamped at or below ``T``. Refused,
  naming the valid range, unless the caller allows an *unproven* cut, which
  says so in every report.
* past a *gap* (records that may be missing: recoveryd/frontier.py), ``T``
  is proven only from a baseline that began after the gap and ended at or
  before ``T`` (``frontier.restore_baseline``); the restore starts from the
  newest such baseline. Otherwise it is refused the same way.

A ``Cut`` carries the frontiers that proved it; ``str(cut)`` prints the cut
and its proof in one line, which every restore shows its user at the end.

Reconstruction
--------------
With the baseline ``B`` (BEGIN stamp ``b``) and the bound ``T``:

* the namespace: ``tree(cut)`` merges every shard's ``Scan`` of the stamps
  in ``[b, T]`` (``heapq.merge`` by stamp; BASELINE_BEGIN/END sit on every
  shard, so equal stamps are one record) and applies them to a
  ``recoveryd.tree.Tree``. It asks only for namespace ops, SETATTR (so
  directories' and symlinks' modes are current) and baseline pieces, without
  data: a file written 10,000 times costs nothing here.
* one file's bytes: ``file_records(cut, fh)`` merges every shard's
  ``FileRecords`` of that handle in ``[b, T]`` with data (a file's WRITEs lie
  on the shard of its handle, its CREATE on the shard of its directory), and
  ``write_file`` replays them onto a file descriptor: a baseline piece that
  starts the file truncates it, pieces and WRITEs are written at their
  offsets, SETATTR sizes and CREATEs truncate, and at the end the file gets
  the size of its newest post-op attributes (the NAS's truth). Pieces of
  baselines other than ``B`` are skipped everywhere: a later baseline cut off
  in the middle would reset objects it never finished reading.

Limits worth knowing:

* A record stamped *before* a baseline piece but applied by the NAS *after*
  the piece's read (a call still in flight when the baseline read the file)
  is replayed before the piece and so is lost under it. The baseline can
  prevent this by reading a file only once the proxy's stable stamp has
  passed the piece's stamp (nfsproxy/nas/baseline.py).
* An object the tree never saw created or read (moved into the export's
  scanned part mid-baseline, say) has no type; it is skipped and listed in
  the summary.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import functools
import hashlib
import heapq
import logging
import os
import shutil
import stat
import tempfile
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import grpc

from logstore.pb import journal_pb2_grpc
from logstore.pb.journal_pb2 import (Attr, BaselineInfo, FileRequest, Op, Record, ScanRequest,
                                     ShardStatusRequest)
from logstore.stamp import Stamp

from .restore_service import predecessor
from .security import BearerToken, open_channel
from .frontier import restore_baseline
from .status import ShardReport, overall, report_gaps
from .timespec import END_OF_NS, format_time
from .acl import XATTR_ACCESS, XATTR_DEFAULT, to_text, to_xattr
from .tree import (BLK, CHR, DIR, FIFO, LNK, NAMESPACE_OPS, REG, SOCK, TYPE_NAMES, Node, Tree,
                   attr_key, show_name)

__all__ = [
    "Shards", "RestoreClient", "Cut", "RestoreError", "RestoreRefused", "ShardError",
    "RestoreProgress", "RestoreSummary", "HistoryEntry", "TREE_OPS", "DEFAULT_CACHE_BYTES",
    "check_dest",
]

#: What a tree rebuild asks the shards for.
TREE_OPS = frozenset(NAMESPACE_OPS | {Op.SETATTR, Op.SETACL, Op.BASELINE, Op.BASELINE_BEGIN,
                                      Op.BASELINE_END})
#: Ops that change a regular file's bytes or size (``write_file``).
DATA_OPS = frozenset({Op.BASELINE, Op.WRITE, Op.SETATTR, Op.CREATE})
# Plain ints for the per-record loops (an enum wrapper's attribute costs a call).
_BASELINE, _WRITE, _SETATTR, _CREATE = int(Op.BASELINE), int(Op.WRITE), int(Op.SETATTR), int(Op.CREATE)

logger = logging.getLogger(__name__)

DEFAULT_CACHE_BYTES = 1 << 30
STATUS_TIMEOUT_S = 5.0
BASELINES_TIMEOUT_S = 60.0
MAX_MESSAGE_BYTES = 512 << 20

_U32_MAX = (1 << 32) - 1


class RestoreError(Exception):
    """A restore cannot go on; the message is one line that says why."""


class RestoreRefused(RestoreError):
    """The request cannot be delivered as asked (a time outside the valid range,
    a destination that is not empty, a path that did not exist)."""


class ShardError(RestoreError):
    """A shard did not answer or failed a call; the message names it."""


#: Renames into a directory whose object is looked up in the source directory,
#: nested this deep, before resolving a path falls back to the whole tree.
_MAX_RENAME_CHAIN = 8


class _NeedTree(Exception):
    """A directory's own records do not tell its entries: rebuild the whole tree."""


# -- the shards ---------------------------------------------------------------------


class Shards:
    """gRPC channels to every recovery shard, in the proxy's ``--shard`` order.

    ``credentials``: ``grpc.ChannelCredentials`` for TLS/mTLS (None: plain
    text, for private networks). ``token``: a bearer token sent with every
    call, for shards that want one to restore (recoveryd/security.py). Close
    it (or use it as a context manager).
    """

    def __init__(self, addresses: Sequence[str], *, credentials: grpc.ChannelCredentials | None = None,
                 token: BearerToken | None = None,
                 status_timeout_s: float = STATUS_TIMEOUT_S) -> None:
        self.addresses = list(addresses)
        if not self.addresses:
            raise RestoreRefused("no shards given: name every recovery shard (--shard HOST:PORT, "
                                 "once per shard, in the same order as the proxy's --shard)")
        self.status_timeout_s = status_timeout_s
        options = [("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                   ("grpc.max_send_message_length", MAX_MESSAGE_BYTES)]
        self._channels: list[grpc.Channel] = []
        for address in self.addresses:
            try:
                channel = open_channel(address, credentials=credentials, token=token, options=options)
            except Exception as e:  # noqa: BLE001  a target grpc cannot parse
                self.close()
                raise ShardError(f"shard {len(self._channels)} ({address}): cannot connect: {e}") from None
            self._channels.append(channel)
        self._restore = [journal_pb2_grpc.RestoreStub(c) for c in self._channels]
        self._journal = [journal_pb2_grpc.JournalStub(c) for c in self._channels]
        self._no_chunks: set[int] = set()   # shards without FileRecordChunks

    def __len__(self) -> int:
        return len(self.addresses)

    def name(self, k: int) -> str:
        return f"shard {k} ({self.addresses[k]})"

    def _error(self, k: int, e: grpc.RpcError, doing: str) -> ShardError:
        code = e.code() if hasattr(e, "code") else None
        details = (e.details() if hasattr(e, "details") else "") or ""
        details = details.splitlines()[0] if details else ""
        if code is grpc.StatusCode.UNAVAILABLE:
            why = _unavailable(details)
        elif code is grpc.StatusCode.DEADLINE_EXCEEDED:
            why = "did not answer in time"
        elif code is grpc.StatusCode.UNIMPLEMENTED:
            why = "does not serve the Restore API (an older recoveryd?)"
        elif code is grpc.StatusCode.UNAUTHENTICATED:
            why = "refused the call"
        else:
            why = f"failed: {code.name if code else 'error'}"
        return ShardError(f"{self.name(k)} {why} while {doing}" + (f": {details}" if details else ""))

    def status(self) -> list[ShardReport]:
        """Every shard's ``Journal.Status``, asked at once; a shard that fails is
        reported down (``ShardReport.error``), never raised."""
        futures = [stub.Status.future(ShardStatusRequest(), timeout=self.status_timeout_s)
                   for stub in self._journal]
        reports = []
        for k, future in enumerate(futures):
            try:
                reports.append(ShardReport(self.addresses[k], future.result()))
            except grpc.RpcError as e:
                reports.append(ShardReport(self.addresses[k], None, str(self._error(k, e, "asked for its status"))))
        return reports

    def baselines(self) -> list[list[BaselineInfo]]:
        """Every shard's baselines; raises ShardError naming a shard that fails."""
        futures = [stub.Baselines.future(ShardStatusRequest(), timeout=BASELINES_TIMEOUT_S)
                   for stub in self._restore]
        out = []
        for k, future in enumerate(futures):
            try:
                out.append(list(future.result().baselines))
            except grpc.RpcError as e:
                raise self._error(k, e, "listing baselines") from None
        return out

    def scan(self, request: ScanRequest) -> Iterator[Record]:
        """Every shard's Scan merged in stamp order, equal stamps once."""
        return _merge([self._stream(k, self._restore[k].Scan, request, "scanning records")
                       for k in range(len(self))])

    def file_records(self, request: FileRequest) -> Iterator[Record]:
        """Every shard's FileRecords merged in stamp order, equal stamps once.

        Asked as ``FileRecordChunks`` (many records to a message); a shard
        that predates it is asked ``FileRecords``, one message per record."""
        return _merge([self._file_stream(k, request) for k in range(len(self))])

    def _file_stream(self, k: int, request: FileRequest) -> Iterator[Record]:
        doing = "reading a file's records"
        if k in self._no_chunks:
            yield from self._stream(k, self._restore[k].FileRecords, request, doing)
            return
        call = self._restore[k].FileRecordChunks(request)
        try:
            for chunk in call:
                for raw in chunk.records:
                    yield Record.FromString(raw)
        except grpc.RpcError as e:
            if e.code() is not grpc.StatusCode.UNIMPLEMENTED:
                raise self._error(k, e, doing) from None
            self._no_chunks.add(k)  # an older recoveryd: it failed before sending anything
            yield from self._stream(k, self._restore[k].FileRecords, request, doing)
        finally:
            call.cancel()

    def _stream(self, k: int, method, request, doing: str) -> Iterator[Record]:
        call = method(request)
        try:
            yield from call
        except grpc.RpcError as e:
            raise self._error(k, e, doing) from None
        finally:
            call.cancel()

    def close(self) -> None:
        for channel in self._channels:
            channel.close()
        self._channels = []

    def __enter__(self) -> Shards:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _unavailable(details: str) -> str:
    text = details.lower()
    if "handshake" in text or "ssl" in text or "certificate" in text:
        return ("failed the TLS handshake (check --tls-ca, and --tls-cert/--tls-key, against the "
                "shard's certificates)")
    if "socket closed" in text or "connection reset" in text:
        return ("closed the connection (does it serve TLS? then pass --tls-ca, and --tls-cert/"
                "--tls-key if it wants client certificates)")
    return "does not answer (is `nfsj recoveryd` running there?)"


def _merge(streams: list[Iterator[Record]]) -> Iterator[Record]:
    last = None
    try:
        for record in heapq.merge(*streams, key=lambda r: r.stamp):
            if record.stamp == last:
                continue  # BASELINE_BEGIN/END: one record held by every shard
            last = record.stamp
            yield record
    finally:
        for s in streams:
            s.close()


# -- the cut ------------------------------------------------------------------------


def _iso(stamp: Stamp) -> str:
    return format_time(stamp)


def _last_proven(point: Stamp) -> Stamp:
    """The greatest whole-nanosecond bound below the consistent point: printed as
    the end of the valid range, so that pasting its ISO form back is accepted."""
    return Stamp(max(point.wall_ns - 1, 0), *END_OF_NS) if point.wall_ns else Stamp.ZERO


@dataclasses.dataclass(frozen=True, eq=False)
class Cut:
    """The point a restore delivers, and its proof.

    ``at``: every record stamped at or below it, none above. ``baseline``:
    the BaselineInfo restored from. ``consistent_point``: the least frontier
    when the cut was taken (None: unknown). ``frontiers``: each shard's
    frontier, by address. ``unproven``: ``at`` lies at or above the
    consistent point (allowed only on request).
    """

    at: Stamp
    baseline: BaselineInfo
    consistent_point: Stamp | None
    frontiers: dict[str, Stamp | None]
    unproven: bool = False

    @property
    def baseline_id(self) -> Stamp:
        return Stamp.from_bytes(self.baseline.baseline_id)

    @property
    def baseline_end(self) -> Stamp:
        return Stamp.from_bytes(self.baseline.end)

    @property
    def key(self) -> tuple[bytes, bytes]:
        """What identifies the cut's content (for caches)."""
        return (self.at.to_bytes(), self.baseline.baseline_id)

    def window(self) -> tuple[bytes, bytes]:
        """(after, until) of the Restore requests: stamps in [baseline_id, at]."""
        lo = predecessor(self.baseline_id)
        return (lo.to_bytes() if lo is not None else b"", self.at.to_bytes())

    def describe(self) -> dict[str, Any]:
        """The cut as a JSON-ready dict."""
        cp = self.consistent_point
        return {
            "at": {"stamp": str(self.at), "time": _iso(self.at)},
            "baseline": {"id": str(self.baseline_id), "end": str(self.baseline_end),
                         "end_time": _iso(self.baseline_end), "files": self.baseline.files,
                         "bytes": self.baseline.bytes},
            "consistent_point": {"stamp": str(cp), "time": _iso(cp)} if cp else None,
            "frontiers": {a: (str(f) if f is not None else None) for a, f in self.frontiers.items()},
            "unproven": self.unproven,
        }

    def __str__(self) -> str:
        cp = self.consistent_point
        point = f"{cp} ({_iso(cp)})" if cp else "unknown"
        proof = ("UNPROVEN: at or after the consistent point, records may be missing"
                 if self.unproven else "proven: below the consistent point")
        frontiers = ", ".join(f"{a}={f if f is not None else '-'}" for a, f in self.frontiers.items())
        return (f"cut {self.at} ({_iso(self.at)}); baseline {self.baseline_id} ended "
                f"{self.baseline_end} ({_iso(self.baseline_end)}); consistent point {point}; "
                f"{proof}; frontiers {frontiers}")


# -- progress, summaries, history -------------------------------------------------------


@dataclasses.dataclass(slots=True)
class RestoreProgress:
    """Where a ``restore_to_dir`` is; handed to its ``progress`` callback."""

    files_total: int = 0
    files_done: int = 0
    bytes_done: int = 0
    bytes_hint: int = 0     # sum of the sizes the tree knows (writes may change it)
    current: str = ""
    phase: str = "tree"     # tree, files, attributes, done


@dataclasses.dataclass(slots=True)
class RestoreSummary:
    """What ``restore_to_dir`` made."""

    dest: str
    cut: Cut
    path: str = ""
    files: int = 0
    dirs: int = 0
    symlinks: int = 0
    specials: int = 0
    hard_links: int = 0      # extra names made with link()
    bytes: int = 0
    owners: bool = True      # uid/gid were restored (only root can)
    acls: int = 0            # POSIX ACLs set (access and default count apart)
    acls_refused: int = 0    # ACLs the destination's file system would not take (EOPNOTSUPP)
    skipped: list[str] = dataclasses.field(default_factory=list)

    def __str__(self) -> str:
        parts = [f"{self.files} files ({self.bytes} bytes)", f"{self.dirs} directories",
                 f"{self.symlinks} symlinks"]
        if self.specials:
            parts.append(f"{self.specials} special files")
        if self.hard_links:
            parts.append(f"{self.hard_links} extra hard links")
        text = f"restored {', '.join(parts)} to {self.dest}"
        if self.acls:
            text += f", {self.acls} POSIX ACLs"
        if not self.owners:
            text += " (owners not restored: not running as root)"
        if self.acls_refused:
            text += (f"; {self.acls_refused} POSIX ACLs NOT restored: the destination's file "
                     "system does not support them")
        if self.skipped:
            text += f"; skipped {len(self.skipped)}: {', '.join(self.skipped[:5])}"
        return text


_NFS3_ERRORS = {1: "PERM", 2: "NOENT", 5: "IO", 6: "NXIO", 13: "ACCES", 17: "EXIST", 18: "XDEV",
                19: "NODEV", 20: "NOTDIR", 21: "ISDIR", 22: "INVAL", 27: "FBIG", 28: "NOSPC",
                30: "ROFS", 31: "MLINK", 63: "NAMETOOLONG", 66: "NOTEMPTY", 69: "DQUOT",
                70: "STALE", 10001: "BADHANDLE", 10004: "NOTSUPP", 10006: "SERVERFAULT"}


@dataclasses.dataclass(frozen=True, slots=True)
class HistoryEntry:
    """One record that names a path's object."""

    stamp: Stamp
    time: str            # ISO-8601 UTC with nanoseconds
    op: str              # WRITE, SETATTR, RENAME, ..., BIND, BASELINE
    client: str
    uid: int
    gid: int
    ok: bool
    status: int
    details: str

    @property
    def status_name(self) -> str:
        if self.status == 0:
            return "OK"
        return _NFS3_ERRORS.get(self.status, str(self.status))

    def to_dict(self) -> dict[str, Any]:
        return {"stamp": str(self.stamp), "time": self.time, "op": self.op, "client": self.client,
                "uid": self.uid, "gid": self.gid, "ok": self.ok, "status": self.status,
                "status_name": self.status_name, "details": self.details}


# -- the client ----------------------------------------------------------------------------


class RestoreClient:
    """Rebuilds the export at a cut from every shard's records.

    Thread-safe. ``read`` keeps materialised files in a private cache
    directory (``cache_dir``, default a new temporary one) of at most
    ``cache_bytes``; ``close()`` removes it.
    """

    def __init__(self, shards: Shards, *, cache_dir: str | os.PathLike[str] | None = None,
                 cache_bytes: int = DEFAULT_CACHE_BYTES) -> None:
        self.shards = shards
        self._own_cache_dir = cache_dir is None
        self._cache_dir = Path(tempfile.mkdtemp(prefix="nfsj-restore-cache-") if cache_dir is None
                               else cache_dir)
        self._cache_bytes = cache_bytes
        self._cache: OrderedDict[tuple, tuple[Path, int]] = OrderedDict()
        self._cache_used = 0
        self._lock = threading.Lock()
        self._building: dict[tuple, threading.Lock] = {}
        self._trees: OrderedDict[tuple, Tree] = OrderedDict()

    # -- the cut --------------------------------------------------------------------------

    def cut(self, at: Stamp, allow_unproven: bool = False) -> Cut:
        """The cut at ``at``, or RestoreRefused naming the valid range."""
        reports = self.shards.status()
        down = [r for r in reports if not r.up]
        if down:
            raise ShardError(down[0].error if len(down) == 1 else
                             f"{len(down)} shards do not answer: " + "; ".join(r.error for r in down))
        view = overall(reports)
        point = Stamp.parse(view["consistent_point"]["stamp"]) if view["consistent_point"] else None
        frontiers = {}
        for shard in view["shards"]:
            frontiers[shard["address"]] = (Stamp.parse(shard["frontier"]["stamp"])
                                           if shard["frontier"] else None)

        complete = self._complete_baselines()
        if not complete:
            raise RestoreRefused(self._no_baseline_reason())
        earliest = Stamp.from_bytes(complete[0].end)
        if point is not None and point > earliest:
            valid = (f"valid range: {_iso(earliest)} .. {_iso(_last_proven(point))} "
                     f"(stamps {earliest} .. {predecessor(point)})")
        elif point is not None:
            valid = (f"nothing is restorable yet: the consistent point {point} ({_iso(point)}) has "
                     f"not passed the end of the first baseline {earliest} ({_iso(earliest)})")
        else:
            valid = (f"the earliest restorable moment is {_iso(earliest)} ({earliest}); nothing is "
                     f"proven yet ({view['consistent_point_reason']})")
        if at < earliest:
            raise RestoreRefused(f"{_iso(at)} ({at}) is before the earliest restorable moment "
                                 f"(the end of the first complete baseline); {valid}")
        unproven = point is None or at >= point
        if unproven and not allow_unproven:
            where = (f"at or after the consistent point {point} ({_iso(point)})" if point is not None
                     else "beyond anything proven")
            raise RestoreRefused(f"{_iso(at)} ({at}) is {where}: not every shard provably holds "
                                 f"every record up to it; {valid}; --allow-unproven restores it anyway")
        gaps = [g for _, _, g in report_gaps(reports)]
        by_begin = {Stamp.from_bytes(b.baseline_id): b for b in complete}
        proven = restore_baseline(at, gaps, [(begin, Stamp.from_bytes(b.end))
                                             for begin, b in by_begin.items()])
        if proven is None:
            gap = max((g for g in gaps if g.from_stamp <= at), key=lambda g: g.through)
            if not allow_unproven:
                raise RestoreRefused(
                    f"{_iso(at)} ({at}) lies past a gap: {gap.reason} ({gap.cause}); records stamped "
                    f"from {gap.from_stamp} through {gap.through} may be missing, and no baseline "
                    f"that began after {gap.through} ended by then; take a baseline (`nfsj "
                    f"baseline`) and restore after its end; --allow-unproven restores it anyway")
            unproven = True
            baseline = [b for b in complete if Stamp.from_bytes(b.end) <= at][-1]
        else:
            baseline = by_begin[proven[0]]
        return Cut(at, baseline, point, frontiers, unproven)

    def _complete_baselines(self) -> list[BaselineInfo]:
        """Baselines every shard holds the END of, oldest first."""
        per_shard = self.shards.baselines()
        ends: list[dict[bytes, BaselineInfo]] = [{b.baseline_id: b for b in lst if b.end}
                                                 for lst in per_shard]
        common = set(ends[0]).intersection(*ends[1:])
        # Every shard stores the same END record; files/bytes are the same everywhere.
        return sorted((ends[0][i] for i in common), key=lambda b: b.end)

    def _no_baseline_reason(self) -> str:
        per_shard = self.shards.baselines()
        started = {b.baseline_id for lst in per_shard for b in lst}
        if not started:
            return ("there is no baseline yet, so nothing can be restored: run `nfsj baseline` "
                    "(the earliest restorable moment is the end of the first baseline)")
        newest = max(started)
        missing = [self.shards.name(k) for k, lst in enumerate(per_shard)
                   if not any(b.baseline_id == newest and b.end for b in lst)]
        return (f"no baseline is complete yet (baseline {Stamp.from_bytes(newest)} has not reached "
                f"{', '.join(missing)}): wait for it to finish and ship, or run `nfsj baseline`")

    # -- the namespace ----------------------------------------------------------------------

    def tree(self, cut: Cut) -> Tree:
        """The namespace and attributes at ``cut`` (cached per cut; do not change it)."""
        with self._lock:
            tree = self._trees.get(cut.key)
            if tree is not None:
                self._trees.move_to_end(cut.key)
                return tree
        after, until = cut.window()
        tree = Tree(baseline_id=cut.baseline.baseline_id)
        for record in self.shards.scan(ScanRequest(after=after, until=until, with_data=False,
                                                   ops=sorted(TREE_OPS))):
            tree.apply(record)
        if tree.root is None:
            raise RestoreError(f"baseline {cut.baseline_id} holds no export root: the shards do "
                               "not hold its pieces (a wiped shard not yet rebuilt?)")
        with self._lock:
            self._trees[cut.key] = tree
            while len(self._trees) > 4:
                self._trees.popitem(last=False)
        return tree

    # -- one path, without the whole tree -------------------------------------------------------

    def resolve(self, cut: Cut, path: bytes | str) -> tuple[bytes, int] | None:
        """(handle, type) of what ``path`` named at ``cut`` (None: nothing), as
        ``tree(cut).lookup`` finds it, but reading only the records of the
        directories on the way. The type is as the parent directory's records
        show it (0: they do not say; the object's own records do).

        Every change to a directory's entries names that directory (``dir_fh``
        or ``to_dir_fh``), and so does every baseline piece of an entry, so
        a directory's own records (the per-file index) give its entries at
        the cut. A RENAME into it from another directory that does not say
        which object moved (``object_fh`` empty) is looked up in the source
        directory's own records as they were just before it.
        """
        rel = _clean_path(path)
        with self._lock:
            cached = self._trees.get(cut.key)
        fh = None if cached is not None else self._root(cut)
        if fh is None:
            return _found(self.tree(cut), rel)
        kind = DIR
        for part in rel.split(b"/") if rel else ():
            try:
                tree, directory = self._directory(cut, fh)
            except _NeedTree:
                return _found(self.tree(cut), rel)
            if directory is None or directory.type != DIR:
                return None
            fh = directory.entries.get(part)
            if fh is None:
                return None
            kind = tree.nodes[fh].type
        return fh, kind

    def _root(self, cut: Cut) -> bytes | None:
        """The export root's handle: its piece is the baseline's first (recoveryd.tree)."""
        after, until = cut.window()
        request = ScanRequest(after=after, until=until, with_data=False, ops=[Op.BASELINE], limit=1)
        records = self.shards.scan(request)
        try:
            for record in records:
                if record.baseline_id != cut.baseline.baseline_id:
                    continue
                if record.ok and not record.dir_fh and not record.name and record.baseline_first:
                    return record.fh
                return None
        finally:
            records.close()
        return None

    def _directory(self, cut: Cut, fh: bytes, until: Stamp | None = None,
                   depth: int = 0) -> tuple[Tree, Node | None]:
        """A tree of ``fh``'s own records at ``cut`` (or up to ``until``), and its
        node there (type, entries)."""
        tree = Tree(baseline_id=cut.baseline.baseline_id)
        for record in self.file_records(cut, fh, with_data=False, until=until):
            if record.op == Op.RENAME and record.to_dir_fh == fh and record.dir_fh != fh and record.ok:
                # Moved in from another directory, whose entries are not known
                # here: the object is the record's object_fh, or else the one the
                # source directory's own records bound to the name just before.
                moved = Record()
                moved.CopyFrom(record)
                moved.ClearField("dir_fh")
                if not moved.object_fh:
                    moved.object_fh = self._entry_before(cut, record.dir_fh, record.name,
                                                         Stamp.from_bytes(record.stamp), depth + 1) or b""
                record = moved
            tree.apply(record)
        return tree, tree.node(fh)

    def _entry_before(self, cut: Cut, dir_fh: bytes, name: bytes, stamp: Stamp,
                      depth: int) -> bytes | None:
        if depth > _MAX_RENAME_CHAIN:
            raise _NeedTree()
        _, node = self._directory(cut, dir_fh, predecessor(stamp), depth)
        return node.entries.get(name) if node is not None else None

    # -- one file -----------------------------------------------------------------------------

    def file_records(self, cut: Cut, fh: bytes, *, with_data: bool = True,
                     until: Stamp | None = None) -> Iterator[Record]:
        """Every record naming ``fh`` with a stamp in [baseline_id, at] (or up to
        ``until``, below ``at``), in stamp order, from every shard (pieces of
        other baselines left out)."""
        after, until = cut.window() if until is None else (cut.window()[0], until.to_bytes())
        baseline_id = cut.baseline.baseline_id
        for record in self.shards.file_records(FileRequest(fh=fh, after=after, until=until,
                                                           with_data=with_data)):
            if record.op == _BASELINE and record.baseline_id != baseline_id:
                continue
            yield record

    def file_attr(self, cut: Cut, fh: bytes) -> Attr | None:
        """The newest attributes of ``fh`` at ``cut`` from all its records (no data read)."""
        return _newest_attr(fh, self.file_records(cut, fh, with_data=False))

    def write_file(self, cut: Cut, fh: bytes, fd: int,
                   seen: Callable[[Record], None] | None = None) -> int:
        """Replay ``fh``'s content at ``cut`` onto the open file ``fd``; returns its size.
        ``seen`` is shown every record on the way (``Tree.apply``, say, to learn
        the object's type in the same pass)."""
        return self._write_file(cut, fh, fd, seen)[0]

    def replay_file(self, cut: Cut, fh: bytes, fd: int) -> tuple[int, Attr | None]:
        """``write_file``, also returning the file's newest attributes at ``cut``
        (None if no record carried any): one pass over its records for both."""
        return self._write_file(cut, fh, fd)

    def _write_file(self, cut: Cut, fh: bytes, fd: int,
                    seen: Callable[[Record], None] | None = None) -> tuple[int, Attr | None]:
        attr: Attr | None = None
        key = (0, b"")
        for record in self.file_records(cut, fh):
            if seen is not None:
                seen(record)
            if not record.ok:
                continue
            if record.fh == fh and record.HasField("attr"):
                k = attr_key(record.attr, record.stamp)
                if attr is None or k >= key or (record.op == _BASELINE and record.baseline_first):
                    attr, key = record.attr, k
            if record.fh != fh or record.op not in DATA_OPS:
                continue
            op = record.op
            if op == _BASELINE:
                if record.baseline_first:
                    os.ftruncate(fd, 0)
                if record.data:
                    _pwrite_all(fd, record.data, record.offset)
            elif op == _WRITE:
                data = record.data
                if 0 < record.reply_count < len(data):
                    data = data[:record.reply_count]  # the NAS accepted only this much
                if data:
                    _pwrite_all(fd, data, record.offset)
            elif op == _SETATTR:
                if record.set.HasField("size"):
                    os.ftruncate(fd, record.set.size)
            elif op == _CREATE:
                if record.HasField("attr"):
                    os.ftruncate(fd, record.attr.size)
                elif record.set.HasField("size"):
                    os.ftruncate(fd, record.set.size)
        if attr is not None:
            os.ftruncate(fd, attr.size)
            return attr.size, attr
        return os.fstat(fd).st_size, None

    def read(self, cut: Cut, fh: bytes, offset: int, count: int) -> bytes:
        """``count`` bytes at ``offset`` of ``fh`` at ``cut`` (fewer at the end).

        The file is materialised once per (cut, fh) into the private cache and
        read from there."""
        for _ in range(3):
            path = self._materialise(cut, fh)
            try:
                fd = os.open(path, os.O_RDONLY)
            except FileNotFoundError:
                continue  # evicted meanwhile: build it again
            try:
                return os.pread(fd, count, offset)
            finally:
                os.close(fd)
        raise RestoreError(f"the restore cache {self._cache_dir} is too small to hold one file")

    def _materialise(self, cut: Cut, fh: bytes) -> Path:
        key = (cut.key, fh)
        with self._lock:
            entry = self._cache.get(key)
            if entry is not None:
                self._cache.move_to_end(key)
                return entry[0]
            building = self._building.setdefault(key, threading.Lock())
        with building:
            with self._lock:
                entry = self._cache.get(key)
                if entry is not None:
                    return entry[0]
            name = hashlib.blake2b(repr(key).encode(), digest_size=16).hexdigest()
            path = self._cache_dir / name
            tmp = self._cache_dir / f"{name}.tmp"
            fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                size = self.write_file(cut, fh, fd)
            except BaseException:
                os.close(fd)
                tmp.unlink(missing_ok=True)
                raise
            os.close(fd)
            os.replace(tmp, path)
            with self._lock:
                self._cache[key] = (path, size)
                self._cache_used += size
                self._building.pop(key, None)
                while self._cache_used > self._cache_bytes and len(self._cache) > 1:
                    old_key, (old_path, old_size) = next(iter(self._cache.items()))
                    if old_key == key:
                        break
                    del self._cache[old_key]
                    self._cache_used -= old_size
                    old_path.unlink(missing_ok=True)
            return path

    # -- a whole tree --------------------------------------------------------------------------

    def restore_to_dir(self, cut: Cut, dest: str | os.PathLike[str], path: bytes | str | None = None,
                       progress: Callable[[RestoreProgress], None] | None = None) -> RestoreSummary:
        """Write the export (or the subtree at ``path``) as it was at ``cut`` to ``dest``.

        ``dest`` must not exist or be an empty directory: a restore never
        overwrites. It is built in ``<dest>.nfsj-tmp-*`` beside it and renamed
        into place at the end, so ``dest`` appears complete or not at all.
        """
        dest = Path(os.path.abspath(dest))
        check_dest(dest)
        report = progress or (lambda p: None)
        state = RestoreProgress()
        report(state)
        tree = self.tree(cut)
        rel = _clean_path(path)
        start = tree.lookup(rel)
        if start is None:
            raise RestoreRefused(f"{show_name(b'/' + rel)} did not exist at {_iso(cut.at)} ({cut.at})")
        start_node = tree.nodes[start]
        summary = RestoreSummary(str(dest), cut, path=show_name(b"/" + rel), owners=os.geteuid() == 0)
        tmp: Path | None = None
        empty_dir_given = dest.is_dir() and not dest.is_symlink()
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=f"{dest.name}.nfsj-tmp-", dir=dest.parent))
            if start_node.type == DIR:
                self._build(cut, tree, start, tmp, summary, state, report)
                _place(tmp, dest, over_empty_dir=empty_dir_given)
                _set_attrs(dest, start_node.attr, DIR, summary.owners)  # rename leaves it, but be sure
            else:
                # One non-directory: built inside the temporary directory, then moved.
                self._build(cut, tree, start, tmp / "object", summary, state, report, single=True)
                if empty_dir_given:
                    raise RestoreRefused(f"{dest} is a directory and /{rel} is not; give a path "
                                         "that does not exist for one object")
                _place(tmp / "object", dest, over_empty_dir=False)
                tmp.rmdir()
        except BaseException as e:
            if tmp is not None:
                shutil.rmtree(tmp, ignore_errors=True)
            if isinstance(e, OSError):
                where = f" ({e.filename})" if e.filename else ""
                raise RestoreError(f"restoring to {dest} failed: {e.strerror or e}{where}; "
                                   "nothing was left behind") from e
            raise
        state.phase, state.current = "done", ""
        report(state)
        return summary

    def _build(self, cut: Cut, tree: Tree, start: bytes, root: Path, summary: RestoreSummary,
               state: RestoreProgress, report: Callable[[RestoreProgress], None], *,
               single: bool = False) -> None:
        entries = list(tree.walk(start))
        files = {fh for _, fh, node in entries if node.type == REG}
        state.files_total = len(files)
        state.bytes_hint = sum(tree.nodes[fh].attr.size for fh in files if tree.nodes[fh].attr)
        state.phase = "files"
        report(state)
        first_path: dict[bytes, Path] = {}
        dirs: list[tuple[Path, Any]] = []
        for rel, fh, node in entries:
            # Names are bytes; os.fsdecode gives the str that the OS turns back into exactly them.
            target = root / os.fsdecode(rel) if rel else root
            if node.type == DIR:
                if rel or single:
                    target.mkdir(mode=0o700)
                dirs.append((target, node))
                summary.dirs += 1
                continue
            if fh in first_path:
                os.link(first_path[fh], target, follow_symlinks=False)  # a symlink's own inode
                summary.hard_links += 1
                continue
            state.current = show_name(b"/" + rel)
            if node.type == REG:
                fd = os.open(target, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
                try:
                    size, attr = self._write_file(cut, fh, fd)
                finally:
                    os.close(fd)
                _set_acls(target, node, summary)
                _set_attrs(target, attr or node.attr, REG, summary.owners)
                summary.files += 1
                summary.bytes += size
                state.files_done += 1
                state.bytes_done += size
                report(state)
            elif node.type == LNK:
                os.symlink(node.symlink_target, target)
                _set_attrs(target, node.attr, LNK, summary.owners)
                summary.symlinks += 1
            elif node.type in (FIFO, SOCK, CHR, BLK):
                kind = {FIFO: stat.S_IFIFO, SOCK: stat.S_IFSOCK, CHR: stat.S_IFCHR, BLK: stat.S_IFBLK}[node.type]
                rdev = os.makedev(*node.rdev) if node.type in (CHR, BLK) else 0
                try:
                    os.mknod(target, kind | 0o600, rdev)
                except PermissionError:
                    summary.skipped.append(
                        f"{show_name(b'/' + rel)} ({TYPE_NAMES[node.type]}: mknod needs root)")
                    continue
                _set_acls(target, node, summary)
                _set_attrs(target, node.attr, node.type, summary.owners)
                summary.specials += 1
            else:
                summary.skipped.append(f"{show_name(b'/' + rel)} (type unknown: never created or read "
                                       "in this cut)")
                continue
            first_path[fh] = target
        # Directories last and bottom-up: entries made inside a directory
        # change its mtime, so it is set after all of them.
        state.phase, state.current = "attributes", ""
        report(state)
        for target, node in reversed(dirs):
            _set_acls(target, node, summary)
            _set_attrs(target, node.attr, DIR, summary.owners)

    # -- history ---------------------------------------------------------------------------------

    def history(self, path: bytes | str, since: Stamp | None = None,
                until: Stamp | None = None) -> list[HistoryEntry]:
        """What changed ``path`` with stamps in (since, until] (until default: now).

        The path is resolved in the tree at ``until`` (an unproven cut is fine
        for a question), so it must exist then. Listed: every record that
        names its handle (failed calls too), the baseline's reading of it, and
        the names the proxy learned for it (BIND). A directory's history also
        holds the calls that changed its entries. Paths in the details are
        the paths as they were when each record was stamped (bare names
        before the baseline the cut starts from).
        """
        bound = until if until is not None else Stamp(time.time_ns(), *END_OF_NS)
        cut = self.cut(bound, allow_unproven=True)
        rel = _clean_path(path)
        fh = self.tree(cut).lookup(rel)
        if fh is None:
            raise RestoreRefused(f"{show_name(b'/' + rel)} did not exist at {_iso(bound)} ({bound}); "
                                 "give --until a moment when it did")
        request = FileRequest(fh=fh, after=since.to_bytes() if since is not None else b"",
                              until=bound.to_bytes(), with_data=False)
        # The tree as it was at each record: replayed alongside, up to just
        # before it, from the newest complete baseline that began by `since`
        # (the oldest one when there is no `since`), so that the paths of
        # records older than the cut's own baseline are known too.
        complete = self._complete_baselines()
        start = complete[0]
        for b in complete:
            if since is not None and b.baseline_id <= since.to_bytes():
                start = b
        replay = dataclasses.replace(cut, baseline=start)
        after, until_raw = replay.window()
        tree = Tree(baseline_id=start.baseline_id)
        namespace = self.shards.scan(ScanRequest(after=after, until=until_raw, with_data=False,
                                                 ops=sorted(TREE_OPS)))
        pending = next(namespace, None)
        out = []
        try:
            for record in self.shards.file_records(request):
                if record.op in (Op.BASELINE, Op.BIND) and record.fh != fh:
                    continue  # a child read or named: its history, not this one's
                if record.op == Op.BASELINE and not record.baseline_first:
                    continue  # content pieces after the first say nothing new
                while pending is not None and pending.stamp < record.stamp:
                    tree.apply(pending)
                    pending = next(namespace, None)
                out.append(_history_entry(record, fh, tree))
        finally:
            namespace.close()
        return out

    # -- lifecycle ----------------------------------------------------------------------------------

    def close(self) -> None:
        """Drop the read cache (and its directory, if this client made it)."""
        with self._lock:
            self._cache.clear()
            self._cache_used = 0
            self._trees.clear()
        if self._own_cache_dir:
            shutil.rmtree(self._cache_dir, ignore_errors=True)

    def __enter__(self) -> RestoreClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- helpers ------------------------------------------------------------------------------------------


def _found(tree: Tree, rel: bytes) -> tuple[bytes, int] | None:
    fh = tree.lookup(rel)
    return None if fh is None else (fh, tree.nodes[fh].type)


def _clean_path(path: bytes | str | None) -> bytes:
    """A path from the export root as bytes (a str from a command line is
    os.fsencoded back into the bytes the user typed)."""
    parts = [p for p in os.fsencode(path or b"").split(b"/") if p not in (b"", b".")]
    if b".." in parts:
        raise RestoreRefused(f"path {show_name(path)} contains '..': give a path from the export root")
    return b"/".join(parts)


def check_dest(dest: str | os.PathLike[str]) -> None:
    """Refuse (RestoreRefused) a restore destination that exists and is not an
    empty directory: a restore never overwrites."""
    dest = Path(dest)
    if dest.is_symlink() or (dest.exists() and not dest.is_dir()):
        raise RestoreRefused(f"{dest} exists and is not a directory; a restore never overwrites: "
                             "give a new or empty directory")
    if dest.is_dir():
        try:
            empty = next(os.scandir(dest), None) is None
        except OSError as e:
            raise RestoreRefused(f"cannot read {dest}: {e.strerror}") from None
        if not empty:
            raise RestoreRefused(f"{dest} is not empty; a restore never overwrites: give a new "
                                 "or empty directory")


_AT_FDCWD = -100
_RENAME_NOREPLACE = 1


@functools.cache
def _renameat2():
    """glibc's renameat2 (None where libc lacks it); looked up on first use."""
    import ctypes

    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return None
    fn.argtypes = (ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint)
    fn.restype = ctypes.c_int
    return fn



def rename_noreplace(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
    """Move ``src`` to ``dst`` in one step that fails (FileExistsError) if ``dst``
    exists, however late it appeared: a restore never replaces what someone
    created meanwhile. renameat2(RENAME_NOREPLACE) where the kernel and file
    system have it; else link + unlink for a non-directory (link refuses an
    existing name just as atomically), mkdir + rename for a directory (the
    rename then replaces only the empty directory it just made, and fails if
    anything was put in it)."""
    renameat2 = _renameat2()
    if renameat2 is not None:
        if renameat2(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), _RENAME_NOREPLACE) == 0:
            return
        import ctypes
        err = ctypes.get_errno()
        if err not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):  # EINVAL: the flag is not supported
            raise OSError(err, os.strerror(err), os.fsdecode(dst))
    if os.path.isdir(src) and not os.path.islink(src):
        os.mkdir(dst, 0o700)
        try:
            os.rename(src, dst)
        except OSError:
            with contextlib.suppress(OSError):
                os.rmdir(dst)  # ours, unless someone filled it (then rmdir fails, as it should)
            raise
    else:
        os.link(src, dst, follow_symlinks=False)
        os.unlink(src)


def _place(built: Path, dest: Path, *, over_empty_dir: bool) -> None:
    """Move the finished restore into place without ever replacing anything but
    the empty directory the user gave (a rename fails if it is no longer empty)."""
    try:
        if over_empty_dir:
            os.rename(built, dest)
        else:
            rename_noreplace(built, dest)
    except OSError as e:
        if e.errno in (errno.EEXIST, errno.ENOTEMPTY, errno.ENOTDIR, errno.EISDIR):
            raise RestoreRefused(f"{dest} appeared (or was filled) while restoring; a restore never "
                                 "overwrites: give a new or empty directory") from None
        raise


def _pwrite_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view, offset = view[n:], offset + n


def _newest_attr(fh: bytes, records: Iterable[Record]) -> Attr | None:
    attr, key = None, (0, b"")
    for record in records:
        if record.ok and record.fh == fh and record.HasField("attr"):
            k = attr_key(record.attr, record.stamp)
            if attr is None or k >= key or (record.op == Op.BASELINE and record.baseline_first):
                attr, key = record.attr, k
        for field, other in (("dir_attr", record.dir_fh), ("to_dir_attr", record.to_dir_fh)):
            if record.ok and other == fh and record.HasField(field):
                a = getattr(record, field)
                k = attr_key(a, record.stamp)
                if attr is None or k >= key:
                    attr, key = a, k
    return attr


def _set_acls(path: Path, node: Any, summary: RestoreSummary) -> None:
    """Set the POSIX ACLs the tree knows for ``node`` (before its mode: a chmod
    then rewrites the owner, mask and other entries as the NAS's mode says).
    A file system without ACLs (EOPNOTSUPP) is warned about once and counted."""
    for name, acl in ((XATTR_ACCESS, node.acl),
                      (XATTR_DEFAULT, node.default_acl if node.type == DIR else None)):
        if acl is None:
            continue  # not known
        if not acl:
            # None on the NAS; one may have been inherited from the destination's parent.
            with contextlib.suppress(OSError):
                os.removexattr(path, name, follow_symlinks=False)
            continue
        try:
            os.setxattr(path, name, to_xattr(acl), follow_symlinks=False)
            summary.acls += 1
        except OSError as e:
            if e.errno not in (errno.EOPNOTSUPP, errno.ENOTSUP):
                raise
            if not summary.acls_refused:
                logger.warning("%s does not support POSIX ACLs: restoring without them",
                               path.parent)
            summary.acls_refused += 1


def _set_attrs(path: Path, attr: Attr | None, kind: int, owners: bool) -> None:
    """Owner, then mode (chown clears setuid/setgid), then times; symlinks keep their mode."""
    if attr is None:
        return
    if owners:
        os.chown(path, attr.uid, attr.gid, follow_symlinks=False)
    if kind != LNK:
        os.chmod(path, stat.S_IMODE(attr.mode))
    os.utime(path, ns=(attr.atime_ns, attr.mtime_ns), follow_symlinks=False)


def _acl_details(r: Record) -> str:
    """An ACL record's lists in getfacl's short form; "(none)" for an empty list."""
    parts = []
    if r.acl_mask & 0x1:
        parts.append(to_text(r.acl) or "(none)")
    if r.acl_mask & 0x4:
        parts.append(to_text(r.default_acl, "default:") or "default:(none)")
    return ",".join(parts)


def _history_entry(r: Record, fh: bytes, tree: Tree) -> HistoryEntry:
    def where(dir_fh: bytes, name: bytes) -> str:
        paths = tree.paths_of(dir_fh) if dir_fh else []
        base = b"/" + paths[0] if paths and paths[0] else b""
        return show_name(base + b"/" + name if paths else name)

    op = Op.Name(r.op) if r.op in Op.values() else str(r.op)
    details = ""
    if r.op in (Op.WRITE, Op.COMMIT):
        details = f"offset={r.offset} count={r.count}"
        if r.op == Op.WRITE and r.ok and r.reply_count != r.count:
            details += f" accepted={r.reply_count}"
    elif r.op == Op.SETATTR:
        s = r.set
        parts = [f"{n}={getattr(s, n):o}" if n == "mode" else f"{n}={getattr(s, n)}"
                 for n in ("mode", "uid", "gid", "size", "atime_ns", "mtime_ns") if s.HasField(n)]
        parts += [f"{n}=server" for n in ("atime", "mtime") if getattr(s, f"{n}_server")]
        details = " ".join(parts)
    elif r.op == Op.SETACL:
        details = _acl_details(r)
    elif r.op == Op.BIND:
        details = f"seen as {where(r.dir_fh, r.name)}"
    elif r.op in (Op.CREATE, Op.MKDIR, Op.SYMLINK, Op.MKNOD, Op.REMOVE, Op.RMDIR):
        details = where(r.dir_fh, r.name)
        if r.op == Op.SYMLINK:
            details += f" -> {show_name(r.symlink_target)}"
    elif r.op == Op.RENAME:
        details = f"{where(r.dir_fh, r.name)} -> {where(r.to_dir_fh, r.to_name)}"
    elif r.op == Op.LINK:
        details = f"new name {where(r.to_dir_fh, r.to_name)}"
    elif r.op == Op.BASELINE:
        details = f"baseline {Stamp.from_bytes(r.baseline_id) if r.baseline_id else '?'} read it"
        if r.dir_fh:
            details += f" as {where(r.dir_fh, r.name)}"
        if r.acl or r.default_acl:  # an object without ACLs needs no word on them
            details += f" acl {_acl_details(r)}"
    stamp = Stamp.from_bytes(r.stamp)
    return HistoryEntry(stamp, _iso(stamp), op, r.client, r.uid, r.gid, r.ok, r.status, details)
