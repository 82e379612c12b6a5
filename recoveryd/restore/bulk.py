"""Bulk contents: the bytes of many regular files at a cut, streamed from the
shards in a few large messages and replayed onto all of them at once.

A whole-tree restore reads every file, so asking each shard for each file
(one FileRecords call per file per shard) spends its time on calls, not
bytes. ``write_contents`` instead asks every shard for the whole window of
the cut at once (``ScanChunks`` with data: the records as stored, megabytes
to a message, no parse on the shard), merges the streams in stamp order and
hands each record to the ``FileReplay`` of the file it names, so each file
still sees exactly its own records in stamp order (``replay``'s rules). The
shards read and send while the client parses and writes: every shard's
stream is drained by its own thread into a bounded queue.

When only some of the cut's files are wanted (a subtree), streaming the
whole window could read far more than needed (another subtree's file written
10,000 times, say): then the shards are asked for the records of exactly
those files (``FilesRecordChunks``: the per-file index of every one of them,
each record once, in stamp order, in large messages), FILES_PER_CALL handles
to a call. A handful of files are asked for one by one, several at once.

Files are made and written by WRITERS threads, each file by one of them (its
bytes land in the order its replay decided), many files in flight: a
write's syscall runs without the GIL, so the disk works while the next
records are parsed.
"""

from __future__ import annotations

import concurrent.futures
import os
import queue
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Callable, Iterable, Iterator

from logstore.pb.journal_pb2 import Attr, FilesRequest, Op, Record, ScanRequest

from .cut import Cut, cut_records
from .replay import BufferOut, FileReplay, pwrite_all, replay, replay_onto
from .shards import RecordData, Shards

__all__ = ["write_contents", "fills", "BULK_MIN_FILES", "FILES_IN_FLIGHT", "FILES_PER_CALL", "WRITERS"]

#: Fewer files than this (and not all) are replayed file by file, FILES_IN_FLIGHT at once.
BULK_MIN_FILES = 16
FILES_IN_FLIGHT = 8
#: Handles asked for in one FilesRecordChunks call.
FILES_PER_CALL = 4096
#: Threads writing files on the bulk path, and files each keeps open.
WRITERS = 4
OPEN_FILES = 64
#: A writer's work is handed over in batches: a handover wakes a thread,
#: which costs more than a small write (tens of µs on a small VM).
_BATCH_ITEMS = 64
_BATCH_BYTES = 4 << 20
_QUEUE_DEPTH = 4  # batches waiting per writer thread (they hold the records' data)
#: Chunks each shard's reader may hold ready before it waits.
_PREFETCH_RECORDS = 4096

_BASELINE = int(Op.BASELINE)
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL   # a restore never writes over a file

#: Where a file is made: a path that does not exist yet, or a buffer in memory.
Target = Path | BufferOut
Done = Callable[[bytes, int], None]
Finished = Callable[[bytes, int, "Attr | None"], None]


def write_contents(shards: Shards, cut: Cut, targets: dict[bytes, Target], *, whole: bool,
                   done: Done | None = None, wrote: Callable[[int], None] | None = None,
                   file_records: Callable[[bytes], Iterable[Record]] | None = None,
                   finished: Finished | None = None) -> dict[bytes, tuple[int, Attr | None]]:
    """Make every file of ``targets`` (handle -> a local path that does not
    exist yet, or a ``BufferOut`` to hold it in memory) with its contents at
    ``cut``; returns each one's (size, newest attributes). ``whole``:
    ``targets`` are every file of the cut's tree (then the whole window is
    streamed); ``wrote(n)`` is told of bytes
    as they are written and ``done(fh, size)`` of each file as it is
    finished; ``file_records(fh)`` gives one file's records on the per-file
    path (default: ``cut_records``). ``finished(fh, size, attr)`` runs once
    per file after it is closed, on the thread that wrote it (to set its
    attributes there, in parallel with the others'); it must be thread-safe."""
    done = done or (lambda fh, size: None)
    wrote = wrote or (lambda n: None)
    finished = finished or (lambda fh, size, attr: None)
    if not whole and len(targets) < BULK_MIN_FILES:
        return _per_file(file_records or (lambda fh: cut_records(shards, cut, fh)), targets, done,
                         wrote, finished)
    after, until = cut.window()
    if whole:
        request = ScanRequest(after=after, until=until, with_data=True)
        batches = [(targets, lambda: shards.scan_apart(request, prefetch=_PREFETCH_RECORDS))]
    else:
        handles = list(targets)
        batches = []
        for i in range(0, len(handles), FILES_PER_CALL):
            part = FilesRequest(fhs=handles[i:i + FILES_PER_CALL], after=after, until=until,
                                with_data=True)
            batches.append(({fh: targets[fh] for fh in part.fhs},
                            lambda part=part: shards.files_records(part, prefetch=_PREFETCH_RECORDS,
                                                                     apart=True)))
    out: dict[bytes, tuple[int, Attr | None]] = {}
    with _Writers(targets) as writers:
        for part, records in batches:
            out.update(_bulk(cut, part, records(), writers, wrote, finished))
        writers.join()
    for fh, (size, _) in out.items():
        done(fh, size)
    return out


def fills(files: Iterable[tuple[bytes, int]], most: int,
          most_files: int = FILES_PER_CALL) -> Iterator[tuple[list[bytes], int]]:
    """``files`` (handle, size), in order, in runs for one bulk fill each: at
    most ``most`` bytes (a larger file alone) and ``most_files`` files; each
    run with its bytes."""
    run: list[bytes] = []
    nbytes = 0
    for fh, size in files:
        if run and (nbytes + size > most or len(run) >= most_files):
            yield run, nbytes
            run, nbytes = [], 0
        run.append(fh)
        nbytes += size
    if run:
        yield run, nbytes


def _per_file(file_records: Callable[[bytes], Iterable[Record]], targets: dict[bytes, Target],
              done: Done, wrote: Callable[[int], None],
              finished: Finished) -> dict[bytes, tuple[int, Attr | None]]:
    lock = threading.Lock()  # the callbacks are the caller's, called from many threads

    def one(fh: bytes) -> tuple[int, Attr | None]:
        target = targets[fh]
        if isinstance(target, BufferOut):
            out = replay_onto(file_records(fh), fh, target)
        else:
            fd = os.open(target, _CREATE, 0o600)
            try:
                out = replay(file_records(fh), fh, fd)
            finally:
                os.close(fd)
        finished(fh, *out)
        with lock:
            wrote(out[0])
            done(fh, out[0])
        return out

    with concurrent.futures.ThreadPoolExecutor(FILES_IN_FLIGHT, thread_name_prefix="nfsj-restore") as pool:
        return dict(zip(targets, pool.map(one, targets)))


def _bulk(cut: Cut, targets: dict[bytes, Target], records: Iterator[RecordData], writers: _Writers,
          wrote: Callable[[int], None], finished: Finished) -> dict[bytes, tuple[int, Attr | None]]:
    """Replay ``records`` (stamp order, each with its data apart) onto the
    files of ``targets``; records of other files and other baselines' pieces
    are passed over."""
    baseline_id = cut.baseline.baseline_id
    replays = {fh: FileReplay(fh, writers.out(fh)) for fh in targets}
    try:
        for record, data in records:
            file = replays.get(record.fh)
            if file is None or (record.op == _BASELINE and record.baseline_id != baseline_id):
                continue
            written = file.apply(record, data)
            if written:
                wrote(written)
    finally:
        records.close()
    out = {}
    for fh, file in replays.items():
        size, attr = out[fh] = file.finish()
        writers.close(fh, lambda fh=fh, size=size, attr=attr: finished(fh, size, attr))
    return out


_WRITE_OP, _TRUNCATE_OP, _CLOSE_OP = 0, 1, 2


class _Writers:
    """Threads that make and write the files: each file belongs to one thread,
    so its bytes land in the order the replay decided, while other files are
    written beside it (a write's syscall runs without the GIL)."""

    def __init__(self, paths: dict[bytes, Target], n: int = WRITERS) -> None:
        self._paths = paths
        self._memory = {fh: out for fh, out in paths.items() if isinstance(out, BufferOut)}
        self._queues = [queue.Queue(_QUEUE_DEPTH) for _ in range(n)]
        self._batches = {id(q): _Batch() for q in self._queues}   # not yet handed over
        self._owner: dict[bytes, queue.Queue] = {}
        self._error: BaseException | None = None
        self._threads = [threading.Thread(target=self._work, args=(q,), daemon=True,
                                          name=f"nfsj-restore-write-{k}")
                         for k, q in enumerate(self._queues)]
        for thread in self._threads:
            thread.start()

    def out(self, fh: bytes) -> _QueuedOut:
        q = self._owner.get(fh)
        if q is None:
            # Files to threads in turn: neighbours in the stream (a
            # baseline's files, one directory after another) go to different
            # threads, so no one thread gets a directory's worth of work
            # while the others wait. Threads meet only on a directory's lock
            # while a file is made in it.
            q = self._owner[fh] = self._queues[len(self._owner) % len(self._queues)]
        return _QueuedOut(self, q, fh)

    def put(self, q: queue.Queue, item: tuple, nbytes: int = 0) -> None:
        batch = self._batches[id(q)]
        batch.items.append(item)
        batch.nbytes += nbytes
        if len(batch.items) >= _BATCH_ITEMS or batch.nbytes >= _BATCH_BYTES:
            self._hand_over(q)

    def _hand_over(self, q: queue.Queue) -> None:
        if self._error is not None:
            raise self._error
        batch = self._batches[id(q)]
        if batch.items:
            q.put(batch.items)
            self._batches[id(q)] = _Batch()

    def close(self, fh: bytes, then: Callable[[], None]) -> None:
        """Close ``fh``'s file (made now, empty, if nothing was written to it), then run ``then``."""
        self.put(self._owner[fh], (fh, _CLOSE_OP, then, 0))

    def join(self) -> None:
        """Wait for every write; raises the first that failed."""
        for q in self._queues:
            self._hand_over(q)
            q.put(None)
        for thread in self._threads:
            thread.join()
        if self._error is not None:
            raise self._error

    def _work(self, q: queue.Queue) -> None:
        files = _OpenFiles(self._paths)
        memory = self._memory
        try:
            while (batch := q.get()) is not None:
                if self._error is not None:
                    continue  # drain: the reader stops at its next handover
                try:
                    for fh, op, data, number in batch:
                        buffer = memory.get(fh)
                        if buffer is not None:
                            _to_buffer(buffer, op, data, number)
                        elif op == _WRITE_OP:
                            pwrite_all(files.fd(fh), data, number)
                        elif op == _TRUNCATE_OP:
                            os.ftruncate(files.fd(fh), number)
                        else:
                            files.release(fh)
                            data()  # the file's `then`
                except BaseException as e:  # noqa: BLE001  raised by the reader
                    self._error = self._error or e
        finally:
            files.close_all()

    def __enter__(self) -> _Writers:
        return self

    def __exit__(self, *exc: object) -> None:
        if any(t.is_alive() for t in self._threads):
            self._error = self._error or RuntimeError("restore stopped")
            for q in self._queues:
                _drain(q)
                q.put(None)
            for thread in self._threads:
                thread.join()


def _to_buffer(buffer: BufferOut, op: int, data, number: int) -> None:
    if op == _WRITE_OP:
        buffer.write(data, number)
    elif op == _TRUNCATE_OP:
        buffer.truncate(number)
    else:
        data()  # the file's `then`: nothing to close


def _drain(q: queue.Queue) -> None:
    try:
        while True:
            q.get_nowait()
    except queue.Empty:
        pass


class _QueuedOut:
    """A ``FileOut`` that hands the file's writes to its writer thread."""

    __slots__ = ("_writers", "_q", "_fh")

    def __init__(self, writers: _Writers, q: queue.Queue, fh: bytes) -> None:
        self._writers, self._q, self._fh = writers, q, fh

    def truncate(self, size: int) -> None:
        self._writers.put(self._q, (self._fh, _TRUNCATE_OP, None, size))

    def write(self, data: bytes, offset: int) -> None:
        self._writers.put(self._q, (self._fh, _WRITE_OP, data, offset), len(data))


class _Batch:
    """A writer's items not yet handed over, and the bytes they hold."""

    __slots__ = ("items", "nbytes")

    def __init__(self) -> None:
        self.items: list[tuple] = []
        self.nbytes = 0


class _OpenFiles:
    """Write descriptors of many files, each made on first use, at most
    OPEN_FILES open, the least recently used closed."""

    def __init__(self, paths: dict[bytes, Target]) -> None:
        self._paths = paths
        self._open: OrderedDict[bytes, int] = OrderedDict()
        self._made: set[bytes] = set()

    def fd(self, fh: bytes) -> int:
        fd = self._open.get(fh)
        if fd is not None:
            self._open.move_to_end(fh)
            return fd
        if len(self._open) >= OPEN_FILES:
            os.close(self._open.popitem(last=False)[1])
        fd = self._open[fh] = os.open(self._paths[fh], os.O_WRONLY if fh in self._made else _CREATE, 0o600)
        self._made.add(fh)
        return fd

    def release(self, fh: bytes) -> None:
        """Close ``fh``'s file, making it (empty) if it was never opened."""
        fd = self._open.pop(fh, None)
        if fd is None and fh not in self._made:
            fd = os.open(self._paths[fh], _CREATE, 0o600)
            self._made.add(fh)
        if fd is not None:
            os.close(fd)

    def close_all(self) -> None:
        for fd in self._open.values():
            os.close(fd)
        self._open.clear()
