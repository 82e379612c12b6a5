"""deploy/ is real: every flag, variable, config key and metric name in it exists.

* Prometheus files pass `promtool check config|rules` and the alert unit tests
  (`promtool test rules`). promtool missing is a FAILURE (CI installs Debian's
  `prometheus` package); set NFSJ_ALLOW_SKIP_PROMTOOL=1 to skip those instead.
* Every YAML file parses (yaml.safe_load_all), and so does the dashboard JSON.
* Every `nfsj ...` invocation in the systemd units, the compose file and the
  Kubernetes manifests is parsed by the real click command, with the same
  environment variables and config file it would get, so unknown flags,
  unknown NFSJ_* variables, bad config keys, bad values and missing required
  options all fail here.
* Every metric (and label) the alerts and the dashboard use exists in the
  /metrics of a live `nfsj proxy` (in front of a real ganesha) and a live
  `nfsj recoveryd`, both started here as subprocesses.
* systemd units pass `systemd-analyze verify` when it is installed (else they
  are parsed as INI); the Kubernetes kustomization renders with
  `kubectl kustomize` when kubectl is installed.
* Ingest is authenticated everywhere: every shard has --ingest-tokens (or
  mTLS), every proxy --ingest-token-file and a fixed --node-id, and the
  credentials each deployment makes (deploy/ingest-token.sh, run the way that
  deployment runs it) are private files a real shard loads, admitting that
  proxy node with that token.
"""

from __future__ import annotations

import configparser
import json
import os
import re
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from unittest import mock

import pytest
import typer.main
import yaml

from nfsproxy.cli import app, command_options
from nfsproxy.daemon.config import default_map, load_config
from nfsproxy.daemon.address import parse_backend, parse_hostport
from nfsproxy.daemon.config import ConfigError
from recoveryd.security import BearerToken, IngestAuth

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
SYSTEMD = DEPLOY / "systemd"
K8S = DEPLOY / "kubernetes"
PROM = DEPLOY / "prometheus"
GRAFANA = DEPLOY / "grafana"
COMPOSE = DEPLOY / "docker-compose.yml"
INGEST_TOKEN_SH = DEPLOY / "ingest-token.sh"
DASHBOARD = GRAFANA / "dashboard.json"

ALLOW_SKIP_PROMTOOL = "NFSJ_ALLOW_SKIP_PROMTOOL"
INSTALLED_NFSJ = "/usr/local/bin/nfsj"  # where `pip install .` puts it on Debian


# ---------------------------------------------------------------------------
# helpers: files


def yaml_files() -> list[Path]:
    return sorted(p for p in DEPLOY.rglob("*") if p.suffix in (".yml", ".yaml"))


def load_yaml_docs(path: Path) -> list:
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def load_yaml(path: Path):
    docs = load_yaml_docs(path)
    assert len(docs) == 1, f"{path}: expected one YAML document, got {len(docs)}"
    return docs[0]


def k8s_objects() -> list[tuple[Path, dict]]:
    out = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        out.extend((path, doc) for doc in load_yaml_docs(path))
    return out


def k8s_object(kind: str, name: str) -> dict:
    found = [d for _, d in k8s_objects() if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name} in deploy/kubernetes, found {len(found)}"
    return found[0]


def k8s_config_path(tmp_path: Path) -> Path:
    """The ConfigMap's nfsj.toml, written out as the file the pods see."""
    cm = k8s_object("ConfigMap", "nfsj-config")
    path = tmp_path / "k8s-nfsj.toml"
    path.write_text(cm["data"]["nfsj.toml"])
    return path


def compose() -> dict:
    return load_yaml(COMPOSE)


def dashboard() -> dict:
    with open(DASHBOARD) as f:
        return json.load(f)


def all_panels(panels: list[dict]) -> list[dict]:
    out = []
    for p in panels:
        out.append(p)
        out.extend(all_panels(p.get("panels", [])))
    return out


# ---------------------------------------------------------------------------
# helpers: the real CLI


def cli_group():
    """The root click group of `nfsj` (typer may vendor its own click: no isinstance on click classes)."""
    return typer.main.get_command(app)


def is_option(param) -> bool:
    return getattr(param, "param_type_name", None) == "option"


def valid_envvars() -> set[str]:
    """Every NFSJ_* variable the CLI reads (auto_envvar_prefix NFSJ_<COMMAND>_<OPTION>)."""
    names = {"NFSJ_CONFIG"}
    for name, cmd in cli_group().commands.items():
        for p in getattr(cmd, "params", ()):
            if is_option(p):
                names.add(f"NFSJ_{name.upper()}_{p.name.upper()}")
    return names


def parse_invocation(argv: list[str], env: dict[str, str], configs: dict[str, Path],
                     where: str) -> tuple[str, dict]:
    """Parse `nfsj [--config F] COMMAND ARGS...` exactly as `nfsj` would.

    `env` is the process environment (only its NFSJ_* variables matter) and
    `configs` maps the config paths the deployment uses to files in the repo.
    Returns (command, the parsed parameters); raises AssertionError naming
    `where` on an unknown flag, variable or config key, a bad value, or a
    missing required option.
    """
    assert argv and Path(argv[0]).name == "nfsj", f"{where}: not an nfsj command: {argv}"
    unknown = sorted(k for k in env if k.startswith("NFSJ_") and k not in valid_envvars())
    assert not unknown, f"{where}: environment variables the CLI does not read: {unknown}"
    group = cli_group()
    args = list(argv[1:])
    config = env.get("NFSJ_CONFIG")
    while args and args[0].startswith("-"):
        opt = args.pop(0)
        if opt == "--config" and args:
            config = args.pop(0)
        elif opt.startswith("--config="):
            config = opt.partition("=")[2]
        else:
            raise AssertionError(f"{where}: `nfsj {opt}` is not an option of nfsj itself")
    assert args, f"{where}: no subcommand in {argv}"
    name = args.pop(0)
    assert name in group.commands, f"{where}: `nfsj {name}` is not a command"
    defaults: dict = {}
    if config:
        assert config in configs, f"{where}: config file {config} is not one deploy/ provides"
        path = configs[config]
        try:
            defaults = default_map(load_config(str(path)), command_options(group), source=str(path))[name]
        except ConfigError as e:
            raise AssertionError(f"{where}: {e}") from None
    clean = {k: v for k, v in os.environ.items() if not k.startswith("NFSJ_")}
    clean.update(env)
    with mock.patch.dict(os.environ, clean, clear=True):
        parent = group.context_class(group, info_name="nfsj", auto_envvar_prefix="NFSJ")
        try:
            ctx = group.commands[name].make_context(name, list(args), parent=parent,
                                                    default_map=defaults or None)
        except Exception as e:  # click's UsageError: NoSuchOption, BadParameter, MissingParameter
            if not hasattr(e, "format_message"):
                raise
            raise AssertionError(f"{where}: `{shlex.join(argv)}` is rejected by the CLI: "
                                 f"{e.format_message()}") from None
    check_values(name, ctx.params, where)
    return name, ctx.params


def check_values(command: str, params: dict, where: str) -> None:
    """The values the daemons parse at start-up (beyond click's types) are valid too."""
    from nfsproxy.cli.proxy import _size
    from nfsproxy.ship.retention import parse_retention
    for key in ("listen", "metrics", "control"):
        if params.get(key):
            parse_hostport(params[key], 2049 if key == "listen" and command == "proxy" else None)
    for shard in params.get("shard") or ():
        parse_hostport(shard)
    if command == "proxy":
        parse_backend(params["backend"])
        _size(params["segment_size"])
        _size(params["quota"])
        parse_retention(params["log_retain"])
    assert all(v is not None for k, v in params.items()
               if k in ("listen", "data", "shard_id", "backend", "log") and command in ("proxy", "recoveryd")), \
        f"{where}: {params}"


def port_of(hostport: str) -> int:
    return parse_hostport(hostport)[1]


def shell_argv(script: str, env: dict[str, str], tmp_path: Path) -> list[str]:
    """Run `sh -c script` with a stand-in `nfsj` first on PATH; return the argv it got."""
    bindir = tmp_path / "fake-bin"
    bindir.mkdir(exist_ok=True)
    out = tmp_path / "argv.json"
    fake = bindir / "nfsj"
    fake.write_text(f"#!{sys.executable}\nimport json, sys\n"
                    f"open({str(out)!r}, 'w').write(json.dumps(sys.argv[1:]))\n")
    fake.chmod(0o755)
    run_env = {"PATH": f"{bindir}:{os.environ.get('PATH', '/usr/bin:/bin')}", **env}
    done = subprocess.run(["/bin/sh", "-c", script], env=run_env, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, f"sh -c {script!r} failed: {done.stderr}"
    return ["nfsj", *json.loads(out.read_text())]


# ---------------------------------------------------------------------------
# helpers: ingest credentials


def assert_ingest_authenticated(params: dict, where: str) -> None:
    """A shard that does not take records from just anyone."""
    assert params.get("ingest_tokens") or params.get("tls_ca"), \
        f"{where}: ingest is OPEN (no --ingest-tokens, no --tls-ca)"


def assert_proxy_has_ingest_token(params: dict, where: str) -> None:
    assert params.get("ingest_token_file"), f"{where}: the proxy sends no ingest token (--ingest-token-file)"
    # the shards' tokens file names the node: it cannot be one made up at first start
    assert params.get("node_id") is not None, f"{where}: the proxy's --node-id must be fixed"


def make_credentials(node_id: int, directory: Path, *extra: str) -> subprocess.CompletedProcess:
    """Run deploy/ingest-token.sh NODE_ID DIR as deploy/README.md says."""
    directory.mkdir(parents=True, exist_ok=True)
    return subprocess.run(["/bin/sh", str(INGEST_TOKEN_SH), str(node_id), str(directory), *extra],
                          capture_output=True, text=True, timeout=30)


def check_credentials(tokens_file: Path, token_file: Path, node_id: int, where: str) -> None:
    """A real shard loads `tokens_file` and admits proxy `node_id` with `token_file`'s token."""
    for path in (tokens_file, token_file):
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode & 0o077 == 0, f"{where}: {path.name} has mode {mode:04o}; credentials must be 0600"
    auth = IngestAuth(tokens_file)  # strict, as at a shard's start: refuses exposed or bad files
    assert auth.enabled and auth.members == {node_id}, f"{where}: {auth.describe()}"
    token = BearerToken.from_file(str(token_file))
    admission = auth.admit(node_id, token.metadata, {})
    assert admission.refusal is None and admission.identity == f"token:{node_id}", f"{where}: {admission}"
    assert auth.admit(node_id, [], {}).refusal, f"{where}: a proxy without the token is admitted"


def run_mapped(argv: list[str], mounts: dict[str, Path], where: str) -> None:
    """Run a container's command here, its mount paths replaced by the host paths standing in for them."""
    def host(arg: str) -> str:
        for inside in sorted(mounts, key=len, reverse=True):
            if arg == inside or arg.startswith(inside.rstrip("/") + "/"):
                return str(mounts[inside]) + arg[len(inside):]
        assert not arg.startswith("/") or Path(arg).parts[1] in ("bin", "usr"), \
            f"{where}: {arg} is on no volume the command's container mounts"
        return arg
    done = subprocess.run([host(a) for a in argv], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, f"{where}: {shlex.join(argv)} failed: {done.stderr}"


def test_ingest_token_script_makes_private_credentials_once(tmp_path):
    done = make_credentials(7, tmp_path / "a")
    assert done.returncode == 0, done.stderr
    tokens, token = tmp_path / "a" / "ingest-tokens", tmp_path / "a" / "ingest-token"
    check_credentials(tokens, token, 7, "ingest-token.sh")
    before = (tokens.read_text(), token.read_text())
    again = make_credentials(7, tmp_path / "a")  # every start of the compose stack does this
    assert again.returncode == 0 and (tokens.read_text(), token.read_text()) == before, "credentials replaced"
    assert make_credentials(7, tmp_path / "b").returncode == 0
    assert (tmp_path / "b" / "ingest-token").read_text() != token.read_text(), "the token is not random"
    token.unlink()
    half = make_credentials(7, tmp_path / "a")
    assert half.returncode == 1 and "only one of" in half.stderr and tokens.read_text() == before[0]
    for bad in ("", "one", "-1", "4294967296", "99999999999"):
        refused = make_credentials(bad, tmp_path / "c")  # type: ignore[arg-type]
        assert refused.returncode == 2 and refused.stderr, bad
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file() and p.parent.name == "c") == []


# ---------------------------------------------------------------------------
# helpers: systemd


def parse_unit(path: Path) -> dict[str, list[tuple[str, str]]]:
    """A unit file as {section: [(key, value), ...]} (keys may repeat)."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current = None
    for n, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            assert line.endswith("]"), f"{path}:{n}: bad section header"
            current = line[1:-1]
            sections.setdefault(current, [])
            continue
        assert current is not None, f"{path}:{n}: key outside a section"
        key, sep, value = line.partition("=")
        assert sep, f"{path}:{n}: not KEY=VALUE: {line!r}"
        sections[current].append((key.strip(), value.strip()))
    # configparser agrees it is INI (duplicates allowed, as systemd allows them)
    configparser.ConfigParser(strict=False, interpolation=None).read_string(path.read_text())
    return sections


def unit_values(unit: dict, section: str, key: str) -> list[str]:
    return [v for k, v in unit.get(section, []) if k == key]


def specifiers(value: str, instance: str | None) -> str:
    rest = re.sub(r"%%|%i", lambda m: "%" if m.group(0) == "%%" else (instance or "%i"), value)
    assert instance is None or not re.search(r"%[A-Za-z]", rest), f"unresolved specifier in {value!r}"
    return rest


def read_env_file(path: Path) -> dict[str, str]:
    env = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        key, sep, value = line.partition("=")
        assert sep, f"{path}: not KEY=VALUE: {line!r}"
        env[key.strip()] = value.strip().strip('"')
    return env


ETC_TO_REPO = {
    "/etc/nfsj/nfsj.toml": SYSTEMD / "nfsj.toml",
    "/etc/nfsj/proxy.env": SYSTEMD / "proxy.env",
    "/etc/nfsj/recoveryd-0.env": SYSTEMD / "recoveryd-0.env",
    "/etc/nfsj/recoveryd-1.env": SYSTEMD / "recoveryd-1.env",
}


def unit_invocation(path: Path, instance: str | None = None) -> tuple[list[str], dict[str, str]]:
    """(ExecStart argv, environment) of a unit, the example files standing in for /etc/nfsj."""
    unit = parse_unit(path)
    env: dict[str, str] = {}
    for value in unit_values(unit, "Service", "Environment"):
        for assignment in shlex.split(specifiers(value, instance)):
            key, _, val = assignment.partition("=")
            env[key] = val
    for value in unit_values(unit, "Service", "EnvironmentFile"):  # these override Environment=
        name = specifiers(value, instance).lstrip("-")
        assert name in ETC_TO_REPO, f"{path}: EnvironmentFile {name} has no example in deploy/systemd"
        env.update(read_env_file(ETC_TO_REPO[name]))
    (exec_start,) = unit_values(unit, "Service", "ExecStart")
    argv = shlex.split(specifiers(exec_start, instance))
    assert argv[0] == INSTALLED_NFSJ, f"{path}: ExecStart should run {INSTALLED_NFSJ}"
    return argv, env


# ---------------------------------------------------------------------------
# promtool


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        reason = "promtool not found; install it with `apt-get install prometheus`"
        if os.environ.get(ALLOW_SKIP_PROMTOOL) == "1":
            pytest.skip(reason)
        pytest.fail(f"{reason} (or set {ALLOW_SKIP_PROMTOOL}=1 to skip these checks)", pytrace=False)
    return path


def run_promtool(*args: str) -> None:
    done = subprocess.run([promtool(), *args], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"promtool {' '.join(args)}:\n{done.stdout}\n{done.stderr}"


def test_promtool_check_config():
    run_promtool("check", "config", "deploy/prometheus/prometheus.yml")


def test_promtool_check_rules():
    run_promtool("check", "rules", "deploy/prometheus/alerts.yml")


def test_promtool_alert_unit_tests():
    run_promtool("test", "rules", "deploy/prometheus/alerts_test.yml")


def test_dashboard_queries_are_valid_promql(tmp_path):
    """promtool has no PromQL checker of its own: check the dashboard's queries
    as recording rules (Grafana's variables replaced by plain values)."""
    rules = []
    for panel in all_panels(dashboard()["panels"]):
        for target in panel.get("targets", []):
            rules.append({"record": f"nfsj_dashboard:panel{panel['id']}:{target['refId']}",
                          "expr": grafana_to_promql(target["expr"])})
    assert rules
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    done = subprocess.run([promtool(), "check", "rules", str(path)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}"


def grafana_to_promql(expr: str) -> str:
    expr = re.sub(r"\$__(rate_)?interval|\$__range", "5m", expr)
    return re.sub(r"\$\{?\w+\}?", ".*", expr)


def test_prometheus_rule_crd_matches_alerts_yml():
    rule = k8s_object("PrometheusRule", "nfs-journal")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["spec"]["groups"] == load_yaml(PROM / "alerts.yml")["groups"], \
        "deploy/kubernetes/prometheusrule.yaml differs from deploy/prometheus/alerts.yml"


# ---------------------------------------------------------------------------
# syntax of every file


@pytest.mark.parametrize("path", yaml_files(), ids=lambda p: str(p.relative_to(DEPLOY)))
def test_yaml_parses(path):
    assert load_yaml_docs(path), f"{path} is empty"


def test_dashboard_is_a_grafana_dashboard():
    d = dashboard()
    for key in ("uid", "title", "schemaVersion", "panels", "templating", "time"):
        assert key in d, f"dashboard.json has no {key!r}"
    panels = all_panels(d["panels"])
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    variables = {v["name"] for v in d["templating"]["list"]}
    boxes = []
    for p in panels:
        g = p["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24 and g["h"] > 0, f"panel {p['title']}: {g}"
        for other_title, o in boxes:
            overlap = (g["x"] < o["x"] + o["w"] and o["x"] < g["x"] + g["w"]
                       and g["y"] < o["y"] + o["h"] and o["y"] < g["y"] + g["h"])
            assert not overlap, f"panels {p['title']!r} and {other_title!r} overlap"
        boxes.append((p["title"], g))
        if p["type"] == "row":
            continue
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
        assert p["targets"], f"panel {p['title']!r} has no query"
        refs = [t["refId"] for t in p["targets"]]
        assert len(refs) == len(set(refs)), p["title"]
        for t in p["targets"]:
            for var in re.findall(r"\$\{?(\w+)", t["expr"]):
                assert var.startswith("__") or var in variables, f"{p['title']}: ${var} is not defined"
    ds = [v for v in d["templating"]["list"] if v["name"] == "datasource"]
    assert ds and ds[0]["type"] == "datasource" and ds[0]["query"] == "prometheus"


def test_grafana_provisioning_matches_compose():
    services = compose()["services"]
    ds = load_yaml(GRAFANA / "provisioning" / "datasources" / "prometheus.yml")
    (source,) = ds["datasources"]
    assert source["type"] == "prometheus"
    host, port = re.match(r"http://([^:/]+):(\d+)", source["url"]).groups()
    assert host in services and port == "9090"
    providers = load_yaml(GRAFANA / "provisioning" / "dashboards" / "nfs-journal.yml")["providers"]
    mounts = [v.split(":") for v in services["grafana"]["volumes"]]
    dashboard_mounts = [dst for src, dst, *_ in mounts if src == "./grafana/dashboard.json"]
    assert dashboard_mounts, "compose does not mount grafana/dashboard.json into grafana"
    assert any(str(Path(dst).parent) == p["options"]["path"] for dst in dashboard_mounts for p in providers)
    assert ["./grafana/provisioning", "/etc/grafana/provisioning", "ro"] in mounts


# ---------------------------------------------------------------------------
# systemd


UNITS = ("nfsj-proxy.service", "nfsj-recoveryd@.service", "nfsj-recoveryd.target", "nfsj-verify.service",
         "nfsj-verify.timer")
HARDENING = ("ProtectSystem", "ReadWritePaths", "PrivateTmp", "NoNewPrivileges", "ProtectHome",
             "CapabilityBoundingSet", "RestrictAddressFamilies", "SystemCallFilter", "Restart",
             "LimitNOFILE", "User")


@pytest.mark.parametrize("name", ("nfsj-proxy.service", "nfsj-recoveryd@.service"))
def test_systemd_units_are_hardened(name):
    unit = parse_unit(SYSTEMD / name)
    service = dict(unit["Service"])
    for key in HARDENING:
        assert key in service, f"{name}: no {key}="
    assert service["ProtectSystem"] == "strict"
    assert service["NoNewPrivileges"] == "yes" and service["PrivateTmp"] == "yes"
    assert service["Restart"] == "on-failure"
    assert "@system-service" in unit_values(unit, "Service", "SystemCallFilter")
    assert set(service["RestrictAddressFamilies"].split()) >= {"AF_INET", "AF_INET6", "AF_UNIX"}
    caps = service["CapabilityBoundingSet"].split()
    if name == "nfsj-proxy.service":
        assert caps == ["CAP_NET_BIND_SERVICE"]
        assert service["AmbientCapabilities"] == "CAP_NET_BIND_SERVICE"
    else:
        assert caps == []
    assert "Install" in unit


def test_systemd_proxy_unit_runs_a_valid_proxy():
    argv, env = unit_invocation(SYSTEMD / "nfsj-proxy.service")
    name, params = parse_invocation(argv, env, {k: v for k, v in ETC_TO_REPO.items() if v.suffix == ".toml"},
                                    "nfsj-proxy.service")
    assert name == "proxy"
    assert port_of(params["listen"]) == 2049
    unit = parse_unit(SYSTEMD / "nfsj-proxy.service")
    writable = unit_values(unit, "Service", "ReadWritePaths")
    assert params["log"] in writable, "the LOG directory must be in ReadWritePaths="
    assert params["log"] in " ".join(unit_values(unit, "Unit", "RequiresMountsFor"))
    assert_proxy_has_ingest_token(params, "nfsj-proxy.service")
    # no token file: the unit fails at once (not after StartLimitBurst restarts)
    assert unit_values(unit, "Unit", "AssertFileNotEmpty") == [params["ingest_token_file"]]
    # shard k of the config is the instance nfsj-recoveryd@k (its env file's port)
    for k, shard in enumerate(params["shard"]):
        _, shard_env = unit_invocation(SYSTEMD / "nfsj-recoveryd@.service", str(k))
        assert port_of(shard) == port_of(shard_env["NFSJ_RECOVERYD_LISTEN"]), (k, shard)


@pytest.mark.parametrize("instance", ("0", "1"))
def test_systemd_recoveryd_instances_run_valid_shards(instance):
    argv, env = unit_invocation(SYSTEMD / "nfsj-recoveryd@.service", instance)
    name, params = parse_invocation(argv, env, {}, f"nfsj-recoveryd@{instance}.service")
    assert name == "recoveryd"
    assert params["shard_id"] == int(instance)
    assert params["data"] == f"/var/lib/nfsj/shard-{instance}"
    assert port_of(params["listen"]) == 7400 + int(instance)
    assert port_of(params["metrics"]) == 9410 + int(instance)
    unit = parse_unit(SYSTEMD / "nfsj-recoveryd@.service")
    assert unit_values(unit, "Service", "StateDirectory") == ["nfsj/shard-%i"]
    assert_ingest_authenticated(params, f"nfsj-recoveryd@{instance}.service")
    assert unit_values(unit, "Unit", "AssertFileNotEmpty") == [params["ingest_tokens"]]


def test_systemd_ingest_credentials(tmp_path):
    """The command deploy/README.md gives makes the files both units read, for the proxy's node id."""
    argv, env = unit_invocation(SYSTEMD / "nfsj-proxy.service")
    _, proxy = parse_invocation(argv, env, {k: v for k, v in ETC_TO_REPO.items() if v.suffix == ".toml"},
                                "nfsj-proxy.service")
    node = proxy["node_id"]
    command = f"sh ingest-token.sh {node} /etc/nfsj nfsj:nfsj"
    assert command in (DEPLOY / "README.md").read_text(), f"deploy/README.md should say: {command}"
    etc = tmp_path / "etc-nfsj"
    done = make_credentials(node, etc, f"{os.getuid()}:{os.getgid()}")
    assert done.returncode == 0, done.stderr
    shards = []
    for instance in ("0", "1"):
        argv, env = unit_invocation(SYSTEMD / "nfsj-recoveryd@.service", instance)
        shards.append(parse_invocation(argv, env, {}, f"nfsj-recoveryd@{instance}.service")[1])
    for shard in shards:
        assert Path(shard["ingest_tokens"]).parent == Path(proxy["ingest_token_file"]).parent == Path("/etc/nfsj")
        check_credentials(etc / Path(shard["ingest_tokens"]).name, etc / Path(proxy["ingest_token_file"]).name,
                          node, "systemd")


def test_systemd_verify_timer_runs_a_valid_verify():
    argv, env = unit_invocation(SYSTEMD / "nfsj-verify.service")
    name, params = parse_invocation(argv, env, {k: v for k, v in ETC_TO_REPO.items() if v.suffix == ".toml"},
                                    "nfsj-verify.service")
    assert name == "verify" and params["sample"] and params["quiet"]
    _, proxy = parse_invocation(*unit_invocation(SYSTEMD / "nfsj-proxy.service"),
                                {k: v for k, v in ETC_TO_REPO.items() if v.suffix == ".toml"}, "nfsj-proxy.service")
    # the proxy's LOG (the NAS's address is read there, the result written there) and its shards
    assert params["log"] == proxy["log"] and params["shard"] == proxy["shard"]
    unit = parse_unit(SYSTEMD / "nfsj-verify.service")
    service = dict(unit["Service"])
    assert service["Type"] == "oneshot" and service["User"] == "nfsj"
    assert params["log"] in unit_values(unit, "Service", "ReadWritePaths")
    for key in set(HARDENING) - {"Restart", "LimitNOFILE"}:
        assert key in service, f"nfsj-verify.service: no {key}="
    assert service["CapabilityBoundingSet"] == "" and service["ProtectSystem"] == "strict"
    timer = parse_unit(SYSTEMD / "nfsj-verify.timer")
    assert dict(timer["Timer"])["Unit"] == "nfsj-verify.service"
    assert dict(timer["Timer"])["OnCalendar"] == "hourly" and dict(timer["Timer"])["Persistent"] == "true"
    assert "3 * 3600" in next(r["expr"] for r in alert_rules() if r["alert"] == "NfsjVerifyNotRun"), \
        "the not-run alert allows two missed hourly runs"


def test_systemd_tmpfiles_and_sysusers():
    entries = []
    for line in (SYSTEMD / "nfsj-logstore.conf").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            fields = line.split()
            assert len(fields) == 6, f"tmpfiles line needs Type Path Mode User Group Age: {line!r}"
            entries.append(fields)
    by_path = {f[1]: f for f in entries}
    config = load_config(str(SYSTEMD / "nfsj.toml"))
    log = by_path[config["proxy"]["log"]]
    assert log[0] == "d" and log[2] == "0700" and log[3:5] == ["nfsj", "nfsj"] and log[5] == "-"
    users = [line.split() for line in (SYSTEMD / "nfsj-sysusers.conf").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    assert any(u[0] == "u" and u[1] == "nfsj" for u in users)
    for name in ("nfsj-proxy.service", "nfsj-recoveryd@.service"):
        service = dict(parse_unit(SYSTEMD / name)["Service"])
        assert service["User"] == "nfsj" and service["Group"] == "nfsj"


def test_systemd_config_example_is_valid():
    done = subprocess.run([sys.executable, "-m", "nfsproxy", "config", "check", str(SYSTEMD / "nfsj.toml")],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    for name in ("proxy.env", "recoveryd-0.env", "recoveryd-1.env"):
        unknown = set(read_env_file(SYSTEMD / name)) - valid_envvars()
        assert not unknown, f"{name}: {unknown}"


def test_systemd_analyze_verify(tmp_path):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (the units were parsed as INI above)")
    # verify checks that ExecStart= exists: point it at this machine's nfsj
    # when it is not where `pip install .` puts it on Debian.
    nfsj = INSTALLED_NFSJ if os.access(INSTALLED_NFSJ, os.X_OK) else shutil.which("nfsj")
    assert nfsj, "nfsj is not installed (python3 -m pip install -e .)"
    for name in UNITS:
        text = (SYSTEMD / name).read_text().replace(INSTALLED_NFSJ, nfsj)
        (tmp_path / name).write_text(text)
    shutil.copy(tmp_path / "nfsj-recoveryd@.service", tmp_path / "nfsj-recoveryd@0.service")
    targets = ["nfsj-proxy.service", "nfsj-recoveryd@0.service", "nfsj-recoveryd.target",
               "nfsj-verify.service", "nfsj-verify.timer"]
    done = subprocess.run([analyze, "verify", "--man=no", "--generators=no", *targets], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "SYSTEMD_UNIT_PATH": f"{tmp_path}:"})
    output = (done.stdout + done.stderr).strip()
    # verify exits 0 on unknown keys and bad values: any message is a failure.
    assert done.returncode == 0 and not output, f"systemd-analyze verify:\n{output}"


# ---------------------------------------------------------------------------
# docker compose


def compose_command(service: dict) -> list[str]:
    command = service["command"]
    return shlex.split(command) if isinstance(command, str) else [str(c) for c in command]


def compose_env(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(e.partition("=")[::2] for e in env)
    return {k: str(v) for k, v in env.items()}


def test_compose_structure():
    c = compose()
    services = c["services"]
    assert {"ganesha", "proxy", "shard0", "shard1", "prometheus", "grafana"} <= set(services)
    declared = set(c.get("volumes") or {})
    for name, s in services.items():
        assert "image" in s or "build" in s, name
        if "build" in s:
            context = (DEPLOY / s["build"]["context"]).resolve()
            dockerfile = context / s["build"].get("dockerfile", "Dockerfile")
            assert dockerfile.is_file(), f"{name}: {dockerfile} does not exist"
            check_dockerfile(dockerfile, context)
        for volume in s.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith((".", "/")):
                assert (DEPLOY / source).exists(), f"{name}: bind mount {source} does not exist"
            else:
                assert source in declared, f"{name}: volume {source} is not declared"
        depends = s.get("depends_on") or {}
        for dep, how in (depends.items() if isinstance(depends, dict) else ((d, {}) for d in depends)):
            assert dep in services, f"{name} depends on unknown service {dep}"
            if how.get("condition") == "service_healthy":
                assert "healthcheck" in services[dep], f"{name} waits for {dep} to be healthy: it has no healthcheck"
        for port in s.get("ports", []):
            assert re.fullmatch(r"(\d+:)?\d+(/tcp|/udp)?", str(port)), f"{name}: port {port}"


def check_dockerfile(dockerfile: Path, context: Path) -> None:
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    lines = [l.strip() for l in text.splitlines() if l.strip() and not l.lstrip().startswith("#")]
    assert lines[0].startswith("FROM "), f"{dockerfile}: must start with FROM"
    for line in lines:
        if line.startswith(("COPY ", "ADD ")):
            words = [w for w in shlex.split(line)[1:] if not w.startswith("--")]
            for source in words[:-1]:
                assert (context / source).exists(), f"{dockerfile}: {source} is not in the build context {context}"


def test_compose_nfsj_commands_use_real_flags():
    services = compose()["services"]
    parsed = {}
    for name, s in services.items():
        if s.get("image", "").startswith("nfs-journal:") and compose_command(s)[0] == "nfsj":
            parsed[name] = parse_invocation(compose_command(s), compose_env(s), {}, f"compose {name}")
            health = s.get("healthcheck", {}).get("test", [])
            if len(health) > 1 and health[1] == "nfsj":
                parse_invocation(health[1:], compose_env(s), {}, f"compose {name} healthcheck")
    assert parsed["proxy"][0] == "proxy"
    proxy = parsed["proxy"][1]
    host, nfs_port, mount_port, export = parse_backend(proxy["backend"])
    assert host == "ganesha" and (nfs_port, mount_port, export) == (2049, 20048, "/export")
    # shard k of the proxy is the service running --shard-id k, on that port
    assert len(proxy["shard"]) == 2
    for k, shard in enumerate(proxy["shard"]):
        host, port = parse_hostport(shard)
        command, params = parsed[host]
        assert command == "recoveryd" and params["shard_id"] == k, (k, shard)
        assert port_of(params["listen"]) == port
        assert "healthcheck" in services[host]
    assert services["proxy"]["ports"] == ["2049:2049/tcp"] and port_of(proxy["listen"]) == 2049
    assert_proxy_has_ingest_token(proxy, "compose proxy")
    for name, (command, params) in parsed.items():
        if command == "recoveryd":
            assert_ingest_authenticated(params, f"compose {name}")


def compose_mounts(service: dict) -> dict[str, str]:
    """{path in the container: volume name or bind source}."""
    out = {}
    for volume in service.get("volumes", []):
        source, target, *_ = volume.split(":")
        out[target] = source
    return out


def test_compose_ingest_credentials(tmp_path):
    """The one-shot service makes, in a volume the shards and the proxy mount, the files they read."""
    services = compose()["services"]
    init = services["ingest-token"]
    assert init.get("restart") == "no", "a one-shot service must not be restarted"
    volumes = {}  # compose volume name -> a host directory standing in for it
    mounts = {}
    for inside, source in compose_mounts(init).items():
        if source.startswith("."):
            mounts[inside] = (DEPLOY / source).resolve()
        else:
            mounts[inside] = volumes.setdefault(source, tmp_path / source)
            mounts[inside].mkdir()
    assert INGEST_TOKEN_SH in mounts.values(), "the ingest-token service should run deploy/ingest-token.sh"
    run_mapped(compose_command(init), mounts, "compose ingest-token")
    _, proxy = parse_invocation(compose_command(services["proxy"]), {}, {}, "compose proxy")

    def on_host(service: str, path: str) -> Path:
        for inside, source in compose_mounts(services[service]).items():
            if Path(path).parent == Path(inside) and source in volumes:
                return volumes[source] / Path(path).name
        raise AssertionError(f"compose {service}: {path} is not on the ingest-token service's volume")

    token = on_host("proxy", proxy["ingest_token_file"])
    shards = [n for n, s in services.items() if "command" in s and compose_command(s)[:2] == ["nfsj", "recoveryd"]]
    assert len(shards) == 2
    for name in ["proxy", *shards]:
        how = (services[name].get("depends_on") or {}).get("ingest-token") or {}
        assert how.get("condition") == "service_completed_successfully", \
            f"compose {name} must wait for the ingest-token service to finish"
    for name in shards:
        _, shard = parse_invocation(compose_command(services[name]), {}, {}, f"compose {name}")
        check_credentials(on_host(name, shard["ingest_tokens"]), token, proxy["node_id"], f"compose {name}")


def test_compose_prometheus_targets_are_the_metrics_ports():
    services = compose()["services"]
    config = load_yaml(PROM / "prometheus.yml")
    assert config["rule_files"] == ["alerts.yml"]
    targets = [t for job in config["scrape_configs"] if job["job_name"].startswith("nfsj-")
               for sc in job["static_configs"] for t in sc["targets"]]
    assert len(targets) == 3
    for target in targets:
        host, port = parse_hostport(target)
        _, params = parse_invocation(compose_command(services[host]), {}, {}, f"compose {host}")
        assert port_of(params["metrics"]) == port, target
    assert "./prometheus:/etc/prometheus:ro" in services["prometheus"]["volumes"]
    assert "--config.file=/etc/prometheus/prometheus.yml" in services["prometheus"]["command"]


def test_compose_ganesha_config_is_the_test_nas_config():
    """The demo NAS keeps every setting nfsproxy/demo/ganesha.py relies on."""
    from nfsproxy.demo.ganesha import Ganesha
    ours = (DEPLOY / "docker" / "ganesha.conf").read_text()
    theirs = Ganesha(Path("/export"), Path("/var/lib/nfs")).config_text(2049, 20048)

    def settings(text):
        return {(m.group(1), m.group(2).strip()) for m in re.finditer(r"^\s*(\w+)\s*=\s*([^;]+);", text, re.M)}
    differ = {"Bind_addr", "RecoveryRoot"}
    missing = {s for s in settings(theirs) if s[0] not in differ} - settings(ours)
    assert not missing, f"deploy/docker/ganesha.conf lacks {sorted(missing)}"
    assert ("Bind_addr", "0.0.0.0") in settings(ours)
    entry = (DEPLOY / "docker" / "ganesha-entrypoint.sh")
    assert os.access(entry, os.X_OK) and "rpcbind" in entry.read_text()


# ---------------------------------------------------------------------------
# Kubernetes


def pod_spec(obj: dict) -> dict:
    return obj["spec"]["template"]["spec"]


def test_k8s_structure():
    objects = k8s_objects()
    for path, obj in objects:
        for key in ("apiVersion", "kind", "metadata"):
            assert key in obj, f"{path}: {key} missing"
        assert obj["metadata"].get("name"), f"{path}: an object without a name"
    kustomization = load_yaml(K8S / "kustomization.yaml")
    listed = set(kustomization["resources"])
    present = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == present, f"kustomization resources {listed} != files {present}"

    workloads = [o for _, o in objects if o["kind"] in ("Deployment", "StatefulSet")]
    services = [o for _, o in objects if o["kind"] == "Service"]
    configmaps = {o["metadata"]["name"] for _, o in objects if o["kind"] == "ConfigMap"}
    for w in workloads:
        name = w["metadata"]["name"]
        labels = w["spec"]["template"]["metadata"]["labels"]
        assert w["spec"]["selector"]["matchLabels"].items() <= labels.items(), name
        spec = pod_spec(w)
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        volumes.update({t["metadata"]["name"]: t for t in w["spec"].get("volumeClaimTemplates", [])})
        for v in volumes.values():
            if "configMap" in v:
                assert v["configMap"]["name"] in configmaps, f"{name}: unknown ConfigMap"
        for c in spec["containers"]:
            for m in c.get("volumeMounts", []):
                assert m["name"] in volumes, f"{name}: volumeMount {m['name']} has no volume"
            ports = {p["name"]: p["containerPort"] for p in c["ports"]}
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                assert probe in c, f"{name}: no {probe}"
                how = c[probe]
                port = (how.get("grpc") or how.get("tcpSocket"))["port"]
                assert port in ports or port in ports.values(), f"{name}: {probe} port {port}"
    for s in services:
        selected = [w for w in workloads
                    if s["spec"]["selector"].items() <= w["spec"]["template"]["metadata"]["labels"].items()]
        assert len(selected) == 1, f"Service {s['metadata']['name']} selects {len(selected)} workloads"
        ports = {p["name"]: p["containerPort"] for c in pod_spec(selected[0])["containers"] for p in c["ports"]}
        for p in s["spec"]["ports"]:
            target = p.get("targetPort", p["port"])
            assert target in ports or target in ports.values(), f"Service {s['metadata']['name']}: {target}"
            assert p.get("protocol", "TCP") == "TCP"


def test_k8s_recoveryd_statefulset(tmp_path):
    sts = k8s_object("StatefulSet", "nfsj-recoveryd")
    svc = k8s_object("Service", sts["spec"]["serviceName"])
    assert svc["spec"]["clusterIP"] == "None", "the StatefulSet's Service must be headless"
    assert sts["spec"]["replicas"] == 2 and sts["spec"]["volumeClaimTemplates"]
    (container,) = pod_spec(sts)["containers"]
    grpc_port = {p["name"]: p["containerPort"] for p in container["ports"]}["grpc"]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["grpc"]["port"] == grpc_port
    config = k8s_config_path(tmp_path)
    env = {e["name"]: e["value"] for e in container.get("env", [])}
    assert env["NFSJ_CONFIG"] == "/etc/nfsj/nfsj.toml"
    shards = load_config(str(config))["shard"]
    assert len(shards) == sts["spec"]["replicas"]
    for ordinal in range(sts["spec"]["replicas"]):
        pod = f"{sts['metadata']['name']}-{ordinal}"
        command = container["command"]
        assert command[:2] == ["/bin/sh", "-c"], "the shard id comes from the pod's hostname"
        argv = shell_argv(command[2], {"HOSTNAME": pod, **env}, tmp_path)
        name, params = parse_invocation(argv, env, {"/etc/nfsj/nfsj.toml": config}, f"{pod}")
        assert name == "recoveryd" and params["shard_id"] == ordinal
        assert_ingest_authenticated(params, pod)
        assert port_of(params["listen"]) == grpc_port
        data_mount = [m["mountPath"] for m in container["volumeMounts"] if m["name"] == "data"]
        assert params["data"].startswith(data_mount[0] + "/")
        # the proxy's k-th shard is this pod, through the headless Service
        host, port = parse_hostport(shards[ordinal])
        assert host.startswith(f"{pod}.{svc['metadata']['name']}.") and port == grpc_port, shards[ordinal]


def test_k8s_proxy_deployment(tmp_path):
    deployment = k8s_object("Deployment", "nfsj-proxy")
    assert deployment["spec"]["replicas"] == 1 and deployment["spec"]["strategy"]["type"] == "Recreate"
    (container,) = pod_spec(deployment)["containers"]
    env = {e["name"]: e["value"] for e in container.get("env", [])}
    config = k8s_config_path(tmp_path)
    name, params = parse_invocation(container["command"] + container.get("args", []), env,
                                    {"/etc/nfsj/nfsj.toml": config}, "Deployment nfsj-proxy")
    assert name == "proxy"
    assert_proxy_has_ingest_token(params, "Deployment nfsj-proxy")
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert port_of(params["listen"]) == ports["nfs"] == 2049
    assert port_of(params["metrics"]) == ports["metrics"]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["tcpSocket"]["port"] in ("nfs", 2049)
    log_mount = [m["mountPath"] for m in container["volumeMounts"] if m["name"] == "log"]
    assert params["log"].startswith(log_mount[0] + "/")
    service = k8s_object("Service", "nfsj-proxy")
    assert {"name": "nfs", "port": 2049, "targetPort": "nfs", "protocol": "TCP"} in service["spec"]["ports"]
    sysctls = {s["name"]: s["value"] for s in pod_spec(deployment)["securityContext"].get("sysctls", [])}
    assert sysctls.get("net.ipv4.ip_unprivileged_port_start") == "0", "non-root needs this to bind 2049"
    # the recoveryd table of the config is valid for `nfsj recoveryd` too
    subprocess.run([sys.executable, "-m", "nfsproxy", "config", "check", str(config)], check=True,
                   capture_output=True, cwd=ROOT, timeout=60)


def test_k8s_verify_cronjob(tmp_path):
    cronjob = k8s_object("CronJob", "nfsj-verify")
    assert cronjob["apiVersion"] == "batch/v1" and cronjob["spec"]["concurrencyPolicy"] == "Forbid"
    spec = cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    env = {e["name"]: e["value"] for e in container.get("env", [])}
    config = k8s_config_path(tmp_path)
    name, params = parse_invocation(container["command"] + container.get("args", []), env,
                                    {"/etc/nfsj/nfsj.toml": config}, "CronJob nfsj-verify")
    assert name == "verify" and params["sample"]
    proxy = k8s_object("Deployment", "nfsj-proxy")
    proxy_volumes = {v["name"]: v for v in pod_spec(proxy)["volumes"]}
    volumes = {v["name"]: v for v in spec["volumes"]}
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    for m in container["volumeMounts"]:
        assert m["name"] in volumes, f"CronJob nfsj-verify: volumeMount {m['name']} has no volume"
    # The proxy's LOG volume, at the path the config names: the NAS's address and the result live there.
    assert volumes["log"]["persistentVolumeClaim"] == proxy_volumes["log"]["persistentVolumeClaim"]
    assert params["log"].startswith(mounts["log"] + "/")
    assert params["log"] == load_config(str(config))["proxy"]["log"]
    # ReadWriteOnce: on the proxy's node.
    (term,) = spec["affinity"]["podAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert term["labelSelector"]["matchLabels"].items() <= proxy["spec"]["template"]["metadata"]["labels"].items()
    assert term["topologyKey"] == "kubernetes.io/hostname"
    assert spec["securityContext"]["runAsUser"] == pod_spec(proxy)["securityContext"]["runAsUser"], \
        "the LOG directory is the proxy user's (0700)"


INGEST_SECRET = "nfsj-ingest"


def k8s_ingest_file(workload: dict, path: str, secret_dir: Path, tmp_path: Path) -> Path:
    """Start `workload`'s pod here as far as its credential at `path` goes: the
    Secret's files as the kubelet writes them (group-readable), then the init
    containers; returns where `path` of the main container ended up."""
    name = workload["metadata"]["name"]
    spec = pod_spec(workload)
    volumes = {v["name"]: v for v in spec["volumes"]}
    (main,) = spec["containers"]
    (mount,) = [m for m in main["volumeMounts"] if Path(path).parent == Path(m["mountPath"])]
    assert "emptyDir" in volumes[mount["name"]] and mount.get("readOnly"), \
        f"{name}: {path} should be on a read-only mount of a pod-private emptyDir"
    assert volumes[mount["name"]]["emptyDir"].get("medium") == "Memory", f"{name}: keep credentials off disk"
    host_dirs = {}  # volume name -> host directory
    for vname, v in volumes.items():
        if v.get("secret", {}).get("secretName") != INGEST_SECRET:
            continue
        secret = v["secret"]
        assert not secret.get("optional"), f"{name}: without the Secret the pod must not start"
        assert secret["defaultMode"] & 0o007 == 0, f"{name}: Secret files readable by others"
        host_dirs[vname] = tmp_path / f"{name}-{vname}"
        host_dirs[vname].mkdir()
        for item in secret["items"]:  # only the keys this pod needs
            copy = host_dirs[vname] / item["path"]
            shutil.copyfile(secret_dir / item["key"], copy)
            copy.chmod(secret["defaultMode"] | 0o440)  # fsGroup adds group read
    assert host_dirs, f"{name}: no volume of Secret {INGEST_SECRET}"
    host_dirs[mount["name"]] = tmp_path / f"{name}-{mount['name']}"
    host_dirs[mount["name"]].mkdir(mode=0o777)
    inits = spec.get("initContainers", [])
    assert inits, f"{name}: nothing copies the credential out of the Secret"
    for init in inits:
        assert init["image"] == main["image"] and init["securityContext"] == main["securityContext"], \
            f"{name}: init container {init['name']} runs differently from the pod's container"
        mounts = {m["mountPath"]: host_dirs[m["name"]] for m in init["volumeMounts"]}
        run_mapped(init["command"] + init.get("args", []), mounts, f"{name} init container {init['name']}")
    return host_dirs[mount["name"]] / Path(path).relative_to(mount["mountPath"])


def test_k8s_ingest_credentials(tmp_path):
    """Secret nfsj-ingest, made as deploy/README.md says, becomes private files every shard
    and the proxy read, for the proxy's node id; no Secret (no token) is committed."""
    assert not [d for _, d in k8s_objects() if d["kind"] == "Secret"], "never commit a token"
    readme = (DEPLOY / "README.md").read_text()
    assert f"create secret generic {INGEST_SECRET}" in readme
    config = k8s_config_path(tmp_path)
    deployment = k8s_object("Deployment", "nfsj-proxy")
    (container,) = pod_spec(deployment)["containers"]
    env = {e["name"]: e["value"] for e in container.get("env", [])}
    _, proxy = parse_invocation(container["command"], env, {"/etc/nfsj/nfsj.toml": config}, "nfsj-proxy")
    node = proxy["node_id"]
    assert f"sh deploy/ingest-token.sh {node} " in readme
    secret_dir = tmp_path / "secret"  # `kubectl create secret --from-file`: keys are the file names
    assert make_credentials(node, secret_dir).returncode == 0
    token = k8s_ingest_file(deployment, proxy["ingest_token_file"], secret_dir, tmp_path)
    sts = k8s_object("StatefulSet", "nfsj-recoveryd")
    (container,) = pod_spec(sts)["containers"]
    env = {e["name"]: e["value"] for e in container.get("env", [])}
    argv = shell_argv(container["command"][2], {"HOSTNAME": "nfsj-recoveryd-0", **env}, tmp_path)
    _, shard = parse_invocation(argv, env, {"/etc/nfsj/nfsj.toml": config}, "nfsj-recoveryd-0")
    tokens = k8s_ingest_file(sts, shard["ingest_tokens"], secret_dir, tmp_path)
    assert not (tokens.parent / Path(proxy["ingest_token_file"]).name).exists(), "shards get the proxy's token"
    check_credentials(tokens, token, node, "Kubernetes")


def test_k8s_servicemonitor_scrapes_proxy_and_shards():
    monitor = k8s_object("ServiceMonitor", "nfs-journal")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    (expr,) = monitor["spec"]["selector"]["matchExpressions"]
    selected = [k8s_object("Service", "nfsj-proxy"), k8s_object("Service", "nfsj-recoveryd")]
    for svc in selected:
        assert expr["operator"] == "In" and svc["metadata"]["labels"][expr["key"]] in expr["values"]
        assert any(p["name"] == monitor["spec"]["endpoints"][0]["port"] for p in svc["spec"]["ports"])
    # job label = Service name: the job names the alerts use
    jobs = set(re.findall(r'job="([^"]+)"', (PROM / "alerts.yml").read_text()))
    assert jobs <= {s["metadata"]["name"] for s in selected}
    assert jobs <= {j["job_name"] for j in load_yaml(PROM / "prometheus.yml")["scrape_configs"]}


def test_kubectl_kustomize_renders():
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed (the manifests were checked structurally above)")
    done = subprocess.run([kubectl, "kustomize", str(K8S)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    kinds = {d["kind"] for d in yaml.safe_load_all(done.stdout) if d}
    assert {"StatefulSet", "Deployment", "Service", "ConfigMap", "ServiceMonitor"} <= kinds


# ---------------------------------------------------------------------------
# metric names, against a live proxy and shard

METRIC = re.compile(r"\bnfsj_[A-Za-z0-9_]+")
BUILTIN_METRICS = {"up"}
TARGET_LABELS = {"job", "instance"}  # added by Prometheus to every series


def alert_rules() -> list[dict]:
    return [r for g in load_yaml(PROM / "alerts.yml")["groups"] for r in g["rules"]]


def dashboard_queries() -> list[tuple[str, str, str]]:
    """(where, expr, legend) of every dashboard query and variable."""
    d = dashboard()
    out = [(f"panel {p['title']!r}", t["expr"], t.get("legendFormat", ""))
           for p in all_panels(d["panels"]) for t in p.get("targets", [])]
    out += [(f"variable {v['name']}", v["definition"], "") for v in d["templating"]["list"]
            if v["type"] == "query"]
    return out


def static_target_labels() -> set[str]:
    config = load_yaml(PROM / "prometheus.yml")
    return {k for job in config["scrape_configs"] for sc in job.get("static_configs", [])
            for k in sc.get("labels", {})}


def test_alerts_and_dashboard_cover_the_brief():
    names = {r["alert"]: r for r in alert_rules()}
    expected = {
        "NfsjRpoOverTarget": ("nfsj_consistent_point_age_seconds > 60", "5m"),
        "NfsjShardDown": ('up{job="nfsj-recoveryd"} == 0', "2m"),
        "NfsjShardDisconnected": ("nfsj_shipping_connected == 0", "2m"),
        "NfsjLogQuotaNearFull": ("nfsj_log_quota_used_ratio > 0.8 and nfsj_log_quota_bytes > 0", "5m"),
        "NfsjJournalPassthroughActive": ("nfsj_journal_passthrough_active == 1", None),
        "NfsjHlcOffsetLarge": ("abs(nfsj_hlc_offset_seconds) > 0.25", "5m"),
        "NfsjHlcRejections": ("increase(nfsj_hlc_rejections_total[10m]) > 0", None),
        "NfsjShippingGaps": ("increase(nfsj_shipping_gaps_total[15m]) > 0", None),
        "NfsjVerifyDifferences": ("nfsj_verify_differences > 0", None),
        "NfsjVerifyNotRun": ("time() - nfsj_verify_last_run_timestamp_seconds > 3 * 3600", "10m"),
        "NfsjUnhealedGap": ("nfsj_shard_unhealed_gaps > 0", "1h"),
        "NfsjHealFailed": ("increase(nfsj_heal_failures_total[1h]) > 0", None),
    }
    for alert, (expr, duration) in expected.items():
        assert alert in names, f"no alert {alert}"
        assert names[alert]["expr"] == expr and names[alert].get("for") == duration, alert
        assert names[alert]["labels"]["severity"] in ("warning", "critical")
        assert {"summary", "description"} <= set(names[alert]["annotations"])
    used = " ".join(expr for _, expr, _ in dashboard_queries())
    for metric in ("nfsj_proxy_calls_total", "nfsj_proxy_client_latency_seconds_bucket",
                   "nfsj_proxy_backend_latency_seconds_bucket", "nfsj_log_size_bytes",
                   "nfsj_log_backlog_records", "nfsj_log_unsynced_age_seconds", "nfsj_shipping_lag_records",
                   "nfsj_frontier_age_seconds", "nfsj_consistent_point_age_seconds", "nfsj_hlc_offset_seconds",
                   "nfsj_hlc_rejections_total"):
        assert metric in used, f"the dashboard does not show {metric}"
    assert "histogram_quantile(0.99" in used and "histogram_quantile(0.5" in used


class Daemon:
    """An `nfsj` daemon subprocess whose first stdout line says where it serves."""

    def __init__(self, argv: list[str], stderr: Path):
        self.stderr_path = stderr
        self.stderr = open(stderr, "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "nfsproxy", *argv], stdout=subprocess.PIPE,
                                     stderr=self.stderr, text=True, cwd=ROOT)
        self.line = self.proc.stdout.readline()
        m = re.search(r"metrics (http://\S+)", self.line)
        if not m:
            self.stop()
            raise RuntimeError(f"nfsj {argv[0]} did not start: {self.line!r}\n"
                               f"{stderr.read_text(errors='replace')[-4000:]}")
        self.metrics_url = m.group(1).rstrip(",;")

    def scrape(self) -> str:
        with urllib.request.urlopen(self.metrics_url, timeout=10) as r:
            return r.read().decode()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.stderr.close()


def exposed(text: str) -> dict[str, set[str]]:
    """{metric name as queried: its label names} of a /metrics text."""
    from prometheus_client.parser import text_string_to_metric_families
    names: dict[str, set[str]] = {}
    for line in text.splitlines():  # families without samples still have a TYPE line
        m = re.match(r"# TYPE (\S+) (\S+)", line)
        if m:
            name, kind = m.groups()
            suffixes = {"histogram": ("_bucket", "_sum", "_count"), "summary": ("", "_sum", "_count"),
                        "counter": ("" if name.endswith("_total") else "_total",)}.get(kind, ("",))
            for s in suffixes:
                names.setdefault(name + s, set())
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            names.setdefault(sample.name, set()).update(sample.labels)
    return names


@pytest.fixture
def live_metrics(nas, tmp_path) -> dict[str, set[str]]:
    """Metric names and labels of a real shard and a real proxy (with some NFS traffic),
    shipping with ingest credentials made by deploy/ingest-token.sh, as deployed."""
    import nfs_rs
    # Empty directories made beforehand, as tmpfiles.d / StateDirectory= / volumes do.
    (tmp_path / "shard0").mkdir(mode=0o700)
    (tmp_path / "log").mkdir(mode=0o700)
    assert make_credentials(1, tmp_path / "etc").returncode == 0
    shard = Daemon(["recoveryd", "--listen", "127.0.0.1:0", "--data", str(tmp_path / "shard0"),
                    "--shard-id", "0", "--metrics", "127.0.0.1:0",
                    "--ingest-tokens", str(tmp_path / "etc" / "ingest-tokens")], tmp_path / "shard.stderr")
    proxy = None
    try:
        address = re.search(r"serving on (\S+?),", shard.line).group(1)
        proxy = Daemon(["proxy", "--listen", "127.0.0.1:0",
                        "--backend", f"127.0.0.1:{nas.nfs_port}:{nas.mount_port}:/export",
                        "--log", str(tmp_path / "log"), "--shard", address, "--quota", "1G",
                        "--metrics", "127.0.0.1:0", "--node-id", "1",
                        "--ingest-token-file", str(tmp_path / "etc" / "ingest-token")],
                       tmp_path / "proxy.stderr")
        port = int(re.search(r"serving NFSv3\+MOUNT on [^ ]+:(\d+),", proxy.line).group(1))
        url = f"nfs://127.0.0.1/export?version=3&nfsport={port}&mountport={port}"
        client = nfs_rs.Client.connect(url, connect_timeout=5.0, operation_timeout=15.0)
        try:  # mutations and reads, so per-procedure series and histograms exist
            client.mkdir("deploy-check", 0o755)
            with client.open("deploy-check/f", "w+b") as f:
                f.write_at(b"metrics" * 100, 0)
            client.listdir("deploy-check")
        finally:
            client.close()
        deadline = time.monotonic() + 20
        while True:  # the shard exports per-stream series once the proxy's stream registered
            names = exposed(proxy.scrape())
            shard_names = exposed(shard.scrape())
            if "stream" in shard_names.get("nfsj_frontier_age_seconds", ()) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        for name, labels in shard_names.items():
            names.setdefault(name, set()).update(labels)
        log = (tmp_path / "shard.stderr").read_text(errors="replace")
        assert "INGEST IS OPEN" not in log
        assert "stream" in shard_names.get("nfsj_frontier_age_seconds", ()), \
            f"the proxy's stream never reached the shard:\n{log[-3000:]}"
        return names
    finally:
        if proxy is not None:
            proxy.stop()
        shard.stop()


def test_alert_and_dashboard_metrics_exist(live_metrics):
    known_labels = TARGET_LABELS | static_target_labels()
    uses = [(f"alert {r['alert']}", r["expr"],
             " ".join(r["annotations"].values()) + " " + " ".join(r["labels"].values()))
            for r in alert_rules()] + dashboard_queries()
    problems = []
    for where, expr, text in uses:
        metrics = set(METRIC.findall(expr)) | (BUILTIN_METRICS & set(re.findall(r"\b\w+\b", expr)))
        if not metrics:
            problems.append(f"{where}: no metric in {expr!r}")
        for metric in metrics - BUILTIN_METRICS:
            if metric not in live_metrics:
                problems.append(f"{where}: {metric} is not exported by nfsj proxy or nfsj recoveryd")
        labels = known_labels.union(*(live_metrics.get(m, set()) for m in metrics))
        referenced = set(re.findall(r"(\w+)\s*(?:=~|!~|!=|=)\s*\"", expr))
        for group in re.findall(r"\b(?:by|without)\s*\(([^)]*)\)", expr):
            referenced |= {label.strip() for label in group.split(",") if label.strip()}
        referenced |= set(re.findall(r"\{\{\s*(\w+)\s*\}\}", text))  # Grafana legends
        referenced |= set(re.findall(r"\$labels\.(\w+)", text))  # alert templates
        for label in referenced - labels:
            problems.append(f"{where}: label {label!r} is not on {sorted(metrics)}")
    assert not problems, "\n".join(problems)
