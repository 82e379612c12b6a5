"""Reading a shard's bulk stream (the protocol: recoveryd/bulk_wire.py; the
shard side: recoveryd/bulk_server.py).

``open_stream`` connects with the ticket ``Restore.OpenBulk`` gave and reads
up to the first frame: anything that goes wrong until then (the port is not
reachable, a TLS handshake fails, the shard is busy or refuses the ticket)
raises ``BulkUnavailable``, and the caller reads the same records through
gRPC instead. From the first frame on, the records are being used, so a
failure is the restore's: ``ShardError``. A stream is complete only when its
end frame came and its counts match what was read.

Each D frame is read straight into a buffer of its own (``recv_into``, one
copy); the records parsed from it are views of that buffer, so a file's
bytes go from the socket to its ``pwrite`` without another copy.
"""

from __future__ import annotations

import socket
import ssl
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
                tls: ssl.SSLContext | None = None) -> Iterator[bytearray]:
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


def _chunks(reader: _Frames, first: bytearray | None) -> Iterator[bytearray]:
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
        self._header = bytearray(HEADER_BYTES)

    def next(self) -> bytearray | None:
        """The next D payload; None at a good end. Raises ShardError."""
        try:
            self._read_into(memoryview(self._header))
            kind, length = parse_header(self._header)
            payload = bytearray(length)
            self._read_into(memoryview(payload))
        except BulkWireError as e:
            raise ShardError(f"{self._shard} sent a malformed bulk stream: {e}") from None
        except TimeoutError:
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

    def _read_into(self, view: memoryview) -> None:
        got = 0
        while got < len(view):
            n = self._sock.recv_into(view[got:])
            if n == 0:
                raise ShardError(f"{self._shard}'s bulk stream was cut short (the connection "
                                 "closed before its end)")
            got += n

    def close(self) -> None:
        self._sock.close()
