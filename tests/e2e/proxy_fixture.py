"""A real `nfsj proxy` process in front of the test NAS."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

#: Which relay the proxies of the e2e tests run when a test does not choose
#: (with --data-plane, or --portmap, which picks the Python one):
#: NFSJ_DATA_PLANE=native|python; unset, nfsj's default (native).
DATA_PLANE = os.environ.get("NFSJ_DATA_PLANE") or None
_SERVING = re.compile(r"serving NFSv3\+MOUNT on [^ ]+:(\d+),")


class ProxyProcess:
    """`nfsj proxy` run as a subprocess, the way a user runs it."""

    def __init__(self, nas, log_dir: Path, *, durability: str = "sync", extra: list[str] = (),
                 launcher: list[str] = (), listen: str = "127.0.0.1:0"):
        self.nas = nas
        self.launcher = list(launcher)  # a command prefix (e.g. into another network namespace)
        self.listen = listen
        self.log_dir = Path(log_dir)
        self.durability = durability
        self.extra = list(extra)
        self.proc: subprocess.Popen | None = None
        self.port = 0
        self.stderr_path = self.log_dir.parent / f"{self.log_dir.name}.stderr"

    @property
    def backend(self) -> str:
        return f"{self.nas.host}:{self.nas.nfs_port}:{self.nas.mount_port}:/export"

    def start(self, timeout_s: float = 20.0) -> "ProxyProcess":
        argv = [*self.launcher, sys.executable, "-m", "nfsproxy", "proxy", "--listen", self.listen,
                "--backend", self.backend, "--log", str(self.log_dir),
                "--durability", self.durability, *self.extra]
        if DATA_PLANE and not {"--data-plane", "--portmap"} & set(self.extra):
            argv += ["--data-plane", DATA_PLANE]
        if not {"--heal", "--no-heal", "--heal-delay"} & set(self.extra):
            # The suite's gap tests watch a gap stay unhealed until they run a
            # baseline themselves; tests of the proxy's own heal ask for it.
            argv.append("--no-heal")
        self.stderr = open(self.stderr_path, "ab")
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=self.stderr, text=True)
        deadline = time.monotonic() + timeout_s
        line = self.proc.stdout.readline()
        m = _SERVING.search(line)
        if not m or time.monotonic() > deadline:
            self.kill()
            raise RuntimeError(f"proxy did not start: {line!r}\n{self.stderr_text()}")
        self.port = int(m.group(1))
        return self

    def url(self, path: str = "") -> str:
        return f"nfs://127.0.0.1/export{path}?version=3&nfsport={self.port}&mountport={self.port}"

    def stderr_text(self) -> str:
        try:
            return self.stderr_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def stop(self) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.kill()
            return -9

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


@pytest.fixture
def proxy_factory(nas, tmp_path):
    """Start proxies (`factory(durability=..., extra=[...])`); all are stopped afterwards."""
    started: list[ProxyProcess] = []

    def factory(durability: str = "sync", extra: list[str] = (), log_dir: Path | None = None):
        p = ProxyProcess(nas, log_dir or tmp_path / f"log{len(started)}", durability=durability,
                         extra=list(extra)).start()
        started.append(p)
        return p

    yield factory
    for p in started:
        p.stop()


@pytest.fixture
def proxy(proxy_factory):
    """One running `nfsj proxy --durability sync` in front of `nas`."""
    return proxy_factory()


def read_log(log_dir: Path, *, intents: bool = False):
    """Every record in a LOG directory, as (seq, Record), in LOG order; with
    ``intents``, the write-ahead intents instead (logstore/FORMAT.md, "Intents")."""
    from logstore.log import Log
    from logstore.record import parse_record
    from logstore.segment import ROUTE_INTENT
    log = Log.open(str(log_dir))
    try:
        with log.read(log.first_seq) as cursor:
            return [(f.seq, parse_record(f.payload, f.seq)) for f in cursor.frames()
                    if (f.route_kind == ROUTE_INTENT) == intents]
    finally:
        log.close()


__all__ = ["ProxyProcess", "proxy_factory", "proxy", "read_log"]

