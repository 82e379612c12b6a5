"""NFS version 3 (RFC 1813 section 3) as XDR schemas, sans-IO.

Every type of the protocol is declared once here, in RFC spelling: structs
become frozen dataclasses (`Fattr3`, `WRITE3args`, ...) with snake_case
fields as in the RFC, typedefs become module-level codecs (`NFS_FH3`,
`POST_OP_ATTR`, ...). The schema drives encoding, decoding and, in tests,
the Hypothesis strategies.

Representation choices, applied uniformly:

* Bool-discriminated unions whose FALSE arm is void (`post_op_attr`,
  `pre_op_attr`, `post_op_fh3`, `sattrguard3`, `set_mode3`, ...) are
  `Optional`: the value is None or the TRUE arm.
* `nfs_fh3` is a struct of one `opaque data<64>`; its encoding is the
  opaque's, so a handle is plain `bytes` (copied on decode, hashable, usable
  as a dictionary key).
* Linked lists (`entry3 *nextentry`, `entryplus3 *nextentry`) are tuples.
* Every `XXX3res` is a union on `Nfsstat3` with fields `status` and `body`:
  `body` is the resok struct when `status` is NFS3_OK, otherwise the resfail
  struct (None for GETATTR3res, whose resfail arm is void).
* `WRITE3args.data` and `READ3resok.data` decode as memoryviews into the
  message buffer (zero-copy); they compare equal to `bytes` of the same
  content. Encoding accepts bytes or memoryviews.
* RENAME3args' `from` is spelled `from_` (a Python keyword).

`CODECS` maps each `Proc3` to its argument and result codecs; `MUTATING`
and `BINDERS` say which calls the proxy journals and which name handles.
The one table of every program's procedures is `nfsproxy.wire.programs`.
"""

from __future__ import annotations

import enum
from typing import Callable, Final

from nfsproxy.wire.xdr import (BOOL, U32, U64, VOID, Codec, Enum, FixedOpaque, LinkedList,
                  Opaque, Optional, String, xdr_struct, xdr_union, xf)

__all__ = [
    "NFS_PROGRAM", "NFS_V3", "NFS3_FHSIZE", "NFS3_COOKIEVERFSIZE", "NFS3_CREATEVERFSIZE",
    "NFS3_WRITEVERFSIZE",
    "ACCESS3_READ", "ACCESS3_LOOKUP", "ACCESS3_MODIFY", "ACCESS3_EXTEND", "ACCESS3_DELETE",
    "ACCESS3_EXECUTE", "FSF3_LINK", "FSF3_SYMLINK", "FSF3_HOMOGENEOUS", "FSF3_CANSETTIME",
    "Nfsstat3", "Ftype3", "TimeHow", "StableHow", "CreateMode", "Proc3",
    "NFS_FH3", "FILENAME3", "NFSPATH3", "COOKIEVERF3", "CREATEVERF3", "WRITEVERF3",
    "POST_OP_ATTR", "PRE_OP_ATTR", "POST_OP_FH3", "SATTRGUARD3",
    "SET_MODE3", "SET_UID3", "SET_GID3", "SET_SIZE3",
    "Specdata3", "Nfstime3", "Fattr3", "WccAttr", "WccData", "SetAtime", "SetMtime", "Sattr3",
    "Diropargs3", "Createhow3", "Symlinkdata3", "Devicedata3", "Mknoddata3",
    "Entry3", "Dirlist3", "Entryplus3", "Dirlistplus3",
    "GETATTR3args", "GETATTR3resok", "GETATTR3res",
    "SETATTR3args", "SETATTR3resok", "SETATTR3resfail", "SETATTR3res",
    "LOOKUP3args", "LOOKUP3resok", "LOOKUP3resfail", "LOOKUP3res",
    "ACCESS3args", "ACCESS3resok", "ACCESS3resfail", "ACCESS3res",
    "READLINK3args", "READLINK3resok", "READLINK3resfail", "READLINK3res",
    "READ3args", "READ3resok", "READ3resfail", "READ3res",
    "WRITE3args", "WRITE3resok", "WRITE3resfail", "WRITE3res",
    "CREATE3args", "CREATE3resok", "CREATE3resfail", "CREATE3res",
    "MKDIR3args", "MKDIR3resok", "MKDIR3resfail", "MKDIR3res",
    "SYMLINK3args", "SYMLINK3resok", "SYMLINK3resfail", "SYMLINK3res",
    "MKNOD3args", "MKNOD3resok", "MKNOD3resfail", "MKNOD3res",
    "REMOVE3args", "REMOVE3resok", "REMOVE3resfail", "REMOVE3res",
    "RMDIR3args", "RMDIR3resok", "RMDIR3resfail", "RMDIR3res",
    "RENAME3args", "RENAME3resok", "RENAME3resfail", "RENAME3res",
    "LINK3args", "LINK3resok", "LINK3resfail", "LINK3res",
    "READDIR3args", "READDIR3resok", "READDIR3resfail", "READDIR3res",
    "READDIRPLUS3args", "READDIRPLUS3resok", "READDIRPLUS3resfail", "READDIRPLUS3res",
    "FSSTAT3args", "FSSTAT3resok", "FSSTAT3resfail", "FSSTAT3res",
    "FSINFO3args", "FSINFO3resok", "FSINFO3resfail", "FSINFO3res",
    "PATHCONF3args", "PATHCONF3resok", "PATHCONF3resfail", "PATHCONF3res",
    "COMMIT3args", "COMMIT3resok", "COMMIT3resfail", "COMMIT3res",
    "CODECS", "MUTATING",
]

NFS_PROGRAM: Final = 100003
NFS_V3: Final = 3

NFS3_FHSIZE: Final = 64
NFS3_COOKIEVERFSIZE: Final = 8
NFS3_CREATEVERFSIZE: Final = 8
NFS3_WRITEVERFSIZE: Final = 8

# ACCESS3args.access / ACCESS3resok.access bits (RFC 1813 3.3.4).
ACCESS3_READ: Final = 0x0001
ACCESS3_LOOKUP: Final = 0x0002
ACCESS3_MODIFY: Final = 0x0004
ACCESS3_EXTEND: Final = 0x0008
ACCESS3_DELETE: Final = 0x0010
ACCESS3_EXECUTE: Final = 0x0020

# FSINFO3resok.properties bits (RFC 1813 3.3.19).
FSF3_LINK: Final = 0x0001
FSF3_SYMLINK: Final = 0x0002
FSF3_HOMOGENEOUS: Final = 0x0008
FSF3_CANSETTIME: Final = 0x0010


# --------------------------------------------------------------------------
# Enums


class Nfsstat3(enum.IntEnum):
    """Status of every NFSv3 reply (RFC 1813 2.6)."""

    NFS3_OK = 0
    NFS3ERR_PERM = 1
    NFS3ERR_NOENT = 2
    NFS3ERR_IO = 5
    NFS3ERR_NXIO = 6
    NFS3ERR_ACCES = 13
    NFS3ERR_EXIST = 17
    NFS3ERR_XDEV = 18
    NFS3ERR_NODEV = 19
    NFS3ERR_NOTDIR = 20
    NFS3ERR_ISDIR = 21
    NFS3ERR_INVAL = 22
    NFS3ERR_FBIG = 27
    NFS3ERR_NOSPC = 28
    NFS3ERR_ROFS = 30
    NFS3ERR_MLINK = 31
    NFS3ERR_NAMETOOLONG = 63
    NFS3ERR_NOTEMPTY = 66
    NFS3ERR_DQUOT = 69
    NFS3ERR_STALE = 70
    NFS3ERR_REMOTE = 71
    NFS3ERR_BADHANDLE = 10001
    NFS3ERR_NOT_SYNC = 10002
    NFS3ERR_BAD_COOKIE = 10003
    NFS3ERR_NOTSUPP = 10004
    NFS3ERR_TOOSMALL = 10005
    NFS3ERR_SERVERFAULT = 10006
    NFS3ERR_BADTYPE = 10007
    NFS3ERR_JUKEBOX = 10008


class Ftype3(enum.IntEnum):
    """File type (RFC 1813 2.6 ftype3)."""

    NF3REG = 1
    NF3DIR = 2
    NF3BLK = 3
    NF3CHR = 4
    NF3LNK = 5
    NF3SOCK = 6
    NF3FIFO = 7


class TimeHow(enum.IntEnum):
    """How SETATTR/CREATE set atime and mtime (RFC 1813 2.6 time_how)."""

    DONT_CHANGE = 0
    SET_TO_SERVER_TIME = 1
    SET_TO_CLIENT_TIME = 2


class StableHow(enum.IntEnum):
    """WRITE stability (RFC 1813 3.3.7 stable_how)."""

    UNSTABLE = 0
    DATA_SYNC = 1
    FILE_SYNC = 2


class CreateMode(enum.IntEnum):
    """CREATE mode (RFC 1813 3.3.8 createmode3)."""

    UNCHECKED = 0
    GUARDED = 1
    EXCLUSIVE = 2


class Proc3(enum.IntEnum):
    """NFSv3 procedure numbers (RFC 1813 section 3)."""

    NULL = 0
    GETATTR = 1
    SETATTR = 2
    LOOKUP = 3
    ACCESS = 4
    READLINK = 5
    READ = 6
    WRITE = 7
    CREATE = 8
    MKDIR = 9
    SYMLINK = 10
    MKNOD = 11
    REMOVE = 12
    RMDIR = 13
    RENAME = 14
    LINK = 15
    READDIR = 16
    READDIRPLUS = 17
    FSSTAT = 18
    FSINFO = 19
    PATHCONF = 20
    COMMIT = 21


_NFSSTAT3 = Enum(Nfsstat3)

# --------------------------------------------------------------------------
# Basic data types (RFC 1813 2.5, 2.6)

NFS_FH3: Codec = Opaque(NFS3_FHSIZE, copy=True)
"""nfs_fh3: the handle as bytes (copied: handles are dictionary keys)."""
FILENAME3: Codec = String()
NFSPATH3: Codec = String()
COOKIEVERF3: Codec = FixedOpaque(NFS3_COOKIEVERFSIZE)
CREATEVERF3: Codec = FixedOpaque(NFS3_CREATEVERFSIZE)
WRITEVERF3: Codec = FixedOpaque(NFS3_WRITEVERFSIZE)


@xdr_struct
class Specdata3:
    """Major/minor device numbers of a block or character special file."""

    specdata1: int = xf(U32)
    specdata2: int = xf(U32)


@xdr_struct
class Nfstime3:
    """Seconds and nanoseconds since the epoch."""

    seconds: int = xf(U32)
    nseconds: int = xf(U32)


@xdr_struct
class Fattr3:
    """File attributes."""

    type: Ftype3 = xf(Enum(Ftype3))
    mode: int = xf(U32)
    nlink: int = xf(U32)
    uid: int = xf(U32)
    gid: int = xf(U32)
    size: int = xf(U64)
    used: int = xf(U64)
    rdev: Specdata3 = xf(Specdata3.xdr)
    fsid: int = xf(U64)
    fileid: int = xf(U64)
    atime: Nfstime3 = xf(Nfstime3.xdr)
    mtime: Nfstime3 = xf(Nfstime3.xdr)
    ctime: Nfstime3 = xf(Nfstime3.xdr)


POST_OP_ATTR: Codec = Optional(Fattr3.xdr)
"""post_op_attr: Fattr3 or None."""


@xdr_struct
class WccAttr:
    """The attributes weak cache consistency needs (wcc_attr)."""

    size: int = xf(U64)
    mtime: Nfstime3 = xf(Nfstime3.xdr)
    ctime: Nfstime3 = xf(Nfstime3.xdr)


PRE_OP_ATTR: Codec = Optional(WccAttr.xdr)
"""pre_op_attr: WccAttr or None."""


@xdr_struct
class WccData:
    """Attributes before and after an operation (wcc_data)."""

    before: WccAttr | None = xf(PRE_OP_ATTR)
    after: Fattr3 | None = xf(POST_OP_ATTR)


POST_OP_FH3: Codec = Optional(NFS_FH3)
"""post_op_fh3: handle bytes or None."""

SET_MODE3: Codec = Optional(U32)
SET_UID3: Codec = Optional(U32)
SET_GID3: Codec = Optional(U32)
SET_SIZE3: Codec = Optional(U64)


@xdr_union(Enum(TimeHow), {TimeHow.SET_TO_CLIENT_TIME: Nfstime3.xdr}, VOID,
           tag_name="set_it", body_name="atime")
class SetAtime:
    """set_atime: `atime` is an Nfstime3 only for SET_TO_CLIENT_TIME."""


@xdr_union(Enum(TimeHow), {TimeHow.SET_TO_CLIENT_TIME: Nfstime3.xdr}, VOID,
           tag_name="set_it", body_name="mtime")
class SetMtime:
    """set_mtime: `mtime` is an Nfstime3 only for SET_TO_CLIENT_TIME."""


@xdr_struct
class Sattr3:
    """Attributes to set; None (or DONT_CHANGE) leaves one alone."""

    mode: int | None = xf(SET_MODE3)
    uid: int | None = xf(SET_UID3)
    gid: int | None = xf(SET_GID3)
    size: int | None = xf(SET_SIZE3)
    atime: SetAtime = xf(SetAtime.xdr)
    mtime: SetMtime = xf(SetMtime.xdr)


@xdr_struct
class Diropargs3:
    """A name in a directory."""

    dir: bytes = xf(NFS_FH3)
    name: bytes = xf(FILENAME3)


SATTRGUARD3: Codec = Optional(Nfstime3.xdr)
"""sattrguard3: the expected obj_ctime, or None for no check."""


def _result(resok: type, resfail: Codec) -> Callable[[type], type]:
    """Declare `XXX3res`: NFS3_OK -> resok, any other status -> resfail."""

    def wrap(cls: type) -> type:
        return xdr_union(_NFSSTAT3, {Nfsstat3.NFS3_OK: resok.xdr}, resfail,
                         tag_name="status", body_name="body")(cls)

    return wrap


# --------------------------------------------------------------------------
# Procedure 1: GETATTR


@xdr_struct
class GETATTR3args:
    """GETATTR arguments (RFC 1813 3.3.1)."""

    object: bytes = xf(NFS_FH3)


@xdr_struct
class GETATTR3resok:
    obj_attributes: Fattr3 = xf(Fattr3.xdr)


@_result(GETATTR3resok, VOID)
class GETATTR3res:
    """GETATTR reply; `body` is GETATTR3resok or None."""


# Procedure 2: SETATTR


@xdr_struct
class SETATTR3args:
    """SETATTR arguments (RFC 1813 3.3.2)."""

    object: bytes = xf(NFS_FH3)
    new_attributes: Sattr3 = xf(Sattr3.xdr)
    guard: Nfstime3 | None = xf(SATTRGUARD3)


@xdr_struct
class SETATTR3resok:
    obj_wcc: WccData = xf(WccData.xdr)


@xdr_struct
class SETATTR3resfail:
    obj_wcc: WccData = xf(WccData.xdr)


@_result(SETATTR3resok, SETATTR3resfail.xdr)
class SETATTR3res:
    """SETATTR reply."""


# Procedure 3: LOOKUP


@xdr_struct
class LOOKUP3args:
    """LOOKUP arguments (RFC 1813 3.3.3)."""

    what: Diropargs3 = xf(Diropargs3.xdr)


@xdr_struct
class LOOKUP3resok:
    object: bytes = xf(NFS_FH3)
    obj_attributes: Fattr3 | None = xf(POST_OP_ATTR)
    dir_attributes: Fattr3 | None = xf(POST_OP_ATTR)


@xdr_struct
class LOOKUP3resfail:
    dir_attributes: Fattr3 | None = xf(POST_OP_ATTR)


@_result(LOOKUP3resok, LOOKUP3resfail.xdr)
class LOOKUP3res:
    """LOOKUP reply."""


# Procedure 4: ACCESS


@xdr_struct
class ACCESS3args:
    """ACCESS arguments (RFC 1813 3.3.4)."""

    object: bytes = xf(NFS_FH3)
    access: int = xf(U32)


@xdr_struct
class ACCESS3resok:
    obj_attributes: Fattr3 | None = xf(POST_OP_ATTR)
    access: int = xf(U32)


@xdr_struct
class ACCESS3resfail:
    obj_attributes: Fattr3 | None = xf(POST_OP_ATTR)


@_result(ACCESS3resok, ACCESS3resfail.xdr)
class ACCESS3res:
    """ACCESS reply."""


# Procedure 5: READLINK


@xdr_struct
class READLINK3args:
    """READLINK arguments (RFC 1813 3.3.5)."""

    symlink: bytes = xf(NFS_FH3)


@xdr_struct
class READLINK3resok:
    symlink_attributes: Fattr3 | None = xf(POST_OP_ATTR)
    data: bytes = xf(NFSPATH3)


@xdr_struct
class READLINK3resfail:
    symlink_attributes: Fattr3 | None = xf(POST_OP_ATTR)


@_result(READLINK3resok, READLINK3resfail.xdr)
class READLINK3res:
    """READLINK reply."""


# Procedure 6: READ


@xdr_struct
class READ3args:
    """READ arguments (RFC 1813 3.3.6)."""

    file: bytes = xf(NFS_FH3)
    offset: int = xf(U64)
    count: int = xf(U32)


@xdr_struct
class READ3resok:
    file_attributes: Fattr3 | None = xf(POST_OP_ATTR)
    count: int = xf(U32)
    eof: bool = xf(BOOL)
    data: memoryview = xf(Opaque())


@xdr_struct
class READ3resfail:
    file_attributes: Fattr3 | None = xf(POST_OP_ATTR)


@_result(READ3resok, READ3resfail.xdr)
class READ3res:
    """READ reply; the resok `data` is a zero-copy memoryview."""


# Procedure 7: WRITE


@xdr_struct
class WRITE3args:
    """WRITE arguments (RFC 1813 3.3.7)."""

    file: bytes = xf(NFS_FH3)
    offset: int = xf(U64)
    count: int = xf(U32)
    stable: StableHow = xf(Enum(StableHow))
    data: memoryview = xf(Opaque())


@xdr_struct
class WRITE3resok:
    file_wcc: WccData = xf(WccData.xdr)
    count: int = xf(U32)
    committed: StableHow = xf(Enum(StableHow))
    verf: bytes = xf(WRITEVERF3)


@xdr_struct
class WRITE3resfail:
    file_wcc: WccData = xf(WccData.xdr)


@_result(WRITE3resok, WRITE3resfail.xdr)
class WRITE3res:
    """WRITE reply."""


# Procedure 8: CREATE


@xdr_union(Enum(CreateMode), {CreateMode.UNCHECKED: Sattr3.xdr, CreateMode.GUARDED: Sattr3.xdr,
                              CreateMode.EXCLUSIVE: CREATEVERF3},
           tag_name="mode", body_name="body")
class Createhow3:
    """createhow3: `body` is Sattr3 (obj_attributes) for UNCHECKED/GUARDED,
    the 8-byte createverf3 (verf) for EXCLUSIVE."""


@xdr_struct
class CREATE3args:
    """CREATE arguments (RFC 1813 3.3.8)."""

    where: Diropargs3 = xf(Diropargs3.xdr)
    how: Createhow3 = xf(Createhow3.xdr)


@xdr_struct
class CREATE3resok:
    obj: bytes | None = xf(POST_OP_FH3)
    obj_attributes: Fattr3 | None = xf(POST_OP_ATTR)
    dir_wcc: WccData = xf(WccData.xdr)


@xdr_struct
class CREATE3resfail:
    dir_wcc: WccData = xf(WccData.xdr)


@_result(CREATE3resok, CREATE3resfail.xdr)
class CREATE3res:
    """CREATE reply."""


# Procedure 9: MKDIR


@xdr_struct
class MKDIR3args:
    """MKDIR arguments (RFC 1813 3.3.9)."""

    where: Diropargs3 = xf(Diropargs3.xdr)
    attributes: Sattr3 = xf(Sattr3.xdr)


@xdr_struct
class MKDIR3resok:
    obj: bytes | None = xf(POST_OP_FH3)
    obj_attributes: Fattr3 | None = xf(POST_OP_ATTR)
    dir_wcc: WccData = xf(WccData.xdr)


@xdr_struct
class MKDIR3resfail:
    dir_wcc: WccData = xf(WccData.xdr)


@_result(MKDIR3resok, MKDIR3resfail.xdr)
class MKDIR3res:
    """MKDIR reply."""


# Procedure 10: SYMLINK


@xdr_struct
class Symlinkdata3:
    symlink_attributes: Sattr3 = xf(Sattr3.xdr)
    symlink_data: bytes = xf(NFSPATH3)


@xdr_struct
class SYMLINK3args:
    """SYMLINK arguments (RFC 1813 3.3.10)."""

    where: Diropargs3 = xf(Diropargs3.xdr)
    symlink: Symlinkdata3 = xf(Symlinkdata3.xdr)


@xdr_struct
class SYMLINK3resok:
    obj: bytes | None = xf(POST_OP_FH3)
    obj_attributes: Fattr3 | None = xf(POST_OP_ATTR)
    dir_wcc: WccData = xf(WccData.xdr)


@xdr_struct
class SYMLINK3resfail:
    dir_wcc: WccData = xf(WccData.xdr)


@_result(SYMLINK3resok, SYMLINK3resfail.xdr)
class SYMLINK3res:
    """SYMLINK reply."""


# Procedure 11: MKNOD


@xdr_struct
class Devicedata3:
    dev_attributes: Sattr3 = xf(Sattr3.xdr)
    spec: Specdata3 = xf(Specdata3.xdr)


@xdr_union(Enum(Ftype3), {Ftype3.NF3CHR: Devicedata3.xdr, Ftype3.NF3BLK: Devicedata3.xdr,
                          Ftype3.NF3SOCK: Sattr3.xdr, Ftype3.NF3FIFO: Sattr3.xdr},
           VOID, tag_name="type", body_name="body")
class Mknoddata3:
    """mknoddata3: `body` is Devicedata3 (device) for CHR/BLK, Sattr3
    (pipe_attributes) for SOCK/FIFO, None for the other types."""


@xdr_struct
class MKNOD3args:
    """MKNOD arguments (RFC 1813 3.3.11)."""

    where: Diropargs3 = xf(Diropargs3.xdr)
    what: Mknoddata3 = xf(Mknoddata3.xdr)


@xdr_struct
class MKNOD3resok:
    obj: bytes | None = xf(POST_OP_FH3)
    obj_attributes: Fattr3 | None = xf(POST_OP_ATTR)
    dir_wcc: WccData = xf(WccData.xdr)


@xdr_struct
class MKNOD3resfail:
    dir_wcc: WccData = xf(WccData.xdr)


@_result(MKNOD3resok, MKNOD3resfail.xdr)
class MKNOD3res:
    """MKNOD reply."""


# Procedure 12: REMOVE


@xdr_struct
class REMOVE3args:
    """REMOVE arguments (RFC 1813 3.3.12)."""

    object: Diropargs3 = xf(Diropargs3.xdr)


@xdr_struct
class REMOVE3resok:
    dir_wcc: WccData = xf(WccData.xdr)


@xdr_struct
class REMOVE3resfail:
    dir_wcc: WccData = xf(WccData.xdr)


@_result(REMOVE3resok, REMOVE3resfail.xdr)
class REMOVE3res:
    """REMOVE reply."""


# Procedure 13: RMDIR


@xdr_struct
class RMDIR3args:
    """RMDIR arguments (RFC 1813 3.3.13)."""

    object: Diropargs3 = xf(Diropargs3.xdr)


@xdr_struct
class RMDIR3resok:
    dir_wcc: WccData = xf(WccData.xdr)


@xdr_struct
class RMDIR3resfail:
    dir_wcc: WccData = xf(WccData.xdr)


@_result(RMDIR3resok, RMDIR3resfail.xdr)
class RMDIR3res:
    """RMDIR reply."""


# Procedure 14: RENAME


@xdr_struct
class RENAME3args:
    """RENAME arguments (RFC 1813 3.3.14); the RFC's `from` is `from_` here."""

    from_: Diropargs3 = xf(Diropargs3.xdr)
    to: Diropargs3 = xf(Diropargs3.xdr)


@xdr_struct
class RENAME3resok:
    fromdir_wcc: WccData = xf(WccData.xdr)
    todir_wcc: WccData = xf(WccData.xdr)


@xdr_struct
class RENAME3resfail:
    fromdir_wcc: WccData = xf(WccData.xdr)
    todir_wcc: WccData = xf(WccData.xdr)


@_result(RENAME3resok, RENAME3resfail.xdr)
class RENAME3res:
    """RENAME reply."""


# Procedure 15: LINK


@xdr_struct
class LINK3args:
    """LINK arguments (RFC 1813 3.3.15)."""

    file: bytes = xf(NFS_FH3)
    link: Diropargs3 = xf(Diropargs3.xdr)


@xdr_struct
class LINK3resok:
    file_attributes: Fattr3 | None = xf(POST_OP_ATTR)
    linkdir_wcc: WccData = xf(WccData.xdr)


@xdr_struct
class LINK3resfail:
    file_attributes: Fattr3 | None = xf(POST_OP_ATTR)
    linkdir_wcc: WccData = xf(WccData.xdr)


@_result(LINK3resok, LINK3resfail.xdr)
class LINK3res:
    """LINK reply."""


# Procedure 16: READDIR


@xdr_struct
class READDIR3args:
    """READDIR arguments (RFC 1813 3.3.16)."""

    dir: bytes = xf(NFS_FH3)
    cookie: int = xf(U64)
    cookieverf: bytes = xf(COOKIEVERF3)
    count: int = xf(U32)


@xdr_struct
class Entry3:
    """One READDIR entry (the RFC's `nextentry` link is the enclosing tuple)."""

    fileid: int = xf(U64)
    name: bytes = xf(FILENAME3)
    cookie: int = xf(U64)


@xdr_struct
class Dirlist3:
    entries: tuple[Entry3, ...] = xf(LinkedList(Entry3.xdr))
    eof: bool = xf(BOOL)


@xdr_struct
class READDIR3resok:
    dir_attributes: Fattr3 | None = xf(POST_OP_ATTR)
    cookieverf: bytes = xf(COOKIEVERF3)
    reply: Dirlist3 = xf(Dirlist3.xdr)


@xdr_struct
class READDIR3resfail:
    dir_attributes: Fattr3 | None = xf(POST_OP_ATTR)


@_result(READDIR3resok, READDIR3resfail.xdr)
class READDIR3res:
    """READDIR reply."""


# Procedure 17: READDIRPLUS


@xdr_struct
class READDIRPLUS3args:
    """READDIRPLUS arguments (RFC 1813 3.3.17)."""

    dir: bytes = xf(NFS_FH3)
    cookie: int = xf(U64)
    cookieverf: bytes = xf(COOKIEVERF3)
    dircount: int = xf(U32)
    maxcount: int = xf(U32)


@xdr_struct
class Entryplus3:
    """One READDIRPLUS entry (the `nextentry` link is the enclosing tuple)."""

    fileid: int = xf(U64)
    name: bytes = xf(FILENAME3)
    cookie: int = xf(U64)
    name_attributes: Fattr3 | None = xf(POST_OP_ATTR)
    name_handle: bytes | None = xf(POST_OP_FH3)


@xdr_struct
class Dirlistplus3:
    entries: tuple[Entryplus3, ...] = xf(LinkedList(Entryplus3.xdr))
    eof: bool = xf(BOOL)


@xdr_struct
class READDIRPLUS3resok:
    dir_attributes: Fattr3 | None = xf(POST_OP_ATTR)
    cookieverf: bytes = xf(COOKIEVERF3)
    reply: Dirlistplus3 = xf(Dirlistplus3.xdr)


@xdr_struct
class READDIRPLUS3resfail:
    dir_attributes: Fattr3 | None = xf(POST_OP_ATTR)


@_result(READDIRPLUS3resok, READDIRPLUS3resfail.xdr)
class READDIRPLUS3res:
    """READDIRPLUS reply."""


# Procedure 18: FSSTAT


@xdr_struct
class FSSTAT3args:
    """FSSTAT arguments (RFC 1813 3.3.18)."""

    fsroot: bytes = xf(NFS_FH3)


@xdr_struct
class FSSTAT3resok:
    obj_attributes: Fattr3 | None = xf(POST_OP_ATTR)
    tbytes: int = xf(U64)
    fbytes: int = xf(U64)
    abytes: int = xf(U64)
    tfiles: int = xf(U64)
    ffiles: int = xf(U64)
    afiles: int = xf(U64)
    invarsec: int = xf(U32)


@xdr_struct
class FSSTAT3resfail:
    obj_attributes: Fattr3 | None = xf(POST_OP_ATTR)


@_result(FSSTAT3resok, FSSTAT3resfail.xdr)
class FSSTAT3res:
    """FSSTAT reply."""


# Procedure 19: FSINFO


@xdr_struct
class FSINFO3args:
    """FSINFO arguments (RFC 1813 3.3.19)."""

    fsroot: bytes = xf(NFS_FH3)


@xdr_struct
class FSINFO3resok:
    obj_attributes: Fattr3 | None = xf(POST_OP_ATTR)
    rtmax: int = xf(U32)
    rtpref: int = xf(U32)
    rtmult: int = xf(U32)
    wtmax: int = xf(U32)
    wtpref: int = xf(U32)
    wtmult: int = xf(U32)
    dtpref: int = xf(U32)
    maxfilesize: int = xf(U64)
    time_delta: Nfstime3 = xf(Nfstime3.xdr)
    properties: int = xf(U32)  # FSF3_* bits


@xdr_struct
class FSINFO3resfail:
    obj_attributes: Fattr3 | None = xf(POST_OP_ATTR)


@_result(FSINFO3resok, FSINFO3resfail.xdr)
class FSINFO3res:
    """FSINFO reply."""


# Procedure 20: PATHCONF


@xdr_struct
class PATHCONF3args:
    """PATHCONF arguments (RFC 1813 3.3.20)."""

    object: bytes = xf(NFS_FH3)


@xdr_struct
class PATHCONF3resok:
    obj_attributes: Fattr3 | None = xf(POST_OP_ATTR)
    linkmax: int = xf(U32)
    name_max: int = xf(U32)
    no_trunc: bool = xf(BOOL)
    chown_restricted: bool = xf(BOOL)
    case_insensitive: bool = xf(BOOL)
    case_preserving: bool = xf(BOOL)


@xdr_struct
class PATHCONF3resfail:
    obj_attributes: Fattr3 | None = xf(POST_OP_ATTR)


@_result(PATHCONF3resok, PATHCONF3resfail.xdr)
class PATHCONF3res:
    """PATHCONF reply."""


# Procedure 21: COMMIT


@xdr_struct
class COMMIT3args:
    """COMMIT arguments (RFC 1813 3.3.21)."""

    file: bytes = xf(NFS_FH3)
    offset: int = xf(U64)
    count: int = xf(U32)


@xdr_struct
class COMMIT3resok:
    file_wcc: WccData = xf(WccData.xdr)
    verf: bytes = xf(WRITEVERF3)


@xdr_struct
class COMMIT3resfail:
    file_wcc: WccData = xf(WccData.xdr)


@_result(COMMIT3resok, COMMIT3resfail.xdr)
class COMMIT3res:
    """COMMIT reply."""


# --------------------------------------------------------------------------
# The procedure table

MUTATING: Final = frozenset({
    Proc3.SETATTR, Proc3.WRITE, Proc3.CREATE, Proc3.MKDIR, Proc3.SYMLINK, Proc3.MKNOD,
    Proc3.REMOVE, Proc3.RMDIR, Proc3.RENAME, Proc3.LINK, Proc3.COMMIT,
})
"""The procedures the proxy journals (README.md, "How it works")."""

BINDERS: Final = frozenset({Proc3.LOOKUP, Proc3.READDIRPLUS})
"""Calls that change nothing but whose replies name handles (BIND records)."""

CODECS: Final[dict[Proc3, tuple[Codec, Codec]]] = {
    Proc3.NULL: (VOID, VOID),
    Proc3.GETATTR: (GETATTR3args.xdr, GETATTR3res.xdr),
    Proc3.SETATTR: (SETATTR3args.xdr, SETATTR3res.xdr),
    Proc3.LOOKUP: (LOOKUP3args.xdr, LOOKUP3res.xdr),
    Proc3.ACCESS: (ACCESS3args.xdr, ACCESS3res.xdr),
    Proc3.READLINK: (READLINK3args.xdr, READLINK3res.xdr),
    Proc3.READ: (READ3args.xdr, READ3res.xdr),
    Proc3.WRITE: (WRITE3args.xdr, WRITE3res.xdr),
    Proc3.CREATE: (CREATE3args.xdr, CREATE3res.xdr),
    Proc3.MKDIR: (MKDIR3args.xdr, MKDIR3res.xdr),
    Proc3.SYMLINK: (SYMLINK3args.xdr, SYMLINK3res.xdr),
    Proc3.MKNOD: (MKNOD3args.xdr, MKNOD3res.xdr),
    Proc3.REMOVE: (REMOVE3args.xdr, REMOVE3res.xdr),
    Proc3.RMDIR: (RMDIR3args.xdr, RMDIR3res.xdr),
    Proc3.RENAME: (RENAME3args.xdr, RENAME3res.xdr),
    Proc3.LINK: (LINK3args.xdr, LINK3res.xdr),
    Proc3.READDIR: (READDIR3args.xdr, READDIR3res.xdr),
    Proc3.READDIRPLUS: (READDIRPLUS3args.xdr, READDIRPLUS3res.xdr),
    Proc3.FSSTAT: (FSSTAT3args.xdr, FSSTAT3res.xdr),
    Proc3.FSINFO: (FSINFO3args.xdr, FSINFO3res.xdr),
    Proc3.PATHCONF: (PATHCONF3args.xdr, PATHCONF3res.xdr),
    Proc3.COMMIT: (COMMIT3args.xdr, COMMIT3res.xdr),
}

