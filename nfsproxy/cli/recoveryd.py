"""`nfsj recoveryd`: one recovery shard (gRPC Journal ingest into RocksDB)."""

from __future__ import annotations

from typing import Optional

import typer

from . import app, fail, run_event_loop, setup_logging
from .security_options import (ingest_tokens_option, member_option, restore_identity_option,
                               restore_tokens_option, server_tls, tls_ca_option, tls_cert_option,
                               tls_key_option)


@app.command()
def recoveryd(
    listen: str = typer.Option(..., help="HOST:PORT to serve the Journal gRPC service on (port 0: any free port)."),
    data: str = typer.Option(..., "--data", help="The shard's data directory (created if missing)."),
    shard_id: int = typer.Option(..., "--shard-id", min=0, max=0xFFFF_FFFF, help="This shard's id; the data directory remembers it."),
    metrics: str = typer.Option("127.0.0.1:0", help="HOST:PORT for Prometheus /metrics (0: a free port, printed at start)."),
    tls_cert: Optional[str] = tls_cert_option(server=True),
    tls_key: Optional[str] = tls_key_option(server=True),
    tls_ca: Optional[str] = tls_ca_option(server=True),
    restore_tokens: Optional[str] = restore_tokens_option(),
    restore_identity: Optional[list[str]] = restore_identity_option(),
    ingest_tokens: Optional[str] = ingest_tokens_option(),
    member: Optional[list[int]] = member_option(),
    bulk_port: int = typer.Option(0, "--bulk-port", min=0, max=65535, help="Port (on the --listen host) restores stream large reads from, past gRPC's copies; 0: any free port, which clients learn from the shard. Open it where clients reach the shard, or restores fall back to gRPC, which costs both ends more CPU."),
    no_bulk: bool = typer.Option(False, "--no-bulk", help="Serve no bulk port: restores read through gRPC alone."),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Receive journal records from proxies and keep them in RocksDB."""
    from recoveryd.shard import SecurityError, ServeError, ShardOptions, StoreError, run_shard

    from nfsproxy.daemon.address import parse_hostport

    setup_logging(verbose)
    host, port = parse_hostport(listen)
    opts = ShardOptions(host, port, data, shard_id, metrics=metrics,
                        tls=server_tls(tls_ca, tls_cert, tls_key), restore_tokens=restore_tokens,
                        restore_identities=tuple(restore_identity or ()),
                        ingest_tokens=ingest_tokens, members=tuple(member or ()),
                        bulk_port=None if no_bulk else bulk_port)
    try:
        run_event_loop(run_shard(opts))
    except (StoreError, ServeError, SecurityError) as e:
        fail(str(e))
