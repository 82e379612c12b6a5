"""`nfsj status`: what the shards hold, what is proven, and how far behind they are."""

from __future__ import annotations

import json
from typing import Any, Optional

import typer

from . import app, fail, skip_teardown
from .security_options import (client_security, client_tls, tls_ca_option, tls_cert_option,
                               tls_key_option, token_file_option)

#: recoveryd.status.DEFAULT_TIMEOUT_S, spelled here so that --help loads no gRPC.
DEFAULT_TIMEOUT_S = 3.0


@app.command("status")
def status_command(
    shard: Optional[list[str]] = typer.Option(
        None, "--shard", metavar="HOST:PORT",
        help="A recovery shard to ask (repeat for each). Default: the shards in the proxy's status."),
    log: Optional[str] = typer.Option(
        None, "--log", metavar="DIR", help="A proxy's LOG directory: show its shipping status."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of tables."),
    timeout: float = typer.Option(DEFAULT_TIMEOUT_S, "--timeout", metavar="SECONDS",
                                  help="How long to wait for each shard."),
    tls_ca: Optional[str] = tls_ca_option(),
    tls_cert: Optional[str] = tls_cert_option(),
    tls_key: Optional[str] = tls_key_option(),
    token_file: Optional[str] = token_file_option(),
) -> None:
    """Show each shard's frontier, records and lag, and the consistent point.

    Exits 1 when a shard is down (the consistent point is then unknown).
    """
    from recoveryd.status import ProxyStatusError, fetch_status, overall, read_proxy_status

    if not shard and not log:
        fail("nothing to ask: pass --shard HOST:PORT (once per shard) and/or --log DIR (a proxy's LOG)")
    proxy_status = None
    if log:
        try:
            proxy_status = read_proxy_status(log)
        except ProxyStatusError as e:
            fail(str(e))
    addresses = list(shard or [])
    if not addresses and proxy_status:
        addresses = [s["address"] for s in proxy_status.get("shards") or [] if s.get("address")]
    credentials, token = client_security(tls_ca, tls_cert, tls_key, token_file)
    view = overall(fetch_status(addresses, timeout, credentials=credentials, token=token),
                   proxy_status)
    _probe_bulk(view, credentials, token, client_tls(tls_ca, tls_cert, tls_key))
    skip_teardown()  # the channels are closed: nothing is left to finish
    if as_json:
        typer.echo(json.dumps(view, indent=2, sort_keys=True))
    else:
        typer.echo(render(view))
    if view["shards_down"]:
        raise typer.Exit(1)


def _probe_bulk(view: dict[str, Any], credentials, token, tls) -> None:
    """Set each up shard's ``bulk`` ("" when its bulk port served a stream to
    this host, else why restores here would read it through gRPC; None when
    not asked: the shard is down, or refuses these credentials to restore),
    and warn of every shard whose port did not serve."""
    up = [s for s in view["shards"] if s["up"]]
    for s in view["shards"]:
        s["bulk"] = None
    if not up:
        return
    from concurrent.futures import ThreadPoolExecutor

    from recoveryd.restore.shards import Shards

    with Shards([s["address"] for s in up], credentials=credentials, token=token, tls=tls) as shards:
        with ThreadPoolExecutor(len(up)) as pool:
            found = list(pool.map(shards.probe_bulk, range(len(up))))
    for s, why in zip(up, found):
        s["bulk"] = why
        if why:
            view["warnings"].append(f"{s['address']}: restores from this host read file contents "
                                    f"through gRPC, with more CPU on both ends: {why}")


# -- human form ------------------------------------------------------------------


def render(view: dict[str, Any]) -> str:
    """The tables `nfsj status` prints."""
    lines = []
    point = view["consistent_point"]
    if point is not None:
        lines.append(f"consistent point: {point['stamp']}  {point['time']}")
        if view["consistent_point_reason"]:
            lines.append(f"  {view['consistent_point_reason']}")
    else:
        lines.append(f"consistent point: none ({view['consistent_point_reason']})")
    if view["shards"]:
        lines.append("")
        rows = [("SHARD", "ADDRESS", "STATE", "FRONTIER", "FRONTIER TIME", "AGE", "LAG",
                 "RECORDS", "BYTES", "GAPS", "BULK")]
        for s in view["shards"]:
            if not s["up"]:
                rows.append(("-", s["address"], "DOWN", "-", "-", "-", "-", "-", "-", "-", "-"))
                continue
            frontier = s["frontier"]
            rows.append((str(s["shard_id"]), s["address"], "up",
                         frontier["stamp"] if frontier else "-",
                         (frontier["time"] or "-") if frontier else "-",
                         _seconds(s["frontier_age_seconds"]), _seconds(s["lag_seconds"]),
                         str(s["records"]), _bytes(s["bytes"]), str(len(s["gaps"])),
                         _bulk_text(s.get("bulk"))))
        lines.extend(_table(rows))
        for s in view["shards"]:
            if not s["up"]:
                lines.append(f"  {s['address']}: {s['error']}")
    for gap in view.get("gaps") or []:
        healed = gap["healed_by"]
        state = (f"healed: proven again from the end of baseline {healed['stamp']}" if healed
                 else f"UNHEALED: cuts from {gap['from']['stamp']} on are unproven until a "
                      f"baseline started after {gap['through']['stamp']} ends")
        lines.append(f"gap in stream {gap['stream']} (LOG seqs {gap['after_seq']}..{gap['through_seq']}, "
                     f"{gap['cause']}): {gap['reason']}; {state}")
    for warning in view["warnings"]:
        lines.append(f"warning: {warning}")
    proxy = view["proxy"]
    if proxy:
        lines.append("")
        extra = "".join(f", {label} {value}" for label, value in (
            ("stable", proxy.get("stable")),
            ("data plane", proxy.get("data_plane")),
            ("gaps marked", sum((proxy.get("gaps_total") or {}).values()) or None),
            ("LOG size", _bytes(proxy["log_bytes"]) if isinstance(proxy.get("log_bytes"), int) else None),
        ) if value is not None)
        lines.append(
            f"proxy node {proxy.get('node_id')} LOG {proxy.get('log_id')}: last seq "
            f"{proxy.get('last_seq')}, synced {proxy.get('synced_seq')}, newest {proxy.get('newest')}"
            f"{extra} (status written {_seconds(proxy.get('age_seconds'))} ago)")
        heal = _heal_text(proxy.get("heal"))
        if heal:
            lines.append(heal)
        rows = [("SHIPPER", "CONNECTED", "DURABLE", "HELD", "FRONTIER", "LAG RECORDS", "LAG", "GAPS")]
        for s in proxy.get("shards") or []:
            rows.append((str(s.get("address")), "yes" if s.get("connected") else "NO",
                         str(s.get("acked_seq")), str(s.get("applied_seq", "-")),
                         _frontier_text(s.get("frontier")),
                         str(s.get("lag_records")), _seconds(s.get("lag_seconds")),
                         str(s.get("gaps_total"))))
        if len(rows) > 1:
            lines.extend(_table(rows))
    return "\n".join(lines)


def _bulk_text(why: str | None) -> str:
    return "-" if why is None else ("NO" if why else "ok")


def _frontier_text(text: object) -> str:
    return "-" if not text or text == "0.0@0" else str(text)


def _table(rows: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in rows]


def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    if value < 120:
        return f"{value:.1f}s"
    if value < 7200:
        return f"{value / 60:.1f}m"
    return f"{value / 3600:.1f}h"


def _bytes(value: int | None) -> str:
    if value is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f}{unit}" if unit == "B" else f"{value:.1f}{unit}"
        value /= 1024
    return str(value)


def _heal_text(heal: dict | None) -> str:
    """The proxy's own baseline after gaps (nfsproxy.daemon.heal), when one is owed."""
    if not heal or not heal.get("owed"):
        return ""
    if not heal.get("enabled"):
        return "heal: a gap waits for a baseline begun after it; this proxy runs none (--no-heal): run `nfsj baseline`"
    if heal.get("over_quota"):
        return "heal: a gap waits for a baseline begun after it; this proxy begins one once the LOG is under its quota"
    due = heal.get("due_in_s")
    when = "now" if not due else f"in {_seconds(due)}"
    return f"heal: a gap waits for a baseline begun after it; this proxy begins one {when}"
