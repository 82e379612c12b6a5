"""The programs table: `(prog, vers, proc) -> Procedure`, in one place.

Every ONC-RPC procedure the proxy understands (NFSv3, MOUNT v3, NFSACL v3,
portmapper v2) is a row here: its argument and result codecs, whether the
proxy journals it (`mutating`), whether its reply names handles (`binder`),
and where the relay sends it (`route`). The relay routes with `route_of`,
capture asks `lookup` what to journal, the export dispatches from
`PROGRAMS`, and the NFS client takes its codecs from `lookup`.

The per-program modules (`nfs3`, `mount`, `nfsacl`, `portmap`) only declare
their types and `CODECS`; this module imports all of them, and nothing
they import imports it.
"""

from __future__ import annotations

import dataclasses
import enum
from typing import Final

from nfsproxy.wire import mount, nfs3, nfsacl, nlm, portmap
from nfsproxy.wire.xdr import Codec

__all__ = ["Procedure", "Route", "PROGRAMS", "lookup", "route_of"]


class Route(enum.Enum):
    """Where the relay sends a call."""

    NFS = "nfs"          # the NAS's NFS port (NFSv3, NFSACL, and programs we pass through)
    MOUNT = "mount"      # the NAS's MOUNT port
    PORTMAP = "portmap"  # answered by the proxy itself
    NLM = "nlm"          # the NAS's lock manager, wherever its portmapper says
    NSM = "nsm"          # the NAS's status monitor, likewise
    REJECT = "reject"    # refused: see relay.routing.reject


@dataclasses.dataclass(frozen=True, slots=True)
class Procedure:
    """One ONC-RPC procedure: where it lives, how its body is coded, and what
    the proxy does with it.

    `args` and `res` are XDR codecs for the call and reply bodies; `mutating`
    is True only for calls that change the exported file system (the calls
    README.md lists as journaled); `binder` marks calls whose replies teach
    which handle a (directory, name) has.
    """

    prog: int
    vers: int
    proc: int
    name: str
    args: Codec
    res: Codec
    mutating: bool = False
    binder: bool = False
    route: Route = Route.NFS


#: rpcbind versions the proxy answers (2 is the portmapper; 3 and 4 speak universal addresses).
RPCBIND_VERSIONS: Final = (2, 3, 4)

#: program -> (the versions relayed or answered, the route); other versions are refused.
_PROGRAM_ROUTES: Final[dict[int, tuple[tuple[int, ...] | None, Route]]] = {
    nfs3.NFS_PROGRAM: ((nfs3.NFS_V3,), Route.NFS),       # other versions would pass unjournaled
    mount.MOUNT_PROGRAM: (None, Route.MOUNT),            # any version the NAS offers
    portmap.PMAP_PROG: (RPCBIND_VERSIONS, Route.PORTMAP),
    nlm.NLM_PROGRAM: (None, Route.NLM),
    nlm.NSM_PROGRAM: (None, Route.NSM),
}


def route_of(prog: int, vers: int) -> Route:
    """Where a call to `prog` version `vers` goes; programs not listed pass through to NFS."""
    versions, where = _PROGRAM_ROUTES.get(prog, (None, Route.NFS))
    if versions is not None and vers not in versions:
        return Route.REJECT
    return where


def _rows(prog: int, vers: int, codecs: dict, mutating=frozenset(), binders=frozenset()):
    for proc, (args, res) in codecs.items():
        yield Procedure(prog, vers, int(proc), proc.name, args, res, proc in mutating,
                        proc in binders, route_of(prog, vers))


def _build() -> dict[tuple[int, int, int], Procedure]:
    table: dict[tuple[int, int, int], Procedure] = {}
    rows = [*_rows(nfs3.NFS_PROGRAM, nfs3.NFS_V3, nfs3.CODECS, nfs3.MUTATING, nfs3.BINDERS),
            *_rows(mount.MOUNT_PROGRAM, mount.MOUNT_V3, mount.CODECS),
            *_rows(nfsacl.NFSACL_PROGRAM, nfsacl.NFSACL_V3, nfsacl.CODECS, nfsacl.MUTATING),
            *_rows(portmap.PMAP_PROG, portmap.PMAP_VERS, portmap.CODECS)]
    for p in rows:
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
