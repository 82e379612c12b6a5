"""`nfsj export`: a read-only NFSv3 export of the tree as it was at TIME."""

from __future__ import annotations

from typing import Optional

import typer

from recoveryd.timespec import FORMS

from . import app, fail, run_event_loop, setup_logging
from .security_options import (client_security, tls_ca_option, tls_cert_option, tls_key_option,
                               token_file_option)


@app.command("export")
def export_command(
    at: str = typer.Option(..., "--at", metavar="TIME", help=f"The moment to serve. TIME: {FORMS}."),
    listen: str = typer.Option("0.0.0.0:2049", "--listen", metavar="HOST:PORT",
                               help="Where to serve NFSv3, MOUNT v3 and portmap GETPORT (port 0: any free port)."),
    shard: Optional[list[str]] = typer.Option(
        None, "--shard", metavar="HOST:PORT",
        help="A recovery shard's HOST:PORT; repeat for each shard, in the same order as the proxy's --shard."),
    allow_unproven: bool = typer.Option(
        False, "--allow-unproven",
        help="Serve a moment at or after the consistent point (records may be missing)."),
    tls_ca: Optional[str] = tls_ca_option(),
    tls_cert: Optional[str] = tls_cert_option(),
    tls_key: Optional[str] = tls_key_option(),
    token_file: Optional[str] = token_file_option(),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Serve the export as it was at TIME, read-only, over NFSv3 (nothing is written out first).

    NFS and MOUNT share the one port. With the Linux client:

    \b
    mount -t nfs -o ro,vers=3,proto=tcp,port=PORT,mountport=PORT,nolock HOST:/ DIR
    (nolock: there is no lock manager; nothing here can change).
    """
    from recoveryd.restore import RestoreError
    from recoveryd.security import TlsOptions
    from recoveryd.timespec import parse_time

    from nfsproxy.export.server import ExportOptions, run_export
    from nfsproxy.daemon.address import parse_hostport

    setup_logging(verbose)
    if not shard:
        fail("no shards given: pass --shard HOST:PORT once per recovery shard, in the same order "
             "as the proxy's --shard")
    try:
        parse_time(at)
    except ValueError as e:
        fail(f"--at: {e}")
    host, port = parse_hostport(listen, 2049)
    credentials, token = client_security(tls_ca, tls_cert, tls_key, token_file)
    try:
        run_event_loop(run_export(ExportOptions(at, host, port, list(shard), allow_unproven,
                                                credentials=credentials, token=token,
                                                tls=TlsOptions(cert=tls_cert, key=tls_key, ca=tls_ca))))
    except RestoreError as e:
        fail(str(e))
    except OSError as e:
        fail(f"cannot serve on {listen} ({e.strerror or e}); pick a free port with --listen")
