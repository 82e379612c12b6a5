"""`recoveryd.restore.local.rename_noreplace`: the restore's final move never replaces anything."""

from __future__ import annotations

import os

import pytest

from recoveryd.restore import local as restore


@pytest.fixture(params=["renameat2", "fallback"])
def mover(request, monkeypatch):
    """The primitive as the kernel offers it, and its fallback (no renameat2)."""
    if request.param == "fallback":
        monkeypatch.setattr(restore, "_renameat2", lambda: None)
    elif restore._renameat2() is None:  # noqa: SLF001
        pytest.skip("this libc has no renameat2")
    return restore.rename_noreplace


def test_moves_to_a_free_name(mover, tmp_path):
    (tmp_path / "f").write_bytes(b"restored")
    os.symlink("target", tmp_path / "l")
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "inside").write_bytes(b"x")
    for name in ("f", "l", "d"):
        mover(tmp_path / name, tmp_path / f"{name}2")
        assert not os.path.lexists(tmp_path / name)
    assert (tmp_path / "f2").read_bytes() == b"restored"
    assert os.readlink(tmp_path / "l2") == "target"
    assert (tmp_path / "d2" / "inside").read_bytes() == b"x"


@pytest.mark.parametrize("existing", ["file", "empty dir", "dangling symlink"])
@pytest.mark.parametrize("kind", ["file", "dir"])
def test_refuses_an_existing_name_and_leaves_both(mover, tmp_path, existing, kind):
    src, dst = tmp_path / "src", tmp_path / "dst"
    if kind == "file":
        src.write_bytes(b"restored")
    else:
        src.mkdir()
    if existing == "file":
        dst.write_bytes(b"someone else's")
    elif existing == "empty dir":
        dst.mkdir()
    else:
        os.symlink("nowhere", dst)
    before = os.lstat(dst)
    with pytest.raises(OSError):
        mover(src, dst)
    after = os.lstat(dst)
    assert (after.st_ino, after.st_mode) == (before.st_ino, before.st_mode)
    assert os.path.lexists(src)
