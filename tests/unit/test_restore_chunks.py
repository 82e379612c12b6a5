"""A restore client asks a shard for a file's records, and for a scan, in chunks,
and a shard older than FileRecordChunks or ScanChunks (UNIMPLEMENTED) in the
old way, one per message."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from concurrent import futures

import grpc

from logstore.pb import journal_pb2_grpc
from logstore.pb.journal_pb2 import FileRequest, Op, Record, RecordChunk, ScanRequest
from recoveryd.restore import Shards


class OldRestore(journal_pb2_grpc.RestoreServicer):
    """A Restore service as it was before chunks: the base class answers UNIMPLEMENTED."""

    def __init__(self, records: list[Record]) -> None:
        self.records = records
        self.asked = 0

    def FileRecords(self, request, context):
        self.asked += 1
        yield from (r for r in self.records if request.fh in (r.fh, r.dir_fh))

    def Scan(self, request, context):
        self.asked += 1
        yield from self.records


@contextlib.contextmanager
def serving(service: journal_pb2_grpc.RestoreServicer) -> Iterator[str]:
    """A real gRPC server on loopback for ``service``; its address."""
    server = grpc.server(futures.ThreadPoolExecutor(2))
    journal_pb2_grpc.add_RestoreServicer_to_server(service, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.stop(None)


def test_a_shard_without_chunks_is_asked_record_by_record():
    records = [Record(stamp=bytes([0] * 15 + [k]), op=Op.WRITE, ok=True, fh=b"F", data=b"x" * k)
               for k in range(1, 6)]
    service = OldRestore(records)
    with serving(service) as address, Shards([address]) as shards:
        for _ in range(2):
            assert list(shards.file_records(FileRequest(fh=b"F", with_data=True))) == records
        assert service.asked == 2
        assert shards._unimplemented == {(0, "FileRecordChunks")}  # remembered: asked once
        assert list(shards.scan(ScanRequest(with_data=True))) == records
        assert (0, "ScanChunks") in shards._unimplemented


class EndlessScan(journal_pb2_grpc.RestoreServicer):
    """ScanChunks of 4 MiB: 16 WRITE records of 256 KiB each, as a bulk
    restore of large files gets them; counts the chunks handed to gRPC."""

    CHUNKS = 64

    def __init__(self) -> None:
        self.sent = 0

    def ScanChunks(self, request, context):
        data = b"d" * (256 << 10)
        for k in range(self.CHUNKS):
            records = [Record(stamp=(k * 16 + i + 1).to_bytes(16, "big"), op=Op.WRITE, ok=True,
                              fh=b"F", data=data) for i in range(16)]
            self.sent += 1
            yield RecordChunk(records=[r.SerializeToString() for r in records])


def test_a_reader_ahead_holds_megabytes_not_thousands_of_large_records():
    """A bulk restore reads each shard ahead of its writers, up to thousands
    of records; with records of 256 KiB that must not mean a gigabyte held
    (each one's data keeps its whole message alive)."""
    service = EndlessScan()
    with serving(service) as address, Shards([address]) as shards:
        records = shards.scan_apart(ScanRequest(with_data=True), prefetch=4096)
        next(records)
        settled, last = 0, -1
        while settled < 20:  # the reader stopped pulling (no deadline: pytest-timeout guards)
            time.sleep(0.05)
            settled, last = (settled + 1, last) if service.sent == last else (0, service.sent)
        assert service.sent <= 16, f"{service.sent * 4} MiB read ahead"
        assert sum(1 for _ in records) == EndlessScan.CHUNKS * 16 - 1


# -- chunks in wire form (sans-IO) ------------------------------------------------------

from hypothesis import given, strategies as st  # noqa: E402

from recoveryd.restore.errors import ShardError  # noqa: E402
from recoveryd.restore.shards import _records_in  # noqa: E402
from recoveryd.restore_service import _framed  # noqa: E402

records_st = st.lists(st.builds(Record, fh=st.binary(max_size=40), data=st.binary(max_size=3000),
                                offset=st.integers(0, 1 << 40), op=st.sampled_from([Op.WRITE, Op.BASELINE])),
                      max_size=20)


@given(records_st)
def test_a_framed_chunk_is_a_record_chunk_and_reads_back(records):
    raw = [r.SerializeToString() for r in records]
    assert _framed(raw) == RecordChunk(records=raw).SerializeToString()
    assert list(_records_in(_framed(raw), "shard 0")) == records


@given(st.binary(max_size=300))
def test_any_bytes_give_records_or_a_clean_shard_error(chunk):
    try:
        list(_records_in(chunk, "shard 0"))
    except ShardError as e:
        assert "shard 0" in str(e)
