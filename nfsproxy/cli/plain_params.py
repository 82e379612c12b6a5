"""Plain parameters without pydantic: typer (0.2x and later) coerces every
parameter of the command it runs through a pydantic ``TypeAdapter``, and
importing pydantic alone takes ~110 ms, more than the rest of `nfsj status`.

``install()`` coerces the parameters that need no validation beyond their
type (``str``, ``bool``, ``int``/``float`` without bounds, and lists
of those) here, as click did; everything else (bounded numbers, enums,
paths, custom parsers) still goes to typer. With a typer that has no such
hook (older ones coerce through click) it does nothing.
"""

from __future__ import annotations

import dataclasses
from typing import Any, get_args, get_origin

__all__ = ["install"]

_NAMES = {int: "integer", float: "float", bool: "boolean"}
_TRUE = frozenset({"1", "true", "t", "yes", "y", "on"})
_FALSE = frozenset({"0", "false", "f", "no", "n", "off", ""})


def install() -> None:
    """Route plain parameters around pydantic (idempotent)."""
    try:
        from typer import _coercion, core
    except ImportError:
        return
    build = getattr(core, "build_runtime_param", None)
    if build is None or getattr(build, "nfsj_plain", False):
        return
    base = getattr(_coercion, "RuntimeParam", None)
    if base is None:
        return

    @dataclasses.dataclass(frozen=True)
    class Plain(base):
        leaf: type = str

        def _coerce_value(self, value: Any, param: Any, ctx: Any) -> Any:
            if isinstance(value, (list, tuple)):
                return [self._one(v, param, ctx) for v in value]
            return self._one(value, param, ctx)

        def _one(self, value: Any, param: Any, ctx: Any) -> Any:
            if isinstance(value, bytes):
                value = value.decode("utf-8", "surrogateescape")
            if self.leaf is str:
                return str(value)
            if self.leaf is bool and isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
                return value.strip().lower() in _TRUE
            if isinstance(value, self.leaf) and not isinstance(value, bool):
                return value
            try:
                return self.leaf(value)
            except (TypeError, ValueError):
                from typer._click.exceptions import BadParameter
                raise BadParameter(f"{value!r} is not a valid {_NAMES[self.leaf]}.",
                                   ctx=ctx, param=param) from None

    def fast_build(descriptor):
        try:
            leaf = _plain_leaf(descriptor)
            if leaf is not None:
                return Plain(parameter_info=descriptor.parameter_info,
                             annotation=descriptor.annotation, leaf=leaf)
        except (AttributeError, TypeError):
            pass  # a typer whose internals moved on: let it coerce as it does
        return build(descriptor)

    fast_build.nfsj_plain = True
    core.build_runtime_param = fast_build


def _plain_leaf(descriptor) -> type | None:
    info = descriptor.parameter_info
    if getattr(descriptor, "file_annotation", None) is not None:
        return None
    if getattr(info, "parser", None) is not None or getattr(info, "click_type", None) is not None:
        return None
    annotation = descriptor.annotation
    if get_origin(annotation) is list:
        args = get_args(annotation)
        if len(args) != 1:
            return None
        annotation = args[0]
    if annotation in (str, bool):
        return annotation
    if annotation in (int, float) and info.min is None and info.max is None:
        return annotation
    return None
