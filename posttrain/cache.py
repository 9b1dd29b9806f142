"""posttrain's cache of things it builds once and reuses (tiny models, generated task files)."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["cache_dir"]


def cache_dir(*parts: str) -> Path:
    """$POSTTRAIN_CACHE (else ~/.cache/posttrain), joined with `parts`; read at each call, so a test
    that sets the variable gets its own cache."""
    root = os.environ.get("POSTTRAIN_CACHE") or Path.home() / ".cache" / "posttrain"
    return Path(root).joinpath(*parts)
