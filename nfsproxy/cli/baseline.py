"""`nfsj baseline`: ask a running proxy to read the whole export into its LOG."""

from __future__ import annotations

import typer

from . import app, fail
from .progress import Progress
from .security_options import client_security, tls_ca_option, tls_cert_option, tls_key_option


def _control_address(proxy: str | None, log: str | None) -> str:
    from recoveryd.status import read_proxy_status

    if proxy:
        return proxy
    if log:
        try:
            address = read_proxy_status(log).get("control")
        except (OSError, ValueError) as e:
            fail(f"cannot read the proxy status in {log} ({e}); is `nfsj proxy --log {log}` running?")
        if address:
            return address
    fail("name the proxy: --proxy HOST:PORT (its control address) or --log DIR (its LOG directory)")


def _control_tls(log: str) -> bool:
    from recoveryd.status import read_proxy_status

    try:
        return bool(read_proxy_status(log).get("control_tls"))
    except (OSError, ValueError):
        return False


@app.command()
def baseline(
    proxy: str = typer.Option(None, help="The proxy's control address HOST:PORT."),
    log: str = typer.Option(None, help="The proxy's LOG directory (its control address is read from there)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress (bar or lines) on stderr."),
    tls_ca: str = tls_ca_option(),
    tls_cert: str = tls_cert_option(),
    tls_key: str = tls_key_option(),
) -> None:
    """Read the whole export into the journal; the earliest restorable moment is the end of the first one."""
    import grpc

    from logstore.pb import journal_pb2 as pb
    from logstore.pb import journal_pb2_grpc as pb_grpc
    from recoveryd.security import open_channel

    address = _control_address(proxy, log)
    credentials, _ = client_security(tls_ca, tls_cert, tls_key)
    if credentials is None and log and _control_tls(log):
        fail("the proxy serves its control API over TLS: pass --tls-ca, and --tls-cert/--tls-key "
             "(it wants a client certificate when it has a CA)")
    last = None
    with open_channel(address, credentials=credentials) as channel, \
            Progress("baseline", items="files", quiet=quiet) as shown:
        stub = pb_grpc.ControlStub(channel)
        try:
            for update in stub.Baseline(pb.BaselineRequest()):
                if update.error:
                    fail(update.error)
                if not update.baseline_id and update.current:
                    shown.note(update.current)  # why it has not begun yet
                    continue
                last = update
                shown.update(done_bytes=update.bytes, done_items=update.files,
                             current=update.current[-40:])
        except grpc.RpcError as e:
            fail(f"proxy at {address}: {e.details() or e.code().name}")
        if last is not None and last.done:
            shown.finish(f"{last.files} files ({last.bytes} bytes), {last.dirs} directories read")
    if last is None or not last.done:
        fail("the proxy ended the baseline without finishing it; see its log")
    from logstore.stamp import Stamp

    start, end = Stamp.from_bytes(last.baseline_id), Stamp.from_bytes(last.end)
    typer.echo(f"baseline {start} done: {last.files} files, {last.bytes} bytes, {last.dirs} directories; "
               f"restorable from {end} ({end.iso()})")
