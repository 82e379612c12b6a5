"""Reading a shard's bulk stream (the protocol: recoveryd/bulk_wire.py; the
shard side: recoveryd/bulk_server.py).

``open_stream`` connects with the ticket ``Restore.OpenBulk`` gave and reads
up to the first frame: anything that goes wrong until then (the port is not
reachable, a TLS handshake fails, the shard is busy or refuses the ticket)
raises ``BulkUnavailable``, and the caller reads the same records through
gRPC instead. From the first frame on, the records are being used, so a
failure is the restore's: ``ShardError``. A stream is complete only when its
end frame came and its counts match what was read.

Each D frame is read straight into a buffer of its own (one copy, and on a
plain socket one ``recv``); the records parsed from it are views of that
buffer, so a file's bytes go from the socket to its ``pwrite`` without
another copy.
"""

from __future__ import annotations

import socket
import ssl
import struct
from typing import Iterator

from ..bulk_wire import (DATA, END, ERROR, HEADER_BYTES, BulkWireError, hello, parse_end,
                         parse_header)
from .errors import ShardError

__all__ = ["BulkUnavailable", "open_stream", "CONNECT_TIMEOUT_S", "READ_TIMEOUT_S"]

CONNECT_TIMEOUT_S = 5.0
#: A shard silent this long is taken as gone (it sends as fast as the store reads).
READ_TIMEOUT_S = 300.0


class BulkUnavailable(Exception):
    """No bulk stream from this shard now; the message says why (read through gRPC)."""


def open_stream(host: str, port: int, ticket: bytes, shard: str, *,
                tls: ssl.SSLContext | None = None) -> Iterator[bytes | bytearray]:
    """The D frames' payloads (RecordChunks in wire form) of the bulk stream
    ``ticket`` admits, on ``host:port``; the first is read before this returns."""
    try:
        sock = socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S)
    except OSError as e:
        raise BulkUnavailable(f"cannot reach its bulk port {host}:{port} ({e.strerror or e})") from None
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if tls is not None:
            sock = tls.wrap_socket(sock, server_hostname=host)
        sock.sendall(hello(ticket))
        if tls is None:
            # Blocking, so that recv(n, MSG_WAITALL) waits for a whole frame:
            # one buffer, made by recv and never zeroed first. The kernel's
            # receive timeout stands in for the socket's.
            sock.settimeout(None)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO,
                            struct.pack("ll", int(READ_TIMEOUT_S), 0))
        else:
            sock.settimeout(READ_TIMEOUT_S)
        reader = _Frames(sock, shard)
        first = reader.next()
    except (OSError, BulkWireError, ShardError) as e:   # ssl.SSLError is an OSError
        sock.close()
        raise BulkUnavailable(f"its bulk port {host}:{port} did not serve: {e}") from None
    except BaseException:
        sock.close()
        raise
    return _chunks(reader, first)


def _chunks(reader: _Frames, first: bytes | bytearray | None) -> Iterator[bytes | bytearray]:
    try:
        chunk = first
        while chunk is not None:
            yield chunk
            chunk = reader.next()
    finally:
        reader.close()


class _Frames:
    """The frames of one stream, each D frame's payload in a buffer of its own."""

    def __init__(self, sock: socket.socket, shard: str) -> None:
        self._sock = sock
        self._shard = shard
        self._frames = 0
        self._bytes = 0

    def next(self) -> bytes | bytearray | None:
        """The next D payload; None at a good end. Raises ShardError."""
        try:
            kind, length = parse_header(self._read(HEADER_BYTES))
            payload = self._read(length)
        except BulkWireError as e:
            raise ShardError(f"{self._shard} sent a malformed bulk stream: {e}") from None
        except (TimeoutError, BlockingIOError):   # BlockingIOError: SO_RCVTIMEO ran out
            raise ShardError(f"{self._shard} sent nothing for {READ_TIMEOUT_S:.0f} s "
                             "on its bulk stream") from None
        except OSError as e:
            raise ShardError(f"{self._shard}'s bulk stream broke: {e.strerror or e}") from None
        if kind == DATA:
            self._frames += 1
            self._bytes += length
            return payload
        if kind == ERROR:
            text = payload.decode("utf-8", "replace")
            raise ShardError(f"{self._shard} ended its bulk stream: {text}")
        assert kind == END
        frames, nbytes = parse_end(payload)
        if (frames, nbytes) != (self._frames, self._bytes):
            raise ShardError(f"{self._shard}'s bulk stream ended saying {frames} frames of {nbytes} "
                             f"bytes were sent, but {self._frames} of {self._bytes} came")
        return None

    def _read(self, n: int) -> bytes | bytearray:
        """Exactly ``n`` bytes: in one piece from a plain socket (MSG_WAITALL),
        read into one buffer from a TLS one (whose recv takes no flags)."""
        if isinstance(self._sock, ssl.SSLSocket):
            buf = bytearray(n)
            view, got = memoryview(buf), 0
            while got < n:
                got += self._check(self._sock.recv_into(view[got:]))
            return buf
        first = self._sock.recv(n, socket.MSG_WAITALL)
        if len(first) == n:
            return first
        pieces = [first]
        got = self._check(len(first))
        while got < n:   # a signal, or the timeout, cut the wait short
            piece = self._sock.recv(n - got, socket.MSG_WAITALL)
            got += self._check(len(piece))
            pieces.append(piece)
        return b"".join(pieces)

    def _check(self, n: int) -> int:
        if n == 0:
            raise ShardError(f"{self._shard}'s bulk stream was cut short (the connection "
                             "closed before its end)")
        return n

    def close(self) -> None:
        self._sock.close()
