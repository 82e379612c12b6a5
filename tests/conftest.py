"""Shared fixtures: a real nfs-ganesha NAS on loopback and independent NFS clients.

Tests that need ganesha carry the `ganesha` marker (tests that use the `nas`
fixture get it automatically, so `-m ganesha` selects them). When ganesha or
the client tools are missing those tests FAIL: CI must prove that the
end-to-end suite ran. Set NFSJ_ALLOW_SKIP_GANESHA=1 to skip them instead on a
machine without the packages.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Iterator

import pytest

from nfsproxy.demo.ganesha import GaneshaInstance, GaneshaNotInstalledError, find_ganesha, start_ganesha

ALLOW_SKIP_ENV = "NFSJ_ALLOW_SKIP_GANESHA"
LIBNFS_UTILS = ("nfs-ls", "nfs-cp", "nfs-cat")

# Short client deadlines: a dead server otherwise makes every nfs-rs call wait
# out its (unbounded) operation timeout.
NFS_RS_CONNECT_TIMEOUT_S = 5.0
NFS_RS_OPERATION_TIMEOUT_S = 15.0


def _missing_prerequisite(reason: str) -> None:
    if os.environ.get(ALLOW_SKIP_ENV) == "1":
        pytest.skip(reason)
    pytest.fail(f"{reason} (or set {ALLOW_SKIP_ENV}=1 to skip the tests that need it)",
                pytrace=False)


def _require_ganesha() -> None:
    try:
        find_ganesha()
    except GaneshaNotInstalledError as e:
        reason = str(e)
    else:
        return
    _missing_prerequisite(reason)  # outside the except: no chained traceback


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects by marker
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if "nas" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.ganesha)


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("ganesha") is None:
        return
    _require_ganesha()


@pytest.fixture
def nas(tmp_path: Path) -> Iterator[GaneshaInstance]:
    """A fresh ganesha serving a fresh, empty directory as /export (NFSv3 and v4).

    `nas.export_dir` is the local directory behind the export: read it to
    compare trees, but do not change it while ganesha serves (TESTBED.md).
    """
    _require_ganesha()
    instance = start_ganesha(tmp_path / "export", tmp_path / "ganesha")
    try:
        yield instance
    finally:
        instance.stop()


@pytest.fixture
def nfs_rs_client(nas: GaneshaInstance):
    """An nfs-rs NFSv3 client of `nas`'s export, with short timeouts."""
    nfs_rs = _import_nfs_rs()
    client = nfs_rs.Client.connect(
        nas.url(version=3),
        connect_timeout=NFS_RS_CONNECT_TIMEOUT_S,
        operation_timeout=NFS_RS_OPERATION_TIMEOUT_S,
    )
    try:
        yield client
    finally:
        client.close()


def _import_nfs_rs():
    try:
        import nfs_rs
    except ImportError:
        nfs_rs = None
    if nfs_rs is None:
        _missing_prerequisite("nfs_rs is not installed (python3 -m pip install -e '.[test]')")
    return nfs_rs


@pytest.fixture(scope="session")
def libnfs_utils() -> dict[str, str]:
    """Paths of the libnfs-utils programs (nfs-ls, nfs-cp, nfs-cat)."""
    paths = {name: shutil.which(name) for name in LIBNFS_UTILS}
    missing = sorted(name for name, path in paths.items() if path is None)
    if missing:
        _missing_prerequisite(
            f"{', '.join(missing)} not found; install with `apt-get install libnfs-utils`")
    return paths
