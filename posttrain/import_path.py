"""Resolve "pkg.module:function" strings, so users can plug in functions without registering them."""

from __future__ import annotations

import importlib
from typing import Any, Callable, Mapping


def is_import_path(name: str) -> bool:
    """True for "pkg.module:function"-style names (registry names never contain ':')."""
    return ":" in name


def resolve_import_path(path: str, kind: str, *, callable_only: bool = True) -> Any:
    """The object named by "pkg.module:attr[.attr…]" (a callable unless `callable_only=False`);
    ValueError naming `kind` and the path otherwise."""
    module_name, _, attr = path.partition(":")
    if not module_name or not attr:
        raise ValueError(f"{kind} {path!r}: an import path must look like 'pkg.module:function'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ValueError(f"{kind} {path!r}: cannot import module {module_name!r} ({err})") from err
    target: Any = module
    for part in attr.split("."):
        if not hasattr(target, part):
            raise ValueError(f"{kind} {path!r}: module {module_name!r} has no attribute {attr!r}")
        target = getattr(target, part)
    if callable_only and not callable(target):
        raise ValueError(f"{kind} {path!r} is not callable")
    return target


def lookup(table: Mapping[str, Any], name: str, kind: str, *, expect: type | None = None, also: str = "") -> Any:
    """The one name → object lookup of every registry: `name` in `table`, or an import path.

    `expect`, when given, is the type an import path must resolve to (e.g. a spec dataclass
    rather than a bare function). Errors are ValueErrors naming `kind`, the name and the
    valid names (plus `also`, other accepted forms).
    """
    if not isinstance(name, str):
        raise ValueError(f"{kind} name must be a string, got {name!r}")
    if is_import_path(name):
        target = resolve_import_path(name, kind, callable_only=expect is None)
        if expect is not None and not isinstance(target, expect):
            raise ValueError(f"{kind} {name!r} must name a {expect.__name__}, got {type(target).__name__}")
        return target
    try:
        return table[name]
    except KeyError:
        raise ValueError(f"unknown {kind} {name!r}; valid names: {sorted(table)} "
                         f"(or {also + ', or ' if also else ''}an import path 'pkg.module:name')") from None
