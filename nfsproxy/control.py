"""The proxy's control service (gRPC `Control`): commands to a running proxy.

Today that is `Baseline`: read the whole export into the LOG and stream
progress back. One baseline runs at a time per proxy; a second request
waits for the first to finish and then takes its own.
"""

from __future__ import annotations

import asyncio
import logging

import grpc

from logstore.pb import journal_pb2 as pb
from logstore.pb import journal_pb2_grpc as pb_grpc

from .baseline import BaselineProgress, run_baseline
from .client import NfsClient
from .relay import Proxy

__all__ = ["ControlService", "start_control"]

logger = logging.getLogger(__name__)


class ControlService(pb_grpc.ControlServicer):
    def __init__(self, proxy: Proxy):
        self.proxy = proxy
        self._one_at_a_time = asyncio.Lock()

    def _client(self) -> NfsClient:
        b = self.proxy.backend
        return NfsClient(b.host, b.nfs_port, b.mount_port, b.export, machine_name="nfsj-baseline")

    async def Baseline(self, request: pb.BaselineRequest, context: grpc.aio.ServicerContext):
        if self.proxy.journal is None:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "this proxy journals nothing")
        updates: asyncio.Queue[BaselineProgress | BaseException] = asyncio.Queue()

        def report(p: BaselineProgress) -> None:
            updates.put_nowait(BaselineProgress(p.files, p.dirs, p.bytes, p.current, p.baseline_id, p.end, p.done))

        async with self._one_at_a_time:
            task = asyncio.create_task(run_baseline(self.proxy, self._client, progress=report))
            task.add_done_callback(lambda t: updates.put_nowait(t.exception() or BaselineProgress(done=True)))
            last_sent = None
            while True:
                item = await updates.get()
                if isinstance(item, BaseException):
                    logger.error("baseline failed: %s", item)
                    yield pb.BaselineProgress(error=f"baseline failed: {item}", done=True)
                    return
                if item.done and not item.baseline_id:
                    return  # the task's own completion marker, after the final report
                if item.done or last_sent is None or item.current != last_sent:
                    last_sent = item.current
                    yield pb.BaselineProgress(files=item.files, bytes=item.bytes, dirs=item.dirs,
                                              current=item.current, done=item.done,
                                              baseline_id=item.baseline_id, end=item.end)
                if item.done:
                    logger.info("baseline done: %d files, %d bytes", item.files, item.bytes)


async def start_control(proxy: Proxy, host: str, port: int, *,
                        credentials: grpc.ServerCredentials | None = None) -> tuple[grpc.aio.Server, int]:
    """Serve Control on host:port (0 picks a free port); returns the server and its port.

    ``credentials``: serve TLS (recoveryd.security.server_credentials; the
    proxy passes its own certificate, and requires client certificates when
    it has a CA). None: plaintext.
    """
    server = grpc.aio.server()
    pb_grpc.add_ControlServicer_to_server(ControlService(proxy), server)
    address = f"{host}:{port}"
    bound = (server.add_secure_port(address, credentials) if credentials is not None
             else server.add_insecure_port(address))
    if not bound:
        raise OSError(f"cannot listen on {host}:{port}")
    await server.start()
    return server, bound
