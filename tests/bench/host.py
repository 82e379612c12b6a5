"""The machine a benchmark ran on, for the first line of its output."""

from __future__ import annotations

import importlib.metadata
import mmap
import os
import platform
import re
import subprocess
import time
from pathlib import Path

__all__ = ["process_cpu_s", "host_line", "filesystem", "git_head", "dist_version", "dpkg_version", "prewarm_memory",
           "free_page_reporting"]


def host_line() -> str:
    """`machine: ...; cpu: ...; cores: N; memory: ...; load average before start: ...`."""
    cpu, virt = platform.processor() or "?", ""
    try:
        info = Path("/proc/cpuinfo").read_text()
        m = re.search(r"^model name\s*:\s*(.+)$", info, re.M)
        cpu = m.group(1).strip() if m else cpu
        if re.search(r"^flags\s*:.*\bhypervisor\b", info, re.M):
            virt = " (virtual machine)"
    except OSError:
        pass
    mem = "?"
    try:
        m = re.search(r"^MemTotal:\s+(\d+) kB", Path("/proc/meminfo").read_text(), re.M)
        mem = f"{int(m.group(1)) / (1 << 20):.1f} GiB" if m else "?"
    except OSError:
        pass
    load = " ".join(Path("/proc/loadavg").read_text().split()[:3]) if os.path.exists("/proc/loadavg") else "?"
    reporting = ("; free page reporting: on (guest memory freed goes back to the host, and "
                 "its next first touch is a host fault)" if free_page_reporting() else "")
    return (f"machine: {platform.platform()}; cpu: {cpu}{virt}; cores: {os.cpu_count()}; "
            f"memory: {mem}; load average before start: {load}{reporting}")


_VIRTIO_ID_BALLOON = 5
_VIRTIO_BALLOON_F_REPORTING = 5


def free_page_reporting() -> bool:
    """Whether a virtio balloon reports this guest's free pages to the host.

    The host may then drop them, so memory a process frees (a deleted file's
    page cache too) can cost a host fault per page when it is used again: on
    the 2-core test VM, 18 GiB touched took 71-78 s (twice in a row), 2 GiB
    touched right after 2 GiB was freed 1.2 s. Runs that take fresh memory
    (large writes into new files, a new process's heap) are slowed by it."""
    for dev in Path("/sys/bus/virtio/devices").glob("*"):
        try:
            if int((dev / "device").read_text(), 16) != _VIRTIO_ID_BALLOON:
                continue
            features = (dev / "features").read_text().strip()
        except (OSError, ValueError):
            continue
        if len(features) > _VIRTIO_BALLOON_F_REPORTING and features[_VIRTIO_BALLOON_F_REPORTING] == "1":
            return True
    return False


def filesystem(path: Path) -> str:
    """The filesystem holding `path`, e.g. `ext4 (/dev/vda mounted on /)`."""
    best, fs = "", "?"
    try:
        for line in Path("/proc/mounts").read_text().splitlines():
            dev, mnt, kind = line.split()[:3]
            if (str(path) + "/").startswith(mnt.rstrip("/") + "/") and len(mnt) > len(best):
                best, fs = mnt, f"{kind} ({dev} mounted on {mnt})"
    except OSError:
        pass
    return fs


def git_head(repo: Path) -> str:
    """The commit measured, and whether the code under test differs from it (read-only git)."""
    try:
        out = subprocess.run(["git", "-C", str(repo), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, timeout=10)
        head = out.stdout.strip() or "?"
        dirty = subprocess.run(["git", "-C", str(repo), "diff", "--quiet", "HEAD", "--",
                                "nfsproxy", "recoveryd", "logstore"], capture_output=True, timeout=10)
        return head + (" + uncommitted changes" if dirty.returncode == 1 else "")
    except (OSError, subprocess.TimeoutExpired):
        return "?"


def dist_version(dist: str) -> str:
    """A Python distribution's version, or `?`."""
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "?"


def dpkg_version(package: str) -> str:
    """A Debian package's version, or `?`."""
    try:
        out = subprocess.run(["dpkg-query", "-W", "-f=${Version}", package],
                             capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or "?"
    except (OSError, subprocess.TimeoutExpired):
        return "?"


def prewarm_memory(nbytes: int) -> float:
    """Touch `nbytes` of anonymous memory once; returns the seconds it took.

    On a VM, never-touched guest pages make the first page-cache writes several
    times slower; touching them up front keeps that one-off cost out of
    whichever measured run would hit it first.
    """
    t0 = time.perf_counter()
    area = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    try:
        chunk = b"\1" * (64 << 20)
        for offset in range(0, nbytes, len(chunk)):
            area[offset:offset + len(chunk)] = chunk[:nbytes - offset]
    finally:
        area.close()
    return time.perf_counter() - t0


def process_cpu_s(pid: int) -> float:
    """utime + stime of a whole process (all threads, live and ended), in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
