"""Who may talk to a shard: TLS and mTLS for every gRPC channel, and who may restore.

The journal holds every byte written to the NAS, so the Restore service is a
read API for all of it. The rule: gRPC over TLS or mTLS when the network is not
private, and Restore calls need credentials (README.md, "Security").

Transport (``TlsOptions``)
--------------------------
* ``server_credentials(opts)``: TLS with ``cert``/``key``; with
  ``require_client_cert`` every client must present a certificate that chains
  to ``ca`` (mTLS), checked in the handshake (chain, validity dates), so a
  call never reaches a handler from a peer without one.
* ``channel_credentials(opts)``: verify the server against ``ca`` (None: the
  system's roots) and present ``cert``/``key`` when given (mTLS).
* ``open_channel(address, credentials=..., token=...)``: the one way clients
  open a channel, plain or TLS, with or without a bearer token.

Restore authorization (``RestoreAuth``)
---------------------------------------
A grpc.aio server interceptor. It guards every method of the Restore service
(a method added later is guarded too) and nothing else. A call is admitted when

* the server verifies client certificates (mTLS) and the peer's certificate
  common name is in ``allowed_identities`` (any verified certificate when that
  is empty); or
* its ``authorization`` metadata is ``Bearer <token>`` with a token listed in
  ``tokens_file`` and not expired.

Anything else is aborted with UNAUTHENTICATED and a one-line reason
(missing credentials, wrong token, expired token). The Journal service is
not guarded here: ``IngestAuth`` (below) decides who may ship, and
``Journal.Status`` shows stream keys only to callers this interceptor would
admit or that hold an ingest credential (recoveryd/server.py).

Tokens file: one token per line, optionally followed by
``expires=<ISO-8601>`` (a naive time is UTC); ``#`` starts a comment. The file
is read again whenever it changes (mtime, size or inode), so a token is
revoked by deleting its line, without a restart. A line that does not parse
at start-up stops the shard; after a change it is skipped and logged, which
refuses that token (fail closed). A tokens file that group or others may read
or write is refused the same way: at start-up the shard stops, after a
change (a chmod counts) every token is refused until it is private again.

Ingest authorization (``IngestAuth``)
-------------------------------------
A stream belongs to the proxy whose HLC node id it carries. A shard with an
ingest tokens file (``--ingest-tokens``: lines ``NODE_ID TOKEN
[expires=ISO-8601]``, same rules as above, re-read when it changes) admits
an ``Ingest`` call for node N only with a bearer token listed for N. Under
mTLS, a node with no token listed is bound to the first client certificate
that registers one of its streams (``ShardStore.bind_owner``, persisted);
another certificate is refused for it from then on. The node ids of the
tokens file and ``--member`` are the shard's members: a stream of any other
node is refused. With neither tokens nor mTLS, ingest is open (a WARNING
says so at start).

Client side: ``BearerToken.from_file`` reads a token (the first token line of
the file, same format). Over TLS it travels as call credentials
(``grpc.access_token_call_credentials``); gRPC refuses call credentials on a
plaintext channel, so there ``open_channel`` adds the same metadata to every
call with a client interceptor.
"""

from __future__ import annotations

import collections
import dataclasses
import datetime
import hashlib
import inspect
import logging
import os
import ssl
import stat
import threading
import time
from typing import Any, Iterable, Sequence

import grpc

__all__ = [
    "TlsOptions", "SecurityError", "server_credentials", "channel_credentials", "open_channel",
    "server_ssl_context", "client_ssl_context",
    "RestoreAuth", "BearerToken", "TokenEntry", "parse_tokens", "RESTORE_SERVICE",
    "MIN_TOKEN_CHARS", "IngestAuth", "Admission",
]

logger = logging.getLogger(__name__)

RESTORE_SERVICE = "nfsj.journal.v1.Restore"
#: Shorter tokens are refused: a token is a password for every byte on the NAS.
MIN_TOKEN_CHARS = 16
_MAKE_TOKEN = "python3 -c 'import secrets; print(secrets.token_urlsafe(32))'"


class SecurityError(ValueError):
    """TLS or token settings that cannot work; the message is one line that says why."""


# -- transport -------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class TlsOptions:
    """PEM files. A server needs ``cert`` and ``key``; ``require_client_cert``
    (mTLS) needs ``ca``. A client needs at least ``ca`` or ``cert``/``key``;
    ``ca`` None means the system's roots."""

    cert: str | None = None
    key: str | None = None
    ca: str | None = None
    require_client_cert: bool = False

    @property
    def enabled(self) -> bool:
        return bool(self.cert or self.key or self.ca)

    def describe(self, *, server: bool) -> str:
        if not self.enabled:
            return "plaintext"
        if server:
            return "mTLS (client certificates required)" if self.require_client_cert else "TLS"
        return "mTLS (client certificate)" if self.cert else "TLS"


def _read(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise SecurityError(f"{what} {path}: {e.strerror or e}") from None
    if b"-----BEGIN " not in data:
        raise SecurityError(f"{what} {path} is not PEM (no '-----BEGIN' line)")
    return data


def _check_pair(cert: str, key: str) -> None:
    """The certificate and key must belong together (gRPC would only say so in a
    native log line, at the first handshake)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        context.load_cert_chain(cert, key, password=b"")
    except ssl.SSLError as e:
        raise SecurityError(f"TLS certificate {cert} and key {key} cannot be used together "
                            f"({e.reason or e}; the key must match the certificate and not be "
                            "encrypted)") from None


def _check_ca(ca: str) -> None:
    try:
        ssl.create_default_context(cafile=ca)
    except ssl.SSLError as e:
        raise SecurityError(f"CA certificates {ca}: not usable ({e.reason or e})") from None


def _pair(opts: TlsOptions) -> tuple[bytes, bytes] | None:
    if not opts.cert and not opts.key:
        return None
    if not opts.cert or not opts.key:
        missing = "certificate" if not opts.cert else "private key"
        raise SecurityError(f"TLS needs a certificate and its private key together; the {missing} "
                            "is missing (--tls-cert FILE --tls-key FILE)")
    cert, key = _read(opts.cert, "TLS certificate"), _read(opts.key, "TLS private key")
    _check_pair(opts.cert, opts.key)
    return cert, key


def server_credentials(opts: TlsOptions | None) -> grpc.ServerCredentials | None:
    """TLS (or mTLS, with ``require_client_cert``) for a server; None: plaintext."""
    if opts is None or not opts.enabled:
        return None
    pair = _pair(opts)
    if pair is None:
        raise SecurityError("a CA without a certificate: serving TLS needs --tls-cert FILE and "
                            "--tls-key FILE (--tls-ca only adds client certificate checks)")
    ca = None
    if opts.require_client_cert:
        if not opts.ca:
            raise SecurityError("requiring client certificates needs the CA that signs them (--tls-ca FILE)")
        ca = _read(opts.ca, "CA certificates")
        _check_ca(opts.ca)
    cert, key = pair
    # require_client_auth: the handshake fails unless the client presents a
    # certificate that chains to `ca` and is valid now.
    return grpc.ssl_server_credentials([(key, cert)], root_certificates=ca,
                                       require_client_auth=opts.require_client_cert)


def server_ssl_context(opts: TlsOptions | None) -> ssl.SSLContext | None:
    """``server_credentials`` for a plain socket (the bulk port): the same
    certificate, and the same client certificate check. None: plaintext."""
    if server_credentials(opts) is None:   # every check, and its one-line errors
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(opts.cert, opts.key)
        if opts.require_client_cert:
            context.verify_mode = ssl.CERT_REQUIRED
            context.load_verify_locations(cafile=opts.ca)
    except ssl.SSLError as e:
        raise SecurityError(f"TLS for the bulk port: {e.reason or e}") from None
    return context


def client_ssl_context(opts: TlsOptions | None) -> ssl.SSLContext | None:
    """``channel_credentials`` for a plain socket (the bulk port): verify the
    server (host name included) against ``ca`` or the system's roots, present
    ``cert``/``key`` when given. None: plaintext."""
    if channel_credentials(opts) is None:
        return None
    context = ssl.create_default_context(cafile=opts.ca)
    if opts.cert:
        context.load_cert_chain(opts.cert, opts.key)
    return context


def channel_credentials(opts: TlsOptions | None) -> grpc.ChannelCredentials | None:
    """TLS for a client: verify the server against ``ca`` (None: system roots),
    present ``cert``/``key`` when given (mTLS). None: plaintext."""
    if opts is None or not opts.enabled:
        return None
    ca = None
    if opts.ca:
        ca = _read(opts.ca, "CA certificates")
        _check_ca(opts.ca)
    pair = _pair(opts)
    cert, key = pair if pair is not None else (None, None)
    return grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=cert)


# -- tokens ----------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class TokenEntry:
    token: str
    expires: datetime.datetime | None = None   # aware (UTC when the file said nothing)
    line: int = 0
    node_id: int | None = None                 # ingest tokens: the proxy node it ships for

    def valid(self, now: float | None = None) -> bool:
        return self.expires is None or self.expires.timestamp() > (time.time() if now is None else now)

    def __repr__(self) -> str:  # never print a token
        return f"TokenEntry(line={self.line}, expires={self.expires})"


def _valid_token(token: str) -> str | None:
    """Why ``token`` cannot be a bearer token (None: it can)."""
    if len(token) < MIN_TOKEN_CHARS:
        return f"is shorter than {MIN_TOKEN_CHARS} characters (make one with {_MAKE_TOKEN})"
    if not all(33 <= ord(c) < 127 for c in token):
        return "has characters other than printable ASCII"
    return None


def _expiry(text: str) -> datetime.datetime:
    try:
        when = datetime.datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"expires={text!r} is not an ISO-8601 time (e.g. 2030-01-31T12:00:00Z)") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.timezone.utc)
    return when


def parse_tokens(text: str, *, source: str = "tokens file",
                 errors: list[str] | None = None, with_node: bool = False) -> list[TokenEntry]:
    """The entries of a tokens file. A bad line raises ``SecurityError``, or,
    when ``errors`` is given, is skipped and described there. ``with_node``:
    every line starts with the proxy node id the token ships for."""
    entries = []
    for number, raw in enumerate(text.splitlines(), 1):
        fields = []
        for field in raw.split():
            if field.startswith("#"):
                break
            fields.append(field)
        if not fields:
            continue
        node_id = None
        if with_node:
            node_text = fields.pop(0)
            if not node_text.isdigit() or int(node_text) > 0xFFFF_FFFF or not fields:
                message = (f"{source} line {number}: expected NODE_ID TOKEN [expires=ISO-8601] "
                           "(NODE_ID: the proxy's HLC node id, a number)")
                if errors is None:
                    raise SecurityError(message)
                errors.append(message)
                continue
            node_id = int(node_text)
        token, expires, problem = fields[0], None, _valid_token(fields[0])
        if problem:
            problem = f"the token {problem}"
        for field in fields[1:]:
            if problem:
                break
            name, sep, value = field.partition("=")
            if name != "expires" or not sep:
                problem = f"unknown field {field!r} (write: TOKEN [expires=ISO-8601])"
                continue
            try:
                expires = _expiry(value)
            except ValueError as e:
                problem = str(e)
        if problem:
            message = f"{source} line {number}: {problem}"
            if errors is None:
                raise SecurityError(message)
            errors.append(message)
            continue
        entries.append(TokenEntry(token, expires, number, node_id))
    return entries


def _digest(token: str) -> bytes:
    # Tokens are looked up by hash: the comparison's timing says nothing about
    # how much of a guessed token was right.
    return hashlib.sha256(token.encode()).digest()


def _exposed(mode: int) -> str:
    """How group or others can get at a tokens file ("" if they cannot)."""
    can = [what for what, bits in (("read", 0o044), ("written", 0o022)) if mode & bits]
    return " and ".join(can)


class _TokensFile:
    """A tokens file, read again when it changes."""

    def __init__(self, path: str, *, what: str = "restore tokens", with_node: bool = False) -> None:
        self.path = path
        self.what = what
        self.with_node = with_node
        self._lock = threading.Lock()
        self._version: tuple | None = None
        self._tokens: dict[bytes, TokenEntry] = {}
        self._load(strict=True)

    def _stat(self) -> tuple | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino, st.st_ctime_ns)

    def _load(self, *, strict: bool) -> None:
        version = self._stat()
        try:
            with open(self.path, encoding="utf-8", errors="replace") as f:
                text = f.read()
                mode = os.fstat(f.fileno()).st_mode
        except OSError as e:
            if strict:
                raise SecurityError(f"{self.what} {self.path}: {e.strerror or e}") from None
            logger.error("%s %s: %s; every token is refused until it is readable",
                         self.what, self.path, e.strerror or e)
            self._tokens, self._version = {}, version
            return
        exposed = _exposed(mode)
        if exposed:
            problem = (f"{self.what} {self.path} can be {exposed} by other users "
                       f"(mode {stat.S_IMODE(mode):04o}); chmod 600 it")
            if strict:
                raise SecurityError(problem)
            logger.error("%s: every token is refused until then", problem)
            self._tokens, self._version = {}, version
            return
        errors: list[str] | None = None if strict else []
        entries = parse_tokens(text, source=f"{self.what} {self.path}", errors=errors,
                               with_node=self.with_node)
        for message in errors or ():
            logger.error("%s; that token is refused", message)
        self._tokens = {_digest(e.token): e for e in entries}
        self._version = version
        if strict:
            if not entries:
                logger.warning("%s %s lists no token: only client certificates "
                               "(if any) are admitted", self.what, self.path)
        else:
            logger.info("%s %s changed: %d token(s)", self.what, self.path, len(entries))

    def lookup(self, token: str) -> TokenEntry | None:
        with self._lock:
            if self._stat() != self._version:
                self._load(strict=False)
            return self._tokens.get(_digest(token))

    def nodes(self) -> frozenset[int]:
        """The node ids listed (ingest tokens), as last read."""
        with self._lock:
            return frozenset(e.node_id for e in self._tokens.values() if e.node_id is not None)


@dataclasses.dataclass(frozen=True)
class BearerToken:
    """A client's bearer token (``--token-file``)."""

    token: str

    def __post_init__(self) -> None:
        problem = _valid_token(self.token)
        if problem:
            raise SecurityError(f"the bearer token {problem}")

    @classmethod
    def from_file(cls, path: str) -> BearerToken:
        """The first token line of ``path`` (same format as a tokens file)."""
        try:
            with open(path, encoding="utf-8", errors="replace") as f:
                text = f.read()
        except OSError as e:
            raise SecurityError(f"token file {path}: {e.strerror or e}") from None
        entries = parse_tokens(text, source=f"token file {path}")
        if not entries:
            raise SecurityError(f"token file {path} holds no token")
        return cls(entries[0].token)

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.token}"),)

    def call_credentials(self) -> grpc.CallCredentials:
        """For a TLS channel (gRPC sends call credentials only over one)."""
        return grpc.access_token_call_credentials(self.token)

    def __repr__(self) -> str:
        return "BearerToken(***)"


# -- client channels ---------------------------------------------------------------


class _ClientCallDetails(collections.namedtuple(
        "_ClientCallDetails", ("method", "timeout", "metadata", "credentials", "wait_for_ready",
                               "compression")), grpc.ClientCallDetails):
    pass


class _AddMetadata(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor,
                   grpc.StreamUnaryClientInterceptor, grpc.StreamStreamClientInterceptor):
    """Adds fixed metadata to every call (bearer tokens over a plaintext channel)."""

    def __init__(self, metadata: Sequence[tuple[str, str]]) -> None:
        self._metadata = tuple(metadata)

    def _details(self, d: grpc.ClientCallDetails) -> _ClientCallDetails:
        metadata = (*(d.metadata or ()), *self._metadata)
        return _ClientCallDetails(d.method, d.timeout, metadata, d.credentials,
                                  getattr(d, "wait_for_ready", None), getattr(d, "compression", None))

    def intercept_unary_unary(self, continuation, details, request):
        return continuation(self._details(details), request)

    def intercept_unary_stream(self, continuation, details, request):
        return continuation(self._details(details), request)

    def intercept_stream_unary(self, continuation, details, request_iterator):
        return continuation(self._details(details), request_iterator)

    def intercept_stream_stream(self, continuation, details, request_iterator):
        return continuation(self._details(details), request_iterator)


def open_channel(address: str, *, credentials: grpc.ChannelCredentials | None = None,
                 token: BearerToken | None = None,
                 options: Sequence[tuple[str, Any]] = ()) -> grpc.Channel:
    """A (blocking-API) channel to ``address``: TLS when ``credentials`` is
    given, plaintext otherwise; ``token`` goes with every call either way."""
    if credentials is not None:
        if token is not None:
            credentials = grpc.composite_channel_credentials(credentials, token.call_credentials())
        return grpc.secure_channel(address, credentials, list(options))
    channel = grpc.insecure_channel(address, list(options))
    if token is not None:
        channel = grpc.intercept_channel(channel, _AddMetadata(token.metadata))
    return channel


# -- the server side: who may restore ---------------------------------------------------


@dataclasses.dataclass(slots=True)
class AuthCounters:
    admitted_total: int = 0
    refused_total: dict[str, int] = dataclasses.field(default_factory=dict)  # by reason


class RestoreAuth(grpc.aio.ServerInterceptor):
    """Admits a Restore call with a verified, allowed client certificate or a
    valid bearer token (see the module docstring); refuses anything else with
    UNAUTHENTICATED.

    ``verified_client_certs``: the server requires and verifies client
    certificates (``TlsOptions.require_client_cert``). Only then is a
    certificate's name trusted; ``start_server`` sets it from its TLS options.
    """

    def __init__(self, tokens_file: str | os.PathLike[str] | None = None,
                 allowed_identities: Iterable[str] = (), *, verified_client_certs: bool = False,
                 services: Iterable[str] = (RESTORE_SERVICE,)) -> None:
        self.tokens_file = os.fspath(tokens_file) if tokens_file is not None else None
        self.allowed_identities = frozenset(allowed_identities)
        self.verified_client_certs = verified_client_certs
        if self.allowed_identities and not verified_client_certs:
            raise SecurityError("--restore-identity needs client certificates the shard verifies "
                                "(--tls-cert, --tls-key and --tls-ca)")
        self._tokens = _TokensFile(self.tokens_file) if self.tokens_file is not None else None
        self._prefixes = tuple(f"/{s}/" for s in services)
        self.counters = AuthCounters()

    @property
    def enabled(self) -> bool:
        """False: nothing is configured and every call is admitted."""
        return self._tokens is not None or self.verified_client_certs

    def describe(self) -> str:
        ways = []
        if self.verified_client_certs:
            ways.append("a client certificate" + (
                f" named {', '.join(sorted(self.allowed_identities))}" if self.allowed_identities else ""))
        if self._tokens is not None:
            ways.append("a bearer token")
        return "Restore needs " + " or ".join(ways) if ways else "Restore is open to anyone"

    # -- the decision (no gRPC objects: unit-testable) -----------------------------

    def refusal(self, metadata: Iterable[tuple[str, Any]], auth_context: dict[str, list[bytes]],
                now: float | None = None) -> str | None:
        """Why a call with this metadata and peer is refused (None: admitted)."""
        if not self.enabled:
            return None
        cert_problem = ""
        if self.verified_client_certs:
            names = [n.decode(errors="replace") for n in auth_context.get("x509_common_name", ())]
            if names and (not self.allowed_identities or names[0] in self.allowed_identities):
                return None
            cert_problem = (f"client certificate {names[0]!r} is not allowed to restore"
                            if names else "the client certificate has no common name")
        tokens = _bearer_tokens(metadata)
        if not tokens:
            if cert_problem:
                return f"missing credentials: {cert_problem} and the call carries no bearer token"
            return ("missing credentials: Restore needs a bearer token (nfsj ... --token-file FILE)"
                    + (" or an allowed client certificate" if self.verified_client_certs else ""))
        if self._tokens is None:
            return f"wrong token: this shard takes no bearer tokens ({cert_problem or 'none configured'})"
        expired = None
        for token in tokens:
            entry = self._tokens.lookup(token)
            if entry is None:
                continue
            if entry.expires is None or entry.expires.timestamp() > (time.time() if now is None else now):
                return None
            expired = entry
        if expired is not None:
            return f"expired token: the bearer token expired at {expired.expires.isoformat()}"
        return "wrong token: the bearer token is not one this shard accepts"

    # -- the interceptor --------------------------------------------------------

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None or not self.enabled or not handler_call_details.method.startswith(self._prefixes):
            return handler
        return _guard(handler, self._check)

    async def _check(self, context: grpc.aio.ServicerContext) -> None:
        why = self.refusal(context.invocation_metadata() or (), context.auth_context() or {})
        if why is None:
            self.counters.admitted_total += 1
            return
        reason = why.split(":", 1)[0]
        self.counters.refused_total[reason] = self.counters.refused_total.get(reason, 0) + 1
        logger.warning("refused a Restore call from %s: %s", context.peer(), why)
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, why)


# -- the server side: who may ship ---------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class Admission:
    """The outcome of ``IngestAuth.admit``: refused (``refusal`` says why), or
    admitted as ``identity`` ("token:N", "cert:CN", or "" when ingest is
    open). ``bind``: the identity must be bound to the node (first use wins)."""

    identity: str = ""
    refusal: str | None = None
    bind: bool = False


class IngestAuth:
    """Who may ship the streams of which proxy node (module docstring).

    ``tokens_file``: the ingest tokens file (None: none). ``verified_client_certs``:
    the server requires and verifies client certificates (mTLS). ``members``:
    node ids expected besides those of the tokens file.
    """

    def __init__(self, tokens_file: str | os.PathLike[str] | None = None, *,
                 verified_client_certs: bool = False, members: Iterable[int] = ()) -> None:
        self.tokens_file = os.fspath(tokens_file) if tokens_file is not None else None
        self.verified_client_certs = verified_client_certs
        self._tokens = (_TokensFile(self.tokens_file, what="ingest tokens", with_node=True)
                        if self.tokens_file is not None else None)
        self.members = frozenset(members) | (self._tokens.nodes() if self._tokens else frozenset())

    @property
    def enabled(self) -> bool:
        """False: ingest is open to anyone who reaches the shard."""
        return self._tokens is not None or self.verified_client_certs

    def describe(self) -> str:
        ways = []
        if self._tokens is not None:
            ways.append("an ingest token for its node")
        if self.verified_client_certs:
            ways.append("the client certificate its node is bound to")
        how = "ingest needs " + " or ".join(ways) if ways else "ingest is open to anyone"
        if self.members:
            how += f"; members: nodes {', '.join(str(n) for n in sorted(self.members))}"
        return how

    def _token_entries(self, metadata: Iterable[tuple[str, Any]], now: float | None
                       ) -> list[TokenEntry]:
        if self._tokens is None:
            return []
        found = (self._tokens.lookup(t) for t in _bearer_tokens(metadata))
        return [e for e in found if e is not None and e.valid(now)]

    def authenticated(self, metadata: Iterable[tuple[str, Any]],
                      auth_context: dict[str, list[bytes]], now: float | None = None) -> bool:
        """Whether the caller holds some valid ingest credential (a token or a verified certificate)."""
        if self.verified_client_certs and auth_context.get("x509_common_name"):
            return True
        return bool(self._token_entries(metadata, now))

    def admit(self, node_id: int, metadata: Iterable[tuple[str, Any]],
              auth_context: dict[str, list[bytes]], now: float | None = None) -> Admission:
        """Whether the caller may ship a stream of proxy ``node_id``."""
        if self.members and node_id not in self.members:
            return Admission(refusal=f"node {node_id} is not a member of this shard (members: "
                             f"{', '.join(str(n) for n in sorted(self.members))}; see --member "
                             "and --ingest-tokens)")
        if not self.enabled:
            return Admission()
        entries = self._token_entries(metadata, now)
        if any(e.node_id == node_id for e in entries):
            return Admission(f"token:{node_id}")
        if entries:
            nodes = ", ".join(str(e.node_id) for e in entries)
            return Admission(refusal=f"wrong token: the ingest token is for node {nodes}, "
                             f"not node {node_id}")
        listed = self._tokens is not None and node_id in self._tokens.nodes()
        names = auth_context.get("x509_common_name") if self.verified_client_certs else None
        if names and not listed:
            return Admission(f"cert:{names[0].decode(errors='replace')}", bind=True)
        if listed:
            return Admission(refusal=f"missing credentials: node {node_id} ships with an ingest "
                             "token (nfsj proxy --ingest-token-file FILE)")
        return Admission(refusal="missing credentials: ingest needs an ingest token (nfsj proxy "
                         "--ingest-token-file FILE)" + (" or a client certificate"
                                                        if self.verified_client_certs else ""))


def _bearer_tokens(metadata: Iterable[tuple[str, Any]]) -> list[str]:
    out = []
    for item in metadata:
        key, value = item[0], item[1]
        if key.lower() != "authorization":
            continue
        if isinstance(value, bytes):
            value = value.decode(errors="replace")
        scheme, _, token = value.strip().partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            out.append(token.strip())
    return out


def _guard(handler: grpc.RpcMethodHandler, check) -> grpc.RpcMethodHandler:
    """``handler`` with ``await check(context)`` before its behaviour runs."""

    def wrap(behavior):
        if inspect.isasyncgenfunction(behavior):
            async def guarded_stream(request, context):
                await check(context)
                async for response in behavior(request, context):
                    yield response
            return guarded_stream

        async def guarded(request, context):
            await check(context)
            result = behavior(request, context)
            if inspect.isawaitable(result):
                result = await result
            return result
        return guarded

    kinds = {
        "unary_unary": grpc.unary_unary_rpc_method_handler,
        "unary_stream": grpc.unary_stream_rpc_method_handler,
        "stream_unary": grpc.stream_unary_rpc_method_handler,
        "stream_stream": grpc.stream_stream_rpc_method_handler,
    }
    for kind, make in kinds.items():
        behavior = getattr(handler, kind)
        if behavior is not None:
            return make(wrap(behavior), request_deserializer=handler.request_deserializer,
                        response_serializer=handler.response_serializer)
    return handler
