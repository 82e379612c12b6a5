"""The layers import downwards only: nfsproxy -> recoveryd -> logstore, and
inside nfsproxy, each concept's sub-package only what it is designed to use.

The journal format and the LOG (logstore) know nothing of shards or NFS; a
shard (recoveryd) knows nothing of NFS. A violation fails here, naming the
file, the line and the import, as CockroachDB's dep_test does for its
packages. Every import counts, also one inside a function: a lazy import is
still a dependency.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

#: package -> the project packages it may import (besides itself).
#: Compiled leaves every layer may use: they import nothing of the project.
#: The native core is one extension module (maturin builds one per
#: distribution); besides the data plane it holds journal-format code a
#: shard uses too (``index_shipped_frames``).
LEAVES = {"nfsproxy._dataplane"}

ALLOWED = {
    "logstore": set(),
    "recoveryd": {"logstore"},
    "nfsproxy": {"recoveryd", "logstore"},
}


def _imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
    return found


def _violations(package: str, root: Path = ROOT) -> list[str]:
    others = set(ALLOWED) - ALLOWED[package] - {package}
    bad = []
    for path in sorted((root / package).rglob("*.py")):
        for line, module in _imports(path):
            top = module.split(".")[0]
            if top in others and module not in LEAVES:
                bad.append(f"{path.relative_to(root)}:{line} imports {module}")
    return bad


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_imports_go_downwards_only(package):
    assert _violations(package) == [], (
        f"{package} may import only {sorted(ALLOWED[package]) or 'nothing of the project'}")


def test_the_check_sees_a_violation(tmp_path):
    # The test must be able to fail: plant an upward import and look for it.
    fake = tmp_path / "logstore"
    fake.mkdir()
    (fake / "bad.py").write_text("def f():\n    from nfsproxy import relay\n")
    assert _violations("logstore", tmp_path) == ["logstore/bad.py:2 imports nfsproxy"]


#: nfsproxy sub-package -> the sibling rooms it may import. A name with a dot
#: allows one module: the NAS client side needs the user's addresses and
#: their ConfigError, never a daemon.
NFSPROXY_ALLOWED = {
    "wire": set(),
    "native": set(),
    "relay": {"wire", "native"},
    "ship": {"native"},
    "export": {"wire", "relay"},
    "nas": {"wire", "relay", "export", "daemon.config", "daemon.address"},
    "demo": set(),
    "daemon": {"wire", "native", "relay", "ship", "nas", "export", "demo"},
    "cli": {"daemon", "wire", "native", "relay", "ship", "nas", "export", "demo"},
}


def _room_violations(root: Path = ROOT) -> list[str]:
    bad = []
    for path in sorted((root / "nfsproxy").rglob("*.py")):
        parts = path.relative_to(root / "nfsproxy").parts
        if parts[0] == "dataplane":
            continue  # the Rust crate: its Python is tooling (fuzz seeds), not the package
        room = parts[0] if len(parts) > 1 else None
        for line, module in _imports(path):
            names = module.split(".")
            if names[0] != "nfsproxy" or len(names) < 2 or names[1] == room:
                continue
            allowed = NFSPROXY_ALLOWED.get(room, set()) if room else set(NFSPROXY_ALLOWED)
            if names[1] not in allowed and ".".join(names[1:3]) not in allowed:
                bad.append(f"{path.relative_to(root)}:{line} imports {module}")
    return bad


def test_every_nfsproxy_module_lives_in_a_room():
    flat = sorted(p.name for p in (ROOT / "nfsproxy").glob("*.py"))
    assert flat == ["__init__.py", "__main__.py"]
    rooms = {p.name for p in (ROOT / "nfsproxy").iterdir() if (p / "__init__.py").exists()}
    assert rooms == set(NFSPROXY_ALLOWED)


def test_nfsproxy_rooms_import_as_designed():
    assert _room_violations() == []


def test_the_room_check_sees_a_violation(tmp_path):
    wire = tmp_path / "nfsproxy" / "wire"
    wire.mkdir(parents=True)
    (wire / "bad.py").write_text("from nfsproxy.relay.session import Proxy\n")
    nas = tmp_path / "nfsproxy" / "nas"
    nas.mkdir()
    (nas / "ok.py").write_text("from nfsproxy.daemon.address import parse_hostport\n")
    (nas / "bad.py").write_text("from nfsproxy.daemon.proxyd import run_proxy\n")
    assert _room_violations(tmp_path) == ["nfsproxy/nas/bad.py:1 imports nfsproxy.daemon.proxyd",
                                          "nfsproxy/wire/bad.py:1 imports nfsproxy.relay.session"]
