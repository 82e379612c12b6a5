"""The native data plane as the daemon sees it: ``nfsproxy.relay.Proxy``'s interface
over ``nfsproxy._dataplane.Relay``.

The relay runs on its own threads and journals through the native group
committer with the native clock that the control plane shares (the LOG
written by ``NativeCommitter``, stamps from ``nfsproxy.native.clock.HLC``). Python
reads its counters at scrape time, holds stamps in it for the baseline and
for gaps not yet written, waits in it for calls to settle (in a worker
thread, the GIL released), and turns the gaps it reports (mutations whose
reply never came) into GAP records through the ``Journal``, which stays the
one place gaps are marked.

Over quota the relay applies the journal's policy itself (block: a
mutation waits before it reaches the NAS; passthrough: records are dropped,
each drop a gap marked here). While a baseline watches, the names that
successful RENAMEs and LINKs make are collected natively and handed to its
watchers every `GAP_POLL_S` and whenever it waits for calls to settle (the
Python relay calls them as it journals).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Callable

from logstore.record import Record
from logstore.stamp import Stamp

from nfsproxy import _dataplane
from nfsproxy.native.clock import HLC
from nfsproxy.relay.journal import Journal
from nfsproxy.relay.stats import LatencyHistogram

__all__ = ["NativeProxy"]

logger = logging.getLogger(__name__)

#: Keys of stamps the control plane holds fit the relay's 63-bit key space.
_KEY_MASK = (1 << 63) - 1
#: How often the relay's gaps are collected (they are rare: a client gone
#: with mutations in flight past the drain timeout).
GAP_POLL_S = 0.05


class _Counters:
    """``RelayStats``' fields, read from the relay's counters when asked."""

    _BY_PROC = ("calls_total", "call_bytes_total", "reply_bytes_total", "client_latency",
                "backend_latency")

    def __init__(self, relay: _dataplane.Relay):
        self._relay = relay

    def _by_proc(self) -> dict[str, dict]:
        out: dict[str, dict] = {name: {} for name in self._BY_PROC}
        for prog, proc, calls, call_bytes, reply_bytes, client, client_s, backend, backend_s \
                in self._relay.proc_stats():
            key = (prog, proc)
            out["calls_total"][key] = calls
            out["call_bytes_total"][key] = call_bytes
            out["reply_bytes_total"][key] = reply_bytes
            out["client_latency"][key] = _histogram(client, client_s)
            out["backend_latency"][key] = _histogram(backend, backend_s)
        return out

    #: What the native relay does not do yet (NLM/NSM relaying): counted as nothing.
    _NOT_RELAYED = {"lock_callbacks_total": dict, "reboot_unlocks_total": int}

    def __getattr__(self, name: str):
        if name in self._BY_PROC:
            return self._by_proc()[name]
        counters = self._relay.counters()
        if name in counters:
            return counters[name]
        if name in self._NOT_RELAYED:
            return self._NOT_RELAYED[name]()
        raise AttributeError(name)


def _histogram(counts: list[int], sum_s: float) -> LatencyHistogram:
    h = LatencyHistogram()
    h.counts, h.sum_s, h.count = list(counts), sum_s, sum(counts)
    return h


class _Conflicts:
    def __init__(self, relay: _dataplane.Relay):
        self._relay = relay

    @property
    def held_now(self) -> int:
        return self._relay.counters().get("conflicts_held_now", 0)


class _Move:
    """What a namespace watcher reads of a RENAME or LINK record."""

    __slots__ = ("to_dir_fh", "to_name")

    def __init__(self, to_dir_fh: bytes, to_name: bytes):
        self.to_dir_fh, self.to_name = to_dir_fh, to_name


class _Watchers(set):
    """`namespace_watchers`: the relay notes moves only while someone watches."""

    def __init__(self, proxy: "NativeProxy"):
        super().__init__()
        self._proxy = proxy

    def add(self, watcher) -> None:
        super().add(watcher)
        if self._proxy.relay is not None:
            self._proxy.relay.watch_moves(True)

    def discard(self, watcher) -> None:
        self._proxy.forward_moves()
        super().discard(watcher)
        if not self and self._proxy.relay is not None:
            self._proxy.relay.watch_moves(False)


class _JournalView:
    """The `Journal`, as status and metrics read it: whether records are being
    dropped over quota is the relay's own state (set before the reply goes
    out, as the Python relay's journal sets it), and the records it journals
    count with those the `Journal` writes (baseline pieces)."""

    def __init__(self, journal: Journal, proxy: "NativeProxy"):
        self._journal, self._proxy = journal, proxy

    def __getattr__(self, name: str):
        return getattr(self._journal, name)

    def _relay_counter(self, name: str) -> int:
        relay = self._proxy.relay
        return relay.counters().get(name, 0) if relay is not None else 0

    @property
    def records_total(self) -> int:
        return self._journal.records_total + self._relay_counter("records_total")

    @property
    def intents_total(self) -> int:
        """Write-ahead intents the relay appended."""
        return self._relay_counter("intents_total")

    @property
    def intents_kept(self) -> int:
        """Write-ahead intents whose records are not known durable yet."""
        return self._relay_counter("intents_kept")

    @property
    def blocked_now(self) -> int:
        """Mutations the relay holds under the block policy."""
        return self._relay_counter("blocked_now")

    @property
    def passthrough_active(self) -> bool:
        relay = self._proxy.relay
        native = relay.counters().get("passthrough_active") if relay is not None else None
        return bool(native) if native is not None else self._journal.passthrough_active


class NativeProxy:
    """Accepts clients and relays them to the NAS natively, journaling mutations."""

    def __init__(self, backend, journal: Journal, clock: HLC, committer, *, durability: str,
                 threads: int = 1, max_payload_bytes: int = 4 << 20):
        self.backend = backend
        self.journal = _JournalView(journal, self)
        self.clock = clock
        self.committer = committer
        self.durability = durability
        self.threads = threads
        self.max_payload_bytes = max_payload_bytes
        self.drain_timeout_s = 30.0
        self.port = 0
        self.relay: _dataplane.Relay | None = None
        self.stats: _Counters | None = None
        self.conflicts: _Conflicts | None = None
        #: Called with every successful RENAME/LINK (a running baseline listens).
        self.namespace_watchers: set[Callable[[Record], None]] = _Watchers(self)
        self._gaps: asyncio.Task | None = None

    async def start(self, host: str, port: int, portmap: tuple[tuple[str, int], ...] = ()) -> None:
        if portmap:  # the daemon refuses this combination before starting anything
            raise ValueError("the native relay does not relay NLM yet; --portmap needs the Python plane")
        listen = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self.relay = _dataplane.Relay(
            self.backend.host, self.backend.nfs_port, self.backend.mount_port, listen=listen,
            threads=self.threads, max_payload_bytes=self.max_payload_bytes,
            committer=self.committer.native, clock=self.clock.native, durability=self.durability,
            drain_timeout_s=self.drain_timeout_s, quota_policy=self.journal.policy.value)
        self.port = self.relay.port
        self.stats, self.conflicts = _Counters(self.relay), _Conflicts(self.relay)
        self._gaps = asyncio.get_running_loop().create_task(self._collect_gaps())
        logger.info("native relay listening on %s:%d (%d thread(s)), NAS %s", host, self.port,
                    self.threads, self.backend)

    async def close(self, timeout_s: float = 5.0) -> None:
        """Stop the relay (clients are closed), then mark the gaps it found."""
        if self.relay is not None:
            await asyncio.get_running_loop().run_in_executor(None, self.relay.stop)
        if self._gaps is not None:
            self._gaps.cancel()
        if self.relay is not None:
            self._mark_gaps()

    async def _collect_gaps(self) -> None:
        while True:
            self._mark_gaps()
            self.forward_moves()
            await asyncio.sleep(GAP_POLL_S)

    def forward_moves(self) -> None:
        """Hand the watchers the names RENAMEs and LINKs made since the last call."""
        if self.relay is None:
            return
        moves = self.relay.take_moves()
        for to_dir_fh, to_name in moves:
            for watch in list(self.namespace_watchers):
                watch(_Move(bytes(to_dir_fh), bytes(to_name)))

    def _mark_gaps(self) -> None:
        journal = self.journal._journal
        for token, stamp, cause, reason in self.relay.take_gaps():
            if cause == "quota_drop":
                if not journal.passthrough_active:
                    logger.error("LOG over quota (%d bytes): passthrough policy, records are NOT "
                                 "journaled", self.committer.quota_bytes)
                    journal.passthrough_active = True
                journal.dropped_total += 1
            else:
                logger.error("%s", reason)
            journal.mark_gap(bytes(stamp), cause, reason)  # holds the gap's stamp itself
            self.relay.release_gap(token)
        if journal.passthrough_active and not self.committer.over_quota:
            logger.warning("LOG back under quota; journaling resumed (a baseline closes the gap)")
            journal.passthrough_active = False

    # -- stamps (the baseline and the journal's gaps) ---------------------------------

    def stamp_call(self, key: int) -> bytes:
        """A stamp from the shared clock, in flight under `key` until released."""
        stamp = self.clock.now().to_bytes()
        self.relay.hold_stamp(key & _KEY_MASK, stamp)
        return stamp

    def hold(self, key: int, stamp: bytes) -> None:
        self.relay.hold_stamp(key & _KEY_MASK, stamp)

    def release(self, key: int) -> None:
        self.relay.release_stamp(key & _KEY_MASK)

    async def settle_below(self, stamp: bytes, own_key: int | None = None) -> None:
        """Wait until every call stamped below `stamp` (but `own_key`'s) has its reply."""
        own = None if own_key is None else (own_key & _KEY_MASK) | (1 << 63)
        self.forward_moves()
        loop = asyncio.get_running_loop()
        while not await loop.run_in_executor(None, self.relay.wait_settled, bytes(stamp), own, 1.0):
            pass

    def stamps_in_flight(self) -> int:
        return self.relay.stamps_in_flight() if self.relay is not None else 0

    def intent_floor(self) -> int | None:
        """The lowest LOG seq retention must keep: a write-ahead intent whose
        record is not durable yet (None: no bound)."""
        return self.relay.intent_floor() if self.relay is not None else None

    def stable_stamp(self) -> Stamp:
        if self.relay is None:
            return self.clock.now().to_stamp()
        return Stamp.from_bytes(self.relay.stable_stamp())
