"""TLS, mTLS and Restore credentials end to end: real ganesha, two real
`nfsj recoveryd` shards with --tls-cert/--tls-key/--tls-ca (mTLS) and
--restore-tokens, a real `nfsj proxy` shipping to them with its own client
certificate, and the `nfsj` commands a user types.

* the proxy's records reach the shards over mTLS (`nfsj status --tls-ca ...
  --json` shows them; without a certificate the shards are DOWN to it);
* `nfsj baseline` reaches the proxy's Control API over mTLS;
* `nfsj restore` with a valid client certificate but no token is refused
  with one line and a non-zero exit, and a wrong token too; with
  `--token-file` it restores the files; a certificate named by
  --restore-identity needs no token (`nfsj cat`).

Certificates are made by the test (tests/tls_certs.py).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from e2e.workload import connect
from logstore.stamp import Stamp
from tls_certs import make_pki

pytestmark = [pytest.mark.ganesha, pytest.mark.timeout(600)]

NFSJ = [sys.executable, "-m", "nfsproxy"]
M32 = (1 << 32) - 1
TOKEN = "e2e-restore-token-0123456789abcdef"
WAIT_S = 60.0


def nfsj(*args: str, timeout_s: float = 120.0) -> subprocess.CompletedProcess:
    return subprocess.run([*NFSJ, *args], capture_output=True, text=True, timeout=timeout_s)


def one_line_error(done: subprocess.CompletedProcess) -> str:
    assert done.returncode != 0, done.stdout + done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("nfsj: error: "), lines[0]
    return lines[0]


def test_tls_stack(nas, shard_factory, proxy_factory, tmp_path: Path):
    pki = make_pki(tmp_path / "pki")
    tokens = tmp_path / "restore-tokens"
    tokens.write_text(f"# operators\n{TOKEN}\n")
    tokens.chmod(0o600)
    token_file = tmp_path / "my-token"
    token_file.write_text(f"{TOKEN}\n")
    wrong_token_file = tmp_path / "wrong-token"
    wrong_token_file.write_text("not-the-right-token-0123456789\n")

    shard_flags = ["--tls-cert", pki.server.cert, "--tls-key", pki.server.key, "--tls-ca", pki.ca,
                   "--restore-tokens", str(tokens), "--restore-identity", "restore-admin"]
    shards = [shard_factory(k, extra=shard_flags) for k in range(2)]
    for shard in shards:
        assert "Restore is not authenticated" not in shard.stderr_text()
        assert "Journal ingest is not authenticated" not in shard.stderr_text()
    shard_args = [a for s in shards for a in ("--shard", s.address)]

    # The proxy registers its new LOG with every shard before it serves a
    # client: that it started at all means the mTLS handshakes worked.
    proxy = proxy_factory(extra=[*shard_args, "--tls-ca", pki.ca, "--tls-cert", pki.proxy.cert,
                                 "--tls-key", pki.proxy.key])
    operator = ["--tls-ca", pki.ca, "--tls-cert", pki.client.cert, "--tls-key", pki.client.key]
    admin = ["--tls-ca", pki.ca, "--tls-cert", pki.admin.cert, "--tls-key", pki.admin.key]

    # nfsj baseline: the Control API is TLS with client certificates now
    err = one_line_error(nfsj("baseline", "--log", str(proxy.log_dir), "--quiet"))
    assert "control API over TLS" in err
    done = nfsj("baseline", "--log", str(proxy.log_dir), "--quiet", *operator)
    assert done.returncode == 0, done.stderr

    files = {f"dir/f{i}": bytes([65 + i]) * (1000 + 4096 * i) for i in range(5)}
    with connect(proxy.url()) as client:
        client.mkdir("dir", 0o755)
        for path, data in files.items():
            with client.open(path, "w+b") as f:
                f.write_at(data, 0)
    time.sleep(0.05)
    moment = Stamp(time.time_ns(), M32, M32)
    time.sleep(0.05)

    # The records arrive: nfsj status over mTLS shows them and proves `moment`.
    deadline = time.monotonic() + WAIT_S
    while True:
        done = nfsj("status", *shard_args, *operator, "--json")
        view = json.loads(done.stdout)
        point = view["consistent_point"]
        if (done.returncode == 0 and sum(s["records"] for s in view["shards"]) >= len(files)
                and point is not None and Stamp.parse(point["stamp"]) > moment):
            break
        assert time.monotonic() < deadline, f"records did not arrive: {done.stdout}\n{done.stderr}"
        time.sleep(0.2)
    assert all(s["up"] for s in view["shards"])
    # This operator may not restore: its bulk ports are not asked, and no warning says they fail.
    assert [s["bulk"] for s in view["shards"]] == [None, None] and view["warnings"] == [], view
    # The restore admin's certificate: both bulk ports serve it, over mTLS.
    view = json.loads(nfsj("status", *shard_args, *admin, "--json").stdout)
    assert [s["bulk"] for s in view["shards"]] == ["", ""] and view["warnings"] == [], view

    # Without a client certificate the shards do not even answer the handshake.
    done = nfsj("status", *shard_args, "--tls-ca", pki.ca, "--json")
    assert done.returncode == 1
    assert not any(s["up"] for s in json.loads(done.stdout)["shards"])

    # nfsj restore: a valid certificate without an allowed name needs a token.
    at = str(moment)
    err = one_line_error(nfsj("restore", "--at", at, "--to", str(tmp_path / "r1"), *shard_args,
                              *operator))
    assert "refused the call" in err and "missing credentials" in err, err
    assert not (tmp_path / "r1").exists() or not any((tmp_path / "r1").iterdir())
    err = one_line_error(nfsj("restore", "--at", at, "--to", str(tmp_path / "r2"), *shard_args,
                              *operator, "--token-file", str(wrong_token_file)))
    assert "wrong token" in err, err

    done = nfsj("restore", "--at", at, "--to", str(tmp_path / "restored"), "--quiet", *shard_args,
                *operator, "--token-file", str(token_file))
    assert done.returncode == 0, done.stderr
    for path, data in files.items():
        assert (tmp_path / "restored" / path).read_bytes() == data, path

    # A certificate named by --restore-identity needs no token.
    done = subprocess.run([*NFSJ, "cat", "dir/f3", "--at", at, *shard_args, *admin],
                          capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr.decode()
    assert done.stdout == files["dir/f3"]

    # Nothing refused anything it should not have: the proxy kept shipping.
    assert proxy.alive(), proxy.stderr_text()
