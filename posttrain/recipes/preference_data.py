"""Preference data for the offline recipes (DPO family, reward model): tokenised train and
held-out pairs, plus prompts for generation-based accuracy checks.

`data.train: builtin:arithmetic` builds correct-vs-near-miss pairs from the arithmetic task
(`envs.arithmetic.preference_rows`); anything else is read with `load_examples(..., "preference")`.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from posttrain.config import DataConfig
from posttrain.data.examples import LoadedExamples, collect, load_examples, parse_preference
from posttrain.data.readers import Record
from posttrain.data.tokenize import TokenizedPair, tokenize_prompt, tokenize_preference
from posttrain.envs.arithmetic import preference_rows
from posttrain.recipes.sft_data import BUILTIN_ARITHMETIC, arithmetic_task


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
        train = load_examples(cfg.train, "preference", on_bad_row=cfg.on_bad_row, split=cfg.split,
                              limit=cfg.limit, **fields)
        if cfg.eval:
            held_out = load_examples(cfg.eval, "preference", on_bad_row=cfg.on_bad_row, **fields)
        else:
            held_out = LoadedExamples([])
            if cfg.eval_fraction > 0 and len(train.examples) > 1:
                shuffled = list(train.examples)
                random.Random(seed).shuffle(shuffled)
                cut = max(1, int(len(shuffled) * cfg.eval_fraction))
                held_out.examples, train.examples = shuffled[:cut], shuffled[cut:]

    def tokenize(example):
        return tokenize_preference(example, tokenizer, cfg.max_length)

    train_tok = collect(train.examples, tokenize, on_bad_row=cfg.on_bad_row)
    eval_tok = collect(held_out.examples, tokenize, on_bad_row=cfg.on_bad_row)
    skipped = train.skipped + held_out.skipped + train_tok.skipped + eval_tok.skipped
    if console is not None:
        for part in (train, held_out, train_tok, eval_tok):
            if part.summary():
                console.print(f"[yellow]data: {part.summary()}[/yellow]")
        console.print(f"data: {len(train_tok.examples)} training and {len(eval_tok.examples)} held-out pairs"
                      + (f", {len(prompt_rows)} evaluation prompts" if prompt_rows else ""))
    return PreferenceData(
        train=train_tok.examples,
        eval=eval_tok.examples,
        eval_prompts=prompt_rows,
        eval_prompt_ids=[tokenize_prompt(row["prompt"], tokenizer) for row in prompt_rows],
        skipped=skipped,
    )
