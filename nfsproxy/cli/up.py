"""`nfsj up`: proxy, LOG and N shards (and a demo NAS) as one group."""

from __future__ import annotations

import typer

from . import app, setup_logging


@app.command()
def up(
    backend: str = typer.Option(None, help="The NAS: HOST[:NFSPORT[:MOUNTPORT]]:/EXPORT. "
                                "Default: start a local nfs-ganesha demo NAS."),
    listen: str = typer.Option("0.0.0.0:2049", help="HOST:PORT clients mount."),
    data: str = typer.Option("nfsj-data", help="Directory for the LOG, the shards and logs."),
    shards: int = typer.Option(2, min=1, help="Number of recovery shards."),
    shard_base_port: int = typer.Option(7400, help="Shard k listens on 127.0.0.1:BASE+k."),
    durability: str = typer.Option("sync", metavar="sync|async|strict",
                                   help="The proxy's --durability: sync (RPO 0), strict or async."),
    data_plane: str = typer.Option("native", metavar="native|python",
                                   help="The proxy's relay: native (Rust) or python."),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Run the whole stack on this machine until Ctrl-C."""
    from nfsproxy.cli.proxy import DATA_PLANES, DURABILITIES, _choice
    from nfsproxy.daemon.up import UpOptions, run_up

    setup_logging(verbose)
    run_up(UpOptions(backend, listen, data, shards, shard_base_port,
                     _choice(durability, DURABILITIES, "--durability"),
                     _choice(data_plane, DATA_PLANES, "--data-plane")))
