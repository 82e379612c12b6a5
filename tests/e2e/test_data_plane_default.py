"""Which relay `nfsj proxy` runs when it is not told: the native one, but the
Python one with `--portmap` (only it relays NLM); the proxy says which in its
status (status.json, `nfsj status --log`)."""

from __future__ import annotations

import json
import subprocess
import sys

import nfs_rs
import pytest

from e2e import proxy_fixture

pytestmark = pytest.mark.ganesha


@pytest.fixture(autouse=True)
def nfsj_default():
    """These proxies get no --data-plane from NFSJ_DATA_PLANE: the point is nfsj's own choice."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(proxy_fixture, "DATA_PLANE", None)
        yield


def _plane(proxy) -> str:
    return json.loads((proxy.log_dir / "status.json").read_text())["data_plane"]


def _serves(proxy, nas) -> None:
    client = nfs_rs.Client.connect(proxy.url())
    with client.open("/made", "w+b") as f:
        f.write_at(b"relayed", 0)
    assert (nas.export_dir / "made").read_bytes() == b"relayed"


def test_a_proxy_runs_the_native_plane_unless_told(nas, proxy_factory):
    proxy = proxy_factory()
    assert "--data-plane" not in proxy.proc.args
    assert _plane(proxy) == "native"
    _serves(proxy, nas)
    status = subprocess.run([sys.executable, "-m", "nfsproxy", "status", "--log", str(proxy.log_dir)],
                            capture_output=True, text=True, timeout=60)
    assert "data plane native" in status.stdout, status.stdout + status.stderr


def test_portmap_picks_the_python_plane_which_relays_nlm(nas, proxy_factory):
    proxy = proxy_factory(extra=["--portmap", "127.0.0.1:0"])
    assert _plane(proxy) == "python"
    _serves(proxy, nas)


def test_python_is_still_chosen_by_name(nas, proxy_factory):
    proxy = proxy_factory(extra=["--data-plane", "python"])
    assert _plane(proxy) == "python"
    _serves(proxy, nas)
