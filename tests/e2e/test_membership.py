"""Membership and retirement (issue 10, item 7), with real processes.

Real nfs-ganesha, real `nfsj recoveryd` shards and real `nfsj proxy`
processes; the `nfsj` commands a user types.

* A shard configured with its members (`--member NODE_ID`) holds the
  consistent point back while a member has no stream on it: after a wiped
  single shard is rebuilt by one proxy, the other proxy's records are still
  missing, and nothing is called proven until that proxy re-registers and
  ships again. Then a restore equals the NAS.
* `nfsj retire --log OLD_LOG` drops a proxy's old LOG (it moved to a new
  one) from the frontier once the shards hold all of it, so the consistent
  point moves again; while the shards miss some of its records, retire is
  refused.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from e2e.journal_cli import baseline, moment, nfsj, point_of, restore, status, wait_proven
from e2e.treecompare import diff, snapshot
from e2e.workload import connect
from recoveryd.status import read_proxy_status

pytestmark = [pytest.mark.ganesha, pytest.mark.timeout(900)]

WAIT_S = 120.0


def write_files(proxy, files: dict[str, bytes]) -> None:
    with connect(proxy.url()) as client:
        for path, data in files.items():
            with client.open(path, "w+b") as f:
                f.write_at(data, 0)


def wait_shipped(proxy) -> int:
    """Wait until every shard acked the proxy's whole LOG; returns its last seq.

    Only a status file written after the call counts: the proxy rewrites it
    once a second, and an older one may predate the records just written."""
    asked_ns = time.time_ns()
    deadline = time.monotonic() + WAIT_S
    while True:
        view = read_proxy_status(proxy.log_dir)
        if view["written_unix_ns"] > asked_ns and view["shards"] and all(
                s["acked_seq"] == view["last_seq"] for s in view["shards"]):
            return view["last_seq"]
        assert time.monotonic() < deadline, view
        time.sleep(0.2)


def test_wiped_shard_holds_the_point_until_every_member_registers(nas, shard_factory,
                                                                   proxy_factory, tmp_path: Path):
    shard = shard_factory(0, extra=["--member", "1", "--member", "2"])
    shard_args = ["--shard", shard.address]
    a = proxy_factory(extra=[*shard_args, "--node-id", "1"])
    b = proxy_factory(extra=[*shard_args, "--node-id", "2"])
    baseline(a.log_dir)
    write_files(a, {f"a-{i}": bytes([65 + i]) * 6000 for i in range(3)})
    write_files(b, {f"b-{i}": bytes([97 + i]) * 6000 for i in range(3)})
    at = moment()
    truth = snapshot(nas.export_dir)
    wait_proven(shard_args, at)

    # Both proxies stop; the shard loses its disk and comes back empty.
    a.stop()
    b.stop()
    shard.kill()
    shard.wipe()
    shard.start()
    view = status(shard_args)
    assert point_of(view) is None and "member node 1" in view["consistent_point_reason"], view

    # Proxy A comes back first and rebuilds the shard from its LOG. B's
    # records are still missing, so nothing may be called proven.
    a.start()
    wait_shipped(a)
    view = status(shard_args)
    assert point_of(view) is None, view
    assert "member node 2 has no stream" in view["consistent_point_reason"], view
    done = nfsj("restore", "--at", str(at), "--to", str(tmp_path / "early"), "--quiet", *shard_args)
    assert done.returncode != 0 and "member node 2" in done.stderr, done.stderr
    assert not (tmp_path / "early").exists() or not any((tmp_path / "early").iterdir())

    # B re-registers and ships its LOG again: now `at` is proven, and the
    # restore holds both proxies' files.
    b.start()
    wait_shipped(b)
    wait_proven(shard_args, at)
    restore(shard_args, at, tmp_path / "restored")
    assert diff(truth, snapshot(tmp_path / "restored"), names=("NAS", "restore")) == []


def test_retire_an_old_log_once_it_is_held(nas, shard_factory, proxy_factory, tmp_path: Path):
    shard = shard_factory(0, extra=["--member", "7"])
    shard_args = ["--shard", shard.address]
    old = proxy_factory(extra=[*shard_args, "--node-id", "7"], log_dir=tmp_path / "old-log")
    baseline(old.log_dir)
    write_files(old, {f"old-{i}": bytes([65 + i]) * 5000 for i in range(3)})
    wait_proven(shard_args, moment())

    # The shard goes away while the old LOG still takes records; then the
    # proxy stops for good. The shard misses the tail: retire is refused.
    shard.stop()
    write_files(old, {f"tail-{i}": bytes([48 + i]) * 5000 for i in range(3)})
    old.stop()
    shard.start()
    done = nfsj("retire", "--log", str(old.log_dir), *shard_args)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "not retiring" in done.stderr and "only through seq" in done.stderr, done.stderr

    # The old LOG drains once more, then the proxy moves to a new LOG.
    old.start()
    last = wait_shipped(old)
    old.stop()
    new = proxy_factory(extra=[*shard_args, "--node-id", "7"], log_dir=tmp_path / "new-log")
    write_files(new, {f"new-{i}": bytes([97 + i]) * 5000 for i in range(3)})
    at = moment()
    truth = snapshot(nas.export_dir)
    wait_shipped(new)
    time.sleep(1.0)  # heartbeats of the new LOG carry stable stamps past `at`
    view = status(shard_args)
    assert point_of(view) is not None and point_of(view) < at, view
    assert f"7/{read_proxy_status(old.log_dir)['log_id']}" in view["consistent_point_reason"]

    done = nfsj("retire", "--log", str(old.log_dir), *shard_args)
    assert done.returncode == 0, done.stderr
    assert f"through seq {last}" in done.stdout, done.stdout
    view = wait_proven(shard_args, at)
    assert len(view["shards"][0]["streams"]) == 1
    restore(shard_args, at, tmp_path / "restored")
    assert diff(truth, snapshot(tmp_path / "restored"), names=("NAS", "restore")) == []

    # A retired stream may not ship again: the old proxy's hello is refused.
    old.start()
    deadline = time.monotonic() + WAIT_S
    while "was retired" not in old.stderr_text():
        assert time.monotonic() < deadline, old.stderr_text()[-3000:]
        time.sleep(0.2)
    old.stop()
    assert point_of(status(shard_args)) > at
