"""A shard's bulk port (recoveryd/bulk_wire.py, bulk_server.py and the reader
recoveryd/restore/bulk_stream.py) and the restore client's use of it
(``Shards``): the wire codec, tickets, real shards on loopback (real RocksDB,
real gRPC, real TLS from tests/tls_certs.py) and plain sockets standing in
for a shard, or a client, that misbehaves.

(tests/unit/test_bulk.py is about recoveryd.restore.bulk, the bulk *writer*.)
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
from pathlib import Path
from typing import Iterator

import grpc
import pytest
from hypothesis import given
from hypothesis import strategies as st

from logstore.pb.journal_pb2 import BulkRequest, FilesRequest, Op, Record, RecordChunk, ScanRequest
from logstore.pb import journal_pb2_grpc
from logstore.pb.journal_pb2_grpc import RestoreStub
from recoveryd import bulk_server
from recoveryd.bulk_server import FRAME_BYTES, BulkServer, Tickets
from recoveryd.bulk_wire import (DATA, END, END_BYTES, ERROR, HEADER_BYTES, HELLO_BYTES, MAGIC,
                                 MAX_ERROR_BYTES, MAX_FRAME_BYTES, TICKET_BYTES, VERSION, BulkWireError,
                                 end_payload, error_payload, header, hello, parse_end, parse_header,
                                 parse_hello)
from recoveryd.restore import ShardError, Shards
from recoveryd.restore.bulk_stream import BulkUnavailable, open_stream
from recoveryd.restore_service import ServedCounters, chunk_parts
from recoveryd.security import BearerToken, TlsOptions, open_channel, server_ssl_context
from recoveryd.server import ServeError
from test_security import GOOD, Shard, client, mtls, pki, standard_tokens, tls  # noqa: F401  (pki: a fixture)
from test_restore_chunks import serving
from test_shipped_frames import STREAM, frames_batch, frames_of, payload_of, stamp, write_record

MiB = 1 << 20


# -- the wire codec (sans-IO) -------------------------------------------------------------


def test_hello_round_trips_and_is_exactly_hello_bytes():
    ticket = os.urandom(TICKET_BYTES)
    raw = hello(ticket)
    assert len(raw) == HELLO_BYTES and raw.startswith(MAGIC)
    assert parse_hello(raw) == ticket


@pytest.mark.parametrize("ticket", [b"", b"t" * (TICKET_BYTES - 1), b"t" * (TICKET_BYTES + 1)])
def test_a_ticket_of_another_length_makes_no_hello(ticket):
    with pytest.raises(BulkWireError):
        hello(ticket)


@pytest.mark.parametrize("raw", [
    b"NFSJBULX" + bytes((VERSION,)) + bytes(TICKET_BYTES),      # bad magic
    MAGIC + bytes((VERSION + 1,)) + bytes(TICKET_BYTES),         # a version not served
    MAGIC + bytes((VERSION,)) + bytes(TICKET_BYTES - 1),         # cut short
    MAGIC + bytes((VERSION,)) + bytes(TICKET_BYTES + 1),         # too long
    b"",
])
def test_a_hello_that_is_not_one_is_refused(raw):
    with pytest.raises(BulkWireError):
        parse_hello(raw)


def test_the_version_refusal_names_both_versions():
    with pytest.raises(BulkWireError, match=f"version {VERSION + 1} .*speaks {VERSION}"):
        parse_hello(MAGIC + bytes((VERSION + 1,)) + bytes(TICKET_BYTES))


@pytest.mark.parametrize("kind, length", [(DATA, 0), (DATA, 12345), (DATA, MAX_FRAME_BYTES),
                                          (END, END_BYTES), (ERROR, 0), (ERROR, MAX_ERROR_BYTES)])
def test_headers_round_trip(kind, length):
    raw = header(kind, length)
    assert len(raw) == HEADER_BYTES
    assert parse_header(raw) == (kind, length)


@pytest.mark.parametrize("raw", [
    header(DATA, MAX_FRAME_BYTES + 1),       # a frame bigger than any shard sends
    header(ERROR, MAX_ERROR_BYTES + 1),      # an error longer than one line may be
    header(END, END_BYTES - 1),              # an end frame is exactly its two counts
    header(END, END_BYTES + 1),
    header(ord("Z"), 0),                     # an unknown kind
    header(0, 0),
    header(DATA, 1)[:-1],                    # a header cut short
    header(DATA, 1) + b"\x00",               # ... or too long
])
def test_bad_headers_are_refused(raw):
    with pytest.raises(BulkWireError):
        parse_header(raw)


@pytest.mark.parametrize("frames, nbytes", [(0, 0), (3, 12 * MiB), (2**64 - 1, 2**64 - 1)])
def test_end_payload_round_trips(frames, nbytes):
    raw = end_payload(frames, nbytes)
    assert len(raw) == END_BYTES
    assert parse_end(raw) == (frames, nbytes)


@pytest.mark.parametrize("n", [0, END_BYTES - 1, END_BYTES + 1])
def test_an_end_payload_of_another_length_is_refused(n):
    with pytest.raises(BulkWireError):
        parse_end(bytes(n))


@given(st.binary(max_size=2 * HELLO_BYTES))
def test_any_bytes_are_a_hello_or_a_bulk_wire_error(raw):
    try:
        ticket = parse_hello(raw)
    except BulkWireError:
        return
    assert hello(ticket) == raw


@given(st.one_of(st.binary(max_size=12), st.binary(min_size=HEADER_BYTES, max_size=HEADER_BYTES)))
def test_any_bytes_are_a_header_or_a_bulk_wire_error(raw):
    try:
        kind, length = parse_header(raw)
    except BulkWireError:
        return
    assert kind in (DATA, END, ERROR)
    assert header(kind, length) == raw


@given(st.text())
def test_an_error_payload_is_one_line_a_reader_accepts(text):
    payload = error_payload(text)
    assert b"\n" not in payload and 0 < len(payload) <= MAX_ERROR_BYTES
    assert parse_header(header(ERROR, len(payload))) == (ERROR, len(payload))


# -- tickets --------------------------------------------------------------------------------


def opener_of(values: list[bytes]):
    return lambda: iter(values)


def test_a_ticket_admits_once():
    tickets = Tickets(ttl_s=30)
    opener = opener_of([b"r"])
    ticket = tickets.issue(opener, now=100.0)
    assert len(ticket) == TICKET_BYTES
    assert tickets.take(ticket, now=101.0) is opener
    assert tickets.take(ticket, now=101.0) is None   # used up


def test_a_ticket_expires_after_its_ttl():
    tickets = Tickets(ttl_s=30)
    early, late = tickets.issue(opener_of([]), now=100.0), tickets.issue(opener_of([]), now=100.0)
    assert tickets.take(early, now=129.9) is not None
    assert tickets.take(late, now=130.0) is None
    assert len(tickets) == 0   # the expired one is dropped, not kept for ever


def test_an_unknown_ticket_admits_nothing():
    tickets = Tickets()
    tickets.issue(opener_of([]), now=0.0)
    assert tickets.take(os.urandom(TICKET_BYTES), now=0.0) is None
    assert len(tickets) == 1   # ... and does not use up another


def test_tickets_are_not_guessable_from_one_another():
    tickets = Tickets()
    issued = {tickets.issue(opener_of([]), now=0.0) for _ in range(100)}
    assert len(issued) == 100


# -- a real shard holding records --------------------------------------------------------


def journal_records() -> list[Record]:
    """What the shards below hold, in stamp order: 1 MiB writes to three files
    (three D frames' worth: FRAME_BYTES each), small writes and records
    without data. Random data, so a byte out of place shows."""
    big = [write_record(i, fh=b"F%d" % (i % 3), data=os.urandom(MiB))
           for i in range(1, 1 + 3 * FRAME_BYTES // MiB)]
    small = [write_record(100 + i, fh=b"F1", data=os.urandom(i + 1)) for i in range(5)]
    meta = [Record(stamp=stamp(200 + i), op=Op.CREATE, ok=True, dir_fh=b"D", name=b"n%d" % i,
                   fh=b"F%d" % i) for i in range(3)]
    return big + small + meta


def journal(store, records: list[Record]) -> None:
    """``records`` in ``store`` as a proxy ships them (data last), one batch each."""
    for seq, record in enumerate(records, 1):
        store.ingest(STREAM, frames_batch(seq - 1, seq, frames_of([(seq, record)])))


def without_data(record: Record) -> Record:
    head = Record()
    head.CopyFrom(record)
    head.ClearField("data")
    return head


def expected(records: list[Record]) -> list[tuple[Record, bytes]]:
    """``records`` as scan_apart gives them: parsed without data, and their data."""
    return [(without_data(r), r.data) for r in records]


def pairs(items) -> list[tuple[Record, bytes]]:
    return [(record, bytes(data)) for record, data in items]


def streams_opened(shard: Shard, monkeypatch) -> list[bytes]:
    """The tickets ``shard``'s bulk port opens a stream for from now on: a
    pass-through count on its tickets (what the shard did, not what the
    client says it did), undone after the test."""
    tickets = shard.server.bulk.tickets
    take, opened = tickets.take, []

    def counted(ticket: bytes, now: float):
        opener = take(ticket, now)
        if opener is not None:
            opened.append(ticket)
        return opener

    monkeypatch.setattr(tickets, "take", counted)
    return opened


@pytest.fixture(scope="module")
def records() -> list[Record]:
    return journal_records()


@pytest.fixture(scope="module")
def shard(tmp_path_factory, records) -> Iterator[Shard]:
    """A plaintext shard serving its bulk port, holding ``records``; read only."""
    s = Shard(tmp_path_factory.mktemp("bulk") / "shard")
    try:
        journal(s.store, records)
        yield s
    finally:
        s.stop()


@pytest.fixture
def started(tmp_path: Path, records):
    """``started(held=records, **start_server kwargs)``: a shard holding
    ``held``; stopped afterwards."""
    shards: list[Shard] = []

    def start(held: list[Record] | None = None, **kw) -> Shard:
        s = Shard(tmp_path / f"shard{len(shards)}", **kw)
        shards.append(s)
        journal(s.store, records if held is None else held)
        return s

    yield start
    for s in shards:
        s.stop()


SCANS = {
    "all": ScanRequest(with_data=True),
    "writes": ScanRequest(with_data=True, ops=[Op.WRITE]),
    "limit": ScanRequest(with_data=True, limit=5),
    "window": ScanRequest(with_data=True, after=stamp(3), until=stamp(101)),
    "empty": ScanRequest(with_data=True, after=stamp(1000)),
}


@pytest.mark.parametrize("name", SCANS)
def test_a_scan_through_the_bulk_port_is_the_scan_through_grpc(shard, name, monkeypatch):
    request = SCANS[name]
    opened = streams_opened(shard, monkeypatch)
    with Shards([shard.address]) as bulk, Shards([shard.address], bulk=False) as grpc_only:
        through_bulk = list(bulk.scan_apart(request))
        assert len(opened) == 1 and bulk.bulk_status() == {}   # the bulk port served it
        through_grpc = list(grpc_only.scan_apart(request))
        assert len(opened) == 1                                # ... and not this one
    assert pairs(through_bulk) == pairs(through_grpc)
    if name == "empty":
        assert through_bulk == []   # an end frame alone: a complete, empty stream


def test_the_whole_scan_through_the_bulk_port_is_what_was_journaled(shard, records):
    with Shards([shard.address]) as shards:
        assert pairs(shards.scan_apart(ScanRequest(with_data=True))) == expected(records)
        # Records whole (scan, not scan_apart) and with a reader ahead too.
        assert list(shards.scan(ScanRequest(with_data=True))) == records
        assert pairs(shards.scan_apart(ScanRequest(with_data=True), prefetch=512)) == expected(records)
        assert shards.bulk_status() == {}


@pytest.mark.parametrize("fhs", [[b"F1"], [b"F0", b"F2"], [b"F0", b"F1", b"F2", b"D"], [b"nobody"]])
def test_files_records_through_the_bulk_port_are_those_through_grpc(shard, records, fhs, monkeypatch):
    request = FilesRequest(fhs=fhs, with_data=True)
    opened = streams_opened(shard, monkeypatch)
    with Shards([shard.address]) as bulk, Shards([shard.address], bulk=False) as grpc_only:
        through_bulk = list(bulk.files_records(request, apart=True))
        assert len(opened) == 1 and bulk.bulk_status() == {}
        through_grpc = list(grpc_only.files_records(request, apart=True))
        assert len(opened) == 1
    assert pairs(through_bulk) == pairs(through_grpc)
    naming = [r for r in records if {r.fh, r.dir_fh} & set(fhs)]
    assert pairs(through_bulk) == expected(naming)


def test_a_bulk_stream_is_counted_as_served_as_grpc_counts_it(shard):
    """nfsj_restore_served_*: the bulk threads count what ScanChunks would."""
    counters: ServedCounters = shard.server.restore_counters

    def served(**kw) -> tuple[int, int]:
        before = (counters.records_total, counters.bytes_total)
        with Shards([shard.address], **kw) as shards:
            n = sum(1 for _ in shards.scan_apart(ScanRequest(with_data=True)))
        return n, counters.records_total - before[0], counters.bytes_total - before[1]

    n, records_bulk, bytes_bulk = served()
    assert served(bulk=False) == (n, records_bulk, bytes_bulk)
    assert records_bulk == n and bytes_bulk > 3 * FRAME_BYTES


def test_a_request_a_shard_refuses_is_refused_on_both_paths(shard):
    """OpenBulk checks the request as ScanChunks does: an error, not a fallback."""
    bad = ScanRequest(with_data=True, after=b"not 16 bytes")
    for bulk in (True, False):
        with Shards([shard.address], bulk=bulk) as shards:
            with pytest.raises(ShardError, match="INVALID_ARGUMENT"):
                list(shards.scan_apart(bad))
            assert shards.bulk_status() == {}


def test_without_data_nothing_goes_to_the_bulk_port(shard, records, monkeypatch):
    """Bulk streams are for data; a namespace scan (no data) stays on gRPC."""
    opened = streams_opened(shard, monkeypatch)
    with Shards([shard.address]) as shards:
        got = list(shards.scan_apart(ScanRequest(with_data=False)))
    assert pairs(got) == [(without_data(r), b"") for r in records]
    assert opened == []


# -- falling back to gRPC ----------------------------------------------------------------


def test_a_shard_without_a_bulk_port_is_read_through_grpc(started, records):
    shard = started(bulk_port=None)
    assert shard.server.bulk is None
    with Shards([shard.address]) as shards:
        scanned = list(shards.scan_apart(ScanRequest(with_data=True)))
        files = list(shards.files_records(FilesRequest(fhs=[b"F1"], with_data=True), apart=True))
        assert shards.bulk_status() == {0: "it serves no bulk port"}
    assert pairs(scanned) == expected(records)
    assert pairs(files) == expected([r for r in records if b"F1" in (r.fh, r.dir_fh)])


def test_each_shard_is_read_its_own_way_and_the_streams_merge(started, records, monkeypatch):
    """One shard with a bulk port, one without: the merged stream is whole,
    and only the second is said to be read through gRPC."""
    first, second = started(held=records[::2]), started(held=records[1::2], bulk_port=None)
    opened = streams_opened(first, monkeypatch)
    with Shards([first.address, second.address]) as shards:
        scanned = list(shards.scan_apart(ScanRequest(with_data=True)))
        assert shards.bulk_status() == {1: "it serves no bulk port"}
    assert pairs(scanned) == expected(records) and len(opened) == 1


class BeforeBulk(journal_pb2_grpc.RestoreServicer):
    """A shard from before OpenBulk: ScanChunks, and UNIMPLEMENTED for OpenBulk
    (the base class's answer)."""

    def __init__(self, records: list[Record]) -> None:
        self.records = records

    def ScanChunks(self, request, context):
        yield RecordChunk(records=[payload_of(r) for r in self.records])


def test_a_shard_from_before_the_bulk_port_is_read_through_grpc(records):
    with serving(BeforeBulk(records)) as address, Shards([address]) as shards:
        assert pairs(shards.scan_apart(ScanRequest(with_data=True))) == expected(records)
        assert shards.bulk_status() == {0: "it serves no bulk port"}


def test_a_bulk_port_out_of_reach_is_read_through_grpc(started, records):
    """OpenBulk gives a ticket for a port the client cannot connect to
    (a firewall; here: the port closed): the same records, through gRPC."""
    shard = started()
    port = shard.server.bulk.port
    shard.server.bulk.stop()
    with Shards([shard.address]) as shards:
        scanned = list(shards.scan_apart(ScanRequest(with_data=True)))
        why = shards.bulk_status()
    assert pairs(scanned) == expected(records)
    assert list(why) == [0] and f"cannot reach its bulk port 127.0.0.1:{port}" in why[0]


def test_a_probe_says_which_bulk_ports_serve_this_client_and_why_not(started, records):
    """``nfsj status`` asks this: a stream of nothing through each port, and
    the reason a restore here would read through gRPC."""
    served, closed, none = started(), started(), started(bulk_port=None)
    port = closed.server.bulk.port
    closed.server.bulk.stop()
    with Shards([served.address, closed.address, none.address]) as shards:
        found = [shards.probe_bulk(k) for k in range(3)]
    assert found[0] == ""
    assert f"cannot reach its bulk port 127.0.0.1:{port}" in found[1]
    assert found[2] == "it serves no bulk port"
    with serving(BeforeBulk(records)) as address, Shards([address]) as shards:
        assert shards.probe_bulk(0) == "it serves no bulk port"


def test_a_probe_sends_no_record_and_warns_of_nothing(shard, started, caplog):
    counters: ServedCounters = shard.server.restore_counters
    before = counters.records_total
    closed = started()
    closed.server.bulk.stop()
    with caplog.at_level(logging.WARNING, logger="recoveryd.restore"), \
            Shards([shard.address, closed.address]) as shards:
        assert shards.probe_bulk(0) == "" and shards.probe_bulk(1)
    assert counters.records_total == before
    assert not [r for r in caplog.records if r.name.startswith("recoveryd.restore")]


def test_a_bulk_port_that_is_taken_stops_the_shard_with_a_reason(tmp_path):
    with socket.create_server(("127.0.0.1", 0)) as taken:
        with pytest.raises(ServeError, match="--bulk-port"):
            Shard(tmp_path / "shard", bulk_port=taken.getsockname()[1])


def test_bulk_reads_need_the_restore_credentials_as_grpc_reads_do(started, tmp_path, records, monkeypatch):
    shard = started(restore_tokens=standard_tokens(tmp_path))
    opened = streams_opened(shard, monkeypatch)
    with Shards([shard.address], token=BearerToken(GOOD)) as shards:
        scanned = list(shards.scan_apart(ScanRequest(with_data=True)))
        assert shards.bulk_status() == {}
    assert pairs(scanned) == expected(records) and len(opened) == 1
    with Shards([shard.address]) as shards:   # no token: refused, not read another way
        with pytest.raises(ShardError, match="refused the call"):
            list(shards.scan_apart(ScanRequest(with_data=True)))
        assert shards.probe_bulk(0) is None   # not a bulk port's failure: this client may not restore
    with Shards([shard.address], token=BearerToken(GOOD)) as shards:
        assert shards.probe_bulk(0) == ""


# -- tickets and clients the bulk port turns away ------------------------------------------


def ticket_for(shard: Shard, request: ScanRequest = ScanRequest(with_data=True)):
    with open_channel(shard.address) as channel:
        return RestoreStub(channel).OpenBulk(BulkRequest(scan=request), timeout=10)


def recv_exact(sock: socket.socket, n: int) -> bytes:
    out = b""
    while len(out) < n:
        got = sock.recv(n - len(out))
        if not got:
            raise EOFError(f"closed after {len(out)} of {n} bytes")
        out += got
    return out


def refusal(port: int, first: bytes) -> str:
    """What the bulk port answers a client that sends ``first``: the X frame's text."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(first)
        kind, length = parse_header(recv_exact(sock, HEADER_BYTES))
        text = recv_exact(sock, length).decode()
        assert kind == ERROR, text
        assert sock.recv(1) == b""   # nothing follows an X frame
        return text


def test_a_ticket_admits_one_connection(shard, records):
    ticket = ticket_for(shard)
    assert ticket.port == shard.server.bulk.port and not ticket.tls
    chunks = list(open_stream("127.0.0.1", ticket.port, ticket.ticket, "shard 0"))
    assert len(chunks) >= 3   # 3 * FRAME_BYTES of data: several D frames, each a RecordChunk
    got = [Record.FromString(r) for c in chunks for r in RecordChunk.FromString(bytes(c)).records]
    assert got == records
    # Used: the port says so in an X frame, and the reader reports it unavailable.
    assert "ticket" in refusal(ticket.port, hello(ticket.ticket))
    with pytest.raises(BulkUnavailable, match="ticket"):
        open_stream("127.0.0.1", ticket.port, ticket.ticket, "shard 0")


def test_open_bulk_wants_a_scan_or_files(shard):
    with open_channel(shard.address) as channel:
        with pytest.raises(grpc.RpcError) as refused:
            RestoreStub(channel).OpenBulk(BulkRequest(), timeout=10)
    assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT


def test_a_bogus_ticket_is_refused(shard):
    port = shard.server.bulk.port
    assert "ticket" in refusal(port, hello(os.urandom(TICKET_BYTES)))
    with pytest.raises(BulkUnavailable, match="ticket"):
        open_stream("127.0.0.1", port, os.urandom(TICKET_BYTES), "shard 0")


def test_a_hello_in_another_version_is_refused_with_the_version(shard):
    ticket = ticket_for(shard)
    text = refusal(ticket.port, MAGIC + bytes((VERSION + 1,)) + ticket.ticket)
    assert f"version {VERSION + 1}" in text


def test_clients_that_misbehave_do_not_stop_the_next_one(shard, records):
    port = shard.server.bulk.port
    # Garbage the length of a hello: refused with a reason.
    assert "not a bulk stream hello" in refusal(port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".ljust(HELLO_BYTES))
    # Half a hello, then gone; half a hello, then silent (its thread waits for the rest).
    with socket.create_connection(("127.0.0.1", port)) as gone:
        gone.sendall(MAGIC[:4])
    silent = socket.create_connection(("127.0.0.1", port))
    try:
        silent.sendall(MAGIC)
        with Shards([shard.address]) as shards:
            assert pairs(shards.scan_apart(ScanRequest(with_data=True))) == expected(records)
            assert shards.bulk_status() == {}
    finally:
        silent.close()


def test_connections_without_a_ticket_are_few_and_refused_with_a_reason():
    # Anyone can connect: those who have shown no ticket get a few slots of
    # their own, and never take a ticketed reader's.
    server = BulkServer("127.0.0.1", 0, ServedCounters(), max_pending=1)
    occupant = socket.create_connection(("127.0.0.1", server.port))   # silent
    try:
        wait_until(lambda: server.connections == 1)
        assert "waiting for their tickets" in refusal(server.port, b"")
        with pytest.raises(BulkUnavailable):
            open_stream("127.0.0.1", server.port, server.admit(opener_of([b"r"])), "shard 0")
    finally:
        occupant.close()
        server.stop()


def test_a_busy_bulk_port_refuses_a_ticket_with_a_reason():
    server = BulkServer("127.0.0.1", 0, ServedCounters(), max_streams=1)
    records = Endless()
    occupant = stalled_reader(server, records)   # a ticketed stream, held
    try:
        assert server.streams == 1
        assert "1 bulk streams already" in refusal(server.port, hello(server.admit(opener_of([b"r"]))))
        with pytest.raises(BulkUnavailable):
            open_stream("127.0.0.1", server.port, server.admit(opener_of([b"r"])), "shard 0")
    finally:
        occupant.close()
        server.stop()


def wait_until(condition) -> None:
    """Poll until ``condition()``: no deadline here (pytest-timeout guards)."""
    while not condition():
        time.sleep(0.01)


# -- a shard that cuts its stream short (a plain socket standing in) ---------------------


CHUNK = RecordChunk(records=[write_record(1).SerializeToString()]).SerializeToString()


def frame(kind: int, payload: bytes) -> bytes:
    return header(kind, len(payload)) + payload


D = frame(DATA, CHUNK)


@contextlib.contextmanager
def fake_shard(*sends: bytes, hellos: list[bytes] | None = None) -> Iterator[int]:
    """A bulk port that takes one hello (kept in ``hellos``), sends ``sends``
    and closes; its port."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(30)
    hellos = [] if hellos is None else hellos

    def serve() -> None:
        with contextlib.suppress(OSError, EOFError):   # the test's assertions say what went wrong
            conn, _ = listener.accept()
            with conn:
                hellos.append(recv_exact(conn, HELLO_BYTES))
                for data in sends:
                    conn.sendall(data)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        thread.join(30)
        listener.close()


TICKET = b"T" * TICKET_BYTES


def test_a_complete_stream_gives_its_frames_and_ends():
    with fake_shard(D, D, frame(END, end_payload(2, 2 * len(CHUNK)))) as port:
        assert list(open_stream("127.0.0.1", port, TICKET, "shard 9")) == [CHUNK, CHUNK]


@pytest.mark.parametrize("after_the_first, why", [
    (b"", "cut short"),                                              # closed without its end
    (header(DATA, 100) + b"x" * 10, "cut short"),                    # ... in a frame
    (header(DATA, 100)[:2], "cut short"),                            # ... in a header
    (frame(END, end_payload(2, len(CHUNK))), "2 frames"),            # an end that counts more
    (frame(END, end_payload(1, len(CHUNK) + 1)), "bytes"),
    (frame(ERROR, b"the disk failed"), "the disk failed"),          # the shard failed meanwhile
    (header(ord("Z"), 0), "malformed"),
])
def test_a_stream_that_breaks_after_its_first_frame_is_a_shard_error(after_the_first, why):
    """Records have been used by then: never a quiet end, never a fallback."""
    with fake_shard(D, after_the_first) as port:
        chunks = open_stream("127.0.0.1", port, TICKET, "shard 9")
        assert next(chunks) == CHUNK
        with pytest.raises(ShardError, match=f"shard 9.*{why}"):
            next(chunks)


@pytest.mark.parametrize("sends, why", [
    ((), "cut short"),                                 # closed after the hello
    ((frame(ERROR, b"too busy"),), "too busy"),        # refused
    ((b"HTTP/1.1 400 Bad Request\r\n",), "malformed"),  # not a bulk port at all
    ((frame(END, end_payload(1, 10)),), "1 frames"),   # an end counting frames that never came
])
def test_a_stream_that_fails_before_its_first_frame_is_unavailable(sends, why):
    """Nothing used yet: the reader says so, and the caller reads through gRPC."""
    with fake_shard(*sends) as port:
        with pytest.raises(BulkUnavailable, match=why):
            open_stream("127.0.0.1", port, TICKET, "shard 9")


def test_the_reader_sends_its_ticket_in_a_hello():
    hellos: list[bytes] = []
    with fake_shard(frame(END, end_payload(0, 0)), hellos=hellos) as port:
        assert list(open_stream("127.0.0.1", port, TICKET, "shard 9")) == []   # complete, empty
    assert hellos == [hello(TICKET)]


def test_no_listener_is_unavailable():
    with socket.create_server(("127.0.0.1", 0)) as s:
        port = s.getsockname()[1]
    with pytest.raises(BulkUnavailable, match="cannot reach"):
        open_stream("127.0.0.1", port, TICKET, "shard 9")


# -- stopping, and clients that stop reading ----------------------------------------------


class Endless:
    """A store iterator that never ends: 1 MiB records, counted; records
    whether it was closed (a RocksDB iterator must be, before the store closes)."""

    def __init__(self) -> None:
        self.made = 0
        self.closed = threading.Event()

    def __call__(self) -> Iterator[bytes]:
        try:
            while True:
                self.made += 1
                yield b"r" * MiB
        finally:
            self.closed.set()


def stalled_reader(server: BulkServer, records: Endless) -> socket.socket:
    """A client that sends its hello and reads nothing, once the stream's
    thread is blocked sending (the records it takes stop growing)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", server.port))
    sock.sendall(hello(server.admit(records)))
    last = -1
    while records.made != last or records.made == 0:
        last = records.made
        time.sleep(0.3)
    return sock


def test_stop_cuts_off_a_stream_blocked_sending_and_closes_its_iterator():
    server = BulkServer("127.0.0.1", 0, ServedCounters())
    records = Endless()
    sock = stalled_reader(server, records)
    try:
        assert server.streams == 1 and not records.closed.is_set()
        stopping = threading.Thread(target=server.stop)
        stopping.start()
        stopping.join(60)
        assert not stopping.is_alive()
        # stop waited for the stream's thread: its iterator is closed by now.
        assert records.closed.is_set() and server.streams == 0
    finally:
        sock.close()


def stop_within(server: BulkServer, seconds: float) -> bool:
    """Whether ``server.stop()`` returned within ``seconds`` (a hang check)."""
    stopping = threading.Thread(target=server.stop)
    stopping.start()
    stopping.join(seconds)
    return not stopping.is_alive()


def test_stop_cuts_off_a_client_that_never_sent_its_hello(monkeypatch):
    monkeypatch.setattr(bulk_server, "HELLO_TIMEOUT_S", 60.0)   # long enough to tell
    server = BulkServer("127.0.0.1", 0, ServedCounters())
    with socket.create_connection(("127.0.0.1", server.port)):
        wait_until(lambda: server.connections == 1)
        assert server.streams == 0   # no ticket shown: not a stream yet
        assert stop_within(server, 20)
        assert server.connections == 0


def test_a_reader_held_back_by_the_merge_gets_its_whole_stream(monkeypatch):
    """A restore merges every shard's stream in stamp order, so it leaves one
    stream unread while it writes a long run of another shard's records: the
    shard must wait for it as gRPC's flow control does, not drop it (no
    timeout of the hello's, or any other, may end a ticketed stream)."""
    monkeypatch.setattr(bulk_server, "HELLO_TIMEOUT_S", 0.5)
    values = [bytes([k]) * (1 << 20) for k in range(12)]   # 3 frames
    server = BulkServer("127.0.0.1", 0, ServedCounters())
    try:
        chunks = open_stream("127.0.0.1", server.port, server.admit(opener_of(values)), "shard 0")
        first = next(chunks)
        time.sleep(2.0)   # held back, past every timeout the hello had
        got = [first, *chunks]
        assert b"".join(got) == b"".join(chunk_parts(values))
    finally:
        server.stop()


def test_a_reader_that_closes_its_stream_ends_the_shards_side():
    """A restore that stops early (an error elsewhere, ^C) must not leave the
    shard reading its store for nobody."""
    server = BulkServer("127.0.0.1", 0, ServedCounters())
    records = Endless()
    try:
        chunks = open_stream("127.0.0.1", server.port, server.admit(records), "shard 0")
        assert len(next(chunks)) > 0
        chunks.close()
        assert records.closed.wait(60)
        wait_until(lambda: server.streams == 0)
    finally:
        server.stop()


def test_a_stopped_bulk_port_admits_no_one():
    server = BulkServer("127.0.0.1", 0, ServedCounters())
    ticket = server.admit(opener_of([b"r"]))
    server.stop()
    with pytest.raises(BulkUnavailable, match="cannot reach"):
        open_stream("127.0.0.1", server.port, ticket, "shard 0")


# -- TLS --------------------------------------------------------------------------------------


def test_a_tls_shard_serves_its_bulk_port_over_tls(pki, started, records, monkeypatch):
    shard = started(**tls(pki))
    assert shard.server.bulk.tls
    opened = streams_opened(shard, monkeypatch)
    with Shards([shard.address], credentials=client(pki), tls=TlsOptions(ca=pki.ca)) as shards:
        scanned = list(shards.scan_apart(ScanRequest(with_data=True)))
        files = list(shards.files_records(FilesRequest(fhs=[b"F2"], with_data=True), apart=True))
        assert shards.bulk_status() == {}
    assert pairs(scanned) == expected(records)
    assert pairs(files) == expected([r for r in records if r.fh == b"F2"])
    assert len(opened) == 2   # both through the bulk port


def test_tls_credentials_without_tls_files_read_through_grpc(pki, started, records, monkeypatch):
    """Given grpc credentials alone the client cannot verify the bulk port:
    it does not try, and reads the same records through gRPC."""
    shard = started(**tls(pki))
    opened = streams_opened(shard, monkeypatch)
    with Shards([shard.address], credentials=client(pki)) as shards:
        scanned = list(shards.scan_apart(ScanRequest(with_data=True)))
        why = shards.bulk_status()
    assert pairs(scanned) == expected(records) and opened == []
    assert "TLS files" in why[0]   # and it says why


def test_a_plaintext_reader_gets_nothing_from_a_tls_bulk_port(pki, started):
    shard = started(**tls(pki))
    with open_channel(shard.address, credentials=client(pki)) as channel:
        ticket = RestoreStub(channel).OpenBulk(BulkRequest(scan=ScanRequest(with_data=True)), timeout=10)
    assert ticket.tls
    with pytest.raises(BulkUnavailable):
        open_stream("127.0.0.1", ticket.port, ticket.ticket, "shard 0")


def test_an_mtls_bulk_port_wants_the_client_certificate(pki, started, records, monkeypatch):
    shard = started(**mtls(pki))
    opened = streams_opened(shard, monkeypatch)
    credentials = client(pki, "client")
    with Shards([shard.address], credentials=credentials,
                tls=TlsOptions(pki.client.cert, pki.client.key, pki.ca)) as shards:
        scanned = list(shards.scan_apart(ScanRequest(with_data=True)))
        assert shards.bulk_status() == {}
    assert pairs(scanned) == expected(records) and len(opened) == 1
    # TLS files without the certificate: the bulk port refuses the handshake,
    # and the client reads through gRPC (whose credentials carry one).
    with Shards([shard.address], credentials=credentials, tls=TlsOptions(ca=pki.ca)) as shards:
        scanned = list(shards.scan_apart(ScanRequest(with_data=True)))
        why = shards.bulk_status()
    assert pairs(scanned) == expected(records) and len(opened) == 1   # no second stream
    assert list(why) == [0] and "did not serve" in why[0]


# A TLS handshake that hangs must not hold a shard's stop for its timeout:
# wrapping moves the socket's descriptor, so stop() has to reach the wrapped one.
def test_stop_cuts_off_a_client_stuck_in_the_tls_handshake(pki, monkeypatch):
    monkeypatch.setattr(bulk_server, "HELLO_TIMEOUT_S", 60.0)   # long enough to tell
    server = BulkServer("127.0.0.1", 0, ServedCounters(),
                        tls=server_ssl_context(TlsOptions(pki.server.cert, pki.server.key)))
    with socket.create_connection(("127.0.0.1", server.port)):   # TCP only: no ClientHello
        wait_until(lambda: server.connections == 1)
        assert stop_within(server, 20)
        assert server.connections == 0


def test_a_busy_bulk_port_is_tried_again_later(started, records, monkeypatch):
    # Busy is a passing state: one refusal must not send a long-lived reader
    # (nfsj export) through gRPC for the rest of its life.
    shard = started(held=records)
    bulk = shard.server.bulk
    monkeypatch.setattr(bulk, "_max_streams", 0)   # every ticket refused as busy
    with Shards([shard.address]) as shards:
        assert pairs(shards.scan_apart(ScanRequest(with_data=True))) == expected(records)
        assert "bulk streams already" in shards.bulk_status()[0]
        monkeypatch.setattr(bulk, "_max_streams", 16)
        assert pairs(shards.scan_apart(ScanRequest(with_data=True))) == expected(records)
        assert shards.bulk_status()[0]   # not yet: it waits BULK_RETRY_S
        shards._bulk_retry_at[0] = 0.0   # its retry time has come
        opened = streams_opened(shard, monkeypatch)
        assert pairs(shards.scan_apart(ScanRequest(with_data=True))) == expected(records)
        assert shards.bulk_status() == {} and len(opened) == 1
