"""The `nfsj` commands a user types, for end-to-end tests of a whole stack:
status, baseline, restore, retire; and waiting for the consistent point."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from logstore.stamp import Stamp

NFSJ = [sys.executable, "-m", "nfsproxy"]
M32 = (1 << 32) - 1
HANG_S = 120.0  # a wait longer than this is a hang, not slowness


def nfsj(*args: str, timeout_s: float = 120.0) -> subprocess.CompletedProcess:
    return subprocess.run([*NFSJ, *args], capture_output=True, text=True, timeout=timeout_s)


def status(shard_args: list[str], *extra: str) -> dict:
    """`nfsj status --json` (exit 1 only when a shard is down)."""
    done = nfsj("status", *shard_args, *extra, "--json")
    assert done.returncode in (0, 1), done.stderr
    return json.loads(done.stdout)


def point_of(view: dict) -> Stamp | None:
    point = view["consistent_point"]
    return Stamp.parse(point["stamp"]) if point else None


def moment() -> Stamp:
    """A query stamp above everything stamped so far (a bound, not a clock reading)."""
    time.sleep(0.05)
    at = Stamp(time.time_ns(), M32, M32)
    time.sleep(0.05)
    return at


def wait_proven(shard_args: list[str], at: Stamp, *extra: str) -> dict:
    """Wait until the consistent point passes `at`; returns the status view."""
    deadline = time.monotonic() + HANG_S
    while True:
        view = status(shard_args, *extra)
        point = point_of(view)
        if point is not None and point > at:
            return view
        assert time.monotonic() < deadline, f"the consistent point never passed {at}: {view}"
        time.sleep(0.2)


def baseline(log_dir: Path) -> None:
    done = nfsj("baseline", "--log", str(log_dir), "--quiet")
    assert done.returncode == 0, done.stderr


def restore(shard_args: list[str], at: Stamp, to: Path, *extra: str) -> None:
    done = nfsj("restore", "--at", str(at), "--to", str(to), "--quiet", *shard_args, *extra)
    assert done.returncode == 0, done.stderr


__all__ = ["nfsj", "status", "point_of", "moment", "wait_proven", "baseline", "restore", "M32"]
