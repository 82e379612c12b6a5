"""MOUNT version 3 (RFC 1813 appendix I) as XDR schemas, sans-IO.

Program 100005, version 3. Linked lists (`mountlist`, `exports`, `groups`)
decode to tuples. `Mountres3` is a union on `Mountstat3` with fields
`status` (the RFC's `fhs_status`) and `body` (`Mountres3Ok`, the RFC's
`mountinfo`, when MNT3_OK; None otherwise), matching the NFSv3 result
convention. File handles are bytes (copied on decode).

None of these procedures changes the exported file system, so none is
journaled (`nfsproxy.wire.programs`).
"""

from __future__ import annotations

import enum
from typing import Final

from nfsproxy.wire.xdr import (I32, VOID, Array, Codec, Enum, LinkedList, Opaque, String, xdr_struct,
                  xdr_union, xf)

__all__ = [
    "MOUNT_PROGRAM", "MOUNT_V3", "MNTPATHLEN", "MNTNAMLEN", "FHSIZE3",
    "Mountstat3", "MountProc3", "FHANDLE3", "DIRPATH", "NAME",
    "Mountres3Ok", "Mountres3", "Mountbody", "MOUNTLIST", "Exportnode", "EXPORTS",
    "CODECS",
]

MOUNT_PROGRAM: Final = 100005
MOUNT_V3: Final = 3

MNTPATHLEN: Final = 1024
MNTNAMLEN: Final = 255
FHSIZE3: Final = 64


class Mountstat3(enum.IntEnum):
    """Status of a MNT reply."""

    MNT3_OK = 0
    MNT3ERR_PERM = 1
    MNT3ERR_NOENT = 2
    MNT3ERR_IO = 5
    MNT3ERR_ACCES = 13
    MNT3ERR_NOTDIR = 20
    MNT3ERR_INVAL = 22
    MNT3ERR_NAMETOOLONG = 63
    MNT3ERR_NOTSUPP = 10004
    MNT3ERR_SERVERFAULT = 10006


class MountProc3(enum.IntEnum):
    """MOUNT v3 procedure numbers."""

    NULL = 0
    MNT = 1
    DUMP = 2
    UMNT = 3
    UMNTALL = 4
    EXPORT = 5


FHANDLE3: Codec = Opaque(FHSIZE3, copy=True)
"""fhandle3: the root handle of a mount, as bytes."""
DIRPATH: Codec = String(MNTPATHLEN)
NAME: Codec = String(MNTNAMLEN)


@xdr_struct
class Mountres3Ok:
    """A successful MNT: the export's root handle and the auth flavors it accepts."""

    fhandle: bytes = xf(FHANDLE3)
    auth_flavors: tuple[int, ...] = xf(Array(I32))


@xdr_union(Enum(Mountstat3), {Mountstat3.MNT3_OK: Mountres3Ok.xdr}, VOID,
           tag_name="status", body_name="body")
class Mountres3:
    """MNT reply; `body` is Mountres3Ok when `status` is MNT3_OK, else None."""


@xdr_struct
class Mountbody:
    """One DUMP row (the `ml_next` link is the enclosing tuple)."""

    ml_hostname: bytes = xf(NAME)
    ml_directory: bytes = xf(DIRPATH)


MOUNTLIST: Codec = LinkedList(Mountbody.xdr)
"""mountlist: a tuple of Mountbody."""


@xdr_struct
class Exportnode:
    """One EXPORT row; `ex_groups` is the `groups` list as a tuple of names."""

    ex_dir: bytes = xf(DIRPATH)
    ex_groups: tuple[bytes, ...] = xf(LinkedList(NAME))


EXPORTS: Codec = LinkedList(Exportnode.xdr)
"""exports: a tuple of Exportnode."""

CODECS: Final[dict[MountProc3, tuple[Codec, Codec]]] = {
    MountProc3.NULL: (VOID, VOID),
    MountProc3.MNT: (DIRPATH, Mountres3.xdr),
    MountProc3.DUMP: (VOID, MOUNTLIST),
    MountProc3.UMNT: (DIRPATH, VOID),
    MountProc3.UMNTALL: (VOID, VOID),
    MountProc3.EXPORT: (VOID, EXPORTS),
}

