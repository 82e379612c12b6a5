"""`nfsj restore`, `nfsj cat`, `nfsj history`: the past, through the Restore API.

Each command parses its flags and calls one method of
``recoveryd.restore.RestoreClient``; everything it knows about cuts,
baselines and shards lives there. Errors are one line (``nfsj: error: ...``,
exit 2). Every command that delivers content prints the cut it delivered,
with its proof, to stderr at the end.

Restore targets: a local directory (``--to``, ``_deliver``) or back onto the
NAS (``--to-nas``, ``_push`` over nfsproxy/nas/pushback.py). A new target is one
more option and one more branch beside them.
"""

from __future__ import annotations

import json
import os
import sys
from typing import TYPE_CHECKING, Optional

import typer

from recoveryd.timespec import FORMS

from . import app, fail
from .progress import Progress
from .security_options import (client_security, tls_ca_option, tls_cert_option, tls_key_option,
                               token_file_option)

if TYPE_CHECKING:  # the restore engine (gRPC, protobuf) loads when a command runs
    from logstore.stamp import Stamp
    from recoveryd.restore import Cut, RestoreClient, RestoreSummary

    from nfsproxy.nas.pushback import PushResult

_SHARD_HELP = ("A recovery shard's HOST:PORT; repeat for each shard, in the same order as the "
               "proxy's --shard. Required.")
_TIME_HELP = f"TIME: {FORMS}."
_NO_SHARDS = ("no shards given: pass --shard HOST:PORT once per recovery shard, in the same order "
              "as the proxy's --shard")


def _time(text: str, option: str) -> Stamp:
    from recoveryd.timespec import parse_time

    try:
        return parse_time(text)
    except ValueError as e:
        fail(f"{option}: {e}")


def _client(shard: list[str] | None, tls_ca: str | None = None, tls_cert: str | None = None,
            tls_key: str | None = None, token_file: str | None = None) -> RestoreClient:
    from recoveryd.restore import RestoreClient, RestoreError, Shards

    if not shard:
        fail(_NO_SHARDS)
    credentials, token = client_security(tls_ca, tls_cert, tls_key, token_file)
    try:
        return RestoreClient(Shards(shard, credentials=credentials, token=token))
    except RestoreError as e:
        fail(str(e))


def _warn(text: str) -> None:
    """A warning that must not be missed: bold red on a terminal."""
    tty = sys.stderr.isatty() and os.environ.get("TERM") != "dumb"
    typer.echo(f"\x1b[1;31m{text}\x1b[0m" if tty else text, err=True)


def _report_cut(cut: Cut) -> None:
    if cut.unproven:
        _warn("WARNING: UNPROVEN CUT: this moment lies at or after the consistent point; records "
              "stamped before it may not have reached every shard yet, so the result may miss "
              "changes.")
    typer.echo(f"delivered {cut}", err=True)


@app.command("restore")
def restore_command(
    at: str = typer.Option(..., "--at", metavar="TIME", help=f"The moment to restore. {_TIME_HELP}"),
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
    shard: Optional[list[str]] = typer.Option(None, "--shard", metavar="HOST:PORT", help=_SHARD_HELP),
    tls_ca: Optional[str] = tls_ca_option(),
    tls_cert: Optional[str] = tls_cert_option(),
    tls_key: Optional[str] = tls_key_option(),
    token_file: Optional[str] = token_file_option(),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress (bar or lines) on stderr."),
) -> None:
    """Rebuild the export (or a subtree) as it was at TIME into a local directory."""
    from recoveryd.restore import RestoreError, check_dest

    from nfsproxy.nas.pushback import nas_target

    moment = _time(at, "--at")
    if to is not None and not to_nas:
        try:
            check_dest(to)  # before asking any shard anything
        except RestoreError as e:
            fail(str(e))
    client = _client(shard, tls_ca, tls_cert, tls_key, token_file)
    try:
        nas_address = nas_target(to=to, to_nas=to_nas, nas=nas, into=into)
        cut = client.cut(moment, allow_unproven=allow_unproven)
        if cut.unproven:
            _warn("WARNING: --allow-unproven: restoring an UNPROVEN cut")
        summary = (_push(client, cut, nas_address, path, into, quiet) if to_nas
                   else _deliver(client, cut, to, path, quiet))
    except RestoreError as e:
        fail(str(e))
    finally:
        client.close()
        client.shards.close()
    typer.echo(str(summary), err=True)
    _report_cut(cut)


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
        result = push_to_nas(client, cut, nfs, path=path, into=into, progress=lambda n, b, rel: shown.update(
            done_bytes=b, done_items=n, current=rel[-40:]))
        shown.finish(f"{shown.done_items} objects ({shown.done_bytes} bytes) onto {nas}")
    result.nas = str(nas)
    return result


@app.command("cat")
def cat_command(
    path: str = typer.Argument(..., metavar="PATH", help="The file, as a path from the export root."),
    at: str = typer.Option(..., "--at", metavar="TIME", help=f"The moment. {_TIME_HELP}"),
    allow_unproven: bool = typer.Option(False, "--allow-unproven",
                                        help="Allow a moment at or after the consistent point."),
    shard: Optional[list[str]] = typer.Option(None, "--shard", metavar="HOST:PORT", help=_SHARD_HELP),
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

    moment = _time(at, "--at")
    client = _client(shard, tls_ca, tls_cert, tls_key, token_file)
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
        # records) its type, for when the directory's records did not say.
        own = Tree(baseline_id=cut.baseline.baseline_id)
        with tempfile.TemporaryFile(prefix="nfsj-cat-") as tmp:
            client.write_file(cut, fh, tmp.fileno(), seen=own.apply)
            node = own.node(fh)
            if node is None or node.type != REG:
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
    _report_cut(cut)


@app.command("history")
def history_command(
    path: str = typer.Argument(..., metavar="PATH", help="A path from the export root."),
    since: Optional[str] = typer.Option(None, "--since", metavar="TIME",
                                        help="Only records stamped after TIME."),
    until: Optional[str] = typer.Option(None, "--until", metavar="TIME",
                                        help="Only records up to TIME (default: now); PATH is looked up "
                                             f"as it was then. {_TIME_HELP}"),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per line."),
    shard: Optional[list[str]] = typer.Option(None, "--shard", metavar="HOST:PORT", help=_SHARD_HELP),
    tls_ca: Optional[str] = tls_ca_option(),
    tls_cert: Optional[str] = tls_cert_option(),
    tls_key: Optional[str] = tls_key_option(),
    token_file: Optional[str] = token_file_option(),
) -> None:
    """What changed PATH, when, from which client and uid."""
    from recoveryd.restore import RestoreError

    lo = _time(since, "--since") if since else None
    hi = _time(until, "--until") if until else None
    client = _client(shard, tls_ca, tls_cert, tls_key, token_file)
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
