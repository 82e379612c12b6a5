"""`nfsj proxy --data-plane`: the native relay by default; the Python one
with `--portmap` (only it relays NLM), and never both native and `--portmap`.
That a proxy really runs the plane chosen is checked end to end
(tests/e2e/test_data_plane_default.py)."""

from __future__ import annotations

import pytest
import typer
from typer.testing import CliRunner

from nfsproxy.cli import app
from nfsproxy.cli.proxy import data_plane_for
from nfsproxy.daemon.proxyd import ProxyOptions


@pytest.mark.parametrize("given, portmap, plane", [
    (None, [], "native"),
    (None, ["0.0.0.0:111"], "python"),
    ("python", [], "python"),
    ("python", ["0.0.0.0:111"], "python"),
    ("native", [], "native"),
])
def test_the_plane_a_proxy_runs(given, portmap, plane):
    assert data_plane_for(given, portmap) == plane


def test_the_daemon_defaults_to_the_native_plane():
    assert ProxyOptions("127.0.0.1", 0, "nas:/export", "/tmp/log").data_plane == "native"


def test_native_with_portmap_is_refused_naming_the_way_out():
    with pytest.raises(typer.BadParameter, match="use --data-plane python"):
        data_plane_for("native", ["0.0.0.0:111"])


def test_the_refusal_is_a_usage_error_before_anything_starts(tmp_path):
    result = CliRunner().invoke(app, ["proxy", "--backend", "127.0.0.1:1:1:/export",
                                      "--log", str(tmp_path / "log"), "--data-plane", "native",
                                      "--portmap", "127.0.0.1"])
    assert result.exit_code == 2
    errors = [line for line in result.output.splitlines() if "Error" in line]
    assert len(errors) == 1 and "use --data-plane python" in errors[0], result.output
    assert not (tmp_path / "log").exists()  # refused before the LOG was opened


def test_an_unknown_plane_is_named():
    with pytest.raises(typer.BadParameter, match="'rust' is not one of native, python"):
        data_plane_for("rust", [])
