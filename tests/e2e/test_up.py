"""`nfsj up`: the whole stack from one command, as the README's quickstart runs it."""

from __future__ import annotations

import json
import random
import re
import signal
import socket
import subprocess
import sys
import time

import nfs_rs
import pytest

from nfsproxy.demo.ganesha import find_ganesha


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_port_run(count: int) -> int:
    """The first of ``count`` consecutive free ports (``nfsj up``'s shard k
    listens on BASE+k), below the ephemeral range: a base picked near a
    free ephemeral port was sometimes taken by one of the suite's own
    connections by the time a shard bound it ("the port is in use")."""
    rng = random.Random()
    for _ in range(200):
        base = rng.randrange(20000, 32000 - count)
        if all(_bindable(base + k) for k in range(count)):
            return base
    raise RuntimeError(f"no run of {count} free ports in 20000-32000")


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _read_until(proc: subprocess.Popen, pattern: str, timeout_s: float = 120.0) -> list[str]:
    lines, deadline = [], time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if re.search(pattern, line):
            return lines
    raise AssertionError(f"no line matching {pattern!r}; got:\n{''.join(lines)}")


@pytest.mark.ganesha
def test_up_runs_the_stack_and_stops_it(tmp_path):
    find_ganesha()
    port, shard_base = _free_port(), free_port_run(2)
    proc = subprocess.Popen([sys.executable, "-m", "nfsproxy", "up", "--data", str(tmp_path / "data"),
                             "--listen", f"127.0.0.1:{port}", "--shard-base-port", str(shard_base)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        banner = "".join(_read_until(proc, r"^baseline: "))
        assert f"mount -t nfs -o vers=3,proto=tcp,port={port},mountport={port},nolock 127.0.0.1:/export /mnt" in banner
        assert f"nfs://127.0.0.1/export?version=3&nfsport={port}&mountport={port}" in banner
        assert re.search(r"metrics +http://127\.0\.0\.1:\d+/metrics \(proxy\)", banner)
        assert f"nfsj status --shard 127.0.0.1:{shard_base} --shard 127.0.0.1:{shard_base + 1}" in banner

        client = nfs_rs.Client.connect(f"nfs://127.0.0.1/export?version=3&nfsport={port}&mountport={port}")
        client.mkdir("/made-through-up")
        with client.open("/made-through-up/f", "w+b") as f:
            f.write_at(b"journaled", 0)
        assert (tmp_path / "data" / "demo-export" / "made-through-up" / "f").read_bytes() == b"journaled"

        status = subprocess.run([sys.executable, "-m", "nfsproxy", "status", "--json",
                                 "--shard", f"127.0.0.1:{shard_base}", "--shard", f"127.0.0.1:{shard_base + 1}"],
                                capture_output=True, text=True, timeout=60)
        assert status.returncode == 0, status.stderr
        # The proxy runs nfsj's default data plane.
        assert json.loads((tmp_path / "data" / "log" / "status.json").read_text())["data_plane"] == "native"
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "nfsj up: stopped" in out
    # Every child is gone: nothing listens on the stack's ports any more
    # (SO_REUSEADDR: connections left in TIME_WAIT do not count).
    for p in (shard_base, shard_base + 1, port):
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("127.0.0.1", p))
