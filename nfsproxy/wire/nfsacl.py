"""NFSACL version 3 (program 100227): POSIX ACLs over NFSv3, as XDR schemas, sans-IO.

NFSACL has no RFC; this is the protocol as Solaris defined it and Linux
speaks it (the kernel's nfsacl.c and nfs3xdr.c, whose constants
`linux/nfsacl.h` exports). GETACL reads and SETACL replaces a file's access
ACL and, for directories, its default ACL; `mask` says which of the two (and
their counts) a call is about.

An ACL travels as a count followed by a counted array of entries (the
count is given twice; Linux sends the same number in both places and so do
we). An entry is `(type, id, perm)`: `type` is a POSIX tag (`AclTag`), ORed
with `NFS_ACL_DEFAULT` in a default ACL; `id` matters for USER and GROUP
entries only; `perm` is rwx as 4/2/1.

SETACL is the one mutation: the proxy journals it as a change of the
object's ACLs.
"""

from __future__ import annotations

import enum
from typing import Final

from recoveryd.acl import AclTag

from nfsproxy.wire.nfs3 import NFS_FH3, POST_OP_ATTR, Fattr3, Nfsstat3, _result
from nfsproxy.wire.xdr import U32, VOID, Array, Codec, Optional, Unpacker, xdr_struct, xf

__all__ = [
    "NFSACL_PROGRAM", "NFSACL_V3", "NFS_ACL", "NFS_ACLCNT", "NFS_DFACL", "NFS_DFACLCNT",
    "NFS_ACL_DEFAULT", "NFS_ACL_MAX_ENTRIES", "AclTag", "AclProc3", "Aclent", "Acl",
    "GETACL3args", "GETACL3resok", "GETACL3res", "SETACL3args", "SETACL3resok", "SETACL3res",
    "CODECS", "MUTATING", "Nfsstat3",
]

NFSACL_PROGRAM: Final = 100227
NFSACL_V3: Final = 3

# `mask` bits: which parts of the ACLs a call reads or sets.
NFS_ACL: Final = 0x0001
NFS_ACLCNT: Final = 0x0002
NFS_DFACL: Final = 0x0004
NFS_DFACLCNT: Final = 0x0008
#: ORed into an entry's type in a default ACL.
NFS_ACL_DEFAULT: Final = 0x1000
#: Linux's cap on entries per ACL (NFS_ACL_MAX_ENTRIES); more is refused as malformed.
NFS_ACL_MAX_ENTRIES: Final = 1024


class AclProc3(enum.IntEnum):
    NULL = 0
    GETACL = 1
    SETACL = 2


@xdr_struct
class Aclent:
    """One ACL entry; `type` is an `AclTag`, | NFS_ACL_DEFAULT in a default ACL."""

    type: int = xf(U32)
    id: int = xf(U32)
    perm: int = xf(U32)


@xdr_struct
class Acl:
    """`count` then the entries (Linux sends `count == len(entries)`)."""

    count: int = xf(U32)
    entries: tuple[Aclent, ...] = xf(Array(Aclent.xdr, NFS_ACL_MAX_ENTRIES))


class _FailureAttr(Optional):
    """The body of a failed GETACL/SETACL reply: post-op attributes as Linux
    sends them, or nothing at all, as ganesha 4.3 sends it (its XDR has a void
    default arm). Both decode; a missing body is None. Packed as Linux does."""

    __slots__ = ()

    def unpack(self, u: Unpacker) -> Fattr3 | None:
        return super().unpack(u) if u.remaining else None


FAILURE_ATTR: Codec = _FailureAttr(Fattr3.xdr)


@xdr_struct
class GETACL3args:
    fh: bytes = xf(NFS_FH3)
    mask: int = xf(U32)


@xdr_struct
class GETACL3resok:
    attr: Fattr3 | None = xf(POST_OP_ATTR)
    mask: int = xf(U32)
    acl: Acl = xf(Acl.xdr)
    default_acl: Acl = xf(Acl.xdr)


@_result(GETACL3resok, FAILURE_ATTR)
class GETACL3res:
    """GETACL reply; `body` is GETACL3resok, or the post-op attributes on failure."""


@xdr_struct
class SETACL3args:
    """Replace the parts of `fh`'s ACLs that `mask` names (NFS_ACL, NFS_DFACL)."""

    fh: bytes = xf(NFS_FH3)
    mask: int = xf(U32)
    acl: Acl = xf(Acl.xdr)
    default_acl: Acl = xf(Acl.xdr)


@xdr_struct
class SETACL3resok:
    attr: Fattr3 | None = xf(POST_OP_ATTR)


@_result(SETACL3resok, FAILURE_ATTR)
class SETACL3res:
    """SETACL reply; `body` is SETACL3resok, or the post-op attributes on failure."""


MUTATING: Final = frozenset({AclProc3.SETACL})
"""SETACL changes the object's ACLs: the proxy journals it."""

CODECS: Final[dict[AclProc3, tuple[Codec, Codec]]] = {
    AclProc3.NULL: (VOID, VOID),
    AclProc3.GETACL: (GETACL3args.xdr, GETACL3res.xdr),
    AclProc3.SETACL: (SETACL3args.xdr, SETACL3res.xdr),
}

