"""Addresses the user gives: HOST:PORT, and the NAS as HOST[:NFSPORT[:MOUNTPORT]]:/EXPORT.

Parsing is pure; `resolve_backend` alone does I/O, asking the NAS's
portmapper for the MOUNT port when the user did not give it. Every bad
address is a `ConfigError` whose message says what to type instead.
"""

from __future__ import annotations

import re
import secrets
import socket

from nfsproxy.daemon.config import ConfigError
from nfsproxy.relay.session import BackendAddress
from nfsproxy.wire.mount import MOUNT_PROGRAM, MOUNT_V3
from nfsproxy.wire.portmap import IPPROTO_TCP, PMAP_PORT, PMAP_PROG, PMAP_VERS, Mapping, PmapProc
from nfsproxy.wire.rpc import (NEED_DATA, RpcCall, RpcMessageReader, RpcReply, decode_body, encode_call,
                               frame_rpc_message, parse_message)
from nfsproxy.wire.xdr import U32

__all__ = ["parse_hostport", "parse_backend", "resolve_backend", "getport"]

_BACKEND = re.compile(r"^(?P<host>\[[^\]]+\]|[^:/]+)(?::(?P<nfs>\d+))?(?::(?P<mount>\d+))?:(?P<export>/.*)$")


def parse_hostport(text: str, default_port: int | None = None) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = text, ""
    if not port:
        if default_port is None:
            raise ConfigError(f"{text!r}: expected HOST:PORT")
        return host or "0.0.0.0", default_port
    if not port.isdigit() or not 0 <= int(port) < 65536:
        raise ConfigError(f"{text!r}: the port must be a number from 0 to 65535")
    return host.strip("[]") or "0.0.0.0", int(port)


def parse_backend(text: str) -> tuple[str, int | None, int | None, str]:
    """Parse `HOST[:NFSPORT[:MOUNTPORT]]:/EXPORT`."""
    m = _BACKEND.match(text)
    if not m:
        raise ConfigError(f"--backend {text!r}: expected HOST[:NFSPORT[:MOUNTPORT]]:/EXPORT, "
                          "e.g. nas.example:/export or 127.0.0.1:2049:20048:/export")
    nfs = int(m["nfs"]) if m["nfs"] else None
    mount = int(m["mount"]) if m["mount"] else None
    return m["host"].strip("[]"), nfs, mount, m["export"]


def getport(host: str, prog: int, vers: int, timeout_s: float = 5.0) -> int:
    """Ask the NAS's portmapper where `prog`/`vers` listens over TCP (0: nowhere)."""
    call = encode_call(RpcCall(secrets.randbits(32), PMAP_PROG, PMAP_VERS, PmapProc.GETPORT))
    Mapping.xdr.pack(call, Mapping(prog, vers, IPPROTO_TCP, 0))
    message = call.getvalue()
    reader = RpcMessageReader(1 << 16)
    with socket.create_connection((host, PMAP_PORT), timeout=timeout_s) as sock:
        sock.sendall(frame_rpc_message(len(message)) + message)
        while (reply := reader.next_message()) is NEED_DATA:
            chunk = sock.recv(4096)
            if not chunk:
                raise ConnectionError("portmapper closed the connection")
            reader.receive(chunk)
    header, body = parse_message(reply)
    if not isinstance(header, RpcReply) or not header.success:
        raise ConnectionError(f"portmapper refused GETPORT: {header}")
    return decode_body(U32, body)


def resolve_backend(text: str) -> BackendAddress:
    """Turn `--backend` into ports, asking the NAS's portmapper for what is not given."""
    host, nfs, mount, export = parse_backend(text)
    if mount is None:
        try:
            mount = getport(host, MOUNT_PROGRAM, MOUNT_V3)
        except (OSError, ConnectionError) as e:
            raise ConfigError(f"cannot ask {host}'s portmapper for the MOUNT port ({e}); "
                              f"give it as {host}:NFSPORT:MOUNTPORT:{export}") from None
        if not mount:
            raise ConfigError(f"{host} has no MOUNT v3 over TCP registered; give the port explicitly")
    return BackendAddress(host, nfs or 2049, mount, export)
