"""Write rows as JSON Lines (reading lives in `posttrain.data.readers`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable


def write_jsonl(rows: Iterable[dict[str, Any]], path: str | Path) -> Path:
    """Write `rows` as JSON Lines (UTF-8, one object per line), creating parent folders."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return out
