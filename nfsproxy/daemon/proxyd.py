"""Running the proxy as a daemon: the LOG, the clock, the relay, and shutdown.

`ProxyOptions` is everything `nfsj proxy` takes; `run_proxy` opens the LOG
(recovering it), starts the relay, one shipper per `--shard` and LOG
retention, and on SIGINT/SIGTERM stops accepting, lets journal writes
finish, stops shipping, fsyncs and closes the LOG.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import secrets
import signal
import struct
import time

import grpc

from logstore.commit import Durability
from logstore.log import TornTail
from logstore.record import Record, record_parts

from recoveryd.heap import keep_freed_memory, quiet_collector
from recoveryd.security import (BearerToken, SecurityError, TlsOptions, channel_credentials,
                                server_credentials)
from recoveryd.status import write_proxy_status

from nfsproxy.daemon.address import parse_hostport, resolve_backend
from nfsproxy.daemon.config import ConfigError
from nfsproxy.daemon.control import start_control
from nfsproxy.daemon.heal import DEFAULT_HEAL_DELAY_S, Healer
from nfsproxy.daemon.intents import rebuild_orphans
from nfsproxy.daemon.metrics import ProxyCollector, serve_metrics
from nfsproxy.native.clock import HLC
from nfsproxy.native.log import DEFAULT_SPARE_SEGMENTS, NativeCommitter, NativeLog
from nfsproxy.relay.journal import Journal, QuotaPolicy, frame_fields, gap_record
from nfsproxy.relay.session import BackendAddress, Proxy
from nfsproxy.ship.fanout import LogFanout, shared_reader
from nfsproxy.ship.retention import DEFAULT_LOG_RETAIN, RetentionLoop, parse_retention
from nfsproxy.ship.shipper import Shipper
from nfsproxy.wire.portmap import PMAP_PORT

__all__ = ["ProxyOptions", "run_proxy", "start_proxy"]

logger = logging.getLogger(__name__)


@dataclasses.dataclass(slots=True)
class ProxyOptions:
    listen_host: str
    listen_port: int
    backend: str
    log_dir: str
    durability: Durability = Durability.SYNC
    segment_bytes: int = 64 << 20
    quota_bytes: int | None = None
    quota_policy: QuotaPolicy = QuotaPolicy.BLOCK
    node_id: int | None = None
    max_offset_ns: int = 500_000_000
    shards: list[str] = dataclasses.field(default_factory=list)  # shard k = shards[k], HOST:PORT
    log_retain: str = DEFAULT_LOG_RETAIN  # --log-retain: 1h, 10G or 1h,10G
    log_spares: int = DEFAULT_SPARE_SEGMENTS  # --log-spares: trimmed segments kept to write over
    control: str = "127.0.0.1:0"  # --control: where `nfsj baseline` reaches this proxy
    metrics: str = "127.0.0.1:0"  # --metrics: Prometheus /metrics
    # --tls-ca/--tls-cert/--tls-key: TLS to the shards (mTLS with a cert). The
    # Control API is served with the same cert and key when given, and then
    # requires client certificates signed by the same CA.
    tls: TlsOptions | None = None
    # --ingest-token-file: this proxy's ingest token, sent with every Ingest
    # call (the shards' --ingest-tokens list it for this node id).
    ingest_token_file: str | None = None
    drain_timeout_s: float = 30.0  # --drain-timeout: a closed client's relayed calls get this long
    # --portmap: also serve here (HOST:PORT, normally :111), where lock managers ask for NLM
    portmap: list[str] = dataclasses.field(default_factory=list)
    # --data-plane: native (nfsproxy._dataplane) or python (nfsproxy.relay.session; NLM too)
    data_plane: str = "native"
    relay_threads: int = 1  # --relay-threads: the native relay's threads
    heal: bool = True  # --heal/--no-heal: a baseline of its own after any gap (nfsproxy.daemon.heal)
    heal_delay_s: float = DEFAULT_HEAL_DELAY_S  # --heal-delay: after the latest gap


def _node_id(log_dir: str, given: int | None) -> int:
    """The proxy's HLC node id: given, or made once and kept beside the LOG."""
    path = os.path.join(log_dir, "node_id")
    if given is not None:
        return given
    try:
        with open(path) as f:
            return int(f.read().strip())
    except FileNotFoundError:
        node = struct.unpack(">I", secrets.token_bytes(4))[0] or 1
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            f.write(f"{node}\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        return node


class RunningProxy:
    """A started proxy, its shippers and the LOG under them; `stop()` shuts
    them down in order."""

    def __init__(self, proxy: Proxy, committer: NativeCommitter, log: NativeLog, *,
                 shippers: list[Shipper] | None = None, retention: RetentionLoop | None = None,
                 data_plane: str = "native", fanout: LogFanout | None = None):
        self.proxy, self.committer, self.log = proxy, committer, log
        self.fanout = fanout
        self.data_plane = data_plane
        self.shippers = shippers or []
        self.retention = retention
        self.control: grpc.aio.Server | None = None
        self.control_address = ""
        self.control_tls = False
        self.metrics_address = ""
        self.healer: Healer | None = None
        self._status_task: asyncio.Task | None = None

    def status(self) -> dict:
        """What `nfsj status --log DIR` shows about this proxy (written to status.json)."""
        return {
            "node_id": self.proxy.clock.node_id, "log_id": self.log.log_id,
            "data_plane": self.data_plane,
            "last_seq": self.log.last_seq, "synced_seq": self.log.synced_seq,
            "newest": str(self.proxy.clock.now().to_stamp()),
            "stable": str(self.proxy.stable_stamp()), "control": self.control_address,
            "backend": str(self.proxy.backend),
            "control_tls": self.control_tls,
            "metrics": self.metrics_address,
            "log_bytes": self.log.size_bytes, "updated_unix_ns": time.time_ns(),
            "gaps_total": dict(self.proxy.journal.gaps_total),
            "gaps": list(self.proxy.journal.gaps),
            "unmarked_gaps": self.proxy.journal.unmarked_gaps,
            "heal": None if self.healer is None else self.healer.status(),
            "shards": [_shipper_status(s) for s in self.shippers],
        }

    async def _write_status(self, interval_s: float = 1.0) -> None:
        path = os.path.join(self.log.directory, "status.json")
        while True:
            try:
                write_proxy_status(path, self.status())
            except OSError as e:
                logger.warning("cannot write %s: %s", path, e)
            except Exception:  # noqa: BLE001  a stale status file would mislead every reader
                logger.exception("cannot gather the status for %s; trying again in %.0f s", path, interval_s)
            await asyncio.sleep(interval_s)

    async def stop(self) -> None:
        if self._status_task is not None:
            self._status_task.cancel()
        if self.healer is not None:
            await self.healer.stop()
        if self.control is not None:
            await self.control.stop(grace=1.0)
        await self.proxy.close()
        await self.proxy.journal.close()
        if self.retention is not None:
            await self.retention.stop()
        for shipper in self.shippers:  # they read the LOG: stop them before it closes
            await shipper.stop()
        if self.healer is not None:
            # The gaps this stop marked (late replies, a range trimmed under
            # a rewinding shard) are owed a heal at the next start.
            self.healer.settle()
        if self.fanout is not None:
            self.fanout.close()
        await self.committer.close()
        self.log.close()
        _clear_running(self.log.directory)  # every relayed call was answered or marked


async def start_proxy(opts: ProxyOptions, backend: BackendAddress) -> RunningProxy:
    try:
        retain = parse_retention(opts.log_retain)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    for address in opts.shards:
        parse_hostport(address)  # ConfigError unless HOST:PORT
    try:
        shard_credentials = channel_credentials(opts.tls)
        control_credentials = server_credentials(control_tls(opts.tls))
        ingest_token = BearerToken.from_file(opts.ingest_token_file) if opts.ingest_token_file else None
    except SecurityError as e:
        raise ConfigError(str(e)) from None
    os.makedirs(opts.log_dir, exist_ok=True)
    # The clock first: a torn tail's GAP record must be stamped after every record it lost.
    clock = HLC(_node_id(opts.log_dir, opts.node_id), max_offset_ns=opts.max_offset_ns,
                persist_path=os.path.join(opts.log_dir, "hlc.bound"))
    log = NativeLog.open(opts.log_dir, segment_bytes=opts.segment_bytes,
                         spare_segments=opts.log_spares,
                         torn_marker=lambda torn: torn_gap_record(clock, torn))
    last_start = _last_run_start(opts.log_dir)
    rebuilt = rebuild_orphans(log, last_start) if last_start is not None else 0
    unclean = last_start is not None and not log.torn_tails
    if unclean:  # a torn tail's GAP record already spans the same stamps
        gap = unclean_stop_gap_record(clock, rebuilt)
        log.append(record_parts(gap), **frame_fields(gap))
        log.sync()
    _mark_running(opts.log_dir, log.next_seq)
    committer = NativeCommitter(log, durability=opts.durability, quota_bytes=opts.quota_bytes)
    journal = Journal(committer, opts.quota_policy)
    for torn in log.torn_tails:
        logger.warning("LOG recovery cut a torn tail (%s): marked as a gap", torn)
        journal.count_gap("torn_tail", f"torn_tail: {torn}")
    if unclean:
        logger.warning("the proxy did not stop cleanly last time: calls it had relayed may have "
                       "changed the NAS without a record; marked as a gap (a baseline heals it)")
        journal.count_gap("unclean_stop", "unclean_stop: the previous run of this LOG did not stop cleanly")
    journal.intents_rebuilt = rebuilt
    proxy = _data_plane(opts, backend, journal, clock, committer)
    journal.attach(proxy)
    proxy.drain_timeout_s = opts.drain_timeout_s
    # No shards: journal only, and nothing is ever trimmed.
    fanout = shared_reader(log, len(opts.shards))
    shippers = [Shipper(address, shard_id=k, n_shards=len(opts.shards), log=log, clock=clock,
                        stable_stamp=proxy.stable_stamp, credentials=shard_credentials,
                        token=ingest_token, fanout=fanout)
                for k, address in enumerate(opts.shards)]
    for shipper in shippers:
        shipper.start()
    await _register_stream(opts.log_dir, shippers)
    try:
        await proxy.start(opts.listen_host, opts.listen_port,
                          tuple(parse_hostport(a, PMAP_PORT) for a in opts.portmap))
    except OSError as e:
        for shipper in shippers:
            await shipper.stop()
        if fanout is not None:
            fanout.close()
        await committer.close()
        log.close()
        _clear_running(opts.log_dir)
        raise ConfigError(f"cannot listen on {opts.listen_host}:{opts.listen_port} "
                          f"{' or '.join(opts.portmap)} ({e.strerror}); "
                          "pick a free port with --listen (is an rpcbind on --portmap's port?)") from None
    retention = None
    if shippers:
        retention = RetentionLoop(committer, lambda: _trim_bounds(shippers, proxy), retain)
        retention.start()
    running = RunningProxy(proxy, committer, log, shippers=shippers, retention=retention,
                           data_plane=opts.data_plane, fanout=fanout)
    if shippers:  # without shards nothing is restored, so there is nothing to prove
        running.healer = Healer(opts.log_dir, opts.heal_delay_s, lambda: _gaps_seen(proxy, shippers),
                                lambda: committer.over_quota, enabled=opts.heal)
    control_host, control_port = parse_hostport(opts.control)
    try:
        running.control, bound = await start_control(proxy, control_host, control_port,
                                                     credentials=control_credentials,
                                                     healer=running.healer)
    except (OSError, RuntimeError) as e:
        await running.stop()
        raise ConfigError(f"cannot serve the control API on {opts.control} ({e}); "
                          "pick a free port with --control") from None
    running.control_address = f"{control_host}:{bound}"
    running.control_tls = control_credentials is not None
    metrics_host, metrics_port = parse_hostport(opts.metrics)
    try:
        running.metrics_address = f"{metrics_host}:{serve_metrics(ProxyCollector(running), metrics_host, metrics_port)}"
    except OSError as e:
        await running.stop()
        raise ConfigError(f"cannot serve metrics on {opts.metrics} ({e.strerror}); pick a free port with --metrics") from None
    # Written once before the ready line, so `nfsj status --log` works as soon as we serve.
    write_proxy_status(os.path.join(log.directory, "status.json"), running.status())
    running._status_task = asyncio.get_running_loop().create_task(running._write_status())
    return running


def _gaps_seen(proxy, shippers: list[Shipper]) -> int:
    """The gaps this proxy has put on record: GAP records in its LOG, and LOG
    ranges its shippers found trimmed before a shard held them. A gap counts
    once its GAP record is written, as that stamp is the gap's end: a
    baseline begun after the count begins after it (one marked but not yet
    written may end later than the baseline's BEGIN, which then heals none)."""
    return proxy.journal.gap_records_total + sum(s.state().gaps_total for s in shippers)


def _trim_bounds(shippers: list[Shipper], proxy) -> list[int]:
    """What retention may trim through: every shard's acked seq, and short of
    the oldest write-ahead intent whose record is not durable yet (a crash
    would leave it to rebuild that record from)."""
    bounds = [s.acked_seq for s in shippers]
    floor = proxy.intent_floor()
    if floor is not None:
        bounds.append(floor - 1)
    return bounds


def _data_plane(opts: ProxyOptions, backend: BackendAddress, journal: Journal, clock: HLC, committer):
    """The relay `--data-plane` names, journaling through `journal`'s LOG."""
    if opts.data_plane == "python":
        return Proxy(backend, journal, clock)
    from nfsproxy.relay.native import NativeProxy
    if opts.portmap:
        raise ConfigError("--portmap (locking through the proxy) needs --data-plane python: "
                          "the native relay does not relay NLM")
    if getattr(committer, "native", None) is None or getattr(clock, "native", None) is None:
        raise ConfigError("--data-plane native journals through the native LOG writer and clock, "
                          "which this proxy's LOG does not use")
    return NativeProxy(backend, journal, clock, committer, durability=opts.durability.value,
                       threads=opts.relay_threads)


#: Present while a proxy serves from a LOG directory, holding the LOG seq its
#: run started at. Found at start, it says the last run did not stop cleanly
#: (kill -9, a crash, power loss): calls it had relayed may have changed the
#: NAS while their records never reached the LOG, so the start marks a gap
#: instead of passing over them in silence, and rebuilds the records of that
#: run's write-ahead intents that have none (``nfsproxy.daemon.intents``).
RUNNING_MARK = "RUNNING"


def _last_run_start(log_dir: str) -> int | None:
    """None if the last run stopped cleanly; else the LOG seq it started at
    (0 when the mark does not say: search the whole LOG)."""
    try:
        with open(os.path.join(log_dir, RUNNING_MARK), encoding="ascii", errors="replace") as f:
            text = f.read().strip()
    except FileNotFoundError:
        return None
    return int(text) if text.isdigit() else 0


def _mark_running(log_dir: str, start_seq: int) -> None:
    """Durably note that a proxy serves from `log_dir`, from LOG seq `start_seq` on."""
    path = os.path.join(log_dir, RUNNING_MARK)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, f"{start_seq}\n".encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    _fsync_dir(log_dir)


def _clear_running(log_dir: str) -> None:
    try:
        os.unlink(os.path.join(log_dir, RUNNING_MARK))
        _fsync_dir(log_dir)
    except OSError as e:
        logger.warning("cannot clear %s in %s (%s): the next start will mark a gap",
                       RUNNING_MARK, log_dir, e.strerror)


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def unclean_stop_gap_record(clock: HLC, rebuilt: int = 0) -> Record:
    """The GAP record for a run that did not stop cleanly: it spans from the
    shards' frontier (below every stamp then in flight) to now. ``rebuilt``
    records were rebuilt from write-ahead intents, their outcome unknown."""
    reason = ("the proxy did not stop cleanly: calls it had relayed to the NAS when it "
              "stopped may have changed the NAS without a record")
    if rebuilt:
        reason += (f"; {rebuilt} record(s) were rebuilt from their write-ahead intents, "
                   "replayed as applied (the NAS's reply to them is unknown)")
    return gap_record(clock.now().to_bytes(), "unclean_stop", reason)


def torn_gap_record(clock: HLC, torn: TornTail) -> Record:
    """The GAP record for a torn tail: it lost records appended after ``torn.after_seq``
    that were never synced (in async durability their replies may have gone out)."""
    return gap_record(clock.now().to_bytes(), "torn_tail",
                      f"the LOG lost a torn tail at an unclean stop ({torn.truncated_bytes} bytes "
                      f"after seq {torn.after_seq}): records not yet synced may be missing")


def control_tls(tls: TlsOptions | None) -> TlsOptions | None:
    """How the Control API is served: with the proxy's own certificate when it
    has one, requiring client certificates from its CA when it names one."""
    if tls is None or not (tls.cert and tls.key):
        return None
    return TlsOptions(cert=tls.cert, key=tls.key, ca=tls.ca, require_client_cert=bool(tls.ca))


async def _register_stream(log_dir: str, shippers: list[Shipper]) -> None:
    """Before a new LOG's first client, make every shard know its stream.

    A shard counts a proxy in its frontier only once it knows the proxy's
    stream. If no shard knew a new proxy, the consistent point would pass
    that proxy's first records unnoticed. So a new LOG serves no client
    until every shard has durably registered it (once: a marker remembers).
    """
    marker = os.path.join(log_dir, "registered")
    if not shippers or os.path.exists(marker):
        return
    waiting = [s for s in shippers if not s.registered.is_set()]
    if waiting:
        logger.warning("new LOG: waiting for every shard to register its stream before serving "
                       "clients (%s)", ", ".join(s.address for s in waiting))
    await asyncio.gather(*(s.registered.wait() for s in shippers))
    with open(marker, "w") as f:
        f.write("every shard knows this LOG's stream\n")
        f.flush()
        os.fsync(f.fileno())


def _shipper_status(shipper: Shipper) -> dict:
    st = shipper.state()
    return {"address": st.address, "connected": st.connected, "acked_seq": st.acked_seq,
            "applied_seq": st.applied_seq,
            "frontier": str(st.frontier), "lag_records": st.lag_records,
            "lag_seconds": st.lag_seconds, "gaps_total": st.gaps_total}


async def run_proxy(opts: ProxyOptions) -> None:
    """Serve until SIGINT or SIGTERM."""
    backend = resolve_backend(opts.backend)
    # The shippers read megabytes of LOG frames per batch into fresh buffers
    # and hand them to gRPC: the same heap and collector tuning as a shard's.
    keep_freed_memory()
    running = await start_proxy(opts, backend)
    quiet_collector()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    shipping = (f"shipping to {len(opts.shards)} shard(s) {', '.join(opts.shards)}, "
                f"LOG retained {opts.log_retain}" if opts.shards else "no shards (journal only)")
    print(f"nfsj proxy: serving NFSv3+MOUNT on {opts.listen_host}:{running.proxy.port}, "
          f"NAS {backend}, LOG {opts.log_dir} ({opts.durability.value}), {shipping}, "
          f"control {running.control_address}, metrics http://{running.metrics_address}/metrics", flush=True)
    logger.info("shards over %s; control API over %s", (opts.tls or TlsOptions()).describe(server=False),
                (control_tls(opts.tls) or TlsOptions()).describe(server=True))
    await stop.wait()
    logger.info("shutting down")
    await running.stop()
