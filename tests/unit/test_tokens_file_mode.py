"""The restore tokens file must stay private: checked at start and at every reload.

Reloads happen when the file changes (a chmod changes its ctime), so a file
that becomes readable by group or others is refused from the next call on,
with one log line saying why, until it is private again.
"""

from __future__ import annotations

import logging
import os

import pytest

from recoveryd.security import RestoreAuth, SecurityError

GOOD = "good-token-0123456789abcdef"
META = (("authorization", f"Bearer {GOOD}"),)


def private_tokens(tmp_path) -> str:
    path = tmp_path / "restore-tokens"
    path.write_text(f"{GOOD}\n")
    path.chmod(0o600)
    return str(path)


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o620, 0o602, 0o644, 0o666])
def test_a_tokens_file_that_others_can_get_at_stops_the_shard(tmp_path, mode):
    path = private_tokens(tmp_path)
    os.chmod(path, mode)
    with pytest.raises(SecurityError, match=f"mode {mode:04o}.*chmod 600"):
        RestoreAuth(path)


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o622])
def test_a_tokens_file_that_becomes_readable_is_refused_until_private(tmp_path, caplog, mode):
    path = private_tokens(tmp_path)
    auth = RestoreAuth(path)
    assert auth.refusal(META, {}) is None
    os.chmod(path, mode)
    with caplog.at_level(logging.ERROR, logger="recoveryd.security"):
        assert auth.refusal(META, {}) is not None
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert any(f"mode {mode:04o}" in line and "chmod 600" in line and "every token is refused" in line
               for line in lines), lines
    assert auth.refusal(META, {}) is not None  # still refused, not logged again
    os.chmod(path, 0o600)
    assert auth.refusal(META, {}) is None


def test_a_private_tokens_file_owner_bits_do_not_matter(tmp_path):
    path = private_tokens(tmp_path)
    os.chmod(path, 0o400)
    auth = RestoreAuth(path)
    os.chmod(path, 0o700)
    assert auth.refusal(META, {}) is None
