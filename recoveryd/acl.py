"""POSIX ACLs as records carry them, as Linux stores them, as people read them. Sans-IO.

A record's ACL is a list of ``AclEntry`` (proto/journal.proto): ``(type,
id, perm)`` with NFSACL's numbering, which is Linux's own (``AclTag``
below). Two forms leave this module:

* ``to_xattr``: the value of the ``system.posix_acl_access`` /
  ``system.posix_acl_default`` extended attributes (the kernel's
  ``posix_acl_xattr`` format: a little-endian u32 version 2, then one
  ``(tag u16, perm u16, id u32)`` per entry, sorted by tag then id, the id
  of every entry but USER and GROUP being ``ACL_UNDEFINED_ID``);
* ``to_text``: getfacl's short form, ``user::rw-,user:1234:r--,...``.

``from_xattr`` reads the xattr form back (tests compare restored files
with the NAS's this way).
"""

from __future__ import annotations

import enum
import struct
from typing import Iterable, NamedTuple

__all__ = ["AclTag", "Ace", "XATTR_ACCESS", "XATTR_DEFAULT", "to_xattr", "from_xattr", "to_text",
           "aces"]

XATTR_ACCESS = "system.posix_acl_access"
XATTR_DEFAULT = "system.posix_acl_default"
_VERSION = 2
_UNDEFINED_ID = 0xFFFFFFFF
_HEADER = struct.Struct("<I")
_ENTRY = struct.Struct("<HHI")


class AclTag(enum.IntEnum):
    """POSIX ACL tags, numbered as NFSACL and Linux's xattrs number them."""

    USER_OBJ = 0x01
    USER = 0x02
    GROUP_OBJ = 0x04
    GROUP = 0x08
    MASK = 0x10
    OTHER = 0x20


class Ace(NamedTuple):
    """One ACL entry: tag, id (USER and GROUP only), rwx perm as 4/2/1."""

    type: int
    id: int
    perm: int


_NAMED = (AclTag.USER, AclTag.GROUP)
_TEXT = {AclTag.USER_OBJ: "user", AclTag.USER: "user", AclTag.GROUP_OBJ: "group",
         AclTag.GROUP: "group", AclTag.MASK: "mask", AclTag.OTHER: "other"}


def aces(entries: Iterable) -> tuple[Ace, ...]:
    """Entries with ``type``/``id``/``perm`` attributes (AclEntry, Aclent) as ``Ace``s,
    in the kernel's order, ids of unnamed entries made ``ACL_UNDEFINED_ID``."""
    out = [Ace(e.type, e.id if e.type in _NAMED else _UNDEFINED_ID, e.perm & 7) for e in entries]
    return tuple(sorted(out))


def to_xattr(entries: Iterable) -> bytes:
    """The ``system.posix_acl_*`` xattr value of an ACL."""
    return _HEADER.pack(_VERSION) + b"".join(_ENTRY.pack(a.type, a.perm, a.id) for a in aces(entries))


def from_xattr(value: bytes) -> tuple[Ace, ...]:
    """An ACL read back from its xattr value; ValueError when it is not one."""
    if len(value) < _HEADER.size or (len(value) - _HEADER.size) % _ENTRY.size:
        raise ValueError(f"not a POSIX ACL xattr ({len(value)} bytes)")
    (version,) = _HEADER.unpack_from(value)
    if version != _VERSION:
        raise ValueError(f"POSIX ACL xattr version {version}, expected {_VERSION}")
    out = []
    for offset in range(_HEADER.size, len(value), _ENTRY.size):
        tag, perm, id_ = _ENTRY.unpack_from(value, offset)
        out.append(Ace(tag, id_, perm))
    return aces(out)


def _perm(perm: int) -> str:
    return ("r" if perm & 4 else "-") + ("w" if perm & 2 else "-") + ("x" if perm & 1 else "-")


def to_text(entries: Iterable, prefix: str = "") -> str:
    """getfacl's short form (``user::rw-,user:1234:r--,group::r--,mask::r--,other::r--``);
    ``prefix`` (e.g. ``default:``) goes before each entry. Empty for no entries."""
    parts = []
    for a in aces(entries):
        try:
            kind = _TEXT[AclTag(a.type)]
        except ValueError:
            kind = f"tag{a.type:#x}"
        who = str(a.id) if a.type in _NAMED else ""
        parts.append(f"{prefix}{kind}:{who}:{_perm(a.perm)}")
    return ",".join(parts)
