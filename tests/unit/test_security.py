"""TLS, mTLS and Restore credentials (recoveryd/security.py) on real grpc.aio
servers on loopback, with real certificates made here (tests/tls_certs.py):
a CA, a shard certificate for 127.0.0.1/localhost, a proxy's, an operator's,
an expired one, and one from another CA. No mocks: the handshakes, the
interceptor and the clients are the ones the daemons run."""

from __future__ import annotations

import asyncio
import datetime
import logging
import os
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Iterator

import grpc
import pytest

from logstore.hlc import HLC
from logstore.pb import journal_pb2 as pb
from logstore.pb.journal_pb2 import (IngestBatch, Op, Record, ScanRequest, ShardStatusRequest,
                                     ShippedRecord, StreamId)
from logstore.pb.journal_pb2_grpc import ControlStub, JournalStub, RestoreStub
from logstore.stamp import Stamp
from recoveryd.restore import RestoreClient, ShardError, Shards
from recoveryd.security import (BearerToken, RestoreAuth, SecurityError, TlsOptions,
                                channel_credentials, open_channel, parse_tokens, server_credentials)
from recoveryd.server import JournalServer, start_server
from recoveryd.status import fetch_status
from recoveryd.store import ShardStore
from tls_certs import Pki, make_pki

UNAUTHENTICATED = grpc.StatusCode.UNAUTHENTICATED
UNAVAILABLE = grpc.StatusCode.UNAVAILABLE
GOOD = "good-token-0123456789abcdef"
OTHER = "other-token-0123456789abcdef"
OLD = "old-token-0123456789abcdefgh"
CALL_TIMEOUT_S = 10.0


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def tokens_file(directory: Path, text: str) -> str:
    path = directory / "restore-tokens"
    path.write_text(text)
    path.chmod(0o600)
    return str(path)


def standard_tokens(directory: Path) -> str:
    return tokens_file(directory, f"# who may restore\n{GOOD}  # the operator\n"
                                  f"{OLD} expires=2001-01-01T00:00:00Z\n")


# -- a shard on its own event loop -------------------------------------------------------


class Shard:
    """`start_server` (Journal + Restore + health) on a thread's event loop."""

    def __init__(self, path: Path, **security):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.store = ShardStore(path, 1)
        try:
            self.server: JournalServer = self._run(
                start_server(self.store, HLC(self.store.node_id), "127.0.0.1", 0, **security))
        except BaseException:
            self._close_loop()
            raise
        self.address = f"127.0.0.1:{self.server.port}"

    def _run(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(30)

    def _close_loop(self) -> None:
        self.store.close()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()

    def stop(self) -> None:
        self._run(self.server.stop(0.5))
        self._close_loop()


@pytest.fixture
def shard_with(tmp_path: Path):
    """`shard_with(**start_server security kwargs)`; all are stopped afterwards."""
    started: list[Shard] = []

    def start(**security) -> Shard:
        shard = Shard(tmp_path / f"shard{len(started)}", **security)
        started.append(shard)
        return shard

    yield start
    for shard in started:
        shard.stop()


def tls(pki: Pki) -> dict:
    return {"tls": TlsOptions(pki.server.cert, pki.server.key)}


def mtls(pki: Pki) -> dict:
    return {"tls": TlsOptions(pki.server.cert, pki.server.key, pki.ca, require_client_cert=True)}


def client(pki: Pki, who: str | None = None, ca: str | None = None) -> grpc.ChannelCredentials:
    pair = getattr(pki, who) if who else None
    return channel_credentials(TlsOptions(pair.cert if pair else None, pair.key if pair else None,
                                          ca or pki.ca))


def call(shard: Shard, method: str, *, credentials=None, token: str | None = None):
    """One call on a fresh channel: 'status' (Journal.Status), 'baselines' or 'scan' (Restore)."""
    with open_channel(shard.address, credentials=credentials,
                      token=BearerToken(token) if token else None) as channel:
        if method == "status":
            return JournalStub(channel).Status(ShardStatusRequest(), timeout=CALL_TIMEOUT_S)
        if method == "baselines":
            return RestoreStub(channel).Baselines(ShardStatusRequest(), timeout=CALL_TIMEOUT_S)
        return list(RestoreStub(channel).Scan(ScanRequest(), timeout=CALL_TIMEOUT_S))


def refused(shard: Shard, method: str, **kw) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call(shard, method, **kw)
    return info.value


def raw_metadata_call(shard: Shard, metadata, credentials=None):
    """Baselines with hand-made metadata (what a foreign client might send)."""
    with open_channel(shard.address, credentials=credentials) as channel:
        return RestoreStub(channel).Baselines(ShardStatusRequest(), metadata=metadata,
                                              timeout=CALL_TIMEOUT_S)


# -- TLS -------------------------------------------------------------------------------------


def test_tls_shard_and_a_client_with_the_ca(pki, shard_with, caplog):
    caplog.set_level(logging.WARNING, logger="recoveryd.server")
    shard = shard_with(**tls(pki))
    assert call(shard, "status", credentials=client(pki)).shard_id == 1
    assert list(call(shard, "baselines", credentials=client(pki)).baselines) == []
    # The client library: status, and a restore's first question.
    with Shards([shard.address], credentials=client(pki)) as shards:
        assert shards.status()[0].up
        assert shards.baselines() == [[]]
    # TLS alone authenticates nobody: Restore is open, and the shard says so.
    assert any(f"Restore is not authenticated; anyone who can reach {shard.address} can read every "
               "byte written to the NAS" in r.getMessage() for r in caplog.records)
    assert shard.server.security.startswith("TLS, Restore is open")


def test_plaintext_client_to_a_tls_shard_fails(pki, shard_with):
    shard = shard_with(**tls(pki))
    assert refused(shard, "status").code() is UNAVAILABLE
    report, = fetch_status([shard.address], 5.0)
    assert not report.up and report.error.startswith("UNAVAILABLE")
    with Shards([shard.address]) as shards, pytest.raises(ShardError) as info:
        shards.baselines()
    assert "closed the connection" in str(info.value) and "--tls-ca" in str(info.value)
    assert "\n" not in str(info.value)


def test_client_that_does_not_trust_the_shards_ca_fails(pki, shard_with):
    shard = shard_with(**tls(pki))
    with Shards([shard.address], credentials=client(pki, ca=pki.other_ca)) as shards, \
            pytest.raises(ShardError, match="failed the TLS handshake"):
        shards.baselines()


def test_tls_client_to_a_plaintext_shard_fails(pki, shard_with):
    shard = shard_with()
    assert refused(shard, "status", credentials=client(pki)).code() is UNAVAILABLE


# -- mTLS ------------------------------------------------------------------------------------


@pytest.mark.parametrize("who", [None, "rogue", "expired"],
                         ids=["no-client-cert", "cert-from-another-ca", "expired-cert"])
def test_mtls_refuses_clients_without_a_valid_certificate(pki, shard_with, who):
    shard = shard_with(**mtls(pki))
    for method in ("status", "baselines", "scan"):
        assert refused(shard, method, credentials=client(pki, who)).code() is UNAVAILABLE
    # not even a token gets past the handshake
    assert refused(shard, "baselines", credentials=client(pki, who), token=GOOD).code() is UNAVAILABLE
    report, = fetch_status([shard.address], 5.0, credentials=client(pki, who))
    assert not report.up


def test_mtls_admits_a_valid_certificate_to_restore(pki, shard_with):
    shard = shard_with(**mtls(pki))
    assert list(call(shard, "baselines", credentials=client(pki, "client")).baselines) == []
    assert call(shard, "scan", credentials=client(pki, "client")) == []
    assert shard.server.restore_auth.counters.admitted_total == 2
    assert shard.server.security == ("mTLS (client certificates required), "
                                     "Restore needs a client certificate")


def test_mtls_with_allowed_identities(pki, shard_with, tmp_path):
    shard = shard_with(**mtls(pki), restore_identities=["restore-admin"],
                       restore_tokens=standard_tokens(tmp_path))
    # an allowed name
    assert list(call(shard, "baselines", credentials=client(pki, "admin")).baselines) == []
    # a verified certificate with another name: TLS lets it in, Restore does not ...
    assert call(shard, "status", credentials=client(pki, "client")).shard_id == 1
    e = refused(shard, "baselines", credentials=client(pki, "client"))
    assert e.code() is UNAUTHENTICATED
    assert e.details() == ("missing credentials: client certificate 'operator' is not allowed to "
                           "restore and the call carries no bearer token")
    # ... unless it also carries a token (over TLS: call credentials)
    assert call(shard, "scan", credentials=client(pki, "client"), token=GOOD) == []


def test_journal_ingest_works_for_an_mtls_proxy(pki, shard_with):
    shard = shard_with(**mtls(pki), restore_identities=["restore-admin"])
    stamp = Stamp(time.time_ns(), 0, 7)
    record = Record(stamp=stamp.to_bytes(), op=Op.WRITE, ok=True, fh=b"F", count=4, data=b"data")
    stream = StreamId(node_id=7, log_id="log-tls")
    batches = [IngestBatch(stream=stream, after_seq=0, through_seq=0, sent_stamp=stamp.to_bytes()),
               IngestBatch(stream=stream, after_seq=0, through_seq=1, stable=stamp.to_bytes(),
                           sent_stamp=stamp.to_bytes(),
                           records=[ShippedRecord(seq=1, record=record.SerializeToString())])]
    with open_channel(shard.address, credentials=client(pki, "proxy")) as channel:
        acks = list(JournalStub(channel).Ingest(iter(batches), timeout=CALL_TIMEOUT_S))
    assert [(a.error, a.durable_seq) for a in acks] == [("", 0), ("", 1)]
    assert shard.store.records_total == 1
    # and a proxy without a certificate cannot ship at all
    with open_channel(shard.address, credentials=client(pki)) as channel, \
            pytest.raises(grpc.RpcError) as info:
        list(JournalStub(channel).Ingest(iter(batches), timeout=CALL_TIMEOUT_S))
    assert info.value.code() is UNAVAILABLE


def test_status_works_over_mtls(pki, shard_with):
    shard = shard_with(**mtls(pki))
    report, = fetch_status([shard.address], 5.0, credentials=client(pki, "client"))
    assert report.up and report.status.shard_id == 1
    report, = fetch_status([shard.address], 5.0)  # plaintext
    assert not report.up


def test_a_certificate_is_trusted_only_when_the_server_verifies_it(tmp_path):
    # RestoreAuth without verified client certificates ignores a peer's name:
    # a server that does not verify certificates cannot vouch for them.
    auth = RestoreAuth(standard_tokens(tmp_path))
    assert auth.refusal((), {"x509_common_name": [b"restore-admin"]}).startswith("missing credentials")
    with pytest.raises(SecurityError, match="--restore-identity needs client certificates"):
        RestoreAuth(allowed_identities=["restore-admin"])


# -- tokens -----------------------------------------------------------------------------------


@pytest.fixture
def token_shard(pki, shard_with, tmp_path):
    """TLS (no client certificates) with a tokens file: GOOD valid, OLD expired."""
    return shard_with(**tls(pki), restore_tokens=standard_tokens(tmp_path))


@pytest.mark.parametrize("method", ["baselines", "scan"])
def test_restore_with_tokens(pki, token_shard, method):
    creds = client(pki)
    e = refused(token_shard, method, credentials=creds)
    assert (e.code(), e.details().split(":")[0]) == (UNAUTHENTICATED, "missing credentials")
    e = refused(token_shard, method, credentials=creds, token=OTHER)
    assert (e.code(), e.details()) == (UNAUTHENTICATED, "wrong token: the bearer token is not one "
                                                        "this shard accepts")
    e = refused(token_shard, method, credentials=creds, token=OLD)
    assert (e.code(), e.details()) == (UNAUTHENTICATED, "expired token: the bearer token expired "
                                                        "at 2001-01-01T00:00:00+00:00")
    assert call(token_shard, method, credentials=creds, token=GOOD) is not None
    counters = token_shard.server.restore_auth.counters
    assert counters.admitted_total == 1
    assert counters.refused_total == {"missing credentials": 1, "wrong token": 1, "expired token": 1}


def test_tokens_guard_restore_only(pki, token_shard):
    # Journal.Status (counters and frontiers, no data) needs no token.
    assert call(token_shard, "status", credentials=client(pki)).shard_id == 1


def test_token_through_the_restore_client(pki, token_shard, tmp_path):
    path = tmp_path / "my-token"
    path.write_text(f"{GOOD}\n")
    token = BearerToken.from_file(str(path))
    with Shards([token_shard.address], credentials=client(pki), token=token) as shards:
        assert shards.baselines() == [[]]
        assert list(shards.scan(ScanRequest())) == []
    with Shards([token_shard.address], credentials=client(pki)) as shards, \
            pytest.raises(ShardError) as info:
        RestoreClient(shards).cut(Stamp(time.time_ns(), 0, 0))
    message = str(info.value)
    assert "refused the call" in message and "missing credentials" in message and "\n" not in message


def test_tokens_over_plaintext_travel_as_metadata(shard_with, tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="recoveryd.server")
    shard = shard_with(restore_tokens=standard_tokens(tmp_path))
    assert any("restore tokens travel in clear text" in r.getMessage() for r in caplog.records)
    # grpc refuses call credentials on a plaintext channel; open_channel adds
    # the metadata with an interceptor instead
    assert call(shard, "scan", token=GOOD) == []
    with Shards([shard.address], token=BearerToken(GOOD)) as shards:
        assert shards.baselines() == [[]]
        assert list(shards.scan(ScanRequest())) == []
        assert shards.status()[0].up
    assert refused(shard, "baselines").code() is UNAUTHENTICATED
    assert refused(shard, "baselines", token=OLD).details().startswith("expired token")


@pytest.mark.parametrize("value, admitted", [
    (f"Bearer {GOOD}", True), (f"bearer {GOOD}", True), (f"Bearer   {GOOD} ", True),
    (f"Basic {GOOD}", False), (GOOD, False), ("Bearer ", False)])
def test_authorization_header_forms(shard_with, tmp_path, value, admitted):
    shard = shard_with(restore_tokens=standard_tokens(tmp_path))
    if admitted:
        raw_metadata_call(shard, (("authorization", value),))
    else:
        with pytest.raises(grpc.RpcError) as info:
            raw_metadata_call(shard, (("authorization", value),))
        assert info.value.details().startswith("missing credentials")


def test_tokens_file_is_read_again_when_it_changes(shard_with, tmp_path):
    path = standard_tokens(tmp_path)
    shard = shard_with(restore_tokens=path)
    assert refused(shard, "baselines", token=OTHER).details().startswith("wrong token")
    # add a token: admitted without a restart
    Path(path).write_text(f"{GOOD}\n{OTHER}\n")
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 1_000_000_000))
    call(shard, "baselines", token=OTHER)
    # revoke GOOD; a bad line is skipped (refused), the rest still works
    Path(path).write_text(f"{OTHER}\nshort\n{GOOD} expires=someday\n")
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 2_000_000_000))
    assert refused(shard, "baselines", token=GOOD).details().startswith("wrong token")
    call(shard, "baselines", token=OTHER)
    # the file disappears: every token is refused (fail closed)
    os.unlink(path)
    assert refused(shard, "baselines", token=OTHER).details().startswith("wrong token")


def test_token_expiry_is_checked_at_each_call(tmp_path):
    soon = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(hours=1)
    auth = RestoreAuth(tokens_file(tmp_path, f"{GOOD} expires={soon.isoformat()}\n"))
    meta = (("authorization", f"Bearer {GOOD}"),)
    assert auth.refusal(meta, {}) is None
    assert auth.refusal(meta, {}, now=soon.timestamp() + 1).startswith("expired token")


# -- files and settings ------------------------------------------------------------------------


def test_parse_tokens():
    entries = parse_tokens(f"# comment\n\n  {GOOD}   # trailing comment\n"
                           f"{OTHER} expires=2030-01-31T12:00:00Z\n{OLD} expires=2030-01-31\n")
    assert [e.token for e in entries] == [GOOD, OTHER, OLD]
    assert entries[0].expires is None
    assert entries[1].expires == datetime.datetime(2030, 1, 31, 12, tzinfo=datetime.timezone.utc)
    assert entries[2].expires == datetime.datetime(2030, 1, 31, tzinfo=datetime.timezone.utc)
    assert GOOD not in repr(entries[0])


@pytest.mark.parametrize("text, message", [
    ("short\n", "line 1: the token is shorter than 16 characters"),
    (f"{GOOD} expires=tomorrow\n", "line 1: expires='tomorrow' is not an ISO-8601 time"),
    (f"# x\n{GOOD} until=2030-01-01\n", "line 2: unknown field 'until=2030-01-01'"),
])
def test_a_bad_tokens_file_stops_the_shard(tmp_path, text, message):
    with pytest.raises(SecurityError, match=message):
        RestoreAuth(tokens_file(tmp_path, text))


def test_missing_tokens_file_stops_the_shard(tmp_path):
    with pytest.raises(SecurityError, match="No such file"):
        RestoreAuth(str(tmp_path / "nope"))


def test_bearer_token_file(tmp_path):
    path = tmp_path / "token"
    path.write_text(f"# mine\n{GOOD} expires=2030-01-01\n")
    token = BearerToken.from_file(str(path))
    assert token.token == GOOD and GOOD not in repr(token)
    assert token.metadata == (("authorization", f"Bearer {GOOD}"),)
    path.write_text("# nothing\n")
    with pytest.raises(SecurityError, match="holds no token"):
        BearerToken.from_file(str(path))
    with pytest.raises(SecurityError, match="No such file"):
        BearerToken.from_file(str(tmp_path / "nope"))


def test_tls_settings_that_cannot_work(pki, tmp_path):
    with pytest.raises(SecurityError, match="cannot be used together"):
        server_credentials(TlsOptions(pki.server.cert, pki.client.key))
    with pytest.raises(SecurityError, match="private key is missing"):
        server_credentials(TlsOptions(pki.server.cert))
    with pytest.raises(SecurityError, match="a CA without a certificate"):
        server_credentials(TlsOptions(ca=pki.ca, require_client_cert=True))
    with pytest.raises(SecurityError, match="needs the CA"):
        server_credentials(TlsOptions(pki.server.cert, pki.server.key, require_client_cert=True))
    not_pem = tmp_path / "not.pem"
    not_pem.write_text("hello\n")
    with pytest.raises(SecurityError, match="is not PEM"):
        channel_credentials(TlsOptions(ca=str(not_pem)))
    with pytest.raises(SecurityError, match="No such file"):
        channel_credentials(TlsOptions(ca=str(tmp_path / "nope.pem")))
    assert server_credentials(None) is None and channel_credentials(TlsOptions()) is None


def test_open_restore_logs_a_warning(shard_with, caplog):
    caplog.set_level(logging.WARNING, logger="recoveryd.server")
    shard = shard_with()
    assert call(shard, "baselines") is not None  # open, as before
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(m.startswith(f"Restore is not authenticated; anyone who can reach {shard.address} "
                            "can read every byte written to the NAS") for m in warnings)
    assert shard.server.restore_auth is None


# -- the proxy's Control API ---------------------------------------------------------------------


class _NoJournal:
    journal = None


def test_control_api_over_mtls(pki):
    from nfsproxy.daemon.control import start_control
    from nfsproxy.daemon.proxyd import control_tls

    proxy_tls = TlsOptions(pki.proxy.cert, pki.proxy.key, pki.ca)
    loop = asyncio.new_event_loop()
    try:
        server, port = loop.run_until_complete(start_control(
            _NoJournal(), "127.0.0.1", 0, credentials=server_credentials(control_tls(proxy_tls))))

        def baseline(credentials) -> grpc.RpcError:
            with open_channel(f"127.0.0.1:{port}", credentials=credentials) as channel:
                with pytest.raises(grpc.RpcError) as info:
                    list(ControlStub(channel).Baseline(pb.BaselineRequest(), timeout=CALL_TIMEOUT_S))
                return info.value

        async def both():
            return await asyncio.gather(*(loop.run_in_executor(None, baseline, c) for c in (
                client(pki, "client"), client(pki), None)))

        with_cert, without_cert, plaintext = loop.run_until_complete(both())
        # the handler ran: the TLS handshake passed
        assert with_cert.code() is grpc.StatusCode.FAILED_PRECONDITION
        assert without_cert.code() is UNAVAILABLE and plaintext.code() is UNAVAILABLE
        loop.run_until_complete(server.stop(0))
    finally:
        loop.close()


# -- the command line ------------------------------------------------------------------------------


def test_every_command_that_talks_grpc_takes_the_tls_flags():
    import typer.main

    from nfsproxy.cli import app, command_options
    options = command_options(typer.main.get_command(app))
    for command in ("recoveryd", "proxy", "restore", "cat", "history", "status", "export", "baseline"):
        assert {"tls_ca", "tls_cert", "tls_key"} <= options[command], command
    for command in ("restore", "cat", "history", "export"):
        assert "token_file" in options[command], command
    assert {"restore_tokens", "restore_identity"} <= options["recoveryd"]


def test_recoveryd_refuses_tls_settings_that_cannot_work(pki, tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "nfsproxy", "recoveryd", "--listen", "127.0.0.1:0", "--data",
         str(tmp_path / "d"), "--shard-id", "0", "--tls-cert", pki.server.cert,
         "--tls-key", pki.client.key], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert lines[-1].startswith("nfsj: error: TLS certificate") and "cannot be used together" in lines[-1]
    done = subprocess.run(
        [sys.executable, "-m", "nfsproxy", "recoveryd", "--listen", "127.0.0.1:0", "--data",
         str(tmp_path / "d"), "--shard-id", "0", "--restore-identity", "x"],
        capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].startswith("nfsj: error: --restore-identity needs")


def test_client_commands_fail_in_one_line_on_a_bad_token_file(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "nfsproxy", "history", "/x", "--shard", "127.0.0.1:1",
         "--token-file", str(tmp_path / "nope")], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"nfsj: error: token file {tmp_path / 'nope'}: No such file or directory"]


# -- who may ship (IngestAuth) over real gRPC -----------------------------------------------


def ingest_hello(shard: Shard, node: int, *, credentials=None, token: str | None = None):
    """A hello for stream (node, "log"): its ack, or the RpcError that refused it."""
    with open_channel(shard.address, credentials=credentials,
                      token=BearerToken(token) if token else None) as channel:
        try:
            return list(JournalStub(channel).Ingest(
                iter([IngestBatch(stream=pb.StreamId(node_id=node, log_id="log"))]),
                timeout=CALL_TIMEOUT_S))[0]
        except grpc.RpcError as e:
            return e


def test_mtls_binds_a_node_to_the_first_certificate_that_ships_it(pki, shard_with):
    shard = shard_with(**mtls(pki))
    assert ingest_hello(shard, 5, credentials=client(pki, "proxy")).error == ""
    assert ingest_hello(shard, 5, credentials=client(pki, "proxy")).error == ""  # same name: fine
    refused_ = ingest_hello(shard, 5, credentials=client(pki, "client"))
    assert refused_.code() is grpc.StatusCode.PERMISSION_DENIED and "bound to" in refused_.details()
    assert ingest_hello(shard, 6, credentials=client(pki, "client")).error == ""
    owners = shard.store.owner(5), shard.store.owner(6)
    assert all(o.startswith("cert:") for o in owners) and owners[0] != owners[1]
    assert shard.server.servicer.counters.auth_refusals_total == 1


def test_ingest_tokens_and_hidden_status(pki, shard_with, tmp_path):
    ingest = tmp_path / "ingest-tokens"
    ingest.write_text(f"9 {GOOD}\n")
    ingest.chmod(0o600)
    shard = shard_with(restore_tokens=tokens_file(tmp_path, f"{OTHER}\n"), ingest_tokens=str(ingest))
    assert ingest_hello(shard, 9).code() is grpc.StatusCode.UNAUTHENTICATED
    assert ingest_hello(shard, 9, token=OTHER).code() is grpc.StatusCode.UNAUTHENTICATED
    assert ingest_hello(shard, 9, token=GOOD).error == ""
    assert ingest_hello(shard, 10, token=GOOD).code() is grpc.StatusCode.PERMISSION_DENIED  # no member
    hidden = call(shard, "status")
    assert hidden.streams_hidden and not hidden.streams and not hidden.members
    for token in (GOOD, OTHER):  # an ingest token or a restore token shows them
        shown = call(shard, "status", token=token)
        assert [s.stream.node_id for s in shown.streams] == [9] and list(shown.members) == [9]
