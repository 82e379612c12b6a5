"""nfsproxy/cli/progress.py: plain lines off a terminal, a bar redrawn in place on one."""

from __future__ import annotations

import io

from nfsproxy.cli.progress import Progress, human_bytes


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_plain_lines_every_interval_and_a_final_line():
    out, clock = io.StringIO(), Clock()
    shown = Progress("restore", stream=out, tty=False, interval_s=10, clock=clock)
    shown.update(done_bytes=0, total_bytes=4 << 20, done_items=0, total_items=4, phase="files")
    assert out.getvalue() == ""  # nothing in the first interval: a quick failure stays one line
    for k in range(1, 5):
        clock.now += 6
        shown.update(done_bytes=k << 20, done_items=k, current=f"/f{k}")
    lines = out.getvalue().splitlines()
    assert lines == ["restore (files): 2/4 files, 2.0 MiB/4.0 MiB, 50%, 0.2 MB/s, 12s: /f2",
                     "restore (files): 4/4 files, 4.0 MiB/4.0 MiB, 100%, 0.2 MB/s, 24s: /f4"]
    shown.finish("4 files (4194304 bytes) to /dest")
    assert out.getvalue().splitlines()[-1] == "restore: done: 4 files (4194304 bytes) to /dest in 24.0s"
    assert "\r" not in out.getvalue() and "\x1b" not in out.getvalue()


def test_a_bar_on_a_terminal_is_redrawn_in_place_and_erased():
    out, clock = io.StringIO(), Clock()
    shown = Progress("push", items="objects", stream=out, tty=True, clock=clock)
    shown.update(done_bytes=10, done_items=1, current="/a")
    clock.now += 0.01
    shown.update(done_bytes=20, done_items=2)      # too soon: not drawn
    clock.now += 1
    shown.update(done_bytes=30, done_items=3)
    shown.finish("3 objects")
    text = out.getvalue()
    assert text.count("\r\x1b[K") == 3             # two draws, one erase
    assert "1 objects" in text and "3 objects" in text and "2 objects" not in text
    assert text.endswith("\r\x1b[K") and "\n" not in text


def test_quiet_shows_nothing_but_notes():
    out = io.StringIO()
    shown = Progress("baseline", stream=out, tty=False, interval_s=0, quiet=True)
    shown.update(done_bytes=1, done_items=1)
    shown.note("waiting: another baseline is running on this proxy")
    shown.finish()
    assert out.getvalue() == "waiting: another baseline is running on this proxy\n"


def test_human_bytes():
    assert [human_bytes(n) for n in (0, 1023, 1024, 3 << 30)] == ["0 B", "1023 B", "1.0 KiB", "3.0 GiB"]
