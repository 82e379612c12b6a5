"""The machine a benchmark ran on, for the first line of its output."""

from __future__ import annotations

import os
import platform
import re
from pathlib import Path

__all__ = ["host_line"]


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
    return (f"machine: {platform.platform()}; cpu: {cpu}{virt}; cores: {os.cpu_count()}; "
            f"memory: {mem}; load average before start: {load}")
