"""Verify: read the journal's view at the consistent point and the live NAS, and compare.

`verify(client, nfs, ...)` is what `nfsj verify` runs. The comparison
itself is sans-IO (`recoveryd.verify.compare`); this module reads the two
sides it compares and the window of records it must leave out:

1. The cut ``C``: just below the consistent point when verify starts (every
   shard provably holds every record up to it). The journal's tree at ``C``
   describes the paths (`RestoreClient.tree`); a regular file's attributes
   and content come from one replay of its own records
   (`RestoreClient.replay_file`).
2. The NAS, read with our NFS client straight from the NAS (never through
   the proxy): the whole subtree (READDIRPLUS, READLINK, READ) or, with
   ``sample``, N regular files picked at random from the journal's tree
   (LOOKUP along each path, GETATTR, READ).
3. The window: once the NAS has been read, verify waits until the
   consistent point passes a bound taken after the last read plus
   ``margin_ns`` (stamps come from the proxies' clocks, which may run ahead
   of ours by up to their max offset), then lists every record stamped in
   ``(C, bound]``. Any call the NAS applied before the read ended has its
   record there, so what those records touch is skipped, never reported.
4. A path that still differs is read from the NAS again, after a second
   window up to a later bound: if a record now explains it, it is skipped;
   if the NAS now equals the journal, it was a passing state (counted in
   ``rechecked``); otherwise it is reported, and marked "changed during
   verify" when the second read saw other values than the first (a change
   that reached the NAS without a record of it).

Content is compared by SHA-256, read in 1 MiB pieces on the NAS side and
replayed into a temporary file on the journal's.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import random
import tempfile
import time
from typing import Any, Callable, Final

from logstore.pb.journal_pb2 import Attr, ScanRequest
from logstore.stamp import Stamp, predecessor
from recoveryd.restore import Cut, RestoreClient, RestoreError, RestoreRefused
from recoveryd.restore.bulk import fills, write_contents
from recoveryd.restore.replay import BufferOut
from recoveryd.status import consistent_point_of
from recoveryd.timespec import format_time
from recoveryd.tree import BLK, CHR, DIR, LNK, REG, show_name
from recoveryd.verify import (Comparison, Described, Difference, Window, compare, describe_attr,
                              describe_tree, needs_content)

from nfsproxy.nas.client import NfsClient, NfsError, nfstime3_ns
from nfsproxy.wire.nfs3 import Fattr3, Nfsstat3

__all__ = ["verify", "VerifyReport", "VerifyProgress", "VerifyError", "MARGIN_NS", "WAIT_S"]

#: How far a proxy's stamps may run ahead of this host's clock: twice the HLC's
#: default max offset (its clock's own lead, and the skew between the hosts).
MARGIN_NS: Final = 1_000_000_000
#: How long to wait for the consistent point to pass the end of the NAS read.
WAIT_S: Final = 120.0
_READ_BYTES: Final = 1 << 20
#: The journal's side of files up to FILL_BYTES is replayed in memory, in
#: bulk fills of at most FILL_BYTES and FILES_PER_FILL files.
FILL_BYTES: Final = 64 << 20
FILES_PER_FILL: Final = 4096
_M32: Final = (1 << 32) - 1
_POLL_S: Final = 0.1
#: The content "hash" of a file that went away while it was read: equal to no hash.
GONE: Final = "(gone while it was read)"


class VerifyError(RestoreError):
    """Verify cannot finish; the message is one line that says why."""


@dataclasses.dataclass(slots=True)
class VerifyProgress:
    """Where a verify is; handed to its ``progress`` callback."""

    phase: str = "tree"      # tree, nas, journal, content, window, recheck, done
    done: int = 0
    total: int = 0
    bytes_done: int = 0
    current: str = ""


@dataclasses.dataclass(slots=True)
class VerifyReport:
    """What a verify found. ``checked``: paths compared; ``skipped``: paths left
    out because records after the cut changed them; ``rechecked``: paths
    that differed once and equalled the journal when read again."""

    cut: Cut
    path: str
    sample: int | None
    checked: int = 0
    skipped: int = 0
    rechecked: int = 0
    window_records: int = 0
    bytes_read: int = 0
    differences: list[Difference] = dataclasses.field(default_factory=list)
    started_unix_ns: int = 0
    finished_unix_ns: int = 0

    @property
    def ok(self) -> bool:
        return not self.differences

    def summary(self) -> str:
        what = f"{self.sample} sampled files" if self.sample is not None else "paths"
        text = (f"verified {self.checked} {what} under {self.path} against the NAS at cut {self.cut.at} "
                f"({format_time(self.cut.at)}): ")
        text += ("no differences" if self.ok else f"{len(self.differences)} difference(s)")
        text += f"; {self.skipped} skipped (changed after the cut, {self.window_records} records)"
        if self.rechecked:
            text += f"; {self.rechecked} equal when read again"
        return text

    def result(self) -> dict[str, Any]:
        """The small record written for metrics (recoveryd.verify.write_result)."""
        return {"started_unix_ns": self.started_unix_ns, "finished_unix_ns": self.finished_unix_ns,
                "checked": self.checked, "skipped": self.skipped, "differences": len(self.differences),
                "sample": self.sample, "path": self.path, "cut": str(self.cut.at)}

    def to_dict(self) -> dict[str, Any]:
        return {**self.result(), "ok": self.ok, "rechecked": self.rechecked,
                "window_records": self.window_records, "bytes_read": self.bytes_read,
                "differences": [d.to_dict() for d in self.differences],
                "cut": self.cut.describe()}


def verify(client: RestoreClient, nfs: NfsClient, *, path: bytes | str | None = None,
           sample: int | None = None, rng: random.Random | None = None,
           progress: Callable[[VerifyProgress], None] | None = None,
           wait_s: float = WAIT_S, margin_ns: int = MARGIN_NS) -> VerifyReport:
    """Compare the journal at the consistent point with the NAS (see the module docstring)."""
    return _Verify(client, nfs, progress or (lambda p: None), wait_s, margin_ns).run(
        _clean(path), sample, rng or random.Random())


def consistent_point(client: RestoreClient) -> tuple[Stamp | None, str]:
    """The consistent point over every shard now (None: nothing proven), and why
    it is where it is; VerifyError if a shard does not answer."""
    reports = client.shards.status()
    down = [r for r in reports if not r.up]
    if down:
        raise VerifyError("; ".join(r.error for r in down))
    point = consistent_point_of(reports)
    return point.stamp, point.reason


def _clean(path: bytes | str | None) -> bytes:
    parts = [p for p in os.fsencode(path or b"").split(b"/") if p not in (b"", b".")]
    if b".." in parts:
        raise RestoreRefused(f"--path {show_name(path)} contains '..': give a path from the export root")
    return b"/".join(parts)


class _Verify:
    def __init__(self, client: RestoreClient, nfs: NfsClient, report: Callable[[VerifyProgress], None],
                 wait_s: float, margin_ns: int) -> None:
        self.client, self.nfs, self.report = client, nfs, report
        self.wait_s, self.margin_ns = wait_s, margin_ns
        self.state = VerifyProgress()
        self.journal_files: dict[bytes, tuple[Attr | None, str]] = {}

    def run(self, rel: bytes, sample: int | None, rng: random.Random) -> VerifyReport:
        started = time.time_ns()
        if self.nfs.root_fh is None:
            self.nfs.mount()
        cut = self._cut()
        self._phase("tree")
        tree = self.client.tree(cut)
        journal = describe_tree(tree, rel)
        nas: dict[bytes, Described] = {}
        paths: list[bytes] | None = None
        if sample is not None:
            files = sorted(p for p, d in journal.items() if d.type == REG)
            paths = rng.sample(files, min(sample, len(files)))
            self._phase("nas", len(paths))
            for p in paths:
                nas.update(self._nas_path(p))
                self._step(p)
        else:
            self._phase("nas")
            nas = self._nas_walk(rel)
            if not journal and not nas:
                raise RestoreRefused(f"{show_name(b'/' + rel)} exists neither in the journal at the "
                                     "consistent point nor on the NAS")
        self._journal_files(cut, journal, nas, paths)
        # The NAS's content is read before the bound, so the window covers it too.
        self._nas_content(journal, nas, paths)
        bound = self._bound()
        self._phase("window")
        window = self._window(cut.at, bound)
        first = compare(journal, nas, window, paths)
        out = VerifyReport(cut, show_name(b"/" + rel), sample, started_unix_ns=started)
        out.checked, out.skipped = first.checked, first.skipped
        if first.differences:
            self._recheck(cut, journal, nas, window, bound, first, out)
        out.window_records = window.records
        out.bytes_read = self.state.bytes_done
        out.finished_unix_ns = time.time_ns()
        self._phase("done")
        return out

    # -- the cut and the window -------------------------------------------------------------------

    def _point(self) -> tuple[Stamp | None, str]:
        return consistent_point(self.client)

    def _cut(self) -> Cut:
        point, why = self._point()
        if point is None or predecessor(point) is None:
            raise VerifyError(f"nothing is proven yet ({why}): verify compares the NAS with a proven cut")
        return self.client.cut(predecessor(point))

    def _bound(self) -> Stamp:
        return Stamp(time.time_ns() + self.margin_ns, _M32, _M32)

    def _window(self, after: Stamp, until: Stamp) -> Window:
        """Every record stamped in (after, until], once the shards provably hold them all."""
        deadline = time.monotonic() + self.wait_s
        while True:
            point, why = self._point()
            if point is not None and point > until:
                break
            if time.monotonic() > deadline:
                raise VerifyError(
                    f"the consistent point did not pass {until} ({format_time(until)}) within "
                    f"{self.wait_s:g}s ({why or 'no proven point'}): without every record up to the "
                    "end of the NAS read, a change after the cut cannot be told from a divergence")
            time.sleep(_POLL_S)
        return Window.from_records(self.client.shards.scan(
            ScanRequest(after=after.to_bytes(), until=until.to_bytes(), with_data=False)))

    # -- the journal's side -------------------------------------------------------------------------

    def _journal_files(self, cut: Cut, journal: dict[bytes, Described], nas: dict[bytes, Described],
                       paths: list[bytes] | None) -> None:
        """The regular files that are regular files on the NAS too: their own newest
        attributes (a tree holds no WRITEs) and content. Files up to
        FILL_BYTES are replayed in memory, many to a bulk fill (a few
        streams per shard, not a call per file); larger ones one by one
        through a temporary file."""
        todo = [p for p in (journal if paths is None else paths)
                if p in journal and p in nas and journal[p].type == REG and nas[p].type == REG]
        self._phase("journal", len(todo))
        by_fh: dict[bytes, list[bytes]] = {}
        for p in todo:
            by_fh.setdefault(journal[p].fh, []).append(p)   # hard links: one replay
        # A tree knows a file's size as of its last attributes (WRITEs after
        # them are not in it); the NAS's size guards against one grown since.
        sizes = {fh: max(journal[ps[0]].size, nas[ps[0]].size) for fh, ps in by_fh.items()}
        small = [(fh, size) for fh, size in sizes.items()
                 if fh not in self.journal_files and size <= FILL_BYTES]
        for batch, _ in fills(small, FILL_BYTES, FILES_PER_FILL):
            self._journal_fill(cut, batch)
            for fh in batch:
                self._settle(journal, by_fh.pop(fh))
        for ps in by_fh.values():
            self._settle(journal, ps, cut)

    def _settle(self, journal: dict[bytes, Described], paths: list[bytes], cut: Cut | None = None) -> None:
        for p in paths:
            journal[p] = self._journal_file(cut, journal[p])
            self._step(p)

    def _journal_fill(self, cut: Cut, fhs: list[bytes]) -> None:
        buffers = {fh: BufferOut() for fh in fhs}
        made = write_contents(self.client.shards, cut, buffers, whole=False,
                              file_records=lambda fh: self.client.file_records(cut, fh))
        for fh, (_, attr) in made.items():
            data = buffers.pop(fh).buf
            self.journal_files[fh] = (attr, hashlib.sha256(data).hexdigest())
            self.state.bytes_done += len(data)

    def _journal_file(self, cut: Cut | None, d: Described) -> Described:
        done = self.journal_files.get(d.fh)
        if done is None:
            assert cut is not None, "a file no fill made is replayed from its cut"
            with tempfile.TemporaryFile(prefix="nfsj-verify-") as tmp:
                _, attr = self.client.replay_file(cut, d.fh, tmp.fileno())
                tmp.seek(0)
                h = hashlib.sha256()
                while chunk := tmp.read(_READ_BYTES):
                    h.update(chunk)
                    self.state.bytes_done += len(chunk)
            done = self.journal_files[d.fh] = (attr, h.hexdigest())
        attr, sha = done
        described = describe_attr(d.fh, REG, attr, binding=d.binding) if attr is not None else d
        return dataclasses.replace(described, binding=d.binding, sha256=sha)

    # -- the NAS's side -------------------------------------------------------------------------------

    def _nas_path(self, rel: bytes) -> dict[bytes, Described]:
        """``rel`` and its ancestors on the NAS (missing ones left out)."""
        out: dict[bytes, Described] = {}
        fh, parts = self.nfs.root, rel.split(b"/") if rel else []
        for i, name in enumerate(parts):
            try:
                found = self.nfs.lookup(fh, name)
            except NfsError as e:
                if e.status in (Nfsstat3.NFS3ERR_NOENT, Nfsstat3.NFS3ERR_NOTDIR, Nfsstat3.NFS3ERR_STALE):
                    return out
                raise
            child = bytes(found.object)
            attrs = found.obj_attributes or self.nfs.getattr(child).obj_attributes
            out[b"/".join(parts[:i + 1])] = self._describe(child, attrs, (fh, name))
            fh = child
        return out

    def _nas_walk(self, rel: bytes) -> dict[bytes, Described]:
        """``rel`` and everything below it on the NAS."""
        out: dict[bytes, Described] = {}
        if rel:
            found = self._nas_path(rel)
            if rel not in found:
                return out
            out[rel] = found[rel]
        else:
            out[b""] = self._nas_root()
        stack = [rel] if out[rel].type == DIR else []
        while stack:
            here = stack.pop()
            dir_fh = out[here].fh
            try:
                listing = list(self.nfs.readdirplus(dir_fh))
            except NfsError as e:
                if e.status in (Nfsstat3.NFS3ERR_NOENT, Nfsstat3.NFS3ERR_STALE):
                    continue  # gone meanwhile: the window or the recheck will tell
                raise
            for e in listing:
                child_rel = here + b"/" + e.name if here else e.name
                fh, attrs = e.name_handle, e.name_attributes
                try:
                    if fh is None:
                        found = self.nfs.lookup(dir_fh, e.name)
                        fh, attrs = bytes(found.object), found.obj_attributes
                    if attrs is None:
                        attrs = self.nfs.getattr(fh).obj_attributes
                    out[child_rel] = self._describe(bytes(fh), attrs, (dir_fh, e.name))
                except NfsError as err:
                    if err.status in (Nfsstat3.NFS3ERR_NOENT, Nfsstat3.NFS3ERR_STALE):
                        continue
                    raise
                self._step(child_rel)
                if out[child_rel].type == DIR:
                    stack.append(child_rel)
        return out

    def _nas_root(self) -> Described:
        return self._describe(self.nfs.root, self.nfs.getattr(self.nfs.root).obj_attributes, (b"", b""))

    def _describe(self, fh: bytes, a: Fattr3, binding: tuple[bytes, bytes]) -> Described:
        kind = int(a.type)
        target = b""
        if kind == LNK:
            target = bytes(self.nfs.readlink(fh).data)
        rdev = (a.rdev.specdata1, a.rdev.specdata2) if kind in (CHR, BLK) else (0, 0)
        return Described(fh, kind, binding, mode=a.mode & 0o7777, uid=a.uid, gid=a.gid, size=a.size,
                         mtime_ns=nfstime3_ns(a.mtime), target=target, rdev=rdev)

    def _nas_content(self, journal: dict[bytes, Described], nas: dict[bytes, Described],
                     paths: list[bytes] | None) -> None:
        todo = needs_content(journal, nas, Window(), paths)
        self._phase("content", len(todo))
        for p in todo:
            nas[p] = dataclasses.replace(nas[p], sha256=self._nas_sha(nas[p].fh))
            self._step(p)

    def _nas_sha(self, fh: bytes) -> str:
        """The content's SHA-256; GONE if the file went away while it was read."""
        h = hashlib.sha256()
        offset = 0
        while True:
            try:
                resok = self.nfs.read(fh, offset, _READ_BYTES)
            except NfsError as e:
                if e.status in (Nfsstat3.NFS3ERR_STALE, Nfsstat3.NFS3ERR_NOENT):
                    return GONE
                raise
            h.update(resok.data)
            offset += resok.count
            self.state.bytes_done += resok.count
            if resok.eof or resok.count == 0:
                return h.hexdigest()

    # -- the second look ------------------------------------------------------------------------------

    def _recheck(self, cut: Cut, journal: dict[bytes, Described], nas: dict[bytes, Described],
                 window: Window, bound: Stamp, first: Comparison, out: VerifyReport) -> None:
        """Read each differing path again, after a later window; keep what still differs."""
        again = [d.path for d in first.differences]
        self._phase("recheck", len(again))
        before = {p: nas.get(p) for p in again}
        now = dict(nas)
        for p in again:
            now.pop(p, None)
            now.update(self._nas_path(p) if p else {b"": self._nas_root()})
            self._step(p)
        self._journal_files(cut, journal, now, again)
        for p in needs_content(journal, now, Window(), again):
            now[p] = dataclasses.replace(now[p], sha256=self._nas_sha(now[p].fh))
        later = self._bound()  # after the re-reads: the second window covers them
        window.merge(self._window(bound, later))
        second = compare(journal, now, window, again)
        out.skipped += second.skipped
        out.checked -= second.skipped
        out.rechecked = len(again) - second.skipped - len(second.differences)
        for d in second.differences:
            first_read, second_read = before.get(d.path), now.get(d.path)
            if _changed(first_read, second_read):
                d = Difference(d.path, d.what + " (changed on the NAS during verify, with no record "
                                              "of the change)")
            out.differences.append(d)

    # -- progress ---------------------------------------------------------------------------------------

    def _phase(self, phase: str, total: int = 0) -> None:
        self.state.phase, self.state.done, self.state.total, self.state.current = phase, 0, total, ""
        self.report(self.state)

    def _step(self, rel: bytes) -> None:
        self.state.done += 1
        self.state.current = show_name(b"/" + rel)
        self.report(self.state)


def _changed(a: Described | None, b: Described | None) -> bool:
    if a is None or b is None:
        return (a is None) != (b is None)
    strip = dict(sha256=None)
    return (dataclasses.replace(a, **strip) != dataclasses.replace(b, **strip)
            or (a.sha256 is not None and b.sha256 is not None and a.sha256 != b.sha256))
