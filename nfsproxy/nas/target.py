"""Where a restore goes: the target options of `nfsj restore` checked before
anything is asked of a shard, without loading the push-back's NFS client
(a restore to a local directory never needs it)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from recoveryd.restore.errors import RestoreRefused

if TYPE_CHECKING:
    from nfsproxy.relay.session import BackendAddress

__all__ = ["PushbackError", "nas_target"]


class PushbackError(RestoreRefused):
    """The push-back cannot start (or go on); the message is one line saying why
    and what to do. A RestoreRefused, so every restore command reports it alike."""


def nas_target(*, to: str | None, to_nas: bool, nas: str | None,
               into: str | None) -> BackendAddress | None:
    """Check the restore target options; the NAS's address for --to-nas, else None.

    Raises PushbackError (one line) for a wrong combination or a NAS address
    that cannot be resolved.
    """
    if to_nas and to:
        raise PushbackError("give one target: --to DIR (a local directory) or --to-nas")
    if not to_nas:
        if nas or into:
            raise PushbackError(f"{'--nas' if nas else '--into'} goes with --to-nas")
        if not to:
            raise PushbackError("give a target: --to DIR (a local directory) or --to-nas --nas "
                                "HOST[:NFSPORT[:MOUNTPORT]]:/EXPORT")
        return None
    if not nas:
        raise PushbackError("--to-nas needs the NAS: --nas HOST[:NFSPORT[:MOUNTPORT]]:/EXPORT "
                            "(as the proxy's --backend)")
    from nfsproxy.daemon.address import resolve_backend
    from nfsproxy.daemon.config import ConfigError

    try:
        return resolve_backend(nas)
    except ConfigError as e:
        raise PushbackError(str(e).replace("--backend", "--nas")) from None
