"""Preference data for the offline recipes (DPO family, reward model): tokenised train and
held-out pairs, plus prompts for generation-based accuracy checks.

`data.train: builtin:arithmetic` builds correct-vs-near-miss pairs from the arithmetic task
(`envs.arithmetic.preference_rows`); anything else is read with `load_examples(..., "preference")`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from posttrain.config import DataConfig
from posttrain.data.examples import collect, parse_preference
from posttrain.data.readers import Record
from posttrain.data.tokenize import TokenizedPair, tokenize_prompt, tokenize_preference
from posttrain.envs.arithmetic import preference_rows
from posttrain.recipes.sft_data import BUILTIN_ARITHMETIC, arithmetic_task, load_file_splits, tokenize_splits


@dataclass
class PreferenceData:
    train: list[TokenizedPair]
    eval: list[TokenizedPair]
    # Rows {"prompt": ..., <other columns>} and their prompt ids, for accuracy under a reward
    # (built-in arithmetic: the held-out problems; a file: its held-out rows' prompts and extras).
    eval_prompts: list[dict] = field(default_factory=list)
    eval_prompt_ids: list[list[int]] = field(default_factory=list)
    skipped: int = 0


def _records(source: str, rows: list[dict]) -> list[Record]:
    return [Record(source, i, row) for i, row in enumerate(rows)]


def load_preference_data(cfg: DataConfig, tokenizer, *, seed: int, console=None) -> PreferenceData:
    """Read, validate and tokenise pairs; bad rows (missing or empty chosen/rejected, identical
    responses, too long for `cfg.max_length`) raise a `DataError` naming file, row and field, or
    are skipped and counted, per `cfg.on_bad_row`."""
    fields = {"prompt_field": cfg.prompt_field, "chosen_field": cfg.chosen_field,
              "rejected_field": cfg.rejected_field}
    prompt_rows: list[dict] = []
    if cfg.train == BUILTIN_ARITHMETIC:
        task = arithmetic_task(cfg)
        train_problems = task.problems(cfg.arithmetic.num_train, seed=seed, split="train")
        eval_problems = task.problems(cfg.arithmetic.num_eval, seed=seed, split="test")
        train = collect(_records(BUILTIN_ARITHMETIC, preference_rows(train_problems, seed=seed)),
                        lambda r: parse_preference(r, **fields))
        held_out = collect(_records(BUILTIN_ARITHMETIC + "/test", preference_rows(eval_problems, seed=seed)),
                           lambda r: parse_preference(r, **fields))
        prompt_rows = eval_problems
    else:
        train, held_out = load_file_splits(cfg, "preference", seed, **fields)

    train_tok, eval_tok, skipped = tokenize_splits(
        train, held_out, lambda example: tokenize_preference(example, tokenizer, cfg.max_length), cfg.on_bad_row,
        console=console, noun="pairs", prompts=len(prompt_rows))
    return PreferenceData(
        train=train_tok,
        eval=eval_tok,
        eval_prompts=prompt_rows,
        eval_prompt_ids=[tokenize_prompt(row["prompt"], tokenizer) for row in prompt_rows],
        skipped=skipped,
    )
