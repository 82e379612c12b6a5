"""Serving a point-in-time export: the thin asyncio shell around `nfsproxy.export.handler`.

`ExportServer` accepts TCP clients; each `ExportSession` undoes record
marking, hands every call to the sans-IO `ExportHandler` and writes back
the reply it returns. Replies may leave out of order (clients match them by
XID): a READ, which may have to fetch file content through the Restore API,
runs on a worker thread while the loop keeps answering the calls behind it;
everything else is answered inline from the in-memory tree.

Flow control, as in the relay (and uvicorn): a client whose replies pile up
in its transport, or that has too many READs waiting, stops being read
until it catches up.

A protocol error (`RpcDecodeError`) closes that client only. Shutdown: stop
listening, close the clients, give running READs a moment, cancel the rest.

`run_export` is `nfsj export`: pick the cut, build the tree, serve until
SIGINT/SIGTERM.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import logging
import signal
import threading
from typing import Any

from nfsproxy.export.handler import ExportHandler
from nfsproxy.relay.limits import max_message_bytes
from nfsproxy.wire.rpc import (NEED_DATA, AcceptStat, RpcCall, RpcDecodeError, RpcMessageReader,
                  frame_rpc_message, parse_message, refusal)

__all__ = ["ExportServer", "ExportSession", "ExportOptions", "start_export", "run_export"]

logger = logging.getLogger(__name__)

#: READs one client may have waiting for content before we stop reading from it.
MAX_READS_IN_FLIGHT = 32
#: Threads reading content through the Restore API, for all clients together.
READ_WORKERS = 4
#: The largest call we take whole: a 4 MiB WRITE (nfs-rs's most) still gets its
#: NFS3ERR_ROFS instead of a closed connection, as at the proxy.
MAX_MESSAGE_BYTES = max_message_bytes(4 << 20)


class ExportServer:
    """Accepts clients and answers them from one `ExportHandler`."""

    def __init__(self, handler: ExportHandler, *, read_workers: int = READ_WORKERS,
                 max_message_bytes: int = MAX_MESSAGE_BYTES):
        self.handler = handler
        self.max_message_bytes = max_message_bytes
        self.sessions: set[ExportSession] = set()
        self.protocol_errors_total = 0
        self.calls_total = 0
        self.port = 0
        self._executor = concurrent.futures.ThreadPoolExecutor(
            read_workers, thread_name_prefix="nfsj-export-read")
        self._server: asyncio.Server | None = None

    async def start(self, host: str, port: int) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: ExportSession(self), host, port,
                                                reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]
        self.handler.port = self.port

    async def close(self, timeout_s: float = 5.0) -> None:
        """Stop listening, close clients, wait a little for running READs, drop the rest."""
        if self._server is not None:
            self._server.close()
        for session in list(self.sessions):
            session.close()
        pending = [f for s in self.sessions for f in s.reads]
        if pending:
            await asyncio.wait(pending, timeout=timeout_s)
        self._executor.shutdown(wait=False, cancel_futures=True)
        if self._server is not None:
            await self._server.wait_closed()

    def submit(self, call: RpcCall, body: memoryview) -> asyncio.Future:
        loop = asyncio.get_running_loop()
        return loop.run_in_executor(self._executor, self.handler.handle, call, body)


class ExportSession(asyncio.Protocol):
    """One client connection."""

    def __init__(self, server: ExportServer):
        self.server = server
        self.reader = RpcMessageReader(server.max_message_bytes)
        self.transport: asyncio.Transport | None = None
        self.reads: set[asyncio.Future] = set()
        self.peer = "?"
        self.closed = False
        self.writing_paused = False
        self.reading_paused = False

    def connection_made(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        peer = transport.get_extra_info("peername")
        if peer:
            self.peer = f"{peer[0]}:{peer[1]}"
        self.server.sessions.add(self)

    def data_received(self, data: bytes) -> None:
        self.reader.receive(data)
        self._process()

    def _process(self) -> None:
        try:
            while not self._must_wait() and (message := self.reader.next_message()) is not NEED_DATA:
                self._on_call(message)
        except RpcDecodeError as e:
            self.server.protocol_errors_total += 1
            logger.warning("client %s broke the RPC protocol (%s); closing its connection",
                           self.peer, e)
            self.close()
        self._update_reading()

    def _on_call(self, message: memoryview) -> None:
        call, body = parse_message(message)
        if not isinstance(call, RpcCall):
            raise RpcDecodeError("a client sent a REPLY")
        self.server.calls_total += 1
        handler = self.server.handler
        if handler.blocking(call, body):
            future = self.server.submit(call, body)
            self.reads.add(future)
            future.add_done_callback(lambda f, call=call: self._read_done(call, f))
            return
        try:
            reply = handler.handle(call, body)
        except RpcDecodeError:
            raise
        except Exception:
            logger.exception("answering %s from %s failed", call, self.peer)
            reply = _system_err(call)
        self.send(reply)

    def _read_done(self, call: RpcCall, future: asyncio.Future) -> None:
        self.reads.discard(future)
        if self.closed or future.cancelled():
            return
        error = future.exception()
        if isinstance(error, RpcDecodeError):
            self.server.protocol_errors_total += 1
            logger.warning("client %s broke the RPC protocol (%s); closing its connection",
                           self.peer, error)
            self.close()
            return
        if error is not None:
            logger.error("answering %s from %s failed", call, self.peer, exc_info=error)
            self.send(_system_err(call))
        else:
            self.send(future.result())
        self._process()  # calls may have waited for this READ's slot

    def send(self, message: bytes) -> None:
        if self.transport is not None and not self.closed:
            self.transport.writelines((frame_rpc_message(len(message)), message))

    # -- flow control -------------------------------------------------------------

    def _must_wait(self) -> bool:
        return self.closed or self.writing_paused or len(self.reads) >= MAX_READS_IN_FLIGHT

    def _update_reading(self) -> None:
        if self.transport is None or self.closed:
            return
        wait = self._must_wait()
        if wait and not self.reading_paused:
            self.reading_paused = True
            self.transport.pause_reading()
        elif not wait and self.reading_paused:
            self.reading_paused = False
            self.transport.resume_reading()

    def pause_writing(self) -> None:
        self.writing_paused = True
        self._update_reading()

    def resume_writing(self) -> None:
        self.writing_paused = False
        self._process()

    # -- lifecycle ------------------------------------------------------------------

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.close()
        self.server.sessions.discard(self)


def _system_err(call: RpcCall) -> bytes:
    return refusal(call.xid, AcceptStat.SYSTEM_ERR)


# --------------------------------------------------------------------------
# nfsj export


@dataclasses.dataclass(slots=True)
class ExportOptions:
    at: str
    listen_host: str
    listen_port: int
    shards: list[str]
    allow_unproven: bool = False
    credentials: Any = None  # grpc.ChannelCredentials for TLS/mTLS to the shards (None: plaintext)
    token: Any = None        # recoveryd.security.BearerToken for shards that want one to restore
    tls: Any = None          # recoveryd.security.TlsOptions behind credentials (the bulk port's TLS)


@dataclasses.dataclass(slots=True)
class RunningExport:
    server: ExportServer
    cut: Any
    client: Any

    async def stop(self) -> None:
        try:
            await self.server.close()
        finally:
            _close_client(self.client)


def _close_client(client: Any) -> None:
    client.close()          # its read cache
    client.shards.close()   # its channels


async def start_export(opts: ExportOptions) -> RunningExport:
    """Pick the cut, build its tree and start serving it.

    Raises `recoveryd.restore.RestoreError` (RestoreRefused: the moment
    cannot be served, with the valid range; ShardError: a shard does not
    answer), ValueError for a TIME that does not parse, OSError when the
    address is taken.
    """
    from recoveryd.restore import RestoreClient, Shards
    from recoveryd.timespec import parse_time

    at = parse_time(opts.at)
    client = RestoreClient(Shards(list(opts.shards), credentials=opts.credentials, token=opts.token,
                                         tls=opts.tls))
    try:
        loop = asyncio.get_running_loop()
        cut = await loop.run_in_executor(
            None, lambda: client.cut(at, allow_unproven=opts.allow_unproven))
        # Files' sizes as of the cut: a READ must see the size its content has then.
        tree = await loop.run_in_executor(None, lambda: client.tree(cut, file_sizes=True))
        # RestoreClient is thread-safe; it materialises each file once.
        handler = ExportHandler(tree, lambda fh, offset, count: client.read(cut, fh, offset, count,
                                                                             neighbours=True),
                                cut_id=_cut_id(cut), ready=lambda fh: client.holds(cut, fh))
        server = ExportServer(handler)
        await server.start(opts.listen_host, opts.listen_port)
    except BaseException:
        _close_client(client)
        raise
    _prefetch(client, cut, tree)
    return RunningExport(server, cut, client)


def _prefetch(client: Any, cut: Any, tree: Any) -> None:
    """Fill the read cache with every file's bytes in one bulk stream, beside
    serving (a READ before it is done builds its file alone, as always)."""
    from recoveryd.tree import REG

    def fill() -> None:
        try:
            made = client.prefetch(cut, (fh for _, fh, node in tree.walk() if node.type == REG))
            logger.info("read cache filled with %d files", made)
        except Exception as e:  # noqa: BLE001  the cache stays as READs fill it
            logger.info("read cache not filled ahead: %s", e)

    threading.Thread(target=fill, name="nfsj-export-prefetch", daemon=True).start()


def _cut_id(cut: Any) -> bytes:
    at, baseline_id = cut.key
    return at + baseline_id


async def run_export(opts: ExportOptions) -> None:
    """Serve until SIGINT or SIGTERM."""
    running = await start_export(opts)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    print(f"nfsj export: serving {opts.at} ({running.cut}) on "
          f"{opts.listen_host}:{running.server.port}", flush=True)
    await stop.wait()
    logger.info("shutting down")
    await running.stop()
