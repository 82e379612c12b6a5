"""NFSv3 write load from libnfs's async C API, through ctypes (benchmarks only).

    from tests.bench.libnfs_load import NfsTarget, write_throughput, write_latency_qd1
    target = NfsTarget("127.0.0.1", nfs_port, mount_port, "/export")
    ops_s, bytes_s = write_throughput(target, "/f", 4096, 64 << 20, queue_depth=16)
    latencies_s = write_latency_qd1(target, "/g", 4096, n=1000)

Why libnfs: it keeps many calls in flight on one TCP connection, as a kernel
client does, while nfs-rs makes every write durable and tops out near 2.6k
4 KiB writes/s (TESTBED.md). Debian's fio lacks its nfs engine, so this is a
small driver of our own around `libnfs.so.13` (Debian 12: libnfs 4.0.0, in
`libnfs13`). It needs only the shared library, not `libnfs-dev`.

The C library does the work: XDR encoding, the socket, XID matching, and
splitting a write larger than the server's `wtmax` into several WRITEs.
Python runs one short callback per completed `nfs_pwrite_async` (count it,
re-arm the next write) and a `poll()` loop around `nfs_service`, so the
driver's own CPU stays small next to the server's and the proxy's. Each
result reports it (`client_cpu_s`), so a reader can check.

libnfs 4.0 exports no `nfs_set_nfsport`/`nfs_set_mountport`; the ports are
given the way its URL parser accepts them (`?nfsport=P&mountport=M`, parsed by
`nfs_parse_url_dir`, which stores them in the context), then `nfs_mount`
connects to exactly those ports without asking a portmapper.

Writes are sent as libnfs sends them for a file opened without O_SYNC:
UNSTABLE, as a kernel client's buffered writes are; `file_sync=True` opens
the file with O_SYNC, which libnfs turns into FILE_SYNC WRITEs. No COMMIT is
timed (`nfs_close` happens after the clock stops). `metadata_mix` drives
CREATE, SETATTR and REMOVE through the same async API, several files at once.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import dataclasses
import os
import select
import time
from typing import NamedTuple

__all__ = ["NfsTarget", "NfsError", "ThroughputResult", "Connection", "write_throughput",
           "write_latency_qd1", "metadata_mix", "library_path"]

_LIB_NAMES = ("libnfs.so.13", "libnfs.so")

# The callback type of every async call (libnfs.h):
#   typedef void (*nfs_cb)(int err, struct nfs_context *nfs, void *data, void *private_data);
_NFS_CB = ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p)


class _NfsUrl(ctypes.Structure):
    _fields_ = [("server", ctypes.c_char_p), ("path", ctypes.c_char_p), ("file", ctypes.c_char_p)]


class NfsError(RuntimeError):
    """A libnfs call failed; the message carries libnfs's own error string."""


class NfsTarget(NamedTuple):
    """Where to send NFSv3: host, NFS port, MOUNT port, export path."""

    host: str
    nfs_port: int
    mount_port: int
    export: str

    def url(self) -> str:
        return (f"nfs://{self.host}{self.export}?version=3"
                f"&nfsport={self.nfs_port}&mountport={self.mount_port}")


@dataclasses.dataclass(frozen=True, slots=True)
class ThroughputResult:
    ops_per_s: float
    bytes_per_s: float
    ops: int
    elapsed_s: float
    client_cpu_s: float  # this process's CPU (Python + libnfs) while the clock ran

    def __iter__(self):  # unpacks as (ops/s, bytes/s)
        return iter((self.ops_per_s, self.bytes_per_s))


_lib: ctypes.CDLL | None = None
_lib_path: str | None = None


def library_path() -> str:
    _load()
    assert _lib_path is not None
    return _lib_path


def _load() -> ctypes.CDLL:
    global _lib, _lib_path
    if _lib is not None:
        return _lib
    errors = []
    names = list(_LIB_NAMES)
    found = ctypes.util.find_library("nfs")
    if found:
        names.append(found)
    for name in names:
        try:
            lib = ctypes.CDLL(name)
            break
        except OSError as e:
            errors.append(f"{name}: {e}")
    else:
        raise NfsError("libnfs not found (Debian: apt-get install libnfs13 or libnfs-utils): "
                       + "; ".join(errors))
    vp, c_int, u64 = ctypes.c_void_p, ctypes.c_int, ctypes.c_uint64
    sigs = {
        "nfs_init_context": (vp, []),
        "nfs_destroy_context": (None, [vp]),
        "nfs_get_error": (ctypes.c_char_p, [vp]),
        "nfs_parse_url_dir": (ctypes.POINTER(_NfsUrl), [vp, ctypes.c_char_p]),
        "nfs_destroy_url": (None, [ctypes.POINTER(_NfsUrl)]),
        "nfs_set_version": (c_int, [vp, c_int]),
        "nfs_set_timeout": (None, [vp, c_int]),
        "nfs_set_autoreconnect": (None, [vp, c_int]),
        "nfs_mount": (c_int, [vp, ctypes.c_char_p, ctypes.c_char_p]),
        "nfs_umount": (c_int, [vp]),
        "nfs_get_writemax": (u64, [vp]),
        "nfs_creat": (c_int, [vp, ctypes.c_char_p, c_int, ctypes.POINTER(vp)]),
        "nfs_close": (c_int, [vp, vp]),
        "nfs_unlink": (c_int, [vp, ctypes.c_char_p]),
        "nfs_pwrite": (c_int, [vp, vp, u64, u64, vp]),
        "nfs_pwrite_async": (c_int, [vp, vp, u64, u64, vp, _NFS_CB, vp]),
        "nfs_open": (c_int, [vp, ctypes.c_char_p, c_int, ctypes.POINTER(vp)]),
        "nfs_creat_async": (c_int, [vp, ctypes.c_char_p, c_int, _NFS_CB, vp]),
        "nfs_fchmod_async": (c_int, [vp, vp, c_int, _NFS_CB, vp]),
        "nfs_close_async": (c_int, [vp, vp, _NFS_CB, vp]),
        "nfs_unlink_async": (c_int, [vp, ctypes.c_char_p, _NFS_CB, vp]),
        "nfs_get_fd": (c_int, [vp]),
        "nfs_which_events": (c_int, [vp]),
        "nfs_service": (c_int, [vp, c_int]),
    }
    for name, (restype, argtypes) in sigs.items():
        fn = getattr(lib, name)
        fn.restype, fn.argtypes = restype, argtypes
    _lib, _lib_path = lib, getattr(lib, "_name", None)
    try:  # the file actually mapped, for the record
        with open("/proc/self/maps") as maps:
            for line in maps:
                if "libnfs.so" in line:
                    _lib_path = os.path.realpath(line.split()[-1])
                    break
    except OSError:
        pass
    return lib


class Connection:
    """One mounted libnfs context: one TCP connection to the NFS port.

    Use as a context manager; `close()` unmounts and frees the context.
    """

    def __init__(self, target: NfsTarget | tuple, *, timeout_ms: int = 30_000):
        target = NfsTarget(*target)
        lib = self.lib = _load()
        ctx = lib.nfs_init_context()
        if not ctx:
            raise NfsError("nfs_init_context failed")
        self.ctx = ctx
        self.target = target
        self._mounted = False
        try:
            url = lib.nfs_parse_url_dir(ctx, target.url().encode())
            if not url:
                raise NfsError(f"nfs_parse_url_dir({target.url()!r}): {self.error()}")
            try:
                server, export = url.contents.server, url.contents.path
                lib.nfs_set_version(ctx, 3)
                # Give up instead of hanging forever on a dead server; no reconnect
                # behind our back (a dropped connection must show as a failure).
                lib.nfs_set_timeout(ctx, timeout_ms)
                lib.nfs_set_autoreconnect(ctx, 0)
                if lib.nfs_mount(ctx, server, export) != 0:
                    raise NfsError(f"nfs_mount {target.url()}: {self.error()}")
                self._mounted = True
            finally:
                lib.nfs_destroy_url(url)
        except BaseException:
            self.close()
            raise

    def error(self) -> str:
        msg = self.lib.nfs_get_error(self.ctx)
        return msg.decode(errors="replace") if msg else "(no error string)"

    @property
    def writemax(self) -> int:
        return self.lib.nfs_get_writemax(self.ctx)

    def creat(self, path: str, mode: int = 0o644) -> int:
        """Create (or truncate) `path`, relative to the export; returns the nfsfh."""
        fh = ctypes.c_void_p()
        rc = self.lib.nfs_creat(self.ctx, path.encode(), mode, ctypes.byref(fh))
        if rc < 0:
            raise NfsError(f"nfs_creat {path}: {os.strerror(-rc)}: {self.error()}")
        return fh.value

    def open_sync(self, path: str) -> int:
        """Open `path` for writing with O_SYNC: libnfs then sends its WRITEs as
        FILE_SYNC (the nfsfh's is_sync); returns the nfsfh."""
        fh = ctypes.c_void_p()
        rc = self.lib.nfs_open(self.ctx, path.encode(), os.O_WRONLY | os.O_SYNC, ctypes.byref(fh))
        if rc < 0:
            raise NfsError(f"nfs_open {path}: {os.strerror(-rc)}: {self.error()}")
        return fh.value

    def close_file(self, fh: int) -> None:
        rc = self.lib.nfs_close(self.ctx, fh)
        if rc < 0:
            raise NfsError(f"nfs_close: {os.strerror(-rc)}: {self.error()}")

    def unlink(self, path: str) -> None:
        rc = self.lib.nfs_unlink(self.ctx, path.encode())
        if rc < 0:
            raise NfsError(f"nfs_unlink {path}: {os.strerror(-rc)}: {self.error()}")

    def close(self) -> None:
        if self.ctx:
            if self._mounted:
                self.lib.nfs_umount(self.ctx)
            self.lib.nfs_destroy_context(self.ctx)
            self.ctx = None

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the async write loop ----------------------------------------------------

    def pwrite_stream(self, fh: int, block_bytes: int, count: int, queue_depth: int,
                      *, start_offset: int = 0) -> tuple[float, float]:
        """Write `count` blocks of `block_bytes` at consecutive offsets, keeping
        `queue_depth` calls in flight; returns (elapsed_s, client_cpu_s).

        The clock runs from the first call issued to the last completion.
        """
        return _pwrite_streams([(self, fh)], block_bytes, count, queue_depth, start_offset)


class _Writer:
    """One file's sequential writes on one connection, `queue_depth` in flight."""

    def __init__(self, conn: Connection, fh: int, buf_addr: int, block_bytes: int, count: int,
                 start_offset: int, failure: list[str]):
        self.conn, self.fh, self.buf_addr = conn, fh, buf_addr
        self.block_bytes, self.count, self.start_offset = block_bytes, count, start_offset
        self.issued = self.done = 0
        self.failure = failure
        self.callback = _NFS_CB(self._on_write)  # must outlive every call that names it

    def issue(self) -> bool:
        lib = self.conn.lib
        offset = self.start_offset + self.issued * self.block_bytes
        if lib.nfs_pwrite_async(self.conn.ctx, self.fh, offset, self.block_bytes, self.buf_addr,
                                self.callback, None) < 0:
            self.failure.append(f"nfs_pwrite_async: {self.conn.error()}")
            return False
        self.issued += 1
        return True

    # The only Python that runs per write: count the completion, re-arm.
    def _on_write(self, err: int, _nfs, data, _private) -> None:
        self.done += 1
        if err < 0:
            if not self.failure:
                self.failure.append(f"{os.strerror(-err)}: "
                                    f"{ctypes.cast(data, ctypes.c_char_p).value!r}")
            return
        if self.issued < self.count and not self.failure:
            self.issue()

    @property
    def busy(self) -> bool:
        return self.done < self.issued


def _serve(conns: list[Connection], busy, progress) -> None:
    """Run libnfs's event loop over `conns` until `busy()` is false.

    With nfs_set_timeout, libnfs wants nfs_service(0) now and then even when
    idle: that is how its own timeouts fire.
    """
    poller = select.poll()
    by_fd, events = {}, {}
    for conn in conns:
        fd = conn.lib.nfs_get_fd(conn.ctx)
        by_fd[fd] = conn
        events[fd] = conn.lib.nfs_which_events(conn.ctx)
        poller.register(fd, events[fd])
    while busy():
        for fd, conn in by_fd.items():
            want = conn.lib.nfs_which_events(conn.ctx)
            if want != events[fd]:
                poller.modify(fd, want)
                events[fd] = want
        ready = dict(poller.poll(100))
        for fd, conn in by_fd.items():
            if conn.lib.nfs_service(conn.ctx, ready.get(fd, 0)) < 0:
                raise NfsError(f"nfs_service: {conn.error()} ({progress()})")


def _pwrite_streams(streams: list[tuple[Connection, int]], block_bytes: int, count: int,
                    queue_depth: int, start_offset: int = 0) -> tuple[float, float]:
    """`count` sequential writes to each (connection, file), `queue_depth` in
    flight on each, all driven by one event loop; returns (elapsed_s, client_cpu_s)."""
    if count <= 0:
        return 0.0, 0.0
    buf = ctypes.create_string_buffer(os.urandom(block_bytes), block_bytes)
    failure: list[str] = []
    writers = [_Writer(conn, fh, ctypes.addressof(buf), block_bytes, count, start_offset, failure)
               for conn, fh in streams]
    cpu0 = time.process_time()
    t0 = time.perf_counter()
    for w in writers:
        for _ in range(min(queue_depth, count)):
            if not w.issue():
                raise NfsError(failure[0])
    _serve([w.conn for w in writers], lambda: any(w.busy for w in writers),
           lambda: f"{sum(w.done for w in writers)} of {count * len(writers)} writes done")
    elapsed = time.perf_counter() - t0
    cpu = time.process_time() - cpu0
    if failure:
        raise NfsError(f"write failed after {sum(w.done for w in writers)}: {failure[0]}")
    return elapsed, cpu


def write_throughput(url_parts: NfsTarget | tuple, path: str, block_bytes: int, total_bytes: int,
                     queue_depth: int, *, file_sync: bool = False,
                     connections: int = 1) -> ThroughputResult:
    """Create `path` and write `total_bytes` to it sequentially in `block_bytes`
    calls, `queue_depth` in flight. Unpacks as (ops/s, bytes/s); the result also
    carries the op count, elapsed time and this process's CPU time.

    `file_sync`: the writes are FILE_SYNC (the file opened with O_SYNC), not
    UNSTABLE. `connections` > 1: that many connections (each its own TCP
    connection, mount and file `path-K`), each writing `total_bytes / connections`
    with `queue_depth` in flight, from one event loop.
    """
    count = max(1, total_bytes // block_bytes // connections)
    conns: list[Connection] = []
    streams: list[tuple[Connection, int]] = []
    try:
        for k in range(connections):
            conn = Connection(url_parts)
            conns.append(conn)
            name = path if connections == 1 else f"{path}-{k}"
            fh = conn.creat(name)
            if file_sync:
                conn.close_file(fh)
                fh = conn.open_sync(name)
            streams.append((conn, fh))
        elapsed, cpu = _pwrite_streams(streams, block_bytes, count, queue_depth)
    finally:
        for conn, fh in streams:
            conn.close_file(fh)
        for conn in conns:
            conn.close()
    ops = count * connections
    return ThroughputResult(ops / elapsed, ops * block_bytes / elapsed, ops, elapsed, cpu)


class _MetadataChain:
    """One slot of the metadata mix: CREATE a file, SETATTR its mode, REMOVE it, next file."""

    def __init__(self, conn: Connection, names: list[bytes], failure: list[str]):
        self.conn, self.names, self.failure = conn, names, failure
        self.calls = 0  # CREATE, SETATTR and REMOVE replies
        self.busy = False
        self._name = b""
        self._fh = None
        lib = conn.lib
        self._created, self._chmodded = _NFS_CB(self._on_create), _NFS_CB(self._on_chmod)
        self._closed, self._removed = _NFS_CB(self._on_close), _NFS_CB(self._on_remove)
        self._creat, self._fchmod = lib.nfs_creat_async, lib.nfs_fchmod_async
        self._close, self._unlink = lib.nfs_close_async, lib.nfs_unlink_async

    def next_file(self) -> None:
        if not self.names or self.failure:
            self.busy = False
            return
        self._name = self.names.pop()
        self.busy = True
        self._check(self._creat(self.conn.ctx, self._name, 0o644, self._created, None), "creat")

    def _check(self, rc: int, what: str) -> None:
        if rc < 0 and not self.failure:
            self.failure.append(f"nfs_{what}_async: {self.conn.error()}")
            self.busy = False

    def _ok(self, err: int, data, what: str) -> bool:
        if err < 0:
            if not self.failure:
                self.failure.append(f"{what}: {os.strerror(-err)}: "
                                    f"{ctypes.cast(data, ctypes.c_char_p).value!r}")
            self.busy = False
            return False
        return True

    def _on_create(self, err: int, _nfs, data, _private) -> None:
        if self._ok(err, data, "create"):
            self.calls += 1
            self._fh = data
            self._check(self._fchmod(self.conn.ctx, data, 0o600, self._chmodded, None), "fchmod")

    def _on_chmod(self, err: int, _nfs, data, _private) -> None:
        if self._ok(err, data, "setattr"):
            self.calls += 1
            # Frees the nfsfh; with nothing written it sends no call.
            self._check(self._close(self.conn.ctx, self._fh, self._closed, None), "close")

    def _on_close(self, err: int, _nfs, data, _private) -> None:
        if self._ok(err, data, "close"):
            self._check(self._unlink(self.conn.ctx, self._name, self._removed, None), "unlink")

    def _on_remove(self, err: int, _nfs, data, _private) -> None:
        if self._ok(err, data, "remove"):
            self.calls += 1
            self.next_file()


def metadata_mix(url_parts: NfsTarget | tuple, prefix: str, files: int,
                 queue_depth: int) -> ThroughputResult:
    """`files` files, each CREATEd, SETATTRed (chmod) and REMOVEd in turn, with
    `queue_depth` files under way at once; one op = one of those calls (three
    per file). The files sit in the export's root, so libnfs sends no LOOKUP.
    """
    failure: list[str] = []
    with Connection(url_parts) as conn:
        names = [f"{prefix}-{i}".encode() for i in range(files)][::-1]
        chains = [_MetadataChain(conn, names, failure) for _ in range(queue_depth)]
        cpu0 = time.process_time()
        t0 = time.perf_counter()
        for chain in chains:
            chain.next_file()
        _serve([conn], lambda: any(c.busy for c in chains),
               lambda: f"{sum(c.calls for c in chains)} of {3 * files} calls done")
        elapsed = time.perf_counter() - t0
        cpu = time.process_time() - cpu0
    if failure:
        raise NfsError(f"metadata mix failed: {failure[0]}")
    ops = sum(c.calls for c in chains)
    return ThroughputResult(ops / elapsed, 0.0, ops, elapsed, cpu)


def write_latency_qd1(url_parts: NfsTarget | tuple, path: str, block_bytes: int = 4096,
                      n: int = 1000, *, warmup: int = 20, file_sync: bool = False) -> list[float]:
    """Create `path`, then time `n` sequential writes one at a time (after
    `warmup` untimed ones); returns each call's latency in seconds.
    `file_sync`: FILE_SYNC writes (as `write_throughput`'s), not UNSTABLE.

    Each timed call is one `nfs_pwrite`, whose wait loop (poll + service)
    runs inside libnfs: the clock brackets one ctypes call and no Python
    callback.
    """
    latencies: list[float] = []
    with Connection(url_parts) as conn:
        lib, ctx = conn.lib, conn.ctx
        pwrite = lib.nfs_pwrite
        buf = ctypes.create_string_buffer(os.urandom(block_bytes), block_bytes)
        addr = ctypes.addressof(buf)
        fh = conn.creat(path)
        if file_sync:
            conn.close_file(fh)
            fh = conn.open_sync(path)
        clock = time.perf_counter
        try:
            for i in range(warmup + n):
                t0 = clock()
                rc = pwrite(ctx, fh, i * block_bytes, block_bytes, addr)
                t1 = clock()
                if rc < 0:
                    raise NfsError(f"nfs_pwrite: {os.strerror(-rc)}: {conn.error()}")
                if i >= warmup:
                    latencies.append(t1 - t0)
        finally:
            conn.close_file(fh)
    return latencies


if __name__ == "__main__":  # smoke run: python3 tests/bench/libnfs_load.py HOST NFSPORT MOUNTPORT /export
    import sys
    t = NfsTarget(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
    r = write_throughput(t, "/libnfs_load_smoke", 4096, 32 << 20, 16)
    print(f"4 KiB QD16: {r.ops_per_s:,.0f} op/s, client CPU {r.client_cpu_s / r.ops * 1e6:.1f} us/op")
    lat = sorted(write_latency_qd1(t, "/libnfs_load_smoke_lat", 4096, 500))
    print(f"QD1 p50 {lat[len(lat) // 2] * 1e6:.0f} us")
