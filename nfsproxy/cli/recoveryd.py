"""`nfsj recoveryd`: one recovery shard (gRPC Journal ingest into RocksDB)."""

from __future__ import annotations

import typer

from recoveryd.shard import ServeError, ShardOptions, StoreError, run_shard

from ..proxyd import parse_hostport
from . import app, fail, run_event_loop, setup_logging


@app.command()
def recoveryd(
    listen: str = typer.Option(..., help="HOST:PORT to serve the Journal gRPC service on (port 0: any free port)."),
    data: str = typer.Option(..., "--data", help="The shard's data directory (created if missing)."),
    shard_id: int = typer.Option(..., "--shard-id", min=0, max=0xFFFF_FFFF, help="This shard's id; the data directory remembers it."),
    metrics: str = typer.Option("127.0.0.1:0", help="HOST:PORT for Prometheus /metrics (0: a free port, printed at start)."),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Receive journal records from proxies and keep them in RocksDB."""
    setup_logging(verbose)
    host, port = parse_hostport(listen)
    try:
        run_event_loop(run_shard(ShardOptions(host, port, data, shard_id, metrics=metrics)))
    except (StoreError, ServeError) as e:
        fail(str(e))
