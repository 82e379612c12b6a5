"""Micro-benchmark of the ONC-RPC + NFSv3 codecs (a script, not a test).

    python3 tests/bench/bench_codec.py [--seconds 1.0]

For each message kind it measures, side by side in one run:

* struct baseline - the least a relay must do: `struct.unpack_from` of the
  header fields (xid, msg type, prog, vers, proc; for WRITE also the file
  handle length, offset and count; for a reply the accept and NFS status),
  skipping the credential and verifier by their lengths. No objects built.
* header-only - what the proxy does on its hot path: `parse_message` and,
  for WRITE, `decode_body(WRITE3args)` (the payload stays a memoryview).
* full round trip - decode (`parse_message` + `decode_body`) and re-encode
  (`encode_call`/`encode_reply` + the XDR codec, joined to bytes).

Each case runs for about `--seconds` (after a calibration), split in 5
slices; the median slice is reported. The ratio column is per-call time
divided by the struct baseline's for the same message: how many times more
CPU the codec spends. There are no thresholds; every number names its
machine (benchmarks stay apart from the test run).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import struct
import sys
import time
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from nfsproxy.wire.nfs3 import (GETATTR3res, GETATTR3resok, NFS_PROGRAM, NFS_V3, Fattr3,  # noqa: E402
                           Ftype3, Nfsstat3, Nfstime3, Proc3, Specdata3, StableHow, WRITE3args)
from nfsproxy.wire.rpc import (AuthSys, RpcCall, RpcReply, decode_body, encode_call,  # noqa: E402
                          encode_reply, parse_message)

SLICES = 5
_HDR = struct.Struct(">IIIIII")      # xid, mtype, rpcvers, prog, vers, proc
_U32 = struct.Struct(">I")
_U32X2 = struct.Struct(">II")
_QI = struct.Struct(">QI")           # WRITE offset, count
_REPLY = struct.Struct(">III")       # xid, mtype, reply_stat


# --------------------------------------------------------------------------
# Messages


def write_call(payload_bytes: int) -> bytes:
    call = RpcCall(0x12345678, NFS_PROGRAM, NFS_V3, Proc3.WRITE,
                   auth_sys=AuthSys(1700000000, "client-host.example", 1000, 1000, (1000, 27)))
    args = WRITE3args(os.urandom(28), 123 * 4096, payload_bytes, StableHow.UNSTABLE,
                      os.urandom(payload_bytes))
    p = encode_call(call)
    WRITE3args.xdr.pack(p, args)
    return p.getvalue()


def getattr_reply() -> bytes:
    t = Nfstime3(1700000000, 123456789)
    attrs = Fattr3(Ftype3.NF3REG, 0o644, 1, 1000, 1000, 1 << 30, 1 << 30, Specdata3(0, 0),
                   0xABCDEF, 987654321, t, t, t)
    p = encode_reply(RpcReply(0x12345678))
    GETATTR3res.xdr.pack(p, GETATTR3res(Nfsstat3.NFS3_OK, GETATTR3resok(attrs)))
    return p.getvalue()


# --------------------------------------------------------------------------
# What is measured


def struct_write_header(msg: bytes) -> tuple:
    xid, mtype, rpcvers, prog, vers, proc = _HDR.unpack_from(msg, 0)
    pos = 24
    for _ in range(2):                               # credential, verifier
        _flavor, n = _U32X2.unpack_from(msg, pos)
        pos += 8 + n + (-n % 4)
    fh_len = _U32.unpack_from(msg, pos)[0]
    pos += 4 + fh_len + (-fh_len % 4)
    offset, count = _QI.unpack_from(msg, pos)
    return xid, mtype, prog, vers, proc, fh_len, offset, count


def struct_reply_header(msg: bytes) -> tuple:
    xid, mtype, reply_stat = _REPLY.unpack_from(msg, 0)
    _flavor, n = _U32X2.unpack_from(msg, 12)
    pos = 20 + n + (-n % 4)
    accept_stat, status = _U32X2.unpack_from(msg, pos)
    return xid, mtype, reply_stat, accept_stat, status


def header_only_write(msg: bytes):
    header, body = parse_message(msg)
    return header, decode_body(WRITE3args.xdr, body)


def header_only_reply(msg: bytes):
    return parse_message(msg)


def round_trip_write(msg: bytes) -> bytes:
    header, body = parse_message(msg)
    args = decode_body(WRITE3args.xdr, body)
    p = encode_call(header)
    WRITE3args.xdr.pack(p, args)
    return p.getvalue()


def round_trip_getattr(msg: bytes) -> bytes:
    header, body = parse_message(msg)
    res = decode_body(GETATTR3res.xdr, body)
    p = encode_reply(header)
    GETATTR3res.xdr.pack(p, res)
    return p.getvalue()


# --------------------------------------------------------------------------
# Timing


def _run(fn: Callable[[bytes], object], msg: bytes, n: int) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        fn(msg)
    return time.perf_counter() - t0


def measure(fn: Callable[[bytes], object], msg: bytes, seconds: float) -> float:
    """Median seconds per call over SLICES slices totalling about `seconds`."""
    n = 1
    while (elapsed := _run(fn, msg, n)) < 0.05:     # calibrate (also warms up)
        n *= 2
    per_slice = max(1, int(n * (seconds / SLICES) / elapsed))
    return statistics.median(_run(fn, msg, per_slice) / per_slice for _ in range(SLICES))


def machine() -> str:
    cpu = platform.processor() or "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"machine: {platform.platform()}; cpu: {cpu}; cpu count: {os.cpu_count()}; "
            f"python: {platform.python_implementation()} {platform.python_version()}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=1.0, help="time per case (default 1.0)")
    opts = ap.parse_args()
    print(machine())
    print(f"time per case: ~{opts.seconds:g} s (median of {SLICES} slices), "
          f"ratio = µs/call ÷ struct baseline µs/call for the same message")

    messages = {
        "WRITE call, 4 KiB": write_call(4096),
        "WRITE call, 1 MiB": write_call(1 << 20),
        "GETATTR reply (fattr3)": getattr_reply(),
    }
    # The round trip must be exact before its speed means anything.
    for name, msg in messages.items():
        trip = round_trip_getattr if name.startswith("GETATTR") else round_trip_write
        assert trip(msg) == msg, f"{name}: re-encoding differs from the input"
    w = struct_write_header(messages["WRITE call, 4 KiB"])
    assert w[2:5] == (NFS_PROGRAM, NFS_V3, Proc3.WRITE) and w[5:] == (28, 123 * 4096, 4096)

    cases = []
    for name in ("WRITE call, 4 KiB", "WRITE call, 1 MiB"):
        cases.append((name, [("struct baseline", struct_write_header),
                             ("header-only (parse_message + WRITE3args)", header_only_write),
                             ("decode + re-encode", round_trip_write)]))
    cases.append(("GETATTR reply (fattr3)", [("struct baseline", struct_reply_header),
                                             ("header-only (parse_message)", header_only_reply),
                                             ("decode + re-encode", round_trip_getattr)]))

    print()
    print(f"{'message':<24} {'bytes':>8}  {'what':<42} {'calls/s':>12} {'µs/call':>9} {'ratio':>7}")
    for name, variants in cases:
        msg = messages[name]
        base = None
        for what, fn in variants:
            per_call = measure(fn, msg, opts.seconds)
            base = base or per_call
            print(f"{name:<24} {len(msg):>8}  {what:<42} {1 / per_call:>12,.0f} "
                  f"{per_call * 1e6:>9.2f} {per_call / base:>6.1f}x")
        print()


if __name__ == "__main__":
    main()
