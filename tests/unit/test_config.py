"""Configuration precedence: flag > NFSJ_* environment > --config file > default."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from nfsproxy.cli import app
from nfsproxy.daemon.config import default_map
from nfsproxy.daemon.config import ConfigError

runner = CliRunner()

COMMANDS = {"proxy": {"listen", "backend", "shard"}, "status": {"shard", "json"}}


def test_tables_and_top_level_keys_become_defaults():
    found = default_map({"shard": ["a:1"], "proxy": {"listen": "x:1", "log-retain": None} | {}},
                        {**COMMANDS, "proxy": COMMANDS["proxy"] | {"log_retain"}}, source="f")
    assert found["proxy"] == {"listen": "x:1", "log_retain": None, "shard": ["a:1"]}
    assert found["status"] == {"shard": ["a:1"]}


@pytest.mark.parametrize("config, named", [
    ({"proxi": {"listen": "x"}}, "[proxi] is not a command"),
    ({"proxy": {"listn": "x"}}, "proxy.listn is not an option"),
    ({"nonsense": 1}, "top-level key 'nonsense'"),
])
def test_a_bad_key_is_named(config, named):
    with pytest.raises(ConfigError, match=named.replace("[", r"\[").replace("]", r"\]")):
        default_map(config, COMMANDS, source="f")


def test_config_check_names_the_bad_key(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[proxy]\nlistn = "0.0.0.0:2049"\n')
    result = runner.invoke(app, ["config", "check", str(bad)])
    assert result.exit_code != 0
    good = tmp_path / "good.toml"
    good.write_text('shard = ["127.0.0.1:7400"]\n[proxy]\nlisten = "127.0.0.1:2049"\n')
    result = runner.invoke(app, ["config", "check", str(good)])
    assert result.exit_code == 0, result.output
    assert "proxy: listen, shard" in result.output


def _status_json(args, env=None):
    # `status` with an unreachable shard prints it as down, naming the address it used.
    return runner.invoke(app, args, env=env or {})


def test_precedence_flag_over_env_over_file(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text('[status]\nshard = ["127.0.0.1:1"]\n')
    from_file = _status_json(["--config", str(cfg), "status", "--json"])
    assert "127.0.0.1:1" in from_file.output
    from_env = _status_json(["--config", str(cfg), "status", "--json"], env={"NFSJ_STATUS_SHARD": "127.0.0.1:2"})
    assert "127.0.0.1:2" in from_env.output and "127.0.0.1:1" not in from_env.output
    from_flag = _status_json(["--config", str(cfg), "status", "--json", "--shard", "127.0.0.1:3"],
                             env={"NFSJ_STATUS_SHARD": "127.0.0.1:2"})
    assert "127.0.0.1:3" in from_flag.output and "127.0.0.1:2" not in from_flag.output
