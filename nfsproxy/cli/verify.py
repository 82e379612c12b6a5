"""`nfsj verify`: the journal at the consistent point against the live NAS.

Parses its flags and calls ``nfsproxy.nas.verify.verify``. Exit 0: everything
compared is equal; 1: differences (each printed); 2: it could not verify
(``nfsj: error: ...``). With ``--log DIR`` the result is also written to the
proxy's LOG directory, where the proxy's /metrics exports it.
"""

from __future__ import annotations

import json
import random
from typing import Optional

import typer

from . import app, fail
from .progress import Progress
from .security_options import (client_security, tls_ca_option, tls_cert_option, tls_key_option,
                               token_file_option)

#: nfsproxy.nas.verify.WAIT_S, repeated so that `--help` does not import the verifier.
WAIT_S = 120.0


def _nas_address(nas: str | None, log: str | None) -> str:
    from recoveryd.status import ProxyStatusError, read_proxy_status
    if nas:
        return nas
    if log:
        try:
            backend = read_proxy_status(log).get("backend")
        except ProxyStatusError as e:
            fail(f"--log {log}: {e}")
        if backend:
            return backend
        fail(f"the proxy status in {log} does not name its NAS (an older proxy?): pass --nas")
    fail("name the NAS: --nas HOST[:NFSPORT[:MOUNTPORT]]:/EXPORT (as the proxy's --backend), "
         "or --log DIR (the proxy's LOG directory)")


def _show(progress: Progress):
    """The verifier's progress callback, drawn by the commands' one progress display."""
    def update(p) -> None:  # p: nfsproxy.nas.verify.VerifyProgress
        progress.update(phase=p.phase, done_items=p.done, total_items=p.total,
                        done_bytes=p.bytes_done, current=p.current[-40:])
    return update


@app.command("verify")
def verify_command(
    path: Optional[str] = typer.Option(None, "--path", metavar="SUBTREE",
                                       help="Verify only this path of the export (default: all of it)."),
    sample: Optional[int] = typer.Option(None, "--sample", metavar="N", min=1,
                                         help="Check N regular files picked at random (cheap enough to run often)."),
    nas: Optional[str] = typer.Option(None, "--nas", metavar="HOST[:NFSPORT[:MOUNTPORT]]:/EXPORT",
                                      help="The NAS, as the proxy's --backend (read directly, not through the proxy)."),
    log: Optional[str] = typer.Option(None, "--log", metavar="DIR",
                                      help="The proxy's LOG directory: the NAS is read from its status "
                                           "unless --nas is given, and the result is written there for "
                                           "the proxy's /metrics."),
    shard: Optional[list[str]] = typer.Option(None, "--shard", metavar="HOST:PORT",
                                              help="A recovery shard's HOST:PORT; repeat for each shard, in "
                                                   "the same order as the proxy's --shard. Required."),
    wait: float = typer.Option(WAIT_S, "--wait", metavar="SECONDS", min=0.0,
                               help="How long to wait for the consistent point to pass the end of the NAS read."),
    as_json: bool = typer.Option(False, "--json", help="The report as one JSON object."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress."),
    tls_ca: Optional[str] = tls_ca_option(),
    tls_cert: Optional[str] = tls_cert_option(),
    tls_key: Optional[str] = tls_key_option(),
    token_file: Optional[str] = token_file_option(),
) -> None:
    """Compare the journal at the consistent point with the live NAS; exit 1 on any difference."""
    from recoveryd.restore import RestoreClient, RestoreError, Shards
    from recoveryd.security import TlsOptions
    from recoveryd.verify import write_result

    from nfsproxy.nas.client import ClientError
    from nfsproxy.daemon.address import resolve_backend
    from nfsproxy.daemon.config import ConfigError
    from nfsproxy.nas.pushback import connect_nas
    from nfsproxy.nas.verify import verify
    if not shard:
        fail("no shards given: pass --shard HOST:PORT once per recovery shard, in the same order "
             "as the proxy's --shard")
    try:
        address = resolve_backend(_nas_address(nas, log))
    except ConfigError as e:
        fail(str(e).replace("--backend", "--nas"))
    credentials, token = client_security(tls_ca, tls_cert, tls_key, token_file)
    try:
        shards = Shards(shard, credentials=credentials, token=token,
                        tls=TlsOptions(cert=tls_cert, key=tls_key, ca=tls_ca))
    except RestoreError as e:
        fail(str(e))
    client = RestoreClient(shards)
    try:
        with Progress("verify", quiet=quiet) as progress, connect_nas(address) as nfs:
            report = verify(client, nfs, path=path, sample=sample, rng=random.Random(),
                            progress=_show(progress), wait_s=wait)
            progress.finish(report.summary())
    except RestoreError as e:
        fail(str(e))
    except (ClientError, OSError) as e:
        fail(f"the NAS at {address}: {e}")
    finally:
        client.close()
        shards.close()
    if as_json:
        typer.echo(json.dumps(report.to_dict(), sort_keys=True))
    else:
        for difference in report.differences:
            typer.echo(f"DIFFERS {difference}")
        typer.echo(report.summary())
        typer.echo(f"compared with the {report.cut}", err=True)
    if log:
        try:
            write_result(log, report.result())
        except OSError as e:
            fail(f"cannot write the result into {log} (for the proxy's metrics): {e.strerror}")
    if not report.ok:
        raise typer.Exit(1)
