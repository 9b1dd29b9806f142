"""SFT data for the recipe: tokenised train / held-out splits and prompts for accuracy checks."""

from __future__ import annotations

from dataclasses import dataclass, field

from posttrain.config import DataConfig, EvalConfig
from posttrain.data.examples import LoadedExamples, collect, load_examples, parse_prompt, parse_sft
from posttrain.data.readers import Record
from posttrain.data.split import hold_out
from posttrain.data.tokenize import TokenizedExample, tokenize_prompt, tokenize_sft
from posttrain.envs.arithmetic import ArithmeticTask, sft_rows
from posttrain.rewards import check_reward_columns

BUILTIN_ARITHMETIC = "builtin:arithmetic"


@dataclass
class SFTData:
    train: list[TokenizedExample]
    eval: list[TokenizedExample]
    # Rows {"prompt": ..., <other columns>} and their prompt ids, for generation-based accuracy.
    eval_prompts: list[dict] = field(default_factory=list)
    eval_prompt_ids: list[list[int]] = field(default_factory=list)
    skipped: int = 0


def _records(source: str, rows: list[dict]) -> list[Record]:
    return [Record(source, i, row) for i, row in enumerate(rows)]


def arithmetic_task(cfg: DataConfig) -> ArithmeticTask:
    a = cfg.arithmetic
    return ArithmeticTask(min_operand=a.min_operand, max_operand=a.max_operand, ops=tuple(a.ops),
                          num_terms=a.num_terms)


def _arithmetic_sft_rows(cfg: DataConfig, task: ArithmeticTask, train_problems: list[dict],
                         eval_problems: list[dict], seed: int) -> tuple[list[dict], list[dict]]:
    """Train and held-out SFT rows of the built-in task: answers (label_noise of them near
    misses), or scratchpads (`data.arithmetic.scratchpad`)."""
    a = cfg.arithmetic  # its combinations are checked when the config is built (ArithmeticConfig)
    if not a.scratchpad:
        return sft_rows(train_problems, label_noise=a.label_noise, seed=seed), sft_rows(eval_problems)
    from posttrain.envs.scratchpad import scratchpad_rows

    return (scratchpad_rows(train_problems, task, direct_fraction=a.direct_fraction, seed=seed),
            scratchpad_rows(eval_problems, task))


def load_sft_data(cfg: DataConfig, tokenizer, *, eval_cfg: EvalConfig, seed: int, console=None) -> SFTData:
    """Read, validate and tokenise; bad rows raise or are skipped and counted per `cfg.on_bad_row`."""
    fields = {"messages_field": cfg.messages_field, "prompt_field": cfg.prompt_field,
              "completion_field": cfg.completion_field}
    prompt_rows: list[dict] = []
    if cfg.train == BUILTIN_ARITHMETIC:
        task = arithmetic_task(cfg)
        train_problems = task.problems(cfg.arithmetic.num_train, seed=seed, split="train")
        eval_problems = task.problems(cfg.arithmetic.num_eval, seed=seed, split="test")
        train_rows, held_rows = _arithmetic_sft_rows(cfg, task, train_problems, eval_problems, seed)
        train = collect(_records(BUILTIN_ARITHMETIC, train_rows), lambda r: parse_sft(r, **fields))
        held_out = collect(_records(BUILTIN_ARITHMETIC + "/test", held_rows), lambda r: parse_sft(r, **fields))
        prompt_rows = eval_problems
    else:
        train, held_out = load_file_splits(cfg, "sft", seed, **fields)
    if eval_cfg.prompts:
        loaded = load_examples(eval_cfg.prompts, "prompt", on_bad_row=cfg.on_bad_row, prompt_field=cfg.prompt_field)
        prompt_rows = [{"prompt": ex.prompt, **ex.extras} for ex in loaded.examples]
        prompt_rows = checked_eval_prompts(prompt_rows, eval_cfg, cfg, eval_cfg.prompts,
                                           [ex.row for ex in loaded.examples])
    elif prompt_rows:
        prompt_rows = checked_eval_prompts(prompt_rows, eval_cfg, cfg, BUILTIN_ARITHMETIC + "/test")

    train_tok, eval_tok, skipped = tokenize_splits(
        train, held_out, lambda example: tokenize_sft(example, tokenizer, cfg.max_length), cfg.on_bad_row,
        console=console, noun="sequences", prompts=len(prompt_rows))
    return SFTData(
        train=train_tok,
        eval=eval_tok,
        eval_prompts=prompt_rows,
        eval_prompt_ids=[tokenize_prompt(row["prompt"], tokenizer) for row in prompt_rows],
        skipped=skipped,
    )


def checked_eval_prompts(rows: list[dict], eval_cfg: EvalConfig, cfg: DataConfig, source: str,
                         row_numbers: list[int] | None = None) -> list[dict]:
    """The evaluation prompt rows, checked for the columns `eval_cfg.reward` needs: a DataError
    naming `source` and the column, or (``data.on_bad_row=skip``) without the rows that lack it."""
    if not eval_cfg.reward or not rows:
        return rows
    keep = check_reward_columns([eval_cfg.reward], rows, source=source, row_numbers=row_numbers,
                                on_bad_row=cfg.on_bad_row)
    return rows if len(keep) == len(rows) else [rows[i] for i in keep]


def load_file_splits(cfg: DataConfig, shape: str, seed: int, **fields: str) -> tuple[LoadedExamples, LoadedExamples]:
    """Training and held-out examples of `shape` from files: `cfg.eval` when given, else a seeded
    `cfg.eval_fraction` of the training rows (`posttrain.data.split.hold_out`)."""
    train = load_examples(cfg.train, shape, on_bad_row=cfg.on_bad_row, split=cfg.split, limit=cfg.limit, **fields)
    if cfg.eval:
        return train, load_examples(cfg.eval, shape, on_bad_row=cfg.on_bad_row, **fields)
    held_out = LoadedExamples([])
    train.examples, held_out.examples = hold_out(train.examples, cfg.eval_fraction, seed, name="data.eval_fraction")
    return train, held_out


def tokenize_splits(train: LoadedExamples, held_out: LoadedExamples, tokenize, on_bad_row: str, *, console=None,
                    noun: str, prompts: int = 0) -> tuple[list, list, int]:
    """Tokenise both splits (too-long examples raise or are skipped per `on_bad_row`), print what
    was skipped and kept; returns (train, held_out, rows skipped in all)."""
    train_tok = collect(train.examples, tokenize, on_bad_row=on_bad_row)
    eval_tok = collect(held_out.examples, tokenize, on_bad_row=on_bad_row)
    skipped = train.skipped + held_out.skipped + train_tok.skipped + eval_tok.skipped
    if console is not None:
        for part in (train, held_out, train_tok, eval_tok):
            if part.summary():
                console.print(f"[yellow]data: {part.summary()}[/yellow]")
        console.print(f"data: {len(train_tok.examples)} training and {len(eval_tok.examples)} held-out {noun}"
                      + (f", {prompts} evaluation prompts" if prompts else ""))
    return train_tok.examples, eval_tok.examples, skipped
