"""Running a recovery shard as a daemon: the store, the clock, the server, shutdown.

Data directory layout (``--data DIR``)::

    DIR/store/       the shard's RocksDB (recoveryd.store)
    DIR/hlc.bound    the shard HLC's persisted upper bound (logstore.hlc)

``run_shard`` opens both, serves until SIGINT/SIGTERM, then stops in order:
health goes NOT_SERVING, the server stops listening and gives calls a grace
period, writes already started finish, and the store closes. kill -9 at any
moment loses nothing acknowledged: an ack is sent only after its batch's
fsync.
"""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import logging
import os
import signal
import socket

from logstore.hlc import DEFAULT_MAX_OFFSET_NS, HLC

from .heap import quiet_collector, warm_heap
from .metrics import ShardCollector, serve_metrics
from .security import SecurityError, TlsOptions
from .server import JournalServer, ServeError, start_server
from .store import ShardStore, StoreError

__all__ = ["ShardOptions", "RunningShard", "start_shard", "run_shard", "ServeError", "StoreError",
           "SecurityError"]

logger = logging.getLogger(__name__)

STORE_DIR = "store"
HLC_BOUND_FILE = "hlc.bound"


@dataclasses.dataclass(slots=True)
class ShardOptions:
    listen_host: str
    listen_port: int
    data_dir: str
    shard_id: int
    max_offset_ns: int = DEFAULT_MAX_OFFSET_NS
    # Shippers keep their Ingest calls open forever, so a long grace only
    # delays shutdown: a write already started finishes regardless (see
    # JournalServer.stop), and a batch whose ack is cut off is resent and
    # deduplicated.
    grace_s: float = 1.0
    metrics: str = "127.0.0.1:0"  # HOST:PORT of Prometheus /metrics
    # Who may talk to the shard (recoveryd/security.py): TLS (mTLS with
    # tls.require_client_cert), the Restore tokens file, and the client
    # certificate names allowed to restore (empty: any verified one).
    tls: TlsOptions | None = None
    restore_tokens: str | None = None
    restore_identities: tuple[str, ...] = ()
    # Who may ship (recoveryd/security.py, IngestAuth): a file of
    # "NODE_ID TOKEN" lines, and the proxy node ids this shard expects
    # besides those (--member).
    ingest_tokens: str | None = None
    members: tuple[int, ...] = ()
    # The bulk port restores read large ranges from (bulk_server.py): 0 any
    # free port (OpenBulk tells clients which), None none.
    bulk_port: int | None = 0


@dataclasses.dataclass(slots=True)
class RunningShard:
    store: ShardStore
    hlc: HLC
    server: JournalServer

    @property
    def port(self) -> int:
        return self.server.port

    async def stop(self, grace_s: float = 5.0) -> None:
        try:
            await self.server.stop(grace_s)
        finally:
            self.store.close()


async def start_shard(opts: ShardOptions) -> RunningShard:
    """Open the shard's data directory and start serving.

    Raises ``StoreError`` (another shard's data, not a store, in use),
    ``ServeError`` (the address is taken) or ``SecurityError`` (TLS or token
    settings that cannot work).
    """
    if opts.listen_port:
        _check_port_free(opts.listen_host, opts.listen_port)
    try:
        os.makedirs(opts.data_dir, exist_ok=True)
    except OSError as e:
        raise StoreError(f"cannot create data directory {opts.data_dir}: {e.strerror}") from None
    store = ShardStore(os.path.join(opts.data_dir, STORE_DIR), opts.shard_id,
                       members=frozenset(opts.members))
    try:
        try:
            hlc = HLC(store.node_id, max_offset_ns=opts.max_offset_ns,
                      persist_path=os.path.join(opts.data_dir, HLC_BOUND_FILE))
        except ValueError as e:
            raise StoreError(str(e)) from None
        server = await start_server(store, hlc, opts.listen_host, opts.listen_port, tls=opts.tls,
                                    restore_tokens=opts.restore_tokens,
                                    restore_identities=opts.restore_identities,
                                    ingest_tokens=opts.ingest_tokens, bulk_port=opts.bulk_port)
    except BaseException:
        store.close()
        raise
    logger.info("shard %d: data id %s, %d records, %d streams", store.shard_id, store.data_id,
                store.records_total, len(store.streams()))
    return RunningShard(store, hlc, server)


async def run_shard(opts: ShardOptions) -> None:
    """Serve until SIGINT or SIGTERM."""
    warm_heap()  # a restarted shard's backlog does not wait on fresh pages
    running = await start_shard(opts)
    quiet_collector()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    metrics_host, _, metrics_port = opts.metrics.rpartition(":")
    try:
        metrics_port = serve_metrics(ShardCollector(running), metrics_host, int(metrics_port))
    except OSError as e:
        await running.stop()
        raise ServeError(f"cannot serve metrics on {opts.metrics} ({e.strerror}); pick a free port with --metrics") from None
    print(f"nfsj recoveryd: shard {opts.shard_id} serving on {opts.listen_host}:{running.port}, "
          f"data {opts.data_dir}, metrics http://{metrics_host}:{metrics_port}/metrics", flush=True)
    bulk = running.server.bulk
    if bulk is None:
        logger.info("shard %d: no bulk port (restores read through gRPC)", opts.shard_id)
    else:
        logger.info("shard %d: bulk port %d%s", opts.shard_id, bulk.port, " (TLS)" if bulk.tls else "")
    logger.info("shard %d: %s; %s", opts.shard_id, running.server.security,
                running.server.ingest_security)
    try:
        await stop.wait()
        logger.info("shutting down")
    finally:
        await running.stop(opts.grace_s)


def _check_port_free(host: str, port: int) -> None:
    """Fail early, with one clear line, when the port is taken (gRPC's own
    bind error comes with a native log line and no errno)."""
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise ServeError(f"cannot listen on {host}:{port}: {e.strerror}") from None
    for family, type_, proto, _, addr in infos:
        with socket.socket(family, type_, proto) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gRPC does
            try:
                s.bind(addr)
            except OSError as e:
                if e.errno == errno.EADDRINUSE:
                    raise ServeError(f"cannot listen on {host}:{port}: the port is in use") from None
                raise ServeError(f"cannot listen on {host}:{port}: {e.strerror}") from None
