"""`nfsj retire`: drop a stream that will never send again from the shards' frontier."""

from __future__ import annotations

from typing import Optional

import typer

from . import app, fail
from .security_options import (client_security, tls_ca_option, tls_cert_option, tls_key_option,
                               token_file_option)


@app.command("retire")
def retire_command(
    shard: list[str] = typer.Option(..., "--shard", metavar="HOST:PORT",
                                    help="Every recovery shard (repeat for each)."),
    log: Optional[str] = typer.Option(None, "--log", metavar="DIR",
                                      help="The old LOG directory of a stopped proxy: its stream "
                                           "and last seq are read from it."),
    stream: Optional[str] = typer.Option(None, "--stream", metavar="NODE_ID/LOG_ID",
                                         help="The stream, as `nfsj status` shows it (when the "
                                              "LOG is gone); needs --through-seq."),
    through_seq: Optional[int] = typer.Option(None, "--through-seq", min=0,
                                              help="With --stream: the last seq that LOG ever had."),
    tls_ca: Optional[str] = tls_ca_option(),
    tls_cert: Optional[str] = tls_cert_option(),
    tls_key: Optional[str] = tls_key_option(),
    token_file: Optional[str] = token_file_option(),
) -> None:
    """Retire an old proxy LOG's stream once every shard holds all of it."""
    from recoveryd.retire import RetireError, log_end, parse_stream, retire

    if (log is None) == (stream is None):
        fail("name the stream once: --log DIR (a stopped proxy's old LOG) or --stream NODE_ID/LOG_ID")
    if stream is not None and through_seq is None:
        fail("--stream needs --through-seq N (the last seq that LOG ever had)")
    credentials, token = client_security(tls_ca, tls_cert, tls_key, token_file)
    try:
        if log is not None:
            key, last = log_end(log)
        else:
            key, last = parse_stream(stream), through_seq
        outcomes = retire(list(shard), key, last, credentials=credentials, token=token)
    except RetireError as e:
        fail(str(e))
    for o in outcomes:
        typer.echo(f"shard {o.shard_id} ({o.address}): retired {key} (held through seq "
                   f"{o.held_seq}, {o.records} records)")
    typer.echo(f"retired {key} through seq {last} on {len(outcomes)} shard(s)")
