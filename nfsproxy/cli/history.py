"""`nfsj history`: what changed a path, when, from which client and uid."""

from __future__ import annotations

import json
import os
from typing import Optional

import typer

from . import app, fail
from .past import SHARD_HELP, TIME_HELP, parse_time_option, restore_client
from .security_options import tls_ca_option, tls_cert_option, tls_key_option, token_file_option


@app.command("history")
def history_command(
    path: str = typer.Argument(..., metavar="PATH", help="A path from the export root."),
    since: Optional[str] = typer.Option(None, "--since", metavar="TIME",
                                        help="Only records stamped after TIME."),
    until: Optional[str] = typer.Option(None, "--until", metavar="TIME",
                                        help="Only records up to TIME (default: now); PATH is looked up "
                                             f"as it was then. {TIME_HELP}"),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per line."),
    shard: Optional[list[str]] = typer.Option(None, "--shard", metavar="HOST:PORT", help=SHARD_HELP),
    tls_ca: Optional[str] = tls_ca_option(),
    tls_cert: Optional[str] = tls_cert_option(),
    tls_key: Optional[str] = tls_key_option(),
    token_file: Optional[str] = token_file_option(),
) -> None:
    """What changed PATH, when, from which client and uid."""
    from recoveryd.restore import RestoreError

    lo = parse_time_option(since, "--since") if since else None
    hi = parse_time_option(until, "--until") if until else None
    client = restore_client(shard, tls_ca, tls_cert, tls_key, token_file)
    try:
        entries = client.history(os.fsencode(path), lo, hi)
    except RestoreError as e:
        fail(str(e))
    finally:
        client.close()
        client.shards.close()
    if as_json:
        for entry in entries:
            typer.echo(json.dumps(entry.to_dict(), sort_keys=True))
        return
    rows = [("TIME", "STAMP", "OP", "CLIENT", "UID", "STATUS", "DETAILS")]
    for e in entries:
        # No client: a baseline read or a learned name, not a call (no uid either).
        rows.append((e.time, str(e.stamp), e.op, e.client or "-", str(e.uid) if e.client else "-",
                     "ok" if e.ok else e.status_name, e.details))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for r in rows:
        typer.echo("  ".join([c.ljust(w) for c, w in zip(r, widths)] + [r[-1]]).rstrip())
