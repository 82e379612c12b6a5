"""What `nfsj restore`, `cat` and `history` share: reaching the shards, reading a time, reporting a cut.

Each of those commands parses its flags and calls one method of
``recoveryd.restore.RestoreClient``; everything it knows about cuts,
baselines and shards lives there. Errors are one line (``nfsj: error: ...``,
exit 2). Every command that delivers content prints the cut it delivered,
with its proof, to stderr at the end (``report_cut``).
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

import typer

from recoveryd.timespec import FORMS

from . import fail
from .security_options import client_security

if TYPE_CHECKING:  # the restore engine (gRPC, protobuf) loads when a command runs
    from logstore.stamp import Stamp
    from recoveryd.restore import Cut, RestoreClient

__all__ = ["SHARD_HELP", "TIME_HELP", "parse_time_option", "restore_client", "report_cut", "warn"]

SHARD_HELP = ("A recovery shard's HOST:PORT; repeat for each shard, in the same order as the "
               "proxy's --shard. Required.")
TIME_HELP = f"TIME: {FORMS}."
_NO_SHARDS = ("no shards given: pass --shard HOST:PORT once per recovery shard, in the same order "
              "as the proxy's --shard")


def parse_time_option(text: str, option: str) -> Stamp:
    from recoveryd.timespec import parse_time

    try:
        return parse_time(text)
    except ValueError as e:
        fail(f"{option}: {e}")


def restore_client(shard: list[str] | None, tls_ca: str | None = None, tls_cert: str | None = None,
            tls_key: str | None = None, token_file: str | None = None, *,
            bulk: bool = True) -> RestoreClient:
    from recoveryd.heap import keep_freed_memory, quiet_collector
    from recoveryd.restore import RestoreClient, RestoreError, Shards
    from recoveryd.security import TlsOptions

    # A command reading the past moves megabyte messages through fresh
    # buffers and builds a tree of many small objects: keep freed memory for
    # the next message, and leave startup's objects out of the collector's walks.
    keep_freed_memory()
    quiet_collector(collect=False)
    if not shard:
        fail(_NO_SHARDS)
    credentials, token = client_security(tls_ca, tls_cert, tls_key, token_file)
    try:
        tls = TlsOptions(cert=tls_cert, key=tls_key, ca=tls_ca)   # the bulk port's TLS
        return RestoreClient(Shards(shard, credentials=credentials, token=token, tls=tls, bulk=bulk))
    except RestoreError as e:
        fail(str(e))


def warn(text: str) -> None:
    """A warning that must not be missed: bold red on a terminal."""
    tty = sys.stderr.isatty() and os.environ.get("TERM") != "dumb"
    typer.echo(f"\x1b[1;31m{text}\x1b[0m" if tty else text, err=True)


def report_cut(cut: Cut) -> None:
    if cut.unproven:
        warn("WARNING: UNPROVEN CUT: this moment lies at or after the consistent point; records "
              "stamped before it may not have reached every shard yet, so the result may miss "
              "changes.")
    typer.echo(f"delivered {cut}", err=True)
