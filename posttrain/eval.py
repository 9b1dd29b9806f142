"""`posttrain eval` from Python (a notebook): the same settings, as keyword arguments.

    from posttrain.eval import evaluate
    result = evaluate("runs/sft/model", data={"train": "builtin:arithmetic"}, samples=16, ks=[1, 4, 16])
    [(row["strategy"], row["k"], row["accuracy"]) for row in result["strategies"]]

Keyword arguments are `ScalingEvalConfig` fields (posttrain/recipes/scaling_eval.py); a nested
section is a dict (`data={...}`, `thinking={"budgets": [0, 16]}`). `config` is an optional YAML
file the keywords override, as on the command line. The result is what eval.json holds; the
files (`samples.jsonl`, `eval.json`, `eval.png`) are written under `out` as the command writes
them, and a second call with the same settings resumes from them instead of generating again.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator, Union

__all__ = ["evaluate"]


def evaluate(model: Union[str, Path], config: Union[str, Path, None] = None, **settings: Any) -> dict:
    """Evaluate `model` (a saved model directory, a run's model or a hub id) as `posttrain eval` does."""
    from posttrain.config import load_config
    from posttrain.recipes.scaling_eval import ScalingEvalConfig, run_eval

    overrides = [f"model.name_or_path={json.dumps(str(model))}"]
    overrides += [f"{key}={json.dumps(value, default=str)}" for key, value in _dotted(settings)]
    return run_eval(load_config(ScalingEvalConfig, config, overrides))


def _dotted(settings: dict, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """Nested dicts as dotted keys (`data={"train": x}` → `data.train`), the command line's form.
    JSON values are YAML, so the command line's parser reads them back as they were given."""
    for key, value in settings.items():
        if isinstance(value, dict) and value:
            yield from _dotted(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value
