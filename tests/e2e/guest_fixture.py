"""The Linux kernel NFS client under qemu, as pytest fixtures (tests/kernel_guest.py).

The kernel image is built once per session (and cached across sessions). When
qemu, busybox or the kernel package cannot be had, the tests that need them
FAIL, like the ganesha tests: CI must prove that they ran.
NFSJ_ALLOW_SKIP_GANESHA=1 skips them instead.
"""

from __future__ import annotations

import os

import pytest

from kernel_guest import Guest, GuestUnavailable, build_image


@pytest.fixture(scope="session")
def kernel_image():
    try:
        return build_image()
    except GuestUnavailable as e:
        reason = f"the kernel NFS client test bed is unavailable: {e}"
    if os.environ.get("NFSJ_ALLOW_SKIP_GANESHA") == "1":
        pytest.skip(reason)
    pytest.fail(reason, pytrace=False)


@pytest.fixture
def guest(kernel_image, tmp_path):
    """A `Guest` booting the kernel client; `guest.run(script, mounts)` -> GuestResult."""
    return Guest(kernel_image, tmp_path / "guest")


__all__ = ["kernel_image", "guest"]
