"""`nfsj restore`: a whole tree (or a path in it) as it was at a moment.

Restore targets: a local directory (``--to``, ``_deliver``) or back onto the
NAS (``--to-nas``, ``_push`` over nfsproxy/nas/pushback.py). A new target is one
more option and one more branch beside them.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Optional

import typer

from . import app, fail
from .past import SHARD_HELP, TIME_HELP, parse_time_option, report_cut, restore_client, warn
from .progress import Progress
from .security_options import tls_ca_option, tls_cert_option, tls_key_option, token_file_option

if TYPE_CHECKING:  # the restore engine (gRPC, protobuf) loads when a command runs
    from recoveryd.restore import Cut, RestoreClient, RestoreSummary

    from nfsproxy.nas.pushback import PushResult


@app.command("restore")
def restore_command(
    at: str = typer.Option(..., "--at", metavar="TIME", help=f"The moment to restore. {TIME_HELP}"),
    to: Optional[str] = typer.Option(None, "--to", metavar="DIR",
                                     help="Where to write the tree: a new or empty directory (never overwritten)."),
    to_nas: bool = typer.Option(False, "--to-nas", help="Write the tree back onto the NAS over NFS "
                                "(--nas), into --into SUBDIR or, without it, to its original path, "
                                "which must not exist (never overwritten)."),
    nas: Optional[str] = typer.Option(None, "--nas", metavar="HOST[:NFSPORT[:MOUNTPORT]]:/EXPORT",
                                      help="With --to-nas: the NAS, as the proxy's --backend."),
    into: Optional[str] = typer.Option(None, "--into", metavar="SUBDIR",
                                       help="With --to-nas: a new subdirectory of the export to write into."),
    path: Optional[str] = typer.Option(None, "--path", metavar="SUBTREE",
                                       help="Restore only this path of the export (default: all of it)."),
    allow_unproven: bool = typer.Option(
        False, "--allow-unproven",
        help="Restore a moment at or after the consistent point (records may be missing)."),
    shard: Optional[list[str]] = typer.Option(None, "--shard", metavar="HOST:PORT", help=SHARD_HELP),
    tls_ca: Optional[str] = tls_ca_option(),
    tls_cert: Optional[str] = tls_cert_option(),
    tls_key: Optional[str] = tls_key_option(),
    token_file: Optional[str] = token_file_option(),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress (bar or lines) on stderr."),
    bulk: bool = typer.Option(True, "--bulk/--no-bulk",
                              help="Read file contents from the shards' bulk ports (the default) "
                                   "or through gRPC alone (more CPU on both ends; for a network that blocks the ports)."),
) -> None:
    """Rebuild the export (or a subtree) as it was at TIME into a local directory."""
    from recoveryd.restore import RestoreError, check_dest

    from nfsproxy.nas.target import nas_target

    moment = parse_time_option(at, "--at")
    if to is not None and not to_nas:
        try:
            check_dest(to)  # before asking any shard anything
        except RestoreError as e:
            fail(str(e))
    client = restore_client(shard, tls_ca, tls_cert, tls_key, token_file, bulk=bulk)
    try:
        nas_address = nas_target(to=to, to_nas=to_nas, nas=nas, into=into)
        cut = client.cut(moment, allow_unproven=allow_unproven)
        if cut.unproven:
            warn("WARNING: --allow-unproven: restoring an UNPROVEN cut")
        summary = (_push(client, cut, nas_address, path, into, quiet) if to_nas
                   else _deliver(client, cut, to, path, quiet))
    except RestoreError as e:
        fail(str(e))
    finally:
        client.close()
        client.shards.close()
    typer.echo(str(summary), err=True)
    report_cut(cut)


def _deliver(client: RestoreClient, cut: Cut, to: str, path: str | None, quiet: bool) -> RestoreSummary:
    """Write the cut to its target. Extension point: `--to-nas` adds a branch here."""
    with Progress("restore", items="files", quiet=quiet) as shown:
        def progress(p) -> None:
            shown.update(done_bytes=p.bytes_done, total_bytes=max(p.bytes_hint, p.bytes_done),
                         done_items=p.files_done, total_items=p.files_total,
                         phase=p.phase if p.phase != "done" else None, current=p.current[-40:])

        summary = client.restore_to_dir(cut, to, path=None if path is None else os.fsencode(path),
                                        progress=progress)
        shown.finish(f"{summary.files} files ({summary.bytes} bytes), {summary.dirs} directories "
                     f"to {summary.dest}")
    return summary


def _push(client: RestoreClient, cut: Cut, nas, path: str | None, into: str | None,
          quiet: bool) -> PushResult:
    """--to-nas: write the cut back onto the NAS (nfsproxy/nas/pushback.py)."""
    from nfsproxy.nas.pushback import connect_nas, push_to_nas

    with Progress("push", items="objects", quiet=quiet) as shown, connect_nas(nas) as nfs:
        result = push_to_nas(client, cut, nfs, path=path, into=into, connect=lambda: connect_nas(nas),
                             progress=lambda n, b, rel: shown.update(done_bytes=b, done_items=n,
                                                                     current=rel[-40:]))
        shown.finish(f"{shown.done_items} objects ({shown.done_bytes} bytes) onto {nas}")
    result.nas = str(nas)
    return result
