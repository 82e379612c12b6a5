"""A small blocking NFSv3 + MOUNT v3 client built on our own codecs.

Used by `nfsj baseline` (walk the export with READDIRPLUS, read files with
READ) and by restore (push files back onto the NAS). It is also the tool the
end-to-end tests use to prove the codecs against a real server.

Layering. Everything that knows a byte of the protocol lives in the sans-IO
modules: `rpc` (record marking, call/reply headers), `nfs3` and `mount`
(argument and result schemas). This module is only the shell around them:
a TCP connection to NFS (kept open; MOUNT's is opened per call), XIDs,
AUTH_SYS credentials, and the translation of replies into return values or
exceptions.

One call is in flight at a time (this is not a pipelining client), so a
reply whose XID is not the one we sent can only be a protocol violation.
The exception is the raw layer (`call_message`, `send_messages`,
`receive_reply`): it sends calls as given, with any XID, several at once,
and hands back replies in arrival order. Tests use it to retransmit, or to
reuse an XID while the first call is still in flight, as real (or hostile)
clients do.

Errors, from the outside in:

* `NfsError` - the server answered the NFS call with a status other than
  NFS3_OK. `.status` is the `Nfsstat3` (its `.name` reads like
  ``NFS3ERR_NOENT``), `.proc` the `Proc3`, `.resfail` the decoded failure
  body (its wcc data / post-op attributes). The connection stays usable.
* `MountError` - the same for MNT (`.status` is a `Mountstat3`).
* `RpcError` - the RPC layer refused the call (PROG_UNAVAIL, GARBAGE_ARGS,
  AUTH_ERROR, ...). `.reply` is the decoded `RpcReply`. The connection
  stays usable.
* `ProtocolError` - the server's bytes made no sense: an undecodable reply,
  a reply to another XID, a directory listing that does not progress. The
  connection is closed; the next call opens a new one.
* `OSError` (including `TimeoutError` after `timeout_s` and
  `ConnectionError` when the server hangs up) from the socket. The
  connection is closed. Calls are never retransmitted automatically: a
  mutation whose reply was lost may or may not have happened.

Ports. RFC 1813 servers may insist on a privileged (< 1024) source port;
ganesha does so only for exports with ``PrivilegedPort = true`` (not ours).
`privileged_port=True` binds to a free port in 512-1023 (needs root or
CAP_NET_BIND_SERVICE), as the kernel client and `bindresvport(3)` do.

Not thread-safe: give each thread its own client.
"""

from __future__ import annotations

import errno
import os
import random
import socket
import time
from contextlib import suppress
from typing import Any, Final, Iterator

from nfsproxy.wire import mount, nfs3, nfsacl
from nfsproxy.wire.mount import MountProc3, Mountstat3
from nfsproxy.wire.nfs3 import (COMMIT3args, CREATE3args, CREATE3resok, Createhow3, CreateMode, Devicedata3,
                   Diropargs3, Entry3, Entryplus3, FSINFO3args, FSINFO3resok, FSSTAT3args,
                   FSSTAT3resok, Ftype3, GETATTR3args, GETATTR3resok, LINK3args, LINK3resok,
                   LOOKUP3args, LOOKUP3resok, MKDIR3args, MKDIR3resok, MKNOD3args, MKNOD3resok,
                   Mknoddata3, Nfsstat3, Nfstime3, PATHCONF3args, PATHCONF3resok, Proc3,
                   READ3args, READ3resok, READDIR3args, READDIR3resok, READDIRPLUS3args,
                   READDIRPLUS3resok, READLINK3args, READLINK3resok, REMOVE3args, REMOVE3resok,
                   RENAME3args, RENAME3resok, RMDIR3args, RMDIR3resok, SETATTR3args,
                   SETATTR3resok, SYMLINK3args, SYMLINK3resok, ACCESS3args, ACCESS3resok,
                   COMMIT3resok, Sattr3, SetAtime, SetMtime, Specdata3, StableHow,
                   Symlinkdata3, TimeHow, WRITE3args, WRITE3resok)
from nfsproxy.wire.programs import Procedure, lookup
from nfsproxy.wire.rpc import (NEED_DATA, AuthSys, RpcCall, RpcDecodeError, RpcMessageReader,
                  RpcReply, decode_body, encode_call, frame_rpc_message, parse_message)

__all__ = [
    "NfsClient", "ClientError", "ProtocolError", "XidMismatchError", "RpcError", "NfsError",
    "MountError", "sattr3", "nfstime3", "nfstime3_ns", "created_fh", "SERVER_TIME",
    "COOKIEVERF_ZERO", "MAX_TRANSFER_BYTES",
]

COOKIEVERF_ZERO: Final = bytes(nfs3.NFS3_COOKIEVERFSIZE)
SERVER_TIME: Final = TimeHow.SET_TO_SERVER_TIME
"""Pass as `atime`/`mtime` to `sattr3()` to let the server stamp its own time."""

_RECV_BYTES: Final = 256 * 1024
_IOV_MAX: Final = 1024
_RESERVED_PORTS: Final = range(1023, 511, -1)
# Directory reply sizes when the caller does not choose (dircount counts names
# and cookies only; maxcount the whole reply, attributes and handles included).
_DEFAULT_DIRCOUNT: Final = 8192
_DEFAULT_MAXCOUNT: Final = 65536
_COMMIT_RETRIES: Final = 3
# ganesha advertises rtmax = wtmax = 64 MiB; like the Linux client we never move
# more than 1 MiB per call, which keeps replies far below the record reader's cap.
MAX_TRANSFER_BYTES: Final = 1 << 20


# --------------------------------------------------------------------------
# Errors


class ClientError(Exception):
    """Base of the errors this client raises on purpose (socket errors are OSError)."""


class ProtocolError(ClientError):
    """The server's reply broke the protocol; the connection has been closed."""


class XidMismatchError(ProtocolError):
    """A reply arrived for an XID we were not waiting for."""

    def __init__(self, expected: int, received: int):
        super().__init__(f"reply XID {received:#010x} does not match call XID {expected:#010x}")
        self.expected = expected
        self.received = received


class RpcError(ClientError):
    """The RPC layer refused the call (the reply was not MSG_ACCEPTED/SUCCESS).

    `reply` is the decoded `RpcReply`; `procedure` names what was called.
    """

    def __init__(self, reply: RpcReply, procedure: Procedure):
        if reply.reject_stat is not None:
            why = reply.reject_stat.name
            if reply.auth_stat is not None:
                why += f" ({reply.auth_stat.name})"
        else:
            why = reply.accept_stat.name if reply.accept_stat is not None else "?"
        if reply.mismatch is not None:
            why += f" (supported versions {reply.mismatch[0]}-{reply.mismatch[1]})"
        super().__init__(f"RPC call {_describe(procedure)} refused: {why}")
        self.reply = reply
        self.procedure = procedure


class NfsError(ClientError):
    """An NFSv3 call failed with `status` (an `Nfsstat3`, e.g. NFS3ERR_NOENT).

    `proc` is the `Proc3`; `resfail` is the decoded failure body (None for
    GETATTR); `context` says what the call was about (a name, a handle).
    """

    def __init__(self, status: Nfsstat3, proc: Proc3, resfail: Any = None, context: str = ""):
        where = f" {context}" if context else ""
        super().__init__(f"NFSv3 {proc.name}{where}: {status.name}")
        self.status = status
        self.proc = proc
        self.resfail = resfail
        self.context = context


class MountError(ClientError):
    """MNT failed with `status` (a `Mountstat3`, e.g. MNT3ERR_NOENT)."""

    def __init__(self, status: Mountstat3, export: str):
        super().__init__(f"MOUNT {export!r}: {status.name}")
        self.status = status
        self.export = export


def _nfs3(proc: Proc3) -> Procedure:
    return lookup(nfs3.NFS_PROGRAM, nfs3.NFS_V3, proc)


def _describe(p: Procedure) -> str:
    return f"{p.name} (program {p.prog} v{p.vers} proc {p.proc})"


# --------------------------------------------------------------------------
# Attribute helpers


def nfstime3(ns: int) -> Nfstime3:
    """An `Nfstime3` from integer nanoseconds since the epoch."""
    seconds, nseconds = divmod(ns, 1_000_000_000)
    return Nfstime3(seconds, nseconds)


def nfstime3_ns(t: Nfstime3) -> int:
    """Integer nanoseconds since the epoch of an `Nfstime3`."""
    return t.seconds * 1_000_000_000 + t.nseconds


def _set_time(cls: type, value: Any) -> Any:
    if value is None:
        return cls(TimeHow.DONT_CHANGE, None)
    if value is TimeHow.SET_TO_SERVER_TIME:
        return cls(TimeHow.SET_TO_SERVER_TIME, None)
    if isinstance(value, Nfstime3):
        return cls(TimeHow.SET_TO_CLIENT_TIME, value)
    if isinstance(value, int) and not isinstance(value, bool):
        return cls(TimeHow.SET_TO_CLIENT_TIME, nfstime3(value))
    raise TypeError(f"a time is None, SERVER_TIME, an Nfstime3 or integer ns; got {value!r}")


def sattr3(*, mode: int | None = None, uid: int | None = None, gid: int | None = None,
           size: int | None = None, atime: Any = None, mtime: Any = None) -> Sattr3:
    """Build an `Sattr3`. None leaves an attribute alone; a time is None,
    `SERVER_TIME`, an `Nfstime3` or integer nanoseconds since the epoch."""
    return Sattr3(mode, uid, gid, size, _set_time(SetAtime, atime), _set_time(SetMtime, mtime))


def _attrs(attrs: Sattr3 | int | None) -> Sattr3:
    """`Sattr3` as given, an int as a mode, None as "set nothing"."""
    if attrs is None:
        return sattr3()
    if isinstance(attrs, int) and not isinstance(attrs, bool):
        return sattr3(mode=attrs)
    if isinstance(attrs, Sattr3):
        return attrs
    raise TypeError(f"attributes are an Sattr3, an int mode or None; got {attrs!r}")


def _fh(fh: bytes) -> bytes:
    """Handles are copied to bytes (a memoryview from a reply must not pin its buffer)."""
    return fh if type(fh) is bytes else bytes(fh)


# --------------------------------------------------------------------------
# One TCP connection to one RPC program


class _Connection:
    """A TCP socket with RPC record marking; one call in flight at a time."""

    __slots__ = ("host", "port", "timeout_s", "privileged_port", "_sock", "_reader", "_buf")

    def __init__(self, host: str, port: int, timeout_s: float, privileged_port: bool):
        self.host = host
        self.port = port
        self.timeout_s = timeout_s
        self.privileged_port = privileged_port
        self._sock: socket.socket | None = None
        self._reader: RpcMessageReader | None = None
        self._buf = bytearray(_RECV_BYTES)

    def _connect(self) -> socket.socket:
        infos = socket.getaddrinfo(self.host, self.port, type=socket.SOCK_STREAM)
        last: OSError | None = None
        for family, type_, proto, _, addr in infos:
            sock = socket.socket(family, type_, proto)
            try:
                sock.settimeout(self.timeout_s)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                if self.privileged_port:
                    _bind_reserved(sock, family)
                sock.connect(addr)
            except OSError as e:
                sock.close()
                last = e
                continue
            self._sock = sock
            self._reader = RpcMessageReader()
            return sock
        raise last or OSError(f"cannot resolve {self.host}:{self.port}")

    def close(self) -> None:
        sock, self._sock, self._reader = self._sock, None, None
        if sock is not None:
            with suppress(OSError):
                sock.close()

    def exchange(self, xid: int, parts: list[bytes | memoryview]) -> tuple[RpcReply, memoryview]:
        """Send one call message (its encoded parts) and return (header, body) of
        the reply with that XID. Any failure closes the connection."""
        sock = self._sock or self._connect()
        try:
            size = sum(len(p) for p in parts)
            _send_parts(sock, [frame_rpc_message(size), *parts])
            message = self._receive_message(sock)
            try:
                header, body = parse_message(message)
            except RpcDecodeError as e:
                raise ProtocolError(f"undecodable reply from {self.host}:{self.port}: {e}") from None
            if not isinstance(header, RpcReply):
                raise ProtocolError(f"{self.host}:{self.port} sent a CALL where a REPLY was due")
            if header.xid != xid:
                raise XidMismatchError(xid, header.xid)
            return header, body
        except BaseException:
            self.close()
            raise

    def send(self, parts: list[bytes | memoryview]) -> None:
        """Send messages (each already framed) without waiting for any reply."""
        sock = self._sock or self._connect()
        try:
            _send_parts(sock, parts)
        except BaseException:
            self.close()
            raise

    def receive(self) -> tuple[RpcReply, memoryview]:
        """The next reply to arrive, whatever its XID."""
        sock = self._sock or self._connect()
        try:
            header, body = parse_message(self._receive_message(sock))
            if not isinstance(header, RpcReply):
                raise ProtocolError(f"{self.host}:{self.port} sent a CALL where a REPLY was due")
            return header, body
        except RpcDecodeError as e:
            self.close()
            raise ProtocolError(f"undecodable reply from {self.host}:{self.port}: {e}") from None
        except BaseException:
            self.close()
            raise

    def _receive_message(self, sock: socket.socket) -> memoryview:
        reader = self._reader
        view = memoryview(self._buf)
        while True:
            try:
                message = reader.next_message()
            except RpcDecodeError as e:
                raise ProtocolError(f"bad record marking from {self.host}:{self.port}: {e}") from None
            if message is not NEED_DATA:
                return message
            n = sock.recv_into(view)
            if n == 0:
                raise ConnectionError(f"{self.host}:{self.port} closed the connection mid-call")
            reader.receive(view[:n])


def _send_parts(sock: socket.socket, parts: list[bytes | memoryview]) -> None:
    """sendall() over a list of buffers without joining them (a 1 MiB WRITE
    payload is sent from where it lies)."""
    views = [memoryview(p).cast("B") if isinstance(p, memoryview) else memoryview(p) for p in parts]
    i = 0
    while i < len(views):
        sent = sock.sendmsg(views[i:i + _IOV_MAX])
        while sent:
            n = views[i].nbytes
            if sent >= n:
                sent -= n
                i += 1
            else:
                views[i] = views[i][sent:]
                sent = 0
        while i < len(views) and views[i].nbytes == 0:
            i += 1


def _bind_reserved(sock: socket.socket, family: int) -> None:
    """Bind to a free port below 1024, as bindresvport(3) does."""
    any_addr = "::" if family == socket.AF_INET6 else "0.0.0.0"
    for port in _RESERVED_PORTS:
        try:
            sock.bind((any_addr, port))
            return
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                continue
            raise
    raise OSError(errno.EADDRINUSE, "no free reserved port in 512-1023")


# --------------------------------------------------------------------------
# The client


class NfsClient:
    """A blocking NFSv3 client of one export, speaking MOUNT v3 to get its root.

    Usage::

        with NfsClient("127.0.0.1", nfs_port, mount_port, "/export") as c:
            root = c.mount()
            fh = c.lookup_path("dir/file")
            data = c.read_all(fh)

    Each NFS procedure has a thin method that builds the `*3args`, makes the
    call and returns the decoded resok body (or raises `NfsError`); handles
    are `bytes`. Names and symlink targets are `bytes` in replies, exactly
    as the server sent them; arguments take `bytes` (sent as is) or `str`
    (sent as UTF-8). Helpers (`lookup_path`, `read_all`, `write_all`,
    `readdirplus` over all pages) sit on top.
    """

    def __init__(self, host: str, nfs_port: int, mount_port: int, export: str, *,
                 uid: int = 0, gid: int = 0, gids: tuple[int, ...] = (),
                 machine_name: bytes | str | None = None, timeout_s: float = 10.0,
                 privileged_port: bool = False):
        self.host = host
        self.nfs_port = nfs_port
        self.mount_port = mount_port
        self.export = export
        self.timeout_s = timeout_s
        self.privileged_port = privileged_port
        name = machine_name if machine_name is not None else socket.gethostname()
        if isinstance(name, str):
            name = name.encode("utf-8", "surrogateescape")
        name = name[:255]  # AUTH_SYS allows 255 bytes; any bytes, as a hostile client may send
        # The credential is the same on every call: encode it once.
        self.auth_sys = AuthSys(int(time.time()) & 0xFFFFFFFF, name, uid, gid, tuple(gids))
        self._cred = self.auth_sys.to_opaque()
        self._xid = random.getrandbits(32)
        self._nfs = _Connection(host, nfs_port, timeout_s, privileged_port)
        self.root_fh: bytes | None = None
        self.auth_flavors: tuple[int, ...] = ()
        self._fsinfo: FSINFO3resok | None = None

    # -- lifecycle ---------------------------------------------------------

    def __enter__(self) -> NfsClient:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.root_fh is not None:
            # UMNT only tidies the server's mount list; never mask the body's error.
            with suppress(OSError, ClientError):
                self.umount()
        self.close()

    def close(self) -> None:
        """Close the NFS connection (a later call reconnects)."""
        self._nfs.close()

    # -- RPC plumbing ------------------------------------------------------

    def _next_xid(self) -> int:
        self._xid = (self._xid + 1) & 0xFFFFFFFF
        return self._xid

    def rpc(self, procedure: Procedure, args: Any) -> Any:
        """Call any procedure (e.g. from `nfsproxy.wire.programs.lookup`) on the NFS
        connection and return its decoded result as is (no status check)."""
        return self._rpc(self._nfs, procedure, args)

    def _rpc(self, conn: _Connection, procedure: Procedure, args: Any) -> Any:
        """Call `procedure` with `args` over `conn`; return the decoded result."""
        xid = self._next_xid()
        p = encode_call(RpcCall(xid, procedure.prog, procedure.vers, procedure.proc,
                                cred=self._cred))
        procedure.args.pack(p, args)
        reply, body = conn.exchange(xid, p.parts)
        if not reply.success:
            raise RpcError(reply, procedure)
        try:
            return decode_body(procedure.res, body)
        except RpcDecodeError as e:
            conn.close()
            raise ProtocolError(f"undecodable {_describe(procedure)} reply: {e}") from None

    # -- raw calls (any XID, pipelined) ----------------------------------------

    def call_message(self, proc: Proc3, args: Any, xid: int | None = None) -> bytes:
        """One NFSv3 call message (unframed), with `xid` or the next one of ours."""
        procedure = _nfs3(proc)
        p = encode_call(RpcCall(self._next_xid() if xid is None else xid, procedure.prog,
                                procedure.vers, procedure.proc, cred=self._cred))
        procedure.args.pack(p, args)
        return p.getvalue()

    def send_messages(self, messages: list[bytes]) -> None:
        """Send call messages back to back on the NFS connection (one sendmsg when
        they fit), without waiting: their replies come from `receive_reply`."""
        parts: list[bytes] = []
        for message in messages:
            parts += (frame_rpc_message(len(message)), message)
        self._nfs.send(parts)

    def receive_reply(self) -> tuple[RpcReply, memoryview]:
        """The next reply on the NFS connection, in arrival order: (header, raw body).
        Decode the body with `decode_reply`."""
        return self._nfs.receive()

    @staticmethod
    def decode_reply(proc: Proc3, body: memoryview) -> Any:
        """The decoded result (`*3res`, with `.status`) of a `proc` reply body."""
        return decode_body(_nfs3(proc).res, body)

    def _call(self, proc: Proc3, args: Any, context: str = "") -> Any:
        """An NFSv3 call: the resok body, or NfsError with the resfail body."""
        res = self._rpc(self._nfs, _nfs3(proc), args)
        if res.status is not Nfsstat3.NFS3_OK:
            raise NfsError(res.status, proc, res.body, context)
        return res.body

    def _mount_rpc(self, proc: MountProc3, args: Any) -> Any:
        # MOUNT is used twice per session; no point keeping its socket open.
        conn = _Connection(self.host, self.mount_port, self.timeout_s, self.privileged_port)
        try:
            return self._rpc(conn, lookup(mount.MOUNT_PROGRAM, mount.MOUNT_V3, proc), args)
        finally:
            conn.close()

    # -- MOUNT -------------------------------------------------------------

    def mount(self) -> bytes:
        """MNT the export; return (and remember as `root_fh`) its root handle."""
        res = self._mount_rpc(MountProc3.MNT, self.export)
        if res.status is not Mountstat3.MNT3_OK:
            raise MountError(res.status, self.export)
        self.root_fh = _fh(res.body.fhandle)
        self.auth_flavors = tuple(res.body.auth_flavors)
        self._fsinfo = None
        return self.root_fh

    def umount(self) -> None:
        """UMNT the export (advisory: it only updates the server's mount list)."""
        self._mount_rpc(MountProc3.UMNT, self.export)
        self.root_fh = None

    @property
    def root(self) -> bytes:
        """The root handle; `mount()` first."""
        if self.root_fh is None:
            raise RuntimeError("not mounted: call mount() first")
        return self.root_fh

    # -- NFSv3 procedures (RFC 1813 section 3) -----------------------------

    def null(self) -> None:
        """NULL: a round trip that does nothing (a liveness probe)."""
        self._rpc(self._nfs, _nfs3(Proc3.NULL), None)

    def getattr(self, fh: bytes) -> GETATTR3resok:
        """GETATTR; `.obj_attributes` is the `Fattr3`."""
        return self._call(Proc3.GETATTR, GETATTR3args(fh))

    def setattr(self, fh: bytes, attrs: Sattr3, guard: Nfstime3 | None = None) -> SETATTR3resok:
        """SETATTR `attrs` (see `sattr3()`); `guard` is the expected ctime, or None."""
        return self._call(Proc3.SETATTR, SETATTR3args(fh, attrs, guard))

    def lookup(self, dir_fh: bytes, name: bytes | str) -> LOOKUP3resok:
        """LOOKUP `name` in `dir_fh`; `.object` is the handle."""
        return self._call(Proc3.LOOKUP, LOOKUP3args(Diropargs3(dir_fh, name)), repr(name))

    def access(self, fh: bytes, access: int) -> ACCESS3resok:
        """ACCESS with a mask of ACCESS3_* bits; `.access` is the granted subset."""
        return self._call(Proc3.ACCESS, ACCESS3args(fh, access))

    def readlink(self, fh: bytes) -> READLINK3resok:
        """READLINK; `.data` is the target, as bytes."""
        return self._call(Proc3.READLINK, READLINK3args(fh))

    def read(self, fh: bytes, offset: int, count: int) -> READ3resok:
        """READ up to `count` bytes at `offset`; `.data` (a memoryview), `.eof`."""
        return self._call(Proc3.READ, READ3args(fh, offset, count))

    def write(self, fh: bytes, offset: int, data: bytes | bytearray | memoryview,
              stable: StableHow = StableHow.FILE_SYNC) -> WRITE3resok:
        """WRITE `data` at `offset`; `.count` may be short, `.committed` and
        `.verf` say how durable it is (UNSTABLE writes need a COMMIT)."""
        view = memoryview(data).cast("B")
        return self._call(Proc3.WRITE, WRITE3args(fh, offset, len(view), stable, view))

    def create(self, dir_fh: bytes, name: bytes | str, attrs: Sattr3 | int | None = 0o644,
               how: CreateMode = CreateMode.GUARDED, *, verf: bytes | None = None) -> CREATE3resok:
        """CREATE a regular file. `attrs` is an `Sattr3` or a mode.

        GUARDED (the default) fails with NFS3ERR_EXIST if `name` exists,
        UNCHECKED opens an existing file (and applies `attrs`, so a `size` of
        0 truncates it), EXCLUSIVE uses the 8-byte `verf` (random if None)
        and ignores `attrs`: set them afterwards with `setattr()`.
        """
        if how is CreateMode.EXCLUSIVE:
            body = verf if verf is not None else os.urandom(nfs3.NFS3_CREATEVERFSIZE)
        else:
            body = _attrs(attrs)
        return self._call(Proc3.CREATE, CREATE3args(Diropargs3(dir_fh, name), Createhow3(how, body)),
                          repr(name))

    def mkdir(self, dir_fh: bytes, name: bytes | str, attrs: Sattr3 | int | None = 0o755) -> MKDIR3resok:
        """MKDIR `name` in `dir_fh`; `attrs` is an `Sattr3` or a mode."""
        return self._call(Proc3.MKDIR, MKDIR3args(Diropargs3(dir_fh, name), _attrs(attrs)),
                          repr(name))

    def symlink(self, dir_fh: bytes, name: bytes | str, target: bytes | str,
                attrs: Sattr3 | int | None = None) -> SYMLINK3resok:
        """SYMLINK `name` -> `target` (stored as given, not resolved)."""
        args = SYMLINK3args(Diropargs3(dir_fh, name), Symlinkdata3(_attrs(attrs), target))
        return self._call(Proc3.SYMLINK, args, repr(name))

    def mknod(self, dir_fh: bytes, name: bytes | str, type: Ftype3, attrs: Sattr3 | int | None = None,
              spec: tuple[int, int] = (0, 0)) -> MKNOD3resok:
        """MKNOD a device (NF3CHR/NF3BLK, with `spec` = (major, minor)), a FIFO or a socket."""
        if type in (Ftype3.NF3CHR, Ftype3.NF3BLK):
            body: Any = Devicedata3(_attrs(attrs), Specdata3(*spec))
        elif type in (Ftype3.NF3FIFO, Ftype3.NF3SOCK):
            body = _attrs(attrs)
        else:
            raise ValueError(f"MKNOD makes devices, FIFOs and sockets, not {type.name}")
        return self._call(Proc3.MKNOD, MKNOD3args(Diropargs3(dir_fh, name), Mknoddata3(type, body)),
                          repr(name))

    def remove(self, dir_fh: bytes, name: bytes | str) -> REMOVE3resok:
        """REMOVE a non-directory `name` from `dir_fh`."""
        return self._call(Proc3.REMOVE, REMOVE3args(Diropargs3(dir_fh, name)), repr(name))

    def rmdir(self, dir_fh: bytes, name: bytes | str) -> RMDIR3resok:
        """RMDIR an empty directory `name` from `dir_fh`."""
        return self._call(Proc3.RMDIR, RMDIR3args(Diropargs3(dir_fh, name)), repr(name))

    def rename(self, from_dir: bytes, from_name: bytes | str, to_dir: bytes,
               to_name: bytes | str) -> RENAME3resok:
        """RENAME `from_dir`/`from_name` to `to_dir`/`to_name` (replacing a target)."""
        args = RENAME3args(Diropargs3(from_dir, from_name), Diropargs3(to_dir, to_name))
        return self._call(Proc3.RENAME, args, f"{from_name!r} -> {to_name!r}")

    def link(self, fh: bytes, dir_fh: bytes, name: bytes | str) -> LINK3resok:
        """LINK: a new name `name` in `dir_fh` for the file `fh`."""
        return self._call(Proc3.LINK, LINK3args(fh, Diropargs3(dir_fh, name)), repr(name))

    # -- NFSACL v3 (POSIX ACLs), on the NFS connection as Linux sends it ----------

    def getacl(self, fh: bytes, mask: int = nfsacl.NFS_ACL | nfsacl.NFS_ACLCNT
               | nfsacl.NFS_DFACL | nfsacl.NFS_DFACLCNT) -> nfsacl.GETACL3resok:
        """NFSACL GETACL: `.acl` and `.default_acl` of `fh`. RpcError (PROG_UNAVAIL,
        PROG_MISMATCH) when the server has no NFSACL; NfsError when it fails the call."""
        return self._acl_call(nfsacl.AclProc3.GETACL, nfsacl.GETACL3args(fh, mask))

    def setacl(self, fh: bytes, acl: tuple[nfsacl.Aclent, ...] = (),
               default_acl: tuple[nfsacl.Aclent, ...] | None = None) -> nfsacl.SETACL3resok:
        """NFSACL SETACL: replace `fh`'s access ACL, and its default ACL when
        `default_acl` is given (directories only). Raises as `getacl`."""
        mask = nfsacl.NFS_ACL | (nfsacl.NFS_DFACL if default_acl is not None else 0)
        dfl = tuple(default_acl or ())
        args = nfsacl.SETACL3args(fh, mask, nfsacl.Acl(len(acl), tuple(acl)), nfsacl.Acl(len(dfl), dfl))
        return self._acl_call(nfsacl.AclProc3.SETACL, args)

    def _acl_call(self, proc: nfsacl.AclProc3, args: Any) -> Any:
        res = self._rpc(self._nfs, lookup(nfsacl.NFSACL_PROGRAM, nfsacl.NFSACL_V3, proc), args)
        if res.status is not Nfsstat3.NFS3_OK:
            raise NfsError(res.status, proc, res.body)
        return res.body

    def readdir_page(self, dir_fh: bytes, cookie: int = 0, cookieverf: bytes = COOKIEVERF_ZERO,
                     count: int = _DEFAULT_MAXCOUNT) -> READDIR3resok:
        """One READDIR page after `cookie`; `.reply.entries`, `.reply.eof`, `.cookieverf`."""
        return self._call(Proc3.READDIR, READDIR3args(dir_fh, cookie, cookieverf, count))

    def readdirplus_page(self, dir_fh: bytes, cookie: int = 0,
                         cookieverf: bytes = COOKIEVERF_ZERO, dircount: int = _DEFAULT_DIRCOUNT,
                         maxcount: int = _DEFAULT_MAXCOUNT) -> READDIRPLUS3resok:
        """One READDIRPLUS page after `cookie` (names, attributes and handles)."""
        args = READDIRPLUS3args(dir_fh, cookie, cookieverf, dircount, maxcount)
        return self._call(Proc3.READDIRPLUS, args)

    def readdir(self, dir_fh: bytes, *, count: int = _DEFAULT_MAXCOUNT,
                dots: bool = False) -> Iterator[Entry3]:
        """Every READDIR entry of `dir_fh`, over as many pages as it takes.
        "." and ".." are skipped unless `dots`."""
        return self._pages(lambda c, v: self.readdir_page(dir_fh, c, v, count), dots)

    def readdirplus(self, dir_fh: bytes, *, dircount: int = _DEFAULT_DIRCOUNT,
                    maxcount: int = _DEFAULT_MAXCOUNT, dots: bool = False) -> Iterator[Entryplus3]:
        """Every READDIRPLUS entry of `dir_fh`, over as many pages as it takes.

        Each `Entryplus3` carries `name_attributes` and `name_handle` when the
        server supplied them (either may be None). "." and ".." are skipped
        unless `dots`.
        """
        return self._pages(lambda c, v: self.readdirplus_page(dir_fh, c, v, dircount, maxcount),
                           dots)

    def _pages(self, page, dots: bool) -> Iterator[Any]:
        """Follow cookies and the cookie verifier until eof.

        A non-final page without entries, or a cookie seen before, would make
        us page forever: both are ProtocolError.
        """
        cookie, cookieverf = 0, COOKIEVERF_ZERO
        seen: set[int] = set()
        while True:
            resok = page(cookie, cookieverf)
            entries = resok.reply.entries
            for e in entries:
                if dots or e.name not in (b".", b".."):
                    yield e
            if resok.reply.eof:
                return
            if not entries:
                raise ProtocolError("directory page without entries and without eof")
            cookie = entries[-1].cookie
            if cookie in seen:
                raise ProtocolError(f"directory cookie {cookie} repeated")
            seen.add(cookie)
            cookieverf = resok.cookieverf

    def fsstat(self, fh: bytes | None = None) -> FSSTAT3resok:
        """FSSTAT of the file system holding `fh` (default: the root)."""
        return self._call(Proc3.FSSTAT, FSSTAT3args(self.root if fh is None else fh))

    def fsinfo(self, fh: bytes | None = None) -> FSINFO3resok:
        """FSINFO (transfer sizes, limits, properties) of `fh` (default: the root)."""
        return self._call(Proc3.FSINFO, FSINFO3args(self.root if fh is None else fh))

    def pathconf(self, fh: bytes) -> PATHCONF3resok:
        """PATHCONF of `fh` (name_max, linkmax, ...)."""
        return self._call(Proc3.PATHCONF, PATHCONF3args(fh))

    def commit(self, fh: bytes, offset: int = 0, count: int = 0) -> COMMIT3resok:
        """COMMIT earlier UNSTABLE writes to `fh` (count 0: to the end of file)."""
        return self._call(Proc3.COMMIT, COMMIT3args(fh, offset, count))

    # -- helpers -----------------------------------------------------------

    def lookup_path(self, path: bytes | str, start: bytes | None = None) -> bytes:
        """The handle of `path` ("a/b/c", relative to `start`, default the root).

        Empty and "." components are skipped; ".." is looked up on the server.
        A `str` path is taken as `os.fsencode` would give its bytes.
        """
        fh = self.root if start is None else start
        for name in os.fsencode(path).split(b"/"):
            if name in (b"", b"."):
                continue
            fh = _fh(self.lookup(fh, name).object)
        return fh

    def transfer_sizes(self) -> FSINFO3resok:
        """FSINFO of the root, fetched once per mount (rtpref, wtpref, ...)."""
        if self._fsinfo is None:
            self._fsinfo = self.fsinfo()
        return self._fsinfo

    @staticmethod
    def _chunk(asked: int | None, pref: int, most: int) -> int:
        chunk = min(asked or pref or MAX_TRANSFER_BYTES, MAX_TRANSFER_BYTES)
        return max(1, min(chunk, most) if most else chunk)

    def read_all(self, fh: bytes, *, chunk_bytes: int | None = None) -> bytes:
        """The whole content of `fh`, read in chunks of FSINFO rtpref (at most 1 MiB)."""
        chunk = self._chunk(chunk_bytes, self.transfer_sizes().rtpref, self.transfer_sizes().rtmax)
        out = bytearray()
        while True:
            resok = self.read(fh, len(out), chunk)
            out += resok.data
            if resok.eof:
                return bytes(out)
            if resok.count == 0:
                raise ProtocolError(f"READ at {len(out)} returned no data and no eof")

    def write_all(self, fh: bytes, data: bytes | bytearray | memoryview, offset: int = 0, *,
                  stable: StableHow = StableHow.UNSTABLE, chunk_bytes: int | None = None) -> int:
        """Write all of `data` at `offset` in chunks of FSINFO wtpref; return the byte count.

        With UNSTABLE (the default) the chunks are written without forcing
        them to disk, then one COMMIT makes them durable. If the write
        verifier changes in between (the server restarted and may have lost
        uncommitted data), everything is written again, as RFC 1813 3.3.21
        requires. Short writes are continued.
        """
        view = memoryview(data).cast("B")
        chunk = self._chunk(chunk_bytes, self.transfer_sizes().wtpref, self.transfer_sizes().wtmax)
        for _ in range(_COMMIT_RETRIES):
            verfs: set[bytes] = set()
            need_commit = False
            pos = 0
            while pos < len(view):
                resok = self.write(fh, offset + pos, view[pos:pos + chunk], stable)
                if resok.count == 0:
                    raise ProtocolError(f"WRITE at {offset + pos} wrote nothing")
                pos += resok.count
                verfs.add(resok.verf)
                need_commit |= resok.committed is not StableHow.FILE_SYNC
            if not need_commit:
                return len(view)
            committed = self.commit(fh, offset, len(view))
            if verfs == {committed.verf}:
                return len(view)
        raise ProtocolError(f"write verifier kept changing over {_COMMIT_RETRIES} attempts")


def created_fh(client: NfsClient, resok: Any, dir_fh: bytes, name: bytes | str) -> bytes:
    """The handle of an object just made by CREATE/MKDIR/SYMLINK/MKNOD: from the
    reply when the server sent one (post_op_fh3 is optional), else by LOOKUP."""
    if resok.obj is not None:
        return _fh(resok.obj)
    return _fh(client.lookup(dir_fh, name).object)

