"""The layers import downwards only: nfsproxy -> recoveryd -> logstore.

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
            if top in others:
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
