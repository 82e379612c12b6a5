"""The proxy's control service (gRPC `Control`): commands to a running proxy.

Today that is `Baseline`: read the whole export into the LOG and stream
progress back. One baseline runs at a time per proxy; a second request
is told so (a progress message without a baseline id, its `current` saying
why it waits), waits for the first to end and then takes its own. A
baseline whose caller goes away (the RPC is cancelled: Ctrl-C, a killed
client, a lost connection) is stopped, and the next one starts only once
it has stopped and released its stamps. The proxy's own baselines, which
heal gaps (``nfsproxy.daemon.heal``), take the same turn (``heal``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging

import grpc

from logstore.pb import journal_pb2 as pb
from logstore.pb import journal_pb2_grpc as pb_grpc
from logstore.stamp import Stamp

from nfsproxy.daemon.heal import Healer
from nfsproxy.nas.baseline import BaselineProgress, run_baseline
from nfsproxy.nas.client import NfsClient
from nfsproxy.relay.session import Proxy

__all__ = ["ControlService", "start_control"]

logger = logging.getLogger(__name__)


class ControlService(pb_grpc.ControlServicer):
    def __init__(self, proxy: Proxy, healer: Healer | None = None):
        self.proxy = proxy
        self.healer = healer
        self._one_at_a_time = asyncio.Lock()
        self._running: BaselineProgress | None = None  # the latest progress of the one running

    def _client(self) -> NfsClient:
        b = self.proxy.backend
        return NfsClient(b.host, b.nfs_port, b.mount_port, b.export, machine_name="nfsj-baseline")

    async def Baseline(self, request: pb.BaselineRequest, context: grpc.aio.ServicerContext):
        if self.proxy.journal is None:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "this proxy journals nothing")
        if self._one_at_a_time.locked():
            notice = self._busy_notice()
            logger.info("baseline requested while %s; it waits", notice)
            yield pb.BaselineProgress(current=f"waiting: {notice}; this one starts when it ends")
        async with self._one_at_a_time, contextlib.aclosing(self._run()) as run:
            # aclosing: if our caller goes away while we yield, `_run` still
            # stops its scan before the lock lets the next baseline in.
            async for update in run:
                yield update

    async def heal(self) -> bool | None:
        """Run the proxy's own baseline to heal the gaps seen so far, in its
        turn; None if none was due by then (a baseline begun after them
        ended meanwhile), else whether it ended."""
        async with self._one_at_a_time:
            if self.healer is None or not self.healer.due():
                return None
            logger.warning("healing gaps: this proxy begins a baseline of its own")
            ended = False
            async with contextlib.aclosing(self._run()) as run:
                async for update in run:
                    ended = update.done and not update.error
            return ended

    def _busy_notice(self) -> str:
        running = self._running
        if running is None or not running.baseline_id:
            return "another baseline is starting on this proxy"
        begun = Stamp.from_bytes(running.baseline_id)
        return (f"another baseline is running on this proxy (begun {begun.iso()}, "
                f"{running.files} files read so far)")

    async def _run(self):
        """One baseline, its progress as messages; cancelled with its caller."""
        updates: asyncio.Queue[BaselineProgress | BaseException | None] = asyncio.Queue()

        def report(p: BaselineProgress) -> None:
            self._running = dataclasses.replace(p)
            updates.put_nowait(self._running)

        def finished(t: asyncio.Task) -> None:
            updates.put_nowait(None if t.cancelled() or t.exception() is None else t.exception())

        self._running = BaselineProgress()
        mark = self.healer.began() if self.healer is not None else None
        task = asyncio.create_task(run_baseline(self.proxy, self._client, progress=report))
        task.add_done_callback(finished)
        try:
            last_sent = None
            while (item := await updates.get()) is not None:
                if isinstance(item, BaseException):
                    logger.error("baseline failed: %s", item)
                    yield pb.BaselineProgress(error=f"baseline failed: {item}", done=True)
                    return
                if item.done and mark is not None:
                    self.healer.ended(mark)  # before the yield: a caller gone there must not undo it
                if item.done or last_sent is None or item.current != last_sent:
                    last_sent = item.current
                    yield pb.BaselineProgress(files=item.files, bytes=item.bytes, dirs=item.dirs,
                                              current=item.current, done=item.done,
                                              baseline_id=item.baseline_id, end=item.end)
                if item.done:
                    logger.info("baseline done: %d files, %d bytes, %d objects removed before "
                                "they were read (skipped)", item.files, item.bytes, item.vanished)
        finally:
            if not task.done():
                # The caller went away: stop reading the export, and hold the
                # lock until the scan has released its stamps.
                logger.warning("baseline cancelled by its caller after %d files; stopping it",
                               self._running.files)
                task.cancel()
                await asyncio.wait([task])
                logger.info("baseline stopped; it has no END, no restore starts from it")
            self._running = None


async def start_control(proxy: Proxy, host: str, port: int, *,
                        credentials: grpc.ServerCredentials | None = None,
                        healer: Healer | None = None) -> tuple[grpc.aio.Server, int]:
    """Serve Control on host:port (0 picks a free port); returns the server and its port.

    ``credentials``: serve TLS (recoveryd.security.server_credentials; the
    proxy passes its own certificate, and requires client certificates when
    it has a CA). None: plaintext. ``healer``: started here, to run its
    baselines in the same turn as the ones asked for.
    """
    server = grpc.aio.server()
    service = ControlService(proxy, healer)
    pb_grpc.add_ControlServicer_to_server(service, server)
    address = f"{host}:{port}"
    bound = (server.add_secure_port(address, credentials) if credentials is not None
             else server.add_insecure_port(address))
    if not bound:
        raise OSError(f"cannot listen on {host}:{port}")
    await server.start()
    if healer is not None:
        healer.start(service.heal)
    return server, bound
