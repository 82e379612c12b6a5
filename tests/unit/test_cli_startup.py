"""`nfsj` loads only what a command uses (`python -X importtime` names every
module a run imports), and its help stays complete. No timings here:
tests/bench/bench_cli.py measures them."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import typer.main

from nfsproxy.cli.catalog import COMMANDS, short_help

REPO = Path(__file__).resolve().parents[2]

#: What a help page or `nfsj status` must not load (grpc, protobuf, asyncio: tens of ms each).
NEVER_FOR_HELP = ("grpc", "google.protobuf", "rocksdict", "uvloop", "prometheus_client", "rich",
                  "pydantic", "asyncio", "recoveryd.restore", "recoveryd.store", "logstore.log",
                  "logstore.commit", "nfsproxy.relay.session", "nfsproxy.wire.nfs3", "crc32c",
                  "nfsproxy._dataplane", "logging", "tomllib")
NEVER_FOR_STATUS = tuple(m for m in NEVER_FOR_HELP
                         if m not in ("grpc", "google.protobuf", "asyncio", "logging"))


def imported(*args: str, env: dict | None = None) -> set[str]:
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "nfsproxy", *args],
                          capture_output=True, text=True, cwd=REPO, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})})
    return {m.group(1) for m in re.finditer(r"^import time:.*\|\s*(\S+)\s*$", done.stderr, re.M)}


def loaded(modules: set[str], forbidden: tuple[str, ...]) -> list[str]:
    return sorted(m for m in modules if any(m == f or m.startswith(f + ".") for f in forbidden))


@pytest.mark.parametrize("args", [["--help"], ["status", "--help"], ["restore", "--help"],
                                  ["cat", "--help"], ["baseline", "--help"], ["proxy", "--help"],
                                  ["recoveryd", "--help"], ["export", "--help"]])
def test_help_loads_nothing_heavy(args):
    modules = imported(*args)
    assert "nfsproxy.cli" in modules  # the run really was measured
    assert loaded(modules, NEVER_FOR_HELP) == []


def test_status_loads_grpc_but_no_store_restore_engine_or_pydantic():
    modules = imported("status", "--shard", "127.0.0.1:1", "--timeout", "0.2", "--json")
    assert "grpc" in modules
    assert loaded(modules, NEVER_FOR_STATUS) == []


def test_cat_loads_the_restore_client_but_no_server_tree_writer_or_bulk_path():
    # It fails at the cut (no shard answers) after it has loaded what a cat runs.
    modules = imported("cat", "f", "--at", "now", "--shard", "127.0.0.1:1")
    assert "recoveryd.restore.client" in modules and "recoveryd.restore.replay" in modules
    assert loaded(modules, ("recoveryd.restore_service", "recoveryd.store", "recoveryd.restore.bulk",
                            "recoveryd.restore.local", "recoveryd.restore.history", "rocksdict",
                            "nfsproxy._dataplane", "uvloop", "prometheus_client", "pydantic")) == []


def test_a_restore_to_a_directory_loads_no_nfs_client(tmp_path):
    # It fails at the cut (no shard answers) after the target options were checked.
    modules = imported("restore", "--at", "now", "--to", str(tmp_path / "out"), "--shard", "127.0.0.1:1")
    assert "nfsproxy.nas.target" in modules
    assert loaded(modules, ("nfsproxy.nas.pushback", "nfsproxy.nas.client", "nfsproxy.wire",
                            "nfsproxy.relay", "nfsproxy.daemon.address", "recoveryd.store", "rocksdict",
                            "nfsproxy._dataplane", "prometheus_client")) == []


def command_modules(modules: set[str]) -> set[str]:
    return {m.removeprefix("nfsproxy.cli.") for m in modules
            if m.startswith("nfsproxy.cli.") and m.removeprefix("nfsproxy.cli.") in COMMANDS}


def test_a_run_loads_its_own_command_only():
    assert command_modules(imported("--help")) == set()
    assert command_modules(imported("status", "--shard", "127.0.0.1:1", "--timeout", "0.2")) == {"status"}
    assert command_modules(imported("cat", "--help")) == {"cat"}
    assert command_modules(imported("config", "--help")) == {"config"}


def test_the_catalog_says_what_each_command_says_of_itself():
    from nfsproxy.cli import app

    group = typer.main.get_command(app)
    assert list(group.commands) == list(COMMANDS)
    for name, command in group.commands.items():
        assert command.get_short_help_str(10_000) == short_help(name), name
        assert command.name == name


def test_every_module_that_registers_a_command_is_in_the_catalog():
    # A command missing from the catalog would never be loaded, so never run.
    registering = {path.stem for path in (REPO / "nfsproxy" / "cli").glob("*.py")
                   if re.search(r"^@app\.command|^app\.add_typer", path.read_text(), re.M)}
    assert registering == {module for module, _ in COMMANDS.values()}


def test_config_options_are_checked_against_every_command(tmp_path):
    # --config needs every command's options: the lazy group builds them all then.
    config = tmp_path / "nfsj.toml"
    config.write_text('[status]\ntimeout = 0.2\n[restore]\nnot_an_option = 1\n')
    done = run_cli("--config", str(config), "status", "--shard", "127.0.0.1:1")
    assert done.returncode == 2 and "not_an_option" in done.stderr


def test_root_help_lists_every_command_and_each_help_every_option():
    from nfsproxy.cli import app

    group = typer.main.get_command(app)
    root = subprocess.run([sys.executable, "-m", "nfsproxy", "--help"], capture_output=True,
                          text=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}).stdout
    for name, command in group.commands.items():
        assert re.search(rf"^\s+{name}\s", root, re.M), name
        if not hasattr(command, "params") or name == "config":
            continue
        page = subprocess.run([sys.executable, "-m", "nfsproxy", name, "--help"], capture_output=True,
                              text=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}).stdout
        for param in command.params:
            for opt in getattr(param, "opts", []):
                if opt.startswith("--"):
                    assert opt in page, f"nfsj {name} --help lacks {opt}"


def test_constants_spelled_in_the_cli_match_their_homes():
    from logstore.commit import Durability
    from nfsproxy.cli import proxy, status
    from nfsproxy.daemon.heal import DEFAULT_HEAL_DELAY_S
    from nfsproxy.relay.journal import QuotaPolicy
    from nfsproxy.native.log import DEFAULT_SPARE_SEGMENTS
    from nfsproxy.ship.retention import DEFAULT_LOG_RETAIN
    from recoveryd.status import DEFAULT_TIMEOUT_S

    assert status.DEFAULT_TIMEOUT_S == DEFAULT_TIMEOUT_S
    assert proxy.DEFAULT_LOG_RETAIN == DEFAULT_LOG_RETAIN
    assert proxy.DEFAULT_LOG_SPARES == DEFAULT_SPARE_SEGMENTS
    assert proxy.DEFAULT_HEAL_DELAY_S == DEFAULT_HEAL_DELAY_S
    assert set(proxy.DURABILITIES) == {d.value for d in Durability}
    assert set(proxy.QUOTA_POLICIES) == {q.value for q in QuotaPolicy}


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nfsproxy", *args], capture_output=True, text=True,
                          cwd=REPO, timeout=60, env={**os.environ, "PYTHONPATH": str(REPO)})


def test_plain_parameters_are_still_checked():
    done = run_cli("status", "--shard", "127.0.0.1:1", "--timeout", "soon")
    assert done.returncode == 2 and "'soon' is not a valid float" in done.stderr
    done = run_cli("proxy", "--backend", "h:/e", "--log", "/nonexistent/x", "--durability", "maybe")
    assert done.returncode == 2 and "--durability" in done.stderr and "sync, async" in done.stderr


@pytest.mark.parametrize("command", [["proxy", "--backend", "h:/e", "--log", "/nonexistent/x"], ["up"]])
def test_durability_takes_strict_and_refuses_junk_in_one_line(command):
    done = run_cli(*command, "--durability", "junk")
    errors = [line for line in done.stderr.splitlines() if "Error" in line]
    assert done.returncode == 2 and errors == [
        "Error: Invalid value for --durability: 'junk' is not one of sync, async, strict"]
    # strict gets past the option check: the proxy fails later, on its LOG directory.
    done = run_cli("proxy", "--backend", "127.0.0.1:1:1:/e", "--log", "/proc/nfsj-no-such-dir",
                   "--durability", "strict")
    assert "--durability" not in done.stderr and "nfsj-no-such-dir" in done.stderr
    # Bounded numbers still go through typer's own checks.
    done = run_cli("recoveryd", "--listen", "127.0.0.1:0", "--data", "/nonexistent/x",
                   "--shard-id", "-1")
    assert done.returncode == 2 and "--shard-id" in done.stderr
