"""`nfsj cat`: one file's bytes as they were at a moment, to stdout."""

from __future__ import annotations

import os
import sys
from typing import Optional

import typer

from . import app, fail
from .past import SHARD_HELP, TIME_HELP, parse_time_option, report_cut, restore_client
from .security_options import tls_ca_option, tls_cert_option, tls_key_option, token_file_option


@app.command("cat")
def cat_command(
    path: str = typer.Argument(..., metavar="PATH", help="The file, as a path from the export root."),
    at: str = typer.Option(..., "--at", metavar="TIME", help=f"The moment. {TIME_HELP}"),
    allow_unproven: bool = typer.Option(False, "--allow-unproven",
                                        help="Allow a moment at or after the consistent point."),
    shard: Optional[list[str]] = typer.Option(None, "--shard", metavar="HOST:PORT", help=SHARD_HELP),
    tls_ca: Optional[str] = tls_ca_option(),
    tls_cert: Optional[str] = tls_cert_option(),
    tls_key: Optional[str] = tls_key_option(),
    token_file: Optional[str] = token_file_option(),
) -> None:
    """Write one file's bytes as they were at TIME to stdout."""
    import shutil
    import tempfile

    from recoveryd.restore import RestoreError
    from recoveryd.tree import REG, TYPE_NAMES, Tree, show_name

    moment = parse_time_option(at, "--at")
    client = restore_client(shard, tls_ca, tls_cert, tls_key, token_file)
    try:
        cut = client.cut(moment, allow_unproven=allow_unproven)
        found = client.resolve(cut, os.fsencode(path))  # the bytes the user typed, not assumed UTF-8
        if found is None:
            fail(f"{show_name(path)} did not exist at {at}")
        fh, kind = found

        def not_regular(kind: int) -> None:
            fail(f"{show_name(path)} was not a regular file at {at} (it was a {TYPE_NAMES.get(kind, kind)})")

        if kind and kind != REG:
            not_regular(kind)
        # One pass over the file's records: its bytes, and (from the same
        # records) its type, when the directory's records did not say.
        own = None if kind else Tree(baseline_id=cut.baseline.baseline_id)
        with tempfile.TemporaryFile(prefix="nfsj-cat-") as tmp:
            client.write_file(cut, fh, tmp.fileno(), seen=own.apply if own is not None else None)
            node = own.node(fh) if own is not None else None
            if own is not None and (node is None or node.type != REG):
                not_regular(node.type if node is not None else 0)
            tmp.seek(0)
            try:
                shutil.copyfileobj(tmp, sys.stdout.buffer, 1 << 20)
                sys.stdout.buffer.flush()
            except BrokenPipeError:
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
                raise typer.Exit(1) from None
    except RestoreError as e:
        fail(str(e))
    finally:
        client.close()
        client.shards.close()
    report_cut(cut)
