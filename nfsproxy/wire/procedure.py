"""The `Procedure` record shared by every program's table.

It lives in its own tiny module so that `nfs3`, `mount` and `portmap` can
build their tables without importing `programs`, which imports all three to
build the one dispatch table (see `nfsproxy.wire.programs`).
"""

from __future__ import annotations

import dataclasses

from nfsproxy.wire.xdr import Codec

__all__ = ["Procedure"]


@dataclasses.dataclass(frozen=True, slots=True)
class Procedure:
    """One ONC-RPC procedure: where it lives, how its body is coded, and
    whether the proxy journals it.

    `args` and `res` are XDR codecs (`nfsproxy.wire.xdr.Codec`) for the call and
    reply bodies; `mutating` is True only for calls that change the exported
    file system (the NFSv3 procedures that README.md lists as journaled).
    """

    prog: int
    vers: int
    proc: int
    name: str
    args: Codec
    res: Codec
    mutating: bool = False
    binder: bool = False
