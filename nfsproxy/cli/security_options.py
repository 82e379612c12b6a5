"""The TLS and credential flags, spelled once for every command.

typer takes options as per-command parameters, so these are factories: each
call returns a fresh ``typer.Option``. Servers (``nfsj recoveryd``) and
clients (the proxy towards its shards, and every command that asks a shard
or the proxy something) read the same flags slightly differently, so the
help comes in both forms. Config-file keys and ``NFSJ_<COMMAND>_<OPTION>``
variables follow from the names (``tls_ca``, ``token_file``, ...); a
top-level ``tls_ca = "..."`` in the config file applies to every command.

``client_security`` and ``server_tls`` turn the values into what
recoveryd/security.py takes, failing with one line on a file that is
missing, unreadable or not PEM.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional

import typer

from . import fail

if TYPE_CHECKING:  # gRPC and the security module load only when a command runs
    import grpc

    from recoveryd.security import BearerToken, TlsOptions

__all__ = ["tls_cert_option", "tls_key_option", "tls_ca_option", "token_file_option",
           "restore_tokens_option", "restore_identity_option", "client_tls", "client_security",
           "server_tls", "ingest_tokens_option", "member_option", "ingest_token_file_option"]


def tls_cert_option(*, server: bool = False, help: str | None = None) -> Any:  # noqa: A002
    help_ = help or ("This shard's TLS certificate (PEM, with its chain); serve TLS. Needs --tls-key."
                     if server else
                     "A client certificate (PEM) to present to servers that require one (mTLS). "
                     "Needs --tls-key.")
    return typer.Option(None, "--tls-cert", metavar="FILE", help=help_)


def tls_key_option(*, server: bool = False) -> Any:
    return typer.Option(None, "--tls-key", metavar="FILE",
                        help="The private key (PEM, unencrypted) of --tls-cert.")


def tls_ca_option(*, server: bool = False) -> Any:
    help_ = ("CA certificates (PEM): require every client (proxies, nfsj commands) to present a "
             "certificate they signed (mTLS). Needs --tls-cert and --tls-key."
             if server else
             "CA certificates (PEM) to verify the servers with; talk TLS to them.")
    return typer.Option(None, "--tls-ca", metavar="FILE", help=help_)


def token_file_option() -> Any:
    return typer.Option(None, "--token-file", metavar="FILE",
                        help="A file holding a bearer token for the Restore API (a shard's "
                             "--restore-tokens lists the tokens it takes).")


def restore_tokens_option() -> Any:
    return typer.Option(None, "--restore-tokens", metavar="FILE",
                        help="Bearer tokens that may call Restore: one per line, optionally "
                             "'TOKEN expires=ISO-8601'; '#' comments; re-read when it changes.")


def restore_identity_option() -> Any:
    return typer.Option(None, "--restore-identity", metavar="CN",
                        help="With --tls-ca: a client certificate common name allowed to call "
                             "Restore (repeat for each; default: any certificate the CA signed). "
                             "Others need a token.")


def ingest_tokens_option() -> Any:
    return typer.Option(None, "--ingest-tokens", metavar="FILE",
                        help="Who may ship: one 'NODE_ID TOKEN [expires=ISO-8601]' line per proxy "
                             "(its HLC node id); those nodes are members. Re-read when it changes. "
                             "Without it (and without --tls-ca) ingest is open to anyone.")


def member_option() -> Any:
    return typer.Option(None, "--member", metavar="NODE_ID", min=0, max=0xFFFF_FFFF,
                        help="A proxy node id this shard expects (repeat for each): it holds the "
                             "consistent point back until its stream is here; other nodes are refused.")


def ingest_token_file_option() -> Any:
    return typer.Option(None, "--ingest-token-file", metavar="FILE",
                        help="A file holding this proxy's ingest token (listed for its node id in "
                             "the shards' --ingest-tokens).")


def client_tls(tls_ca: Optional[str], tls_cert: Optional[str], tls_key: Optional[str]) -> TlsOptions | None:
    """The client's TlsOptions (None: plaintext), checked now."""
    from recoveryd.security import SecurityError, TlsOptions, channel_credentials

    opts = TlsOptions(cert=tls_cert, key=tls_key, ca=tls_ca)
    if not opts.enabled:
        return None
    try:
        channel_credentials(opts)  # reads and checks the files
    except SecurityError as e:
        fail(str(e))
    return opts


def client_security(tls_ca: Optional[str], tls_cert: Optional[str], tls_key: Optional[str],
                    token_file: Optional[str] = None
                    ) -> tuple[grpc.ChannelCredentials | None, BearerToken | None]:
    """(channel credentials, bearer token) for a client command; fails with one line."""
    from recoveryd.security import BearerToken, SecurityError, TlsOptions, channel_credentials

    try:
        credentials = channel_credentials(TlsOptions(cert=tls_cert, key=tls_key, ca=tls_ca))
        token = BearerToken.from_file(token_file) if token_file else None
    except SecurityError as e:
        fail(str(e))
    return credentials, token


def server_tls(tls_ca: Optional[str], tls_cert: Optional[str], tls_key: Optional[str]) -> TlsOptions | None:
    """A server's TlsOptions: --tls-ca means client certificates are required."""
    from recoveryd.security import TlsOptions

    opts = TlsOptions(cert=tls_cert, key=tls_key, ca=tls_ca, require_client_cert=bool(tls_ca))
    return opts if opts.enabled else None
