"""Seed corpora for the data plane's fuzz targets: real messages, in each target's input layout.

    python3 make_seeds.py [OUT]     (default: ./seeds; then `cargo fuzz run TARGET seeds/TARGET`)

NFSv3 calls and replies are built with the project's own codecs (nfsproxy.wire,
as tests/unit/test_capture.py builds them), so the seeds are what clients and
the NAS send; LOG segments come from tests/vectors.
"""

from __future__ import annotations

import pathlib
import struct
import sys

HERE = pathlib.Path(__file__).resolve().parent
REPO = HERE.parents[2]
sys.path.insert(0, str(REPO))

from nfsproxy.nas.client import SERVER_TIME, nfstime3, sattr3  # noqa: E402
from nfsproxy.wire import nfs3, nfsacl, xdr  # noqa: E402
from nfsproxy.wire.nfs3 import (CreateMode, Diropargs3, Fattr3, Ftype3, NFS_PROGRAM, Nfsstat3,  # noqa: E402
                                Nfstime3, Proc3, Specdata3, StableHow, WccAttr, WccData)
from nfsproxy.wire.programs import lookup as procedure_of  # noqa: E402
from nfsproxy.wire.rpc import AuthSys, RpcCall, RpcReply, encode_call, encode_reply  # noqa: E402

CRED = AuthSys(1700000000, b"client-a", 1000, 100, (100, 4, 27))
DIR, DIR2, FILE, FILE2 = b"\x01dir", b"\x02dir2", b"\x10file-handle", b"\x11file2"
ATTR = Fattr3(Ftype3.NF3REG, 0o644, 1, 1000, 100, 12, 4096, Specdata3(0, 0), 0xF5, 77,
              nfstime3(1), nfstime3(2), nfstime3(3))
WCC = WccData(WccAttr(1, Nfstime3(1, 2), Nfstime3(3, 4)), ATTR)


def frame(message: bytes) -> bytes:
    return struct.pack(">I", 0x8000_0000 | len(message)) + message


def call(xid: int, proc: int, args, prog: int = NFS_PROGRAM, vers: int = 3) -> bytes:
    body = xdr.encode(procedure_of(prog, vers, proc).args, args) if args is not None else b""
    return encode_call(RpcCall(xid, prog, vers, int(proc), auth_sys=CRED)).getvalue() + body


def raw_call(xid: int, prog: int, vers: int, proc: int, body: bytes) -> bytes:
    return encode_call(RpcCall(xid, prog, vers, proc, auth_sys=CRED)).getvalue() + body


def reply(xid: int, proc: int, res, prog: int = NFS_PROGRAM, vers: int = 3) -> bytes:
    return encode_reply(RpcReply(xid)).getvalue() + xdr.encode(procedure_of(prog, vers, proc).res, res)


def exchanges() -> list[tuple[bytes, bytes]]:
    """(call, reply) pairs for every procedure the relay watches, the reply under NAS XID 1."""
    ok = Nfsstat3.NFS3_OK
    fsinfo_ok = struct.pack(">II", 0, 0) + struct.pack(">7I", 1 << 20, 1 << 20, 4096, 1 << 20, 1 << 20,
                                                        4096, 1 << 16) + struct.pack(">QIII", 1 << 40, 0, 1, 0x1b)
    pairs = [
        (Proc3.SETATTR, nfs3.SETATTR3args(FILE, sattr3(mode=0o600, size=3, mtime=SERVER_TIME), nfstime3(9)),
         nfs3.SETATTR3res(ok, nfs3.SETATTR3resok(WCC))),
        (Proc3.WRITE, nfs3.WRITE3args(FILE, 4096, 5, StableHow.FILE_SYNC, b"hello"),
         nfs3.WRITE3res(ok, nfs3.WRITE3resok(WCC, 5, StableHow.FILE_SYNC, b"verf0001"))),
        (Proc3.WRITE, nfs3.WRITE3args(FILE, 0, 3, StableHow.UNSTABLE, b"abc"),
         nfs3.WRITE3res(Nfsstat3.NFS3ERR_NOSPC, nfs3.WRITE3resfail(WCC))),
        (Proc3.CREATE, nfs3.CREATE3args(Diropargs3(DIR, "new.txt"), nfs3.Createhow3(CreateMode.GUARDED,
                                                                                  sattr3(mode=0o644))),
         nfs3.CREATE3res(ok, nfs3.CREATE3resok(FILE, ATTR, WCC))),
        (Proc3.CREATE, nfs3.CREATE3args(Diropargs3(DIR, "excl"), nfs3.Createhow3(CreateMode.EXCLUSIVE,
                                                                               b"12345678")),
         nfs3.CREATE3res(ok, nfs3.CREATE3resok(None, None, WCC))),
        (Proc3.MKDIR, nfs3.MKDIR3args(Diropargs3(DIR, "sub"), sattr3(mode=0o750)),
         nfs3.MKDIR3res(ok, nfs3.MKDIR3resok(FILE2, ATTR, WCC))),
        (Proc3.SYMLINK, nfs3.SYMLINK3args(Diropargs3(DIR, "ln"), nfs3.Symlinkdata3(sattr3(), "target")),
         nfs3.SYMLINK3res(ok, nfs3.SYMLINK3resok(FILE2, ATTR, WCC))),
        (Proc3.MKNOD, nfs3.MKNOD3args(Diropargs3(DIR, "dev"), nfs3.Mknoddata3(
            Ftype3.NF3CHR, nfs3.Devicedata3(sattr3(mode=0o600), Specdata3(1, 3)))),
         nfs3.MKNOD3res(ok, nfs3.MKNOD3resok(FILE2, ATTR, WCC))),
        (Proc3.REMOVE, nfs3.REMOVE3args(Diropargs3(DIR, "new.txt")), nfs3.REMOVE3res(ok, nfs3.REMOVE3resok(WCC))),
        (Proc3.RMDIR, nfs3.RMDIR3args(Diropargs3(DIR, "sub")), nfs3.RMDIR3res(ok, nfs3.RMDIR3resok(WCC))),
        (Proc3.RENAME, nfs3.RENAME3args(Diropargs3(DIR, "old"), Diropargs3(DIR2, "new")),
         nfs3.RENAME3res(ok, nfs3.RENAME3resok(WCC, WCC))),
        (Proc3.LINK, nfs3.LINK3args(FILE, Diropargs3(DIR2, "hard")), nfs3.LINK3res(ok, nfs3.LINK3resok(ATTR, WCC))),
        (Proc3.COMMIT, nfs3.COMMIT3args(FILE, 0, 4096), nfs3.COMMIT3res(ok, nfs3.COMMIT3resok(WCC, b"verf0001"))),
        (Proc3.LOOKUP, nfs3.LOOKUP3args(Diropargs3(DIR, "a")), nfs3.LOOKUP3res(ok, nfs3.LOOKUP3resok(FILE, ATTR, ATTR))),
        (Proc3.READDIRPLUS, nfs3.READDIRPLUS3args(DIR, 0, b"\0" * 8, 4096, 65536),
         nfs3.READDIRPLUS3res(ok, nfs3.READDIRPLUS3resok(ATTR, b"\0" * 8, nfs3.Dirlistplus3((
             nfs3.Entryplus3(77, "a", 1, ATTR, FILE), nfs3.Entryplus3(78, "b", 2, None, FILE2)), True)))),
        (Proc3.GETATTR, nfs3.GETATTR3args(FILE), nfs3.GETATTR3res(ok, nfs3.GETATTR3resok(ATTR))),
    ]
    out = [(call(7, proc, args), reply(1, proc, res)) for proc, args, res in pairs]
    out.append((call(7, Proc3.FSINFO, nfs3.FSINFO3args(FILE)), encode_reply(RpcReply(1)).getvalue() + fsinfo_ok))
    acl = nfsacl.Acl(2, (nfsacl.Aclent(1, 1000, 7), nfsacl.Aclent(4, 0, 5)))
    setacl = nfsacl.SETACL3args(FILE, 0x5, acl, acl)
    out.append((call(7, 2, setacl, prog=nfsacl.NFSACL_PROGRAM),
                reply(1, 2, nfsacl.SETACL3res(ok, nfsacl.SETACL3resok(ATTR)), prog=nfsacl.NFSACL_PROGRAM)))
    return out


def client_only() -> list[bytes]:
    """Calls the relay answers or refuses itself."""
    getport = struct.pack(">4I", NFS_PROGRAM, 3, 6, 0)
    return [
        raw_call(1, 100000, 2, 3, getport), raw_call(2, 100000, 2, 4, b""), raw_call(3, 100000, 3, 3, getport),
        raw_call(4, NFS_PROGRAM, 4, 0, b""), raw_call(5, 100005, 3, 1, xdr.encode(xdr.String(1024), "/export")
                                                     if hasattr(xdr, "String") else struct.pack(">I", 7) + b"/export\0"),
        raw_call(6, NFS_PROGRAM, 3, 0, b""),
    ]


def log_images() -> list[tuple[int, bytes]]:
    out = []
    for seg in sorted((REPO / "tests" / "vectors").glob("*/log/*.seg")):
        out.append((int(seg.stem), seg.read_bytes()))
    return out


def spare_image() -> tuple[bytes, int]:
    """A segment starting at seq 9 written over a spare: frames 9 and 10 of
    uniform size over the older frames 1-6; and where frame 10 ends."""
    from logstore.segment import SEGMENT_HEADER, encode_frame
    older = SEGMENT_HEADER + b"".join(encode_frame(q, bytes([0x30 + q]) * 20) for q in range(1, 7))
    newer = SEGMENT_HEADER + b"".join(encode_frame(q, b"new".ljust(20, b".")) for q in (9, 10))
    return newer + older[len(newer):], len(newer)


def main() -> None:
    root = pathlib.Path(sys.argv[1]) if len(sys.argv) > 1 else HERE / "seeds"
    dirs = {t: root / t for t in ("client_calls", "nas_replies", "log_segment", "log_open",
                                  "shipped_frames")}
    for d in dirs.values():
        d.mkdir(parents=True, exist_ok=True)
    pairs = exchanges()
    for i, (c, r) in enumerate(pairs):
        calls = frame(c)
        (dirs["client_calls"] / f"call-{i:02}").write_bytes(b"\xff" + calls)
        (dirs["nas_replies"] / f"pair-{i:02}").write_bytes(b"\xff" + struct.pack(">H", len(calls)) + calls + frame(r))
    stream = b"".join(frame(c) for c, _ in pairs) + b"".join(frame(m) for m in client_only())
    (dirs["client_calls"] / "all-in-small-reads").write_bytes(b"\x07" + stream)
    for i, m in enumerate(client_only()):
        (dirs["client_calls"] / f"answered-{i}").write_bytes(b"\xff" + frame(m))
    # Every call at once, answered out of order (NAS XIDs 1..n in call order).
    calls = b"".join(frame(c) for c, _ in pairs)
    replies = b"".join(frame(struct.pack(">I", n + 1) + r[4:]) for n, (_, r) in reversed(list(enumerate(pairs))))
    (dirs["nas_replies"] / "all-out-of-order").write_bytes(b"\x0f" + struct.pack(">H", len(calls)) + calls + replies)
    for i, (base, image) in enumerate(log_images()):
        (dirs["log_segment"] / f"vector-{i}").write_bytes(bytes([min(base - 1, 0xfe)]) + image)
        for flags in (0, 4, 5):
            offset = min(len(image), 0xffff)
            (dirs["log_open"] / f"vector-{i}-{flags}").write_bytes(bytes([flags]) + struct.pack(">H", offset) + image)
        if image[:8] == b"NJLOGSEG" and len(image) >= 64:  # version 2: frames from byte 16
            # after_seq = base - 1, the node of the first frame's stamp, then the frames.
            node = image[16 + 28:16 + 32]
            (dirs["shipped_frames"] / f"vector-{i}").write_bytes(bytes([min(base - 1, 0xff)]) + node + image[16:])
    # A spare written over (LOG from seq 9): a sync mark, a close mark, at the end of frame 10.
    image, end = spare_image()
    for flags in (16 | 4, 16 | 8 | 4):
        (dirs["log_open"] / f"spare-{flags}").write_bytes(bytes([flags]) + struct.pack(">H", end) + image)
    print(f"seeds written under {root}: " + ", ".join(f"{t} {len(list(d.iterdir()))}" for t, d in dirs.items()))


if __name__ == "__main__":
    main()
