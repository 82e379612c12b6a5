"""`nfsj proxy`: the journaling NFS proxy."""

from __future__ import annotations

from typing import Optional

import typer

from . import app, run_event_loop, setup_logging
from .security_options import (client_tls, ingest_token_file_option, tls_ca_option, tls_cert_option,
                               tls_key_option)


def _size(text: str | None) -> int | None:
    if text is None:
        return None
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
    t = text.strip().lower().removesuffix("ib").removesuffix("b")
    scale = units.get(t[-1:], 1)
    number = t[:-1] if t[-1:] in units else t
    if not number.isdigit():
        raise typer.BadParameter(f"{text!r} is not a size; write e.g. 512M or 20G")
    return int(number) * scale


#: nfsproxy.ship.retention.DEFAULT_LOG_RETAIN; the choices below are the values of
#: logstore.commit.Durability and nfsproxy.relay.journal.QuotaPolicy. Spelled here so
#: that --help loads neither the LOG nor the relay (a unit test keeps them equal).
DEFAULT_LOG_RETAIN = "1h"
DEFAULT_LOG_SPARES = 4  # nfsproxy.native.log.DEFAULT_SPARE_SEGMENTS
DURABILITIES = ("sync", "async", "strict")
QUOTA_POLICIES = ("block", "passthrough")
DATA_PLANES = ("native", "python")
DEFAULT_HEAL_DELAY_S = 60.0  # nfsproxy.daemon.heal.DEFAULT_HEAL_DELAY_S


def _choice(value: str, choices: tuple[str, ...], option: str) -> str:
    if value not in choices:
        raise typer.BadParameter(f"{value!r} is not one of {', '.join(choices)}", param_hint=option)
    return value


def data_plane_for(given: str | None, portmap: list[str]) -> str:
    """The relay a proxy runs: `--data-plane` if given, else the native one, but
    the Python one with `--portmap`, since only it relays NLM (locking)."""
    if given is None:
        return "python" if portmap else "native"
    plane = _choice(given, DATA_PLANES, "--data-plane")
    if plane == "native" and portmap:
        raise typer.BadParameter("the native relay does not relay NLM, which --portmap is for: "
                                 "use --data-plane python", param_hint="--data-plane")
    return plane


@app.command()
def proxy(
    listen: str = typer.Option("0.0.0.0:2049", help="HOST:PORT to serve NFSv3, MOUNT and portmap GETPORT on."),
    backend: str = typer.Option(..., help="The NAS: HOST[:NFSPORT[:MOUNTPORT]]:/EXPORT."),
    log: str = typer.Option(..., "--log", help="Directory of the LOG (created if missing)."),
    durability: str = typer.Option("sync", metavar="sync|async|strict",
                                   help="sync: reply after fsync (RPO 0; the native plane answers "
                                   "UNSTABLE writes at once, as NFS allows); strict: every reply after "
                                   "its record's fsync; async: reply at once."),
    segment_size: str = typer.Option("64M", help="LOG segment size."),
    quota: str = typer.Option(None, help="LOG disk quota, e.g. 20G (default: none)."),
    quota_policy: str = typer.Option("block", metavar="block|passthrough",
                                     help="Over quota: block replies, or passthrough unjournaled."),
    node_id: int = typer.Option(None, help="HLC node id (default: generated once and kept in the LOG dir)."),
    shard: list[str] = typer.Option([], "--shard", help="A recovery shard's HOST:PORT; repeat for each shard, "
                                    "in the same order everywhere (shard k = the k-th --shard)."),
    control: str = typer.Option("127.0.0.1:0", help="HOST:PORT of the control API (`nfsj baseline`); "
                                "0 picks a free port, printed at start and kept in LOG/status.json."),
    metrics: str = typer.Option("127.0.0.1:0", help="HOST:PORT for Prometheus /metrics (0: a free port, printed at start)."),
    log_retain: str = typer.Option(DEFAULT_LOG_RETAIN, help="Keep at least this much acked LOG: an age (1h), "
                                   "a size (10G), or both (1h,10G)."),
    log_spares: int = typer.Option(DEFAULT_LOG_SPARES, min=0, metavar="N",
                                   help="Trimmed LOG segments kept, while their pages are cached, to "
                                   "write new segments over instead of growing new files: cheaper "
                                   "LOG writes and fsyncs. 0: trimmed segments are deleted."),
    drain_timeout: float = typer.Option(30.0, metavar="SECONDS",
                                        help="How long a closed client's relayed mutations may wait for "
                                        "the NAS's replies; past it each is marked as a gap."),
    tls_ca: Optional[str] = tls_ca_option(),
    tls_cert: Optional[str] = tls_cert_option(
        help="This proxy's certificate (PEM): presented to the shards (mTLS) and used to serve the "
             "control API over TLS (which then requires client certificates signed by --tls-ca). "
             "Needs --tls-key."),
    tls_key: Optional[str] = tls_key_option(),
    ingest_token_file: Optional[str] = ingest_token_file_option(),
    portmap: list[str] = typer.Option([], "--portmap", metavar="HOST[:PORT]",
                                      help="Also answer portmap/rpcbind here (port 111 by default; repeat "
                                      "for more): clients' lock managers ask port 111 of the address they "
                                      "mounted for NLM, which the proxy relays to the NAS."),
    data_plane: Optional[str] = typer.Option(None, metavar="native|python",
                                             help="Which relay serves clients: the native one (Rust, on "
                                             "its own threads; the default) or the Python one (the "
                                             "default with --portmap: only it relays NLM)."),
    relay_threads: int = typer.Option(1, min=1, help="Threads of the native relay (client connections "
                                      "are spread over them)."),
    heal: bool = typer.Option(True, "--heal/--no-heal",
                              help="After any gap (an unclean stop, a lost reply, a LOG range trimmed "
                              "before a shard held it), run a baseline of its own so restores past the "
                              "gap are proven again. --no-heal: an operator runs `nfsj baseline`."),
    heal_delay: float = typer.Option(DEFAULT_HEAL_DELAY_S, min=0.0, metavar="SECONDS",
                                     help="How long after the latest gap that baseline starts (a "
                                     "burst of gaps gets one)."),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Relay NFS to the NAS and journal every mutation."""
    from logstore.commit import Durability

    from nfsproxy.relay.journal import QuotaPolicy
    from nfsproxy.daemon.proxyd import ProxyOptions, run_proxy
    from nfsproxy.daemon.address import parse_hostport
    from nfsproxy.ship.retention import parse_retention

    durability = Durability(_choice(durability, DURABILITIES, "--durability"))
    quota_policy = QuotaPolicy(_choice(quota_policy, QUOTA_POLICIES, "--quota-policy"))
    setup_logging(verbose)
    host, port = parse_hostport(listen, 2049)
    try:
        parse_retention(log_retain)
    except ValueError as e:
        raise typer.BadParameter(str(e), param_hint="--log-retain") from None
    opts = ProxyOptions(host, port, backend, log, durability, _size(segment_size), _size(quota),
                        quota_policy, node_id, shards=list(shard), log_retain=log_retain,
                        log_spares=log_spares,
                        control=control, metrics=metrics, tls=client_tls(tls_ca, tls_cert, tls_key),
                        ingest_token_file=ingest_token_file,
                        drain_timeout_s=drain_timeout, portmap=list(portmap),
                        data_plane=data_plane_for(data_plane, portmap),
                        relay_threads=relay_threads, heal=heal, heal_delay_s=heal_delay)
    run_event_loop(run_proxy(opts))
