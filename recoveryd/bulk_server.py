"""A shard's bulk port: the records of a restore's large reads on TCP
connections of their own (the protocol: recoveryd/bulk_wire.py).

Why a second port: a whole-tree restore moves every byte the journal holds,
and through gRPC each byte is copied into gRPC's buffers, HTTP/2 frames and
a Python object at both ends; measured here, the stream alone took as long
as ``cp -a`` of the tree. On the bulk port the shard hands the stored
records to ``sendmsg`` as they come out of RocksDB (one copy, into the
kernel), and the client reads them into the buffer it parses (one copy).

Who may read: nobody is authorized here. ``Restore.OpenBulk`` (a gRPC call,
checked like every Restore call: tokens, mTLS) validates the request and
gets a ticket: 32 random bytes, good for one connection, once, within
``TICKET_TTL_S``. The port serves TLS (with client certificates when the
gRPC port wants them) whenever the gRPC port does, so its bytes are no
less protected than a ScanChunks answer.

Each connection runs on a thread of its own, which reads the store and
sends; at most ``MAX_STREAMS`` ticketed streams at once, and
``MAX_PENDING`` connections that have not yet shown a ticket, each given
``HELLO_TIMEOUT_S`` in all for its handshake and hello (more are refused
with a reason, and the client reads through gRPC). A ticketed client that
stops reading is waited for, as gRPC's flow control waits: a restore merges
every shard's stream in stamp order, so it leaves one shard's stream unread
for as long as it writes a run of another's (one large file's records).
TCP keepalive finds a client that is gone. ``stop`` cuts every connection
off and waits for every thread (each closes its store iterator) before the
store may close.
"""

from __future__ import annotations

import dataclasses
import logging
import secrets
import socket
import ssl
import threading
import time
from typing import Callable, Iterator

from .bulk_wire import (DATA, END, END_BYTES, ERROR, HELLO_BYTES, BulkWireError, end_payload, error_payload,
                        header, parse_hello)
from .restore_service import SCAN_CHUNK_BYTES, ServedCounters, chunk_parts

__all__ = ["BulkServer", "Tickets", "TICKET_TTL_S", "MAX_STREAMS", "MAX_PENDING", "FRAME_BYTES"]

logger = logging.getLogger(__name__)

TICKET_TTL_S = 30.0
MAX_STREAMS = 16
MAX_PENDING = 64
#: Records gathered into one D frame (one sendmsg): ScanChunks' message size.
FRAME_BYTES = SCAN_CHUNK_BYTES
HELLO_TIMEOUT_S = 10.0
#: Keepalive: a peer silent this long is probed, and dropped after the probes.
_KEEPIDLE_S, _KEEPINTVL_S, _KEEPCNT = 60, 10, 6
_IOV_MAX = 1024   # pieces handed to one sendmsg (Linux's IOV_MAX)

Opener = Callable[[], Iterator[bytes]]


class Tickets:
    """Tickets not yet used: each admits one connection, once, until it expires."""

    def __init__(self, ttl_s: float = TICKET_TTL_S) -> None:
        self._ttl_s = ttl_s
        self._open: dict[bytes, tuple[float, Opener]] = {}
        self._lock = threading.Lock()

    def issue(self, opener: Opener, now: float) -> bytes:
        ticket = secrets.token_bytes(32)
        with self._lock:
            self._drop_expired(now)
            self._open[ticket] = (now + self._ttl_s, opener)
        return ticket

    def take(self, ticket: bytes, now: float) -> Opener | None:
        """The opener of ``ticket`` (which is used up), or None: unknown, used or expired."""
        with self._lock:
            self._drop_expired(now)
            found = self._open.pop(ticket, None)
        return None if found is None else found[1]

    def __len__(self) -> int:
        """Tickets held: issued, not yet used, not yet dropped as expired."""
        return len(self._open)

    def _drop_expired(self, now: float) -> None:
        for ticket in [t for t, (expires, _) in self._open.items() if expires <= now]:
            del self._open[ticket]


@dataclasses.dataclass
class _Stream:
    conn: socket.socket     # the TLS socket once wrapped
    thread: threading.Thread | None = None
    ticketed: bool = False  # showed a good ticket: counts against MAX_STREAMS


class BulkServer:
    """The bulk port of one shard: ``admit`` an authorized request, then serve
    its connection. ``tls``: an ``ssl.SSLContext`` for the server side (None:
    plaintext, as the gRPC port)."""

    def __init__(self, host: str, port: int, counters: ServedCounters, *,
                 tls: ssl.SSLContext | None = None, max_streams: int = MAX_STREAMS,
                 max_pending: int = MAX_PENDING) -> None:
        self._tls = tls
        self._counters = counters
        self._max_streams = max_streams
        self._max_pending = max_pending
        self.tickets = Tickets()
        self._listener = _listen(host, port)
        self.port: int = self._listener.getsockname()[1]
        self._streams: dict[int, _Stream] = {}
        self._lock = threading.Lock()
        self._stopping = False
        self._accepting = threading.Thread(target=self._accept, name="bulk-accept", daemon=True)
        self._accepting.start()

    @property
    def tls(self) -> bool:
        return self._tls is not None

    @property
    def streams(self) -> int:
        """Ticketed streams being served now."""
        return sum(1 for stream in list(self._streams.values()) if stream.ticketed)

    @property
    def connections(self) -> int:
        """Connections open now, ticketed or not yet."""
        return len(self._streams)

    def admit(self, opener: Opener) -> bytes:
        """A ticket whose connection gets the records ``opener()`` gives."""
        return self.tickets.issue(opener, time.monotonic())

    def stop(self) -> None:
        """Stop accepting, cut every connection off and wait for their threads
        (each closes its store iterator): after this the store may close. A
        stream between two records stops at the next; one inside a store read
        stops when the read returns."""
        self._stopping = True
        _shut(self._listener)
        self._listener.close()
        self._accepting.join()
        with self._lock:
            streams = list(self._streams.values())
        for stream in streams:
            _shut(stream.conn)
        for stream in streams:
            stream.thread.join()

    def _accept(self) -> None:
        while not self._stopping:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                if self._stopping:
                    return
                time.sleep(0.1)   # EMFILE and the like: the next client may fare better
                continue
            self._start(conn)

    def _start(self, conn: socket.socket) -> None:
        key = conn.fileno()
        with self._lock:
            pending = len(self._streams) - sum(1 for s in self._streams.values() if s.ticketed)
            busy = self._stopping or pending >= self._max_pending
            if not busy:
                stream = self._streams[key] = _Stream(conn)
                stream.thread = threading.Thread(target=self._serve, args=(stream,), daemon=True,
                                                 name=f"bulk-{key}")
        if busy:
            _refuse(conn, f"the shard has {self._max_pending} bulk connections waiting for "
                          "their tickets; try again")
            return
        try:
            stream.thread.start()
        except RuntimeError as e:   # no thread to be had: this client reads through gRPC
            with self._lock:
                self._streams.pop(key, None)
            _refuse(conn, f"the shard cannot serve a bulk stream now ({e})")

    def _admit(self, stream: _Stream) -> bool:
        """Count ``stream`` as ticketed, unless MAX_STREAMS are already."""
        with self._lock:
            if self.streams >= self._max_streams:
                return False
            stream.ticketed = True
            return True

    def _serve(self, stream: _Stream) -> None:
        sock = conn = stream.conn
        key = conn.fileno()
        peer = _peer(conn)
        deadline = time.monotonic() + HELLO_TIMEOUT_S   # for the handshake and hello together
        try:
            conn.settimeout(HELLO_TIMEOUT_S)
            _tune(conn)
            if self._tls is not None:
                # Wrapped first, shaken hands after: wrapping moves the
                # descriptor, and stop() must reach a handshake that hangs.
                sock = stream.conn = self._tls.wrap_socket(conn, server_side=True,
                                                           do_handshake_on_connect=False)
                if self._stopping:
                    return
                sock.do_handshake()
            ticket = parse_hello(_recv_exact(sock, HELLO_BYTES, deadline))
            opener = self.tickets.take(ticket, time.monotonic())
            if self._stopping:
                return
            if opener is None:
                _send_error(sock, "unknown, used or expired ticket: ask OpenBulk for another")
                return
            if not self._admit(stream):
                _send_error(sock, f"the shard serves {self._max_streams} bulk streams already; "
                                  "try again")
                return
            sock.settimeout(None)   # a reader the merge holds back is waited for
            values = opener()
            try:
                self._send(sock, values)
            finally:
                values.close()
        except BulkWireError as e:
            logger.info("bulk stream from %s refused: %s", peer, e)
            _send_error(sock, str(e))
        except (OSError, EOFError) as e:   # ssl.SSLError is an OSError
            if not self._stopping:
                logger.info("bulk stream to %s ended early: %s", peer, e)
        except Exception as e:  # noqa: BLE001  the store failed: tell the client, not only the log
            logger.exception("bulk stream to %s failed", peer)
            _send_error(sock, f"the shard failed reading its records: {e}")
        finally:
            with self._lock:
                self._streams.pop(key, None)
            sock.close()

    def _send(self, sock: socket.socket, values: Iterator[bytes]) -> None:
        frames = sent = 0
        batch: list[bytes] = []
        nbytes = 0
        for value in values:
            if self._stopping:
                raise OSError("the shard is stopping")
            batch.append(value)
            nbytes += len(value)
            if nbytes >= FRAME_BYTES:
                sent += self._send_frame(sock, batch)
                frames += 1
                batch, nbytes = [], 0
        if batch:
            sent += self._send_frame(sock, batch)
            frames += 1
        sock.sendall(header(END, END_BYTES) + end_payload(frames, sent))

    def _send_frame(self, sock: socket.socket, records: list[bytes]) -> int:
        parts = chunk_parts(records)
        length = sum(len(p) for p in parts)
        _send_parts(sock, [header(DATA, length), *parts])
        self._counters.add(len(records), sum(len(r) for r in records))
        return length


def _send_parts(sock: socket.socket, parts: list[bytes]) -> None:
    """All of ``parts``, in order, without joining them (TLS has no sendmsg: there, joined)."""
    if isinstance(sock, ssl.SSLSocket):
        sock.sendall(b"".join(parts))
        return
    views = [memoryview(p) for p in parts]
    at = 0
    while at < len(views):
        sent = sock.sendmsg(views[at:at + _IOV_MAX])
        while at < len(views) and sent >= len(views[at]):
            sent -= len(views[at])
            at += 1
        if sent:
            views[at] = views[at][sent:]


def _recv_exact(sock: socket.socket, n: int, deadline: float) -> bytes:
    out = bytearray()
    while len(out) < n:
        left = deadline - time.monotonic()
        if left <= 0:
            raise BulkWireError(f"no hello within {HELLO_TIMEOUT_S:.0f} s")
        sock.settimeout(left)
        got = sock.recv(n - len(out))
        if not got:
            raise BulkWireError("the client closed before its hello")
        out += got
    return bytes(out)


def _listen(host: str, port: int) -> socket.socket:
    """A listening socket where gRPC would listen for ``host``: ``::`` (or an
    empty host) on IPv6 and IPv4 both, a name on its first address's family."""
    if host in ("", "::", "[::]"):
        if socket.has_dualstack_ipv6():
            return socket.create_server(("::", port), family=socket.AF_INET6,
                                        dualstack_ipv6=True, backlog=64)
        host = "0.0.0.0"
    family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0][0]
    return socket.create_server((host, port), family=family, backlog=64)


def _tune(conn: socket.socket) -> None:
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for option, value in (("TCP_KEEPIDLE", _KEEPIDLE_S), ("TCP_KEEPINTVL", _KEEPINTVL_S),
                          ("TCP_KEEPCNT", _KEEPCNT)):
        if hasattr(socket, option):   # Linux names; elsewhere the system's defaults
            conn.setsockopt(socket.IPPROTO_TCP, getattr(socket, option), value)


def _send_error(sock: socket.socket, text: str) -> None:
    payload = error_payload(text)
    try:
        sock.sendall(header(ERROR, len(payload)) + payload)
    except OSError:
        pass   # it went away; the log has the reason


def _refuse(conn: socket.socket, text: str) -> None:
    """Refuse a plaintext or TLS connection before its hello: on TLS the
    client reads nothing but a failed handshake, which it reports as such."""
    try:
        conn.settimeout(1.0)
        _send_error(conn, text)
    finally:
        conn.close()


def _shut(sock: socket.socket) -> None:
    """Shut the connection under ``sock`` down: socket.socket's own shutdown,
    never SSLSocket's, which drops the TLS state first (a thread then inside
    sendall would send the rest of its frame in clear)."""
    try:
        socket.socket.shutdown(sock, socket.SHUT_RDWR)
    except OSError:
        pass


def _peer(conn: socket.socket) -> str:
    try:
        host, port = conn.getpeername()[:2]
    except OSError:
        return "a client"
    return f"{host}:{port}"
