"""A restore never replaces what someone else created at its destination meanwhile.

`nfsj restore --to DEST` checks DEST at the start, builds the tree beside it
and moves it into place at the end. Something may appear at DEST in
between (another restore, a user): the final move must refuse atomically,
not check and then rename. The tests below let the intruder appear after
the build and make every existence check miss it (as if it appeared just
after the check); the restore must refuse and leave the intruder alone.
Real shards and ganesha (the `scenario` of test_restore.py).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from e2e.test_restore import scenario  # noqa: F401  (the recorded stack, a pytest fixture)
from recoveryd.restore import local as restore_module
from recoveryd.restore import RestoreClient, RestoreRefused, Shards

pytestmark = pytest.mark.ganesha


def restore_with_intruder(s, monkeypatch, dest: Path, path: str, intrude) -> None:
    real_build = restore_module._build
    real_lexists = os.path.lexists

    def build_then_intrude(*args, **kwargs):
        real_build(*args, **kwargs)
        intrude(dest)

    monkeypatch.setattr(restore_module, "_build", build_then_intrude)
    monkeypatch.setattr(restore_module.os.path, "lexists",
                        lambda p: False if Path(p) == dest else real_lexists(p))
    with Shards(s.shards) as shards, RestoreClient(shards) as client:
        cut = client.cut(s.t2)
        with pytest.raises(RestoreRefused, match="never overwrites"):
            client.restore_to_dir(cut, dest, path=path)


def test_a_file_created_meanwhile_is_not_replaced(scenario, tmp_path, monkeypatch):  # noqa: F811
    dest = tmp_path / "k1"
    restore_with_intruder(scenario, monkeypatch, dest, "keep/k1",
                          lambda d: d.write_bytes(b"made by someone else meanwhile"))
    assert dest.read_bytes() == b"made by someone else meanwhile"
    assert [p.name for p in tmp_path.iterdir()] == ["k1"], "the temporary tree was left behind"


def test_a_directory_created_meanwhile_is_not_replaced(scenario, tmp_path, monkeypatch):  # noqa: F811
    dest = tmp_path / "keep"
    restore_with_intruder(scenario, monkeypatch, dest, "keep", lambda d: d.mkdir())
    assert dest.is_dir() and list(dest.iterdir()) == []
    assert [p.name for p in tmp_path.iterdir()] == ["keep"], "the temporary tree was left behind"
