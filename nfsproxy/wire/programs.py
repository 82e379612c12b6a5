"""The dispatch table: `(prog, vers, proc) -> Procedure`, in one place.

Every ONC-RPC procedure the proxy understands (NFSv3, MOUNT v3, NFSACL v3,
portmapper v2) is listed here with its argument and result codecs and whether it is
journaled. The relay looks a call up with `lookup()`; a miss is answered or
passed through by the caller.

`Procedure` is defined in `nfsproxy.wire.procedure` (so the per-program modules
can use it without importing this one) and re-exported here.
"""

from __future__ import annotations

from typing import Final

from nfsproxy.wire import mount, nfs3, nfsacl, portmap
from nfsproxy.wire.procedure import Procedure

__all__ = ["Procedure", "PROGRAMS", "lookup"]


def _build() -> dict[tuple[int, int, int], Procedure]:
    table: dict[tuple[int, int, int], Procedure] = {}
    for procedures in (nfs3.PROCEDURES, mount.PROCEDURES, nfsacl.PROCEDURES, portmap.PROCEDURES):
        for p in procedures.values():
            key = (p.prog, p.vers, p.proc)
            if key in table:
                raise AssertionError(f"duplicate procedure {key}")
            table[key] = p
    return table


PROGRAMS: Final[dict[tuple[int, int, int], Procedure]] = _build()
"""Every known procedure, keyed `(prog, vers, proc)`."""


def lookup(prog: int, vers: int, proc: int) -> Procedure | None:
    """The procedure called `proc` of version `vers` of program `prog`, or None."""
    return PROGRAMS.get((prog, vers, proc))
