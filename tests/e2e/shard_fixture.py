"""A real `nfsj recoveryd` process: one recovery shard, the way a user runs it.

`ShardProcess` starts, stops (SIGTERM), kills (SIGKILL) and restarts a shard on
the SAME data directory and the SAME port: the proxy names its shards by
address once, at start-up, so a shard that comes back must come back where
the proxy expects it. The first start may use port 0 (any free port); later
starts reuse the port it got.

The shard's RocksDB is locked while it runs: `open_store()` (for checks)
refuses a running shard; stop it first, or ask it over gRPC
(`recoveryd.status.fetch_status([shard.address])`).
"""

from __future__ import annotations

import os
import re
import select
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

_SERVING = re.compile(r"nfsj recoveryd: shard (\d+) serving on [^ ]+:(\d+),")
# Restarting on the port just freed by a dead shard: the kernel may need a moment.
_PORT_RETRY_S = 10.0


class ShardProcess:
    """`nfsj recoveryd --listen 127.0.0.1:PORT --data DIR --shard-id K` as a subprocess."""

    def __init__(self, data_dir: Path, shard_id: int, *, port: int = 0, extra: list[str] = ()):
        self.data_dir = Path(data_dir)
        self.shard_id = shard_id
        self.port = port
        self.extra = list(extra)
        self.proc: subprocess.Popen | None = None
        self.stderr_path = self.data_dir.parent / f"{self.data_dir.name}.stderr"
        self.starts = 0

    # -- where it is ------------------------------------------------------------

    @property
    def address(self) -> str:
        if not self.port:
            raise RuntimeError("the shard has no port yet: start it once first")
        return f"127.0.0.1:{self.port}"

    @property
    def store_dir(self) -> Path:
        """The shard's RocksDB (recoveryd.shard.STORE_DIR)."""
        return self.data_dir / "store"

    # -- lifecycle ----------------------------------------------------------------

    def start(self, timeout_s: float = 30.0) -> "ShardProcess":
        """Start on `data_dir` and `port` (port 0 only the first time); returns once serving."""
        if self.alive():
            raise RuntimeError(f"shard {self.shard_id} is already running (pid {self.proc.pid})")
        deadline = time.monotonic() + _PORT_RETRY_S
        while True:
            line = self._spawn(timeout_s)
            m = _SERVING.search(line)
            if m:
                break
            self.kill()
            text = self.stderr_text()
            this_start = text.rpartition("--- start ")[2]
            if self.port and "the port is in use" in this_start and time.monotonic() < deadline:
                time.sleep(0.2)  # the old process's socket is still going away
                continue
            raise RuntimeError(f"shard {self.shard_id} did not start: {line!r}\n{text[-4000:]}")
        assert int(m.group(1)) == self.shard_id, line
        self.port = int(m.group(2))
        self.starts += 1
        return self

    def _spawn(self, timeout_s: float) -> str:
        argv = [sys.executable, "-m", "nfsproxy", "recoveryd", "--listen", f"127.0.0.1:{self.port}",
                "--data", str(self.data_dir), "--shard-id", str(self.shard_id), *self.extra]
        self.stderr_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.stderr_path, "ab") as stderr:
            stderr.write(f"--- start {self.starts + 1}: {' '.join(argv)}\n".encode())
            stderr.flush()
            self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=stderr)
        return _first_line(self.proc, timeout_s)

    def stop(self, timeout_s: float = 20.0) -> int:
        """SIGTERM and wait (SIGKILL if it does not stop); returns the exit status."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.kill()
                return -9
        self._close_pipe()
        return self.proc.returncode

    def kill(self) -> None:
        """SIGKILL (kill -9) and reap."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._close_pipe()

    def restart(self, timeout_s: float = 30.0) -> "ShardProcess":
        """Stop (if running) and start again on the same data directory and port."""
        self.stop()
        return self.start(timeout_s)

    def wipe(self) -> None:
        """Delete the data directory (the shard must not be running): a lost disk."""
        if self.alive():
            raise RuntimeError(f"shard {self.shard_id} is running: stop or kill it before wiping")
        if self.data_dir.exists():
            shutil.rmtree(self.data_dir)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def _close_pipe(self) -> None:
        if self.proc is not None and self.proc.stdout is not None:
            self.proc.stdout.close()

    # -- inspection ---------------------------------------------------------------

    def open_store(self):
        """The shard's `ShardStore`, read directly (the shard must not be running)."""
        if self.alive():
            raise RuntimeError(f"shard {self.shard_id} is running and holds its RocksDB lock")
        from recoveryd.store import ShardStore
        return ShardStore(self.store_dir, self.shard_id)

    def stderr_text(self) -> str:
        try:
            return self.stderr_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def __repr__(self) -> str:
        state = f"pid {self.proc.pid}" if self.alive() else "stopped"
        return f"<ShardProcess {self.shard_id} 127.0.0.1:{self.port} {self.data_dir} {state}>"


def _first_line(proc: subprocess.Popen, timeout_s: float) -> str:
    """The first stdout line of `proc` ("" if it exits or says nothing within `timeout_s`)."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    buf = b""
    deadline = time.monotonic() + timeout_s
    while b"\n" not in buf:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        ready, _, _ = select.select([fd], [], [], left)
        if not ready:
            break
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        buf += chunk
    return buf.split(b"\n", 1)[0].decode(errors="replace")


@pytest.fixture
def shard_factory(tmp_path):
    """Start shards: `factory(shard_id, data_dir=None, extra=[...])`; all are stopped afterwards."""
    started: list[ShardProcess] = []

    def factory(shard_id: int, data_dir: Path | None = None, extra: list[str] = ()) -> ShardProcess:
        shard = ShardProcess(data_dir or tmp_path / f"shard{len(started)}", shard_id,
                             extra=list(extra)).start()
        started.append(shard)
        return shard

    yield factory
    for shard in started:
        shard.stop()


__all__ = ["ShardProcess", "shard_factory"]
