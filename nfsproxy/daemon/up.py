"""`nfsj up`: the whole stack on one machine, as one supervised group.

Children are real `nfsj` processes, exactly what a multi-machine deployment
runs: N `nfsj recoveryd` shards, then `nfsj proxy` shipping to them, and,
when no NAS is named, a local nfs-ganesha demo NAS. A child that dies is
restarted (with backoff); SIGINT/SIGTERM stops the group in order: the
proxy first (so its LOG is synced and closed), then the shards, then the
demo NAS.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import secrets
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc

from logstore.pb import journal_pb2 as pb
from logstore.pb import journal_pb2_grpc as pb_grpc
from logstore.stamp import Stamp

from nfsproxy.demo.ganesha import GaneshaError, GaneshaInstance, start_ganesha
from nfsproxy.daemon.proxyd import _node_id
from nfsproxy.daemon.address import parse_backend, parse_hostport
from nfsproxy.daemon.config import ConfigError

__all__ = ["UpOptions", "Stack", "run_up"]

logger = logging.getLogger(__name__)

_PORT_LINE = re.compile(r" on [^ ]*:(\d+)[, ]")


@dataclasses.dataclass(slots=True)
class UpOptions:
    backend: str | None
    listen: str = "0.0.0.0:2049"
    data: str = "nfsj-data"
    shards: int = 2
    shard_base_port: int = 7400
    durability: str = "sync"
    data_plane: str = "native"  # the proxy's --data-plane


class Child:
    """One supervised `nfsj` subprocess."""

    def __init__(self, name: str, argv: list[str], log_path: Path):
        self.name, self.argv, self.log_path = name, argv, log_path
        self.proc: subprocess.Popen | None = None
        self.port = 0
        self.restarts = 0
        self.ready_line = ""

    def start(self, timeout_s: float = 30.0) -> None:
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "nfsproxy", *self.argv],
                                     stdout=subprocess.PIPE, stderr=log, text=True)
        log.close()
        line = _readline(self.proc, timeout_s)
        m = _PORT_LINE.search(line or "")
        if not m:
            self.stop()
            raise ConfigError(f"{self.name} did not start: {_last_line(self.log_path)} "
                              f"(full log: {self.log_path})")
        self.port = int(m.group(1))
        self.ready_line = line.strip()
        # Keep draining stdout so a chatty child never blocks on a full pipe.
        threading.Thread(target=self.proc.stdout.read, daemon=True).start()

    def field(self, name: str) -> str:
        """A `name ADDRESS` field of the ready line (e.g. metrics, control)."""
        m = re.search(rf"\b{name} (\S+?)(,|$)", self.ready_line)
        return m.group(1) if m else ""

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout_s: float = 20.0) -> None:
        if not self.alive():
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            logger.warning("%s did not stop in %.0f s; killing it", self.name, timeout_s)
            self.proc.kill()
            self.proc.wait()


def _readline(proc: subprocess.Popen, timeout_s: float) -> str | None:
    out: list[str] = []
    reader = threading.Thread(target=lambda: out.append(proc.stdout.readline()), daemon=True)
    reader.start()
    reader.join(timeout_s)
    return out[0] if out else None


def _last_line(path: Path) -> str:
    try:
        lines = [l for l in path.read_text(errors="replace").splitlines() if l.strip()]
    except FileNotFoundError:
        return "no output"
    return lines[-1] if lines else "no output"


class Stack:
    """The running group: demo NAS (optional), shards, proxy."""

    def __init__(self, opts: UpOptions):
        self.opts = opts
        self.data = Path(opts.data).resolve()
        self.nas: GaneshaInstance | None = None
        self.shards: list[Child] = []
        self.proxy: Child | None = None
        self.backend = opts.backend

    def _ingest_credentials(self) -> tuple[Path, Path]:
        """A fresh ingest token for the proxy's node id: (the shards' tokens
        file, the proxy's token file), both readable by this user only."""
        (self.data / "log").mkdir(parents=True, exist_ok=True)
        node = _node_id(str(self.data / "log"), None)  # made once and kept, as the proxy does
        token = secrets.token_urlsafe(32)
        shards_file, proxy_file = self.data / "ingest-tokens", self.data / "ingest-token"
        for path, text in ((shards_file, f"{node} {token}\n"), (proxy_file, f"{token}\n")):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(text)
            os.chmod(path, 0o600)
        return shards_file, proxy_file

    def start(self) -> None:
        (self.data / "logs").mkdir(parents=True, exist_ok=True)
        if self.backend is None:
            self._start_demo_nas()
        else:
            parse_backend(self.backend)
        shards_tokens, proxy_token = self._ingest_credentials()
        for k in range(self.opts.shards):
            child = Child(f"shard {k}", ["recoveryd", "--listen", f"127.0.0.1:{self.opts.shard_base_port + k}",
                                         "--data", str(self.data / f"shard-{k}"), "--shard-id", str(k),
                                         "--ingest-tokens", str(shards_tokens)],
                          self.data / "logs" / f"shard-{k}.log")
            child.start()
            self.shards.append(child)
        argv = ["proxy", "--listen", self.opts.listen, "--backend", self.backend,
                "--log", str(self.data / "log"), "--durability", self.opts.durability,
                "--data-plane", self.opts.data_plane,
                "--ingest-token-file", str(proxy_token)]
        for child in self.shards:
            argv += ["--shard", f"127.0.0.1:{child.port}"]
        self.proxy = Child("proxy", argv, self.data / "logs" / "proxy.log")
        self.proxy.start()

    def baseline(self) -> str:
        """Take a baseline through the proxy's control API; returns its summary line."""
        with grpc.insecure_channel(self.proxy.field("control")) as channel:
            last = None
            for last in pb_grpc.ControlStub(channel).Baseline(pb.BaselineRequest()):
                if last.error:
                    raise ConfigError(f"the first baseline failed: {last.error}")
        if last is None or not last.done:
            raise ConfigError(f"the first baseline did not finish; see {self.proxy.log_path}")
        end = Stamp.from_bytes(last.end)
        return (f"baseline: {last.files} files, {last.bytes} bytes; restorable from {end} ({end.iso()})")

    def _start_demo_nas(self) -> None:
        try:
            self.nas = start_ganesha(self.data / "demo-export", self.data / "demo-ganesha")
        except GaneshaError as e:
            raise ConfigError(f"{e}; or pass --backend HOST:/EXPORT to use your own NAS") from None
        self.backend = f"127.0.0.1:{self.nas.nfs_port}:{self.nas.mount_port}:/export"

    def children(self) -> list[Child]:
        return [*self.shards, *([self.proxy] if self.proxy else [])]

    def supervise_once(self) -> None:
        """Restart any child that died; called periodically."""
        for child in self.children():
            if child.proc is not None and not child.alive():
                child.restarts += 1
                delay = min(30.0, 0.5 * 2 ** min(child.restarts, 6))
                logger.error("%s exited with %s; restarting in %.1f s (restart %d, log %s)",
                             child.name, child.proc.returncode, delay, child.restarts, child.log_path)
                time.sleep(delay)
                child.start()

    def stop(self) -> None:
        if self.proxy is not None:
            self.proxy.stop()
        for child in self.shards:
            child.stop()
        if self.nas is not None:
            self.nas.stop()

    def banner(self) -> str:
        host, _ = parse_hostport(self.opts.listen, 2049)
        shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
        port = self.proxy.port
        export = self.backend.rsplit(":", 1)[1]
        shards = " ".join(f"--shard 127.0.0.1:{c.port}" for c in self.shards)
        lines = [
            "nfsj up: the stack is running" + (" (demo NAS: nfs-ganesha on a temp export)" if self.nas else ""),
            f"  NAS      {self.backend}",
            # nolock: the demo NAS shares this host, so a client's lock manager would ask
            # the host's rpcbind (the NAS's NLM), not the proxy; locks stay on the client.
            f"  mount    mount -t nfs -o vers=3,proto=tcp,port={port},mountport={port},nolock {shown}:{export} /mnt",
            f"  url      nfs://{shown}{export}?version=3&nfsport={port}&mountport={port}",
            f"  status   nfsj status {shards} --log {self.data / 'log'}",
            f"  restore  nfsj restore --at -5m --to ./restored {shards}",
            f"  metrics  {self.proxy.field('metrics')} (proxy); "
            + ", ".join(c.field("metrics") for c in self.shards) + " (shards)",
            f"  data     {self.data} (logs in {self.data / 'logs'})",
            "Stop with Ctrl-C.",
        ]
        return "\n".join(lines)


def run_up(opts: UpOptions) -> None:
    """Start the stack, print how to use it, supervise until SIGINT/SIGTERM."""
    if opts.shards < 1:
        raise ConfigError("--shards must be at least 1")
    stack = Stack(opts)
    stopping = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stopping.set())
    try:
        stack.start()
        print(stack.banner(), flush=True)
        print(stack.baseline(), flush=True)
        while not stopping.wait(1.0):
            stack.supervise_once()
    finally:
        stack.stop()
        print("nfsj up: stopped", flush=True)
