"""XDR (RFC 4506) as a small declarative schema language, sans-IO.

A *codec* knows how to pack one XDR type into a `Packer` and unpack it from an
`Unpacker`. Structs are frozen, slotted dataclasses declared with `xdr_struct`;
their fields carry their codec, so the same schema drives encoding, decoding
and (in tests) the Hypothesis strategies that generate values for it.

Decoding never copies variable-length opaque data: `Opaque` yields a
`memoryview` into the input, so a WRITE payload travels from the socket buffer
to the LOG without an intermediate `bytes`. Short opaques that are used as
dictionary keys (file handles, verifiers) use `Opaque(..., copy=True)`.

Every malformed input raises `XdrError`: truncation, trailing bytes, lengths
over the declared maximum, unknown enum or union arms. Anything else escaping
a decoder is a bug.
"""

from __future__ import annotations

import dataclasses
import enum
import struct
from typing import Any, Callable, Iterable

__all__ = [
    "XdrError", "Packer", "Unpacker", "Codec", "U32", "I32", "U64", "I64",
    "BOOL", "VOID", "Opaque", "FixedOpaque", "String", "Enum", "Optional",
    "Array", "LinkedList", "Union", "Struct", "xdr_struct", "xdr_union", "xf", "encode",
    "decode",
]

_U32 = struct.Struct(">I")
_I32 = struct.Struct(">i")
_U64 = struct.Struct(">Q")
_I64 = struct.Struct(">q")
_PAD = (b"", b"\0\0\0", b"\0\0", b"\0")


class XdrError(ValueError):
    """The peer sent bytes that are not a valid value of the expected XDR type."""


class Unpacker:
    """A read cursor over a buffer; every read checks bounds first."""

    __slots__ = ("_view", "pos", "end")

    def __init__(self, data: bytes | bytearray | memoryview, pos: int = 0, end: int | None = None):
        self._view = data if isinstance(data, memoryview) else memoryview(data)
        self.pos = pos
        self.end = len(self._view) if end is None else end

    @property
    def remaining(self) -> int:
        return self.end - self.pos

    def _take(self, n: int) -> int:
        start = self.pos
        if n > self.end - start:
            raise XdrError(f"truncated: need {n} bytes at offset {start}, have {self.end - start}")
        self.pos = start + n
        return start

    def u32(self) -> int:
        return _U32.unpack_from(self._view, self._take(4))[0]

    def i32(self) -> int:
        return _I32.unpack_from(self._view, self._take(4))[0]

    def u64(self) -> int:
        return _U64.unpack_from(self._view, self._take(8))[0]

    def i64(self) -> int:
        return _I64.unpack_from(self._view, self._take(8))[0]

    def fixed(self, n: int) -> memoryview:
        start = self._take(n + (-n % 4))
        return self._view[start:start + n]

    def var(self, maxlen: int) -> memoryview:
        n = self.u32()
        if n > maxlen:
            raise XdrError(f"length {n} over maximum {maxlen} at offset {self.pos - 4}")
        return self.fixed(n)

    def rest(self) -> memoryview:
        """The bytes not yet read (used to pass a body through untouched)."""
        view = self._view[self.pos:self.end]
        self.pos = self.end
        return view

    def done(self) -> None:
        if self.pos != self.end:
            raise XdrError(f"{self.end - self.pos} trailing bytes at offset {self.pos}")


class Packer:
    """Collects encoded pieces; large opaques are kept by reference, not copied."""

    __slots__ = ("parts",)

    def __init__(self) -> None:
        self.parts: list[bytes | memoryview] = []

    def u32(self, v: int) -> None:
        self.parts.append(_U32.pack(v))

    def i32(self, v: int) -> None:
        self.parts.append(_I32.pack(v))

    def u64(self, v: int) -> None:
        self.parts.append(_U64.pack(v))

    def i64(self, v: int) -> None:
        self.parts.append(_I64.pack(v))

    def fixed(self, data: bytes | memoryview, n: int) -> None:
        if len(data) != n:
            raise ValueError(f"fixed opaque needs {n} bytes, got {len(data)}")
        self.parts.append(data)
        if n % 4:
            self.parts.append(_PAD[n % 4])

    def var(self, data: bytes | memoryview, maxlen: int) -> None:
        n = len(data)
        if n > maxlen:
            raise ValueError(f"opaque of {n} bytes over maximum {maxlen}")
        self.parts.append(_U32.pack(n))
        self.parts.append(data)
        if n % 4:
            self.parts.append(_PAD[n % 4])

    def raw(self, data: bytes | memoryview) -> None:
        """Already-encoded XDR (a body passed through untouched)."""
        self.parts.append(data)

    def getvalue(self) -> bytes:
        return b"".join(self.parts)

    def __len__(self) -> int:
        return sum(len(p) for p in self.parts)


class Codec:
    """One XDR type: `pack(packer, value)` and `unpack(unpacker) -> value`."""

    __slots__ = ()

    def pack(self, p: Packer, v: Any) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def unpack(self, u: Unpacker) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError


class _U32Codec(Codec):
    __slots__ = ()
    pack = staticmethod(lambda p, v: p.u32(v))
    unpack = staticmethod(lambda u: u.u32())


class _I32Codec(Codec):
    __slots__ = ()
    pack = staticmethod(lambda p, v: p.i32(v))
    unpack = staticmethod(lambda u: u.i32())


class _U64Codec(Codec):
    __slots__ = ()
    pack = staticmethod(lambda p, v: p.u64(v))
    unpack = staticmethod(lambda u: u.u64())


class _I64Codec(Codec):
    __slots__ = ()
    pack = staticmethod(lambda p, v: p.i64(v))
    unpack = staticmethod(lambda u: u.i64())


class _BoolCodec(Codec):
    __slots__ = ()

    @staticmethod
    def pack(p: Packer, v: bool) -> None:
        p.u32(1 if v else 0)

    @staticmethod
    def unpack(u: Unpacker) -> bool:
        v = u.u32()
        if v > 1:
            raise XdrError(f"bool must be 0 or 1, got {v}")
        return v == 1


class _VoidCodec(Codec):
    __slots__ = ()

    @staticmethod
    def pack(p: Packer, v: None) -> None:
        if v is not None:
            raise ValueError("void takes None")

    @staticmethod
    def unpack(u: Unpacker) -> None:
        return None


U32: Codec = _U32Codec()
I32: Codec = _I32Codec()
U64: Codec = _U64Codec()
I64: Codec = _I64Codec()
BOOL: Codec = _BoolCodec()
VOID: Codec = _VoidCodec()


class Opaque(Codec):
    """`opaque<max>`; a zero-copy memoryview unless `copy` (for keys)."""

    __slots__ = ("maxlen", "copy")

    def __init__(self, maxlen: int = 0xFFFFFFFF, copy: bool = False):
        self.maxlen = maxlen
        self.copy = copy

    def pack(self, p: Packer, v: bytes | memoryview) -> None:
        p.var(v, self.maxlen)

    def unpack(self, u: Unpacker) -> bytes | memoryview:
        view = u.var(self.maxlen)
        return bytes(view) if self.copy else view


class FixedOpaque(Codec):
    """`opaque[n]`, always copied: these are small verifiers and cookies."""

    __slots__ = ("size",)

    def __init__(self, size: int):
        self.size = size

    def pack(self, p: Packer, v: bytes) -> None:
        p.fixed(v, self.size)

    def unpack(self, u: Unpacker) -> bytes:
        return bytes(u.fixed(self.size))


class String(Codec):
    """`string<max>`: bytes, exactly as on the wire. Names are never assumed
    to be UTF-8 (RFC 1813 leaves their encoding to the server), so decoding
    gives `bytes`; packing also takes a `str`, encoded as UTF-8 (with
    surrogateescape, so an `os.fsdecode`d name packs back to its bytes)."""

    __slots__ = ("maxlen",)

    def __init__(self, maxlen: int = 0xFFFFFFFF):
        self.maxlen = maxlen

    def pack(self, p: Packer, v: bytes | str) -> None:
        p.var(v.encode("utf-8", "surrogateescape") if isinstance(v, str) else v, self.maxlen)

    def unpack(self, u: Unpacker) -> bytes:
        return bytes(u.var(self.maxlen))


class Enum(Codec):
    """An `enum` backed by a Python IntEnum; unknown values are rejected."""

    __slots__ = ("cls", "_members")

    def __init__(self, cls: type[enum.IntEnum]):
        self.cls = cls
        self._members = {m.value: m for m in cls}

    def pack(self, p: Packer, v: enum.IntEnum) -> None:
        p.i32(int(v))

    def unpack(self, u: Unpacker) -> enum.IntEnum:
        raw = u.i32()
        try:
            return self._members[raw]
        except KeyError:
            raise XdrError(f"{raw} is not a valid {self.cls.__name__}") from None


class Optional(Codec):
    """`T *x` (and every bool-discriminated union with a void FALSE arm): None or T."""

    __slots__ = ("inner",)

    def __init__(self, inner: Codec):
        self.inner = inner

    def pack(self, p: Packer, v: Any) -> None:
        if v is None:
            p.u32(0)
        else:
            p.u32(1)
            self.inner.pack(p, v)

    def unpack(self, u: Unpacker) -> Any:
        return self.inner.unpack(u) if BOOL.unpack(u) else None


class Array(Codec):
    """`T x<max>` as a tuple."""

    __slots__ = ("inner", "maxlen")

    def __init__(self, inner: Codec, maxlen: int = 0xFFFFFFFF):
        self.inner = inner
        self.maxlen = maxlen

    def pack(self, p: Packer, v: tuple) -> None:
        if len(v) > self.maxlen:
            raise ValueError(f"array of {len(v)} over maximum {self.maxlen}")
        p.u32(len(v))
        for item in v:
            self.inner.pack(p, item)

    def unpack(self, u: Unpacker) -> tuple:
        n = u.u32()
        if n > self.maxlen:
            raise XdrError(f"array of {n} over maximum {self.maxlen}")
        # Every element takes at least 4 bytes, so a huge count on a short
        # buffer is refused before we loop over it.
        if n * 4 > u.remaining:
            raise XdrError(f"array of {n} cannot fit in {u.remaining} bytes")
        if self.inner in _PLAIN_FORMATS:  # e.g. AUTH_SYS gids: one struct call
            fmt = _PLAIN_FORMATS[self.inner]
            return struct.unpack_from(f">{n}{fmt}", u._view, u._take(n * struct.calcsize(fmt)))
        inner = self.inner.unpack
        return tuple([inner(u) for _ in range(n)])


class LinkedList(Codec):
    """An XDR list spelled as `struct node { T item; node *next; }` (READDIR
    entries, MOUNT export lists) flattened to a tuple."""

    __slots__ = ("inner",)

    def __init__(self, inner: Codec):
        self.inner = inner

    def pack(self, p: Packer, v: tuple) -> None:
        for item in v:
            p.u32(1)
            self.inner.pack(p, item)
        p.u32(0)

    def unpack(self, u: Unpacker) -> tuple:
        items = []
        inner = self.inner.unpack
        while BOOL.unpack(u):
            items.append(inner(u))
        return tuple(items)


def xf(codec: Codec, **kw: Any) -> Any:
    """A dataclass field that carries its XDR codec."""
    return dataclasses.field(metadata={"xdr": codec}, **kw)


class Struct(Codec):
    """A struct codec built from an `xdr_struct` dataclass's fields.

    `pack` and `unpack` are generated per struct (see `_compile`): runs of
    fixed-width fields are read and written with one `struct.Struct` call,
    which makes a call header or an fattr3 several times cheaper to decode
    than a field-by-field walk. `fields` stays the schema of record.
    """

    def __init__(self, cls: type, fields: Iterable[tuple[str, Codec]]):
        self.cls = cls
        self.fields = tuple(fields)
        # Instance attributes shadow the generic methods below.
        self.pack, self.unpack = _compile(cls, self.fields)

    def pack(self, p: Packer, v: Any) -> None:  # replaced per instance
        for name, codec in self.fields:
            codec.pack(p, getattr(v, name))

    def unpack(self, u: Unpacker) -> Any:  # replaced per instance
        return self.cls(*[codec.unpack(u) for _, codec in self.fields])


_PLAIN_FORMATS: dict[Codec, str] = {U32: "I", I32: "i", U64: "Q", I64: "q"}


def _fixed_format(codec: Codec) -> str | None:
    if codec is U32 or codec is BOOL:
        return "I"
    if codec is I32 or isinstance(codec, Enum):
        return "i"
    return _PLAIN_FORMATS.get(codec)


def _compile(cls: type, fields: tuple[tuple[str, Codec], ...]):
    """Generate straight-line pack/unpack functions for one struct."""
    env: dict[str, Any] = {"cls": cls, "XdrError": XdrError, "_struct": struct}
    up = ["def unpack(u):"]
    pk = ["def pack(p, v):", "    parts = p.parts"]
    i = 0
    while i < len(fields):
        run = []
        while i < len(fields) and _fixed_format(fields[i][1]):
            run.append(i)
            i += 1
        if run:
            _compile_run(run, fields, env, up, pk)
        else:
            name, codec = fields[i]
            env[f"c{i}"] = codec
            up.append(f"    f{i} = c{i}.unpack(u)")
            pk.append(f"    c{i}.pack(p, v.{name})")
            i += 1
    up.append(f"    return cls({', '.join(f'f{j}' for j in range(len(fields)))})")
    if len(pk) == 2:
        pk.append("    pass")
    exec("\n".join(up), env)  # noqa: S102 - generated from our own schema only
    exec("\n".join(pk), env)  # noqa: S102
    return env["pack"], env["unpack"]


def _compile_run(run: list[int], fields, env: dict[str, Any], up: list[str], pk: list[str]) -> None:
    fmt = struct.Struct(">" + "".join(_fixed_format(fields[j][1]) for j in run))
    k = run[0]
    env[f"s{k}"] = fmt
    targets = ", ".join(f"f{j}" for j in run)
    up.append(f"    {targets}{',' if len(run) == 1 else ''} = s{k}.unpack_from(u._view, u._take({fmt.size}))")
    values = []
    for j in run:
        name, codec = fields[j]
        if codec is BOOL:
            up.append(f"    if f{j} > 1: raise XdrError(f'bool must be 0 or 1, got {{f{j}}}')")
            up.append(f"    f{j} = f{j} == 1")
            values.append(f"(1 if v.{name} else 0)")
        elif isinstance(codec, Enum):
            env[f"m{j}"] = codec._members
            env[f"n{j}"] = codec.cls.__name__
            up.append(f"    e{j} = m{j}.get(f{j})")
            up.append(f"    if e{j} is None: raise XdrError(f'{{f{j}}} is not a valid {{n{j}}}')")
            up.append(f"    f{j} = e{j}")
            values.append(f"v.{name}")
        else:
            values.append(f"v.{name}")
    pk.append(f"    parts.append(s{k}.pack({', '.join(values)}))")


def xdr_struct(cls: type) -> type:
    """Make `cls` a frozen, slotted dataclass with a `.xdr` Struct codec."""
    cls = dataclasses.dataclass(frozen=True, slots=True)(cls)
    fields = [(f.name, f.metadata["xdr"]) for f in dataclasses.fields(cls)]
    cls.xdr = Struct(cls, fields)
    return cls


class Union(Codec):
    """A discriminated union, decoded into `cls(tag, body)`.

    `arms` maps each discriminant value to the codec of its arm (VOID for an
    empty arm); `default` covers the rest (None: other values are invalid).
    """

    __slots__ = ("cls", "tag", "arms", "default", "names")

    def __init__(self, cls: type, tag: Codec, arms: dict[Any, Codec], default: Codec | None = None,
                 names: tuple[str, str] = ("tag", "body")):
        self.cls = cls
        self.tag = tag
        self.arms = arms
        self.default = default
        self.names = names

    def arm(self, tag: Any) -> Codec:
        codec = self.arms.get(tag, self.default)
        if codec is None:
            raise XdrError(f"no union arm for discriminant {tag!r} in {self.cls.__name__}")
        return codec

    def pack(self, p: Packer, v: Any) -> None:
        tag_name, body_name = self.names
        tag = getattr(v, tag_name)
        self.tag.pack(p, tag)
        self.arm(tag).pack(p, getattr(v, body_name))

    def unpack(self, u: Unpacker) -> Any:
        tag = self.tag.unpack(u)
        return self.cls(tag, self.arm(tag).unpack(u))


def xdr_union(tag: Codec, arms: dict[Any, Codec], default: Codec | None = None,
              *, tag_name: str = "tag", body_name: str = "body") -> Callable[[type], type]:
    """Declare a union: the class gets two fields (tag, body) and a `.xdr` Union codec."""

    def wrap(cls: type) -> type:
        cls.__annotations__ = {tag_name: Any, body_name: Any}
        setattr(cls, body_name, None)
        cls = dataclasses.dataclass(frozen=True, slots=True)(cls)
        cls.xdr = Union(cls, tag, arms, default, (tag_name, body_name))
        return cls

    return wrap


def encode(codec: Codec, value: Any) -> bytes:
    p = Packer()
    codec.pack(p, value)
    return p.getvalue()


def decode(codec: Codec, data: bytes | memoryview) -> Any:
    """Decode exactly one value; trailing bytes are an error."""
    u = Unpacker(data)
    value = codec.unpack(u)
    u.done()
    return value
