"""The relay's sans-IO decisions: where each call goes (`nfsproxy.relay.routing`), the
replies the proxy makes itself, and the record format the relay hands the LOG
(`logstore.record.record_parts` / `parse_record`).
"""

from __future__ import annotations

import pytest

from logstore.record import Attr, Op, Record, parse_record, record_parts, record_stamp
from logstore.stamp import Stamp
from nfsproxy.wire import xdr
from nfsproxy.wire.mount import MOUNT_PROGRAM
from nfsproxy.wire.nfs3 import NFS_PROGRAM
from nfsproxy.wire.portmap import (IPPROTO_TCP, IPPROTO_UDP, PMAP_PROG, PMAPLIST, Mapping, PmapProc)
from nfsproxy.relay.routing import Route, answer_portmap, reject, route
from nfsproxy.wire.portmap import Rpcb
from nfsproxy.wire.rpc import (AcceptStat, AuthSys, RejectStat, ReplyStat, RpcCall, RpcDecodeError,
                          RpcReply, decode_body, encode_call, parse_message)

NLM_PROGRAM = 100021
NSM_PROGRAM = 100024
NFSACL_PROGRAM = 100227
PROXY_PORT = 20490
CRED = AuthSys(1, "client", 0, 0, ())


def call(prog: int, vers: int, proc: int = 0, *, xid: int = 0x5EED, rpcvers: int = 2) -> RpcCall:
    return RpcCall(xid, prog, vers, proc, auth_sys=CRED, rpcvers=rpcvers)


def parsed(reply_bytes: bytes) -> tuple[RpcReply, memoryview]:
    header, body = parse_message(reply_bytes)
    assert isinstance(header, RpcReply)
    return header, body


# --------------------------------------------------------------------------
# route()


@pytest.mark.parametrize("prog, vers, expected", [
    (NFS_PROGRAM, 3, Route.NFS),
    (NFS_PROGRAM, 2, Route.REJECT),
    (NFS_PROGRAM, 4, Route.REJECT),
    (NFS_PROGRAM, 0, Route.REJECT),
    (MOUNT_PROGRAM, 3, Route.MOUNT),
    (MOUNT_PROGRAM, 1, Route.MOUNT),
    (MOUNT_PROGRAM, 2, Route.MOUNT),  # the NAS's MOUNT answers for the versions it has
    (MOUNT_PROGRAM, 99, Route.MOUNT),
    (PMAP_PROG, 2, Route.PORTMAP),
    (PMAP_PROG, 3, Route.PORTMAP),  # rpcbind v3/v4 GETADDR: the NAS's NLM callbacks ask it
    (PMAP_PROG, 4, Route.PORTMAP),
    (PMAP_PROG, 5, Route.REJECT),
    (NFSACL_PROGRAM, 3, Route.NFS),  # not journaled: the NAS gives its own answer
    (NLM_PROGRAM, 4, Route.NLM),
    (NLM_PROGRAM, 1, Route.NLM),
    (NSM_PROGRAM, 1, Route.NSM),
    (0x20000000, 1, Route.NFS),
])
def test_route_by_program_and_version(prog: int, vers: int, expected: Route):
    assert route(call(prog, vers)) is expected


@pytest.mark.parametrize("rpcvers", [0, 1, 3, 0xFFFFFFFF])
@pytest.mark.parametrize("prog", [NFS_PROGRAM, MOUNT_PROGRAM, PMAP_PROG, NLM_PROGRAM])
def test_any_other_rpc_version_is_rejected(prog: int, rpcvers: int):
    assert route(call(prog, 3, rpcvers=rpcvers)) is Route.REJECT


def test_route_does_not_depend_on_the_procedure():
    for proc in (0, 1, 7, 21, 22, 1000):
        assert route(call(NFS_PROGRAM, 3, proc)) is Route.NFS
        assert route(call(NFS_PROGRAM, 4, proc)) is Route.REJECT


# --------------------------------------------------------------------------
# reject()


@pytest.mark.parametrize("vers", [2, 4])
def test_other_nfs_versions_get_prog_mismatch_3_3(vers: int):
    header, body = parsed(reject(call(NFS_PROGRAM, vers, 1, xid=77)))
    assert header.xid == 77
    assert header.reply_stat is ReplyStat.MSG_ACCEPTED
    assert header.accept_stat is AcceptStat.PROG_MISMATCH
    assert header.mismatch == (3, 3)
    assert bytes(body) == b""


@pytest.mark.parametrize("vers", [1, 5])
def test_other_rpcbind_versions_get_prog_mismatch_2_4(vers: int):
    header, _ = parsed(reject(call(PMAP_PROG, vers, 3, xid=78)))
    assert (header.xid, header.accept_stat, header.mismatch) == (78, AcceptStat.PROG_MISMATCH, (2, 4))


@pytest.mark.parametrize("prog", [NFS_PROGRAM, PMAP_PROG, MOUNT_PROGRAM])
def test_wrong_rpc_version_gets_rpc_mismatch_2_2(prog: int):
    header, body = parsed(reject(call(prog, 3, xid=79, rpcvers=3)))
    assert header.xid == 79
    assert header.reply_stat is ReplyStat.MSG_DENIED
    assert header.reject_stat is RejectStat.RPC_MISMATCH
    assert header.mismatch == (2, 2)
    assert bytes(body) == b""


# --------------------------------------------------------------------------
# answer_portmap()


def portmap(proc: PmapProc, args=None, codec=None, *, xid: int = 0xCAFE, raw: bytes | None = None):
    header = call(PMAP_PROG, 2, int(proc), xid=xid)
    if raw is None:
        raw = xdr.encode(codec, args) if codec is not None else b""
    message = encode_call(header).getvalue() + raw
    c, body = parse_message(message)
    return parsed(answer_portmap(c, body, PROXY_PORT))


def getport(prog: int, vers: int, prot: int = IPPROTO_TCP) -> int:
    header, body = portmap(PmapProc.GETPORT, Mapping(prog, vers, prot, 0), Mapping.xdr)
    assert header.success and header.xid == 0xCAFE
    return decode_body(xdr.U32, body)


@pytest.mark.parametrize("prog, vers", [
    (NFS_PROGRAM, 3), (MOUNT_PROGRAM, 3), (MOUNT_PROGRAM, 1), (PMAP_PROG, 2), (NFSACL_PROGRAM, 3),
    (NLM_PROGRAM, 4), (NLM_PROGRAM, 3), (NLM_PROGRAM, 1), (NSM_PROGRAM, 1)])
def test_getport_points_what_we_serve_at_the_proxy(prog: int, vers: int):
    assert getport(prog, vers) == PROXY_PORT


def test_getport_points_status_monitors_at_the_proxy_over_udp_too():
    assert getport(NSM_PROGRAM, 1, IPPROTO_UDP) == PROXY_PORT


@pytest.mark.parametrize("prog, vers, prot", [
    (NFS_PROGRAM, 3, IPPROTO_UDP),  # TCP only
    (MOUNT_PROGRAM, 3, IPPROTO_UDP),
    (NFS_PROGRAM, 4, IPPROTO_TCP),
    (NFS_PROGRAM, 2, IPPROTO_TCP),
    (NLM_PROGRAM, 4, IPPROTO_UDP),
    (NLM_PROGRAM, 2, IPPROTO_TCP),
    (NSM_PROGRAM, 2, IPPROTO_TCP),
    (NFSACL_PROGRAM, 3, IPPROTO_UDP),
    (NFSACL_PROGRAM, 2, IPPROTO_TCP),
])
def test_getport_for_anything_else_is_zero(prog: int, vers: int, prot: int):
    assert getport(prog, vers, prot) == 0


def test_portmap_null_answers_with_an_empty_success():
    header, body = portmap(PmapProc.NULL)
    assert header.success and bytes(body) == b""


def test_portmap_dump_lists_our_tcp_mappings():
    header, body = portmap(PmapProc.DUMP)
    assert header.success
    mappings = decode_body(PMAPLIST, body)
    assert {(m.prog, m.vers, m.prot, m.port) for m in mappings} == {
        *((PMAP_PROG, v, IPPROTO_TCP, PROXY_PORT) for v in (2, 3, 4)),
        (NFS_PROGRAM, 3, IPPROTO_TCP, PROXY_PORT),
        (MOUNT_PROGRAM, 1, IPPROTO_TCP, PROXY_PORT),
        (MOUNT_PROGRAM, 3, IPPROTO_TCP, PROXY_PORT),
        (NFSACL_PROGRAM, 3, IPPROTO_TCP, PROXY_PORT),
        *((NLM_PROGRAM, v, IPPROTO_TCP, PROXY_PORT) for v in (1, 3, 4)),
        (NSM_PROGRAM, 1, IPPROTO_TCP, PROXY_PORT),
        (NSM_PROGRAM, 1, IPPROTO_UDP, PROXY_PORT),  # SM_NOTIFY comes over UDP
    }


def rpcbind(vers: int, proc: int, args: bytes, host: str = "10.1.2.3") -> tuple[RpcReply, memoryview]:
    message = encode_call(call(PMAP_PROG, vers, proc, xid=0xB1D)).getvalue() + args
    c, body = parse_message(message)
    return parsed(answer_portmap(c, body, PROXY_PORT, host))


def rpcb_args(prog: int, vers: int, netid: bytes) -> bytes:
    return xdr.encode(Rpcb.xdr, Rpcb(prog, vers, netid, b"", b""))


@pytest.mark.parametrize("vers, proc", [(3, 3), (4, 3), (4, 9)])  # GETADDR, v4 GETVERSADDR
def test_rpcbind_getaddr_gives_the_proxy_as_the_caller_reached_it(vers: int, proc: int):
    header, body = rpcbind(vers, proc, rpcb_args(NLM_PROGRAM, 4, b"tcp"))
    assert header.success and header.xid == 0xB1D
    assert decode_body(xdr.String(), body) == b"10.1.2.3.%d.%d" % (PROXY_PORT >> 8, PROXY_PORT & 0xFF)
    _, body = rpcbind(vers, proc, rpcb_args(NSM_PROGRAM, 1, b"tcp"), host="::ffff:10.9.8.7")
    assert decode_body(xdr.String(), body).startswith(b"10.9.8.7.")


@pytest.mark.parametrize("prog, vers, netid", [
    (NLM_PROGRAM, 4, b"udp"), (NLM_PROGRAM, 2, b"tcp"), (0x20000000, 1, b"tcp"), (NSM_PROGRAM, 1, b"x")])
def test_rpcbind_getaddr_for_anything_else_is_empty(prog: int, vers: int, netid: bytes):
    header, body = rpcbind(4, 3, rpcb_args(prog, vers, netid))
    assert header.success and decode_body(xdr.String(), body) == b""


def test_rpcbind_malformed_arguments_raise_rpc_decode_error():
    with pytest.raises(RpcDecodeError):
        rpcbind(4, 3, b"\0" * 8)


@pytest.mark.parametrize("proc", [PmapProc.SET, PmapProc.UNSET])
def test_portmap_registrations_are_refused(proc: PmapProc):
    header, body = portmap(proc, Mapping(NFS_PROGRAM, 3, IPPROTO_TCP, 1), Mapping.xdr)
    assert header.success
    assert decode_body(xdr.BOOL, body) is False


@pytest.mark.parametrize("proc", [int(PmapProc.CALLIT), 6, 0xFFFF])
def test_other_portmap_procedures_are_unavailable(proc: int):
    message = encode_call(call(PMAP_PROG, 2, proc, xid=5)).getvalue()
    c, body = parse_message(message)
    header, _ = parsed(answer_portmap(c, body, PROXY_PORT))
    assert (header.xid, header.accept_stat) == (5, AcceptStat.PROC_UNAVAIL)


@pytest.mark.parametrize("proc, raw", [
    (PmapProc.GETPORT, b""),
    (PmapProc.GETPORT, b"\0" * 12),  # a mapping is four words
    (PmapProc.GETPORT, b"\0" * 20),  # trailing bytes
    (PmapProc.SET, b"\0" * 4),
    (PmapProc.NULL, b"\0" * 4),
])
def test_malformed_portmap_arguments_raise_rpc_decode_error(proc: PmapProc, raw: bytes):
    message = encode_call(call(PMAP_PROG, 2, int(proc))).getvalue() + raw
    c, body = parse_message(message)
    with pytest.raises(RpcDecodeError):
        answer_portmap(c, body, PROXY_PORT)


# --------------------------------------------------------------------------
# record_parts() / parse_record()


def full_record() -> Record:
    record = Record(stamp=Stamp(1_700_000_000_123_456_789, 7, 42).to_bytes(), op=Op.WRITE, ok=True,
                    status=0, client="10.0.0.5:871", uid=1000, gid=100, machine_name=b"host-a",
                    xid=0xDEADBEEF, fh=b"\x01\x02fh", offset=1 << 40, count=4096, stable=2,
                    reply_count=4096)
    record.gids.extend([100, 4, 27])
    record.attr.CopyFrom(Attr(type=1, mode=0o644, size=(1 << 40) + 4096, mtime_ns=-5))
    return record


@pytest.mark.parametrize("size", [1, 127, 128, 4096, 16383, 16384, (1 << 20) + 3])
def test_data_appended_without_copy_parses_back_as_record_data(size: int):
    record = full_record()
    buffer = bytearray((i * 31 + 7) & 0xFF for i in range(size + 10))
    data = memoryview(buffer)[5:5 + size]
    parts = record_parts(record, data)
    assert parts[-1] is data  # the caller's own view: nothing was copied
    assert b"".join(parts[:-1]) == record.SerializeToString() + b"\x8a\x02" + _varint(size)
    back = parse_record(b"".join(parts), seq=123)
    assert back.data == bytes(data)
    assert back.seq == 123
    back.ClearField("data")
    back.ClearField("seq")
    assert back == record
    assert record.data == b""  # the caller's record is not changed


def test_record_without_data_is_one_part():
    record = full_record()
    assert record_parts(record) == [record.SerializeToString()]
    assert record_parts(record, b"") == [record.SerializeToString()]
    assert record_parts(record, memoryview(b"")) == [record.SerializeToString()]
    assert parse_record(record_parts(record)[0]) == record


def test_record_with_data_set_and_a_payload_is_refused():
    record = full_record()
    record.data = b"already"
    with pytest.raises(ValueError):
        record_parts(record, b"again")
    assert parse_record(b"".join(record_parts(record))).data == b"already"


def test_parse_record_accepts_a_memoryview_and_leaves_seq_alone_without_one():
    record = Record(op=Op.BIND, ok=True, fh=b"f", dir_fh=b"d", name=b"n", stamp=Stamp(5, 0, 1).to_bytes())
    payload = memoryview(b"".join(record_parts(record, memoryview(b"xyz"))))
    back = parse_record(payload)
    assert back.seq == 0
    assert (back.op, back.fh, back.dir_fh, back.name, back.data) == (Op.BIND, b"f", b"d", b"n", b"xyz")
    assert record_stamp(back) == Stamp(5, 0, 1)


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)
