"""A restore client asks a shard for a file's records in chunks, and a shard
older than FileRecordChunks (UNIMPLEMENTED) in the old way, one per message."""

from __future__ import annotations

from concurrent import futures

import grpc

from logstore.pb import journal_pb2_grpc
from logstore.pb.journal_pb2 import FileRequest, Op, Record
from recoveryd.restore import Shards


class OldRestore(journal_pb2_grpc.RestoreServicer):
    """A Restore service as it was before chunks: the base class answers UNIMPLEMENTED."""

    def __init__(self, records: list[Record]) -> None:
        self.records = records
        self.asked = 0

    def FileRecords(self, request, context):
        self.asked += 1
        yield from (r for r in self.records if request.fh in (r.fh, r.dir_fh))


def test_a_shard_without_chunks_is_asked_record_by_record():
    records = [Record(stamp=bytes([0] * 15 + [k]), op=Op.WRITE, ok=True, fh=b"F", data=b"x" * k)
               for k in range(1, 6)]
    service = OldRestore(records)
    server = grpc.server(futures.ThreadPoolExecutor(2))
    journal_pb2_grpc.add_RestoreServicer_to_server(service, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with Shards([f"127.0.0.1:{port}"]) as shards:
            for _ in range(2):
                assert list(shards.file_records(FileRequest(fh=b"F", with_data=True))) == records
            assert service.asked == 2
            assert shards._no_chunks == {0}  # remembered: the second time asked no chunks first
    finally:
        server.stop(None)
