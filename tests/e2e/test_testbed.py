"""The test bed itself: ganesha on loopback, served to independent NFS clients.

If these fail, every other end-to-end failure is suspect.
"""

from __future__ import annotations

import os
import socket
import stat
import subprocess

import pytest

from nfsproxy.demo.ganesha import EXPORT_PATH, GaneshaError, rpcbind_running, start_ganesha

pytestmark = pytest.mark.ganesha

TOOL_TIMEOUT_S = 60


def _run(argv: list[str], **kw) -> subprocess.CompletedProcess:
    done = subprocess.run(argv, capture_output=True, timeout=TOOL_TIMEOUT_S, **kw)
    assert done.returncode == 0, (
        f"{argv} exited {done.returncode}: stdout={done.stdout[-2000:]!r} "
        f"stderr={done.stderr[-2000:]!r}")
    return done


def test_nas_fixture_shape(nas):
    assert nas.running
    assert nas.nfs_port != nas.mount_port
    assert nas.export_path == EXPORT_PATH == "/export"
    assert nas.export_dir.is_dir() and not any(nas.export_dir.iterdir())
    assert nas.url() == (f"nfs://127.0.0.1/export?version=3"
                         f"&nfsport={nas.nfs_port}&mountport={nas.mount_port}")
    assert nas.url(version=4).startswith("nfs://127.0.0.1/export?version=4&")
    assert rpcbind_running()
    for port in (nas.nfs_port, nas.mount_port):
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass
    assert "NFS SERVER INITIALIZED" in nas.log_path.read_text(errors="replace")


def test_nfs_rs_mkdir_write_read_stat(nas, nfs_rs_client):
    c = nfs_rs_client
    assert str(c.version.value) == "3"
    c.mkdir("dir")
    payload = os.urandom(300_000)
    with c.open("dir/file.bin", "wb") as f:
        f.write(payload)
    with c.open("dir/file.bin", "r+b") as f:
        f.write_at(b"HELLO", 1000)
    expected = payload[:1000] + b"HELLO" + payload[1005:]
    with c.open("dir/file.bin", "rb") as f:
        assert f.read() == expected
    info = c.stat("dir/file.bin")
    assert info.size == len(expected)
    assert info.type.value == "file"
    assert c.stat("dir").type.value == "directory"
    assert c.listdir("dir") == ["file.bin"]

    # The same bytes are in the directory ganesha exports.
    local = nas.export_dir / "dir" / "file.bin"
    assert local.read_bytes() == expected
    assert stat.S_ISDIR((nas.export_dir / "dir").stat().st_mode)


def test_libnfs_utils(nas, libnfs_utils, tmp_path):
    src = tmp_path / "src.bin"
    src.write_bytes(os.urandom(2 * 1024 * 1024 + 123))
    _run([libnfs_utils["nfs-cp"], str(src), nas.url(path="copied.bin")])
    assert (nas.export_dir / "copied.bin").read_bytes() == src.read_bytes()

    listing = _run([libnfs_utils["nfs-ls"], nas.url()], text=True).stdout
    assert "copied.bin" in listing

    (tmp_path / "back.bin").unlink(missing_ok=True)
    _run([libnfs_utils["nfs-cp"], nas.url(path="copied.bin"), str(tmp_path / "back.bin")])
    assert (tmp_path / "back.bin").read_bytes() == src.read_bytes()

    cat = _run([libnfs_utils["nfs-cat"], nas.url(path="copied.bin")]).stdout
    assert cat == src.read_bytes()


def test_two_instances_side_by_side(nas, nfs_rs_client, tmp_path):
    """Each instance re-registers with rpcbind; explicit ports keep both reachable."""
    with start_ganesha(tmp_path / "other-export", tmp_path / "other-ganesha") as other:
        assert {other.nfs_port, other.mount_port}.isdisjoint({nas.nfs_port, nas.mount_port})
        import nfs_rs

        with nfs_rs.Client.connect(other.url(), connect_timeout=5, operation_timeout=15) as c2:
            c2.mkdir("only-in-other")
        nfs_rs_client.mkdir("only-in-first")
    assert not other.running
    assert (tmp_path / "other-export" / "only-in-other").is_dir()
    assert sorted(os.listdir(nas.export_dir)) == ["only-in-first"]
    # The first one still serves after the second unregistered itself.
    assert nfs_rs_client.listdir() == ["only-in-first"]


def test_start_failure_reports_log_tail(tmp_path):
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    try:
        with pytest.raises(GaneshaError) as err:
            start_ganesha(tmp_path / "export", tmp_path / "ganesha",
                          nfs_port=busy.getsockname()[1], start_timeout_s=20)
    finally:
        busy.close()
    assert "Address already in use" in str(err.value)
