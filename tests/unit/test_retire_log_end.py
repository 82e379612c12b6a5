"""`nfsj retire --log`: which LOG ends may be retired (recoveryd.retire.log_end)."""

from __future__ import annotations

import pytest

from logstore.log import Log
from recoveryd.retire import RetireError, log_end


def test_a_log_that_stopped_cleanly_ends_at_its_last_seq(tmp_path):
    with Log.open(tmp_path) as log:
        log.append(b"one")
        log.append(b"two")
    (tmp_path / "node_id").write_text("7\n")
    key, last = log_end(str(tmp_path))
    assert (key.node_id, last) == (7, 2)


def test_a_log_whose_proxy_did_not_stop_cleanly_is_not_retired(tmp_path):
    """Its next start would mark the gap and rebuild records from write-ahead
    intents; retiring it first would lose both without a word."""
    with Log.open(tmp_path) as log:
        log.append(b"one")
    (tmp_path / "node_id").write_text("7\n")
    (tmp_path / "RUNNING").write_text("1\n")
    with pytest.raises(RetireError, match="did not stop cleanly.*start `nfsj proxy`"):
        log_end(str(tmp_path))
