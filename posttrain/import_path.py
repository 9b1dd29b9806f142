"""Resolve "pkg.module:function" strings, so users can plug in functions without registering them."""

from __future__ import annotations

import importlib
from typing import Any, Callable


def is_import_path(name: str) -> bool:
    """True for "pkg.module:function"-style names (registry names never contain ':')."""
    return ":" in name


def resolve_import_path(path: str, kind: str) -> Callable[..., Any]:
    """The callable named by "pkg.module:attr[.attr…]"; ValueError naming `kind` and the path otherwise."""
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
    if not callable(target):
        raise ValueError(f"{kind} {path!r} is not callable")
    return target
