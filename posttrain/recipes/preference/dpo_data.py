"""Data for the DPO family: preference pairs, or KTO's labelled completions, as flat token sequences.

Both shapes become a `PreferenceSplit`: a flat list of tokenised sequences (prompt + response,
loss mask on the response only) and the *units* a training step draws: a pair (chosen,
rejected), or for KTO on unpaired data a single labelled sequence. `rows` lists a batch of
units with the chosen / desirable sequences first, so pair i sits in rows i and B + i (the
layout of `pad_preference_batch`) and a pairwise loss finds its halves by label.

Pairs come from `load_preference_data` (built-in arithmetic or a file with prompt / chosen /
rejected); a file whose first row has a boolean `label` column (TRL's unpaired format: prompt,
completion, label) is read as labelled completions, which only KTO accepts. Bad rows raise a
`DataError` naming file, row and field, or are skipped and counted (`data.on_bad_row`).

KTO's reference point needs mismatched (prompt, completion) pairs; `mismatched_sequences` fixes
them once per split (seeded), so their reference log-probs are cached with the others.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from posttrain.config import DataConfig, EvalConfig
from posttrain.data.examples import LoadedExamples, SFTExample, UnpairedExample, collect, load_examples
from posttrain.data.readers import DataError, iter_rows
from posttrain.data.split import hold_out
from posttrain.data.tokenize import (
    TokenizedExample, TokenizedPair, tokenize_preference, tokenize_prompt, tokenize_sft,
)
from posttrain.recipes.preference.pair_data import load_preference_data
from posttrain.recipes.sft_data import BUILTIN_ARITHMETIC, checked_eval_prompts

LABEL_FIELD = "label"  # TRL's name for the desirable (true) / undesirable (false) column


@dataclass
class PreferenceSplit:
    """Sequences plus the units that group them.

    sequences: every tokenised sequence (loss mask on response tokens).
    prompt_lengths: per sequence, where its response part starts.
    desirable: per sequence, True for a chosen / desirable response.
    units: per unit, the indices of its sequences: (chosen, rejected) or (labelled,).
    """

    sequences: list[TokenizedExample] = field(default_factory=list)
    prompt_lengths: list[int] = field(default_factory=list)
    desirable: list[bool] = field(default_factory=list)
    units: list[tuple[int, ...]] = field(default_factory=list)

    @classmethod
    def from_pairs(cls, pairs: list[TokenizedPair]) -> PreferenceSplit:
        split = cls()
        for pair in pairs:
            start = len(split.sequences)
            # The tokens both sequences really share (a template could merge tokens across the boundary).
            shared = next((i for i, (a, b) in enumerate(zip(pair.chosen.input_ids, pair.rejected.input_ids))
                           if a != b), min(len(pair.chosen), len(pair.rejected)))
            prompt_length = min(pair.prompt_length, shared)
            split.sequences += [pair.chosen, pair.rejected]
            split.prompt_lengths += [prompt_length, prompt_length]
            split.desirable += [True, False]
            split.units.append((start, start + 1))
        return split

    @classmethod
    def from_labelled(cls, examples: list[tuple[TokenizedExample, bool]]) -> PreferenceSplit:
        split = cls()
        for example, label in examples:
            split.units.append((len(split.sequences),))
            split.sequences.append(example)
            split.prompt_lengths.append(example.loss_mask.index(1))
            split.desirable.append(label)
        return split

    def __len__(self) -> int:
        return len(self.units)

    @property
    def paired(self) -> bool:
        return all(len(unit) == 2 for unit in self.units)

    def rows(self, unit_indices: list[int]) -> list[int]:
        """Sequence indices of these units: every unit's first sequence, then the second ones."""
        units = [self.units[i] for i in unit_indices]
        return [u[0] for u in units] + [u[1] for u in units if len(u) > 1]


def mismatched_sequences(split: PreferenceSplit, *, seed: int) -> list[TokenizedExample]:
    """For every sequence: its own prompt followed by the response in the same slot of another
    unit, for KTO's estimate of KL(π_θ ‖ π_ref) (Ethayarajh et al. 2024, arXiv 2402.01306).

    Partners follow a seeded cyclic shift over a random order of the units, so no unit meets
    itself and the pairing is fixed for the run (its reference log-probs can be cached).
    Token ids are spliced (prompt ids + response ids), as TRL's KTO does.
    """
    n = len(split.units)
    if n < 2:
        raise ValueError(f"KTO needs at least 2 examples to form mismatched pairs, got {n}")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    partner = {order[k]: order[(k + 1) % n] for k in range(n)}
    out: list[TokenizedExample | None] = [None] * len(split.sequences)
    for u, unit in enumerate(split.units):
        other = split.units[partner[u]]
        for slot, own in enumerate(unit):
            donor = other[slot % len(other)]
            p, q = split.prompt_lengths[own], split.prompt_lengths[donor]
            ids = split.sequences[own].input_ids[:p] + split.sequences[donor].input_ids[q:]
            mask = [0] * p + split.sequences[donor].loss_mask[q:]
            out[own] = TokenizedExample(ids, mask)
    return out  # type: ignore[return-value]


@dataclass
class DPOData:
    train: PreferenceSplit
    eval: PreferenceSplit
    # Rows {"prompt": ..., <other columns>} and their ids, for task accuracy under `eval.reward`.
    eval_prompts: list[dict] = field(default_factory=list)
    eval_prompt_ids: list[list[int]] = field(default_factory=list)
    skipped: int = 0


def load_dpo_data(cfg: DataConfig, tokenizer, *, eval_cfg: EvalConfig, unpaired_ok: bool, seed: int,
                  console=None) -> DPOData:
    """Pairs (any loss) or labelled completions (`unpaired_ok`, i.e. KTO), tokenised, plus prompts
    for accuracy checks (`eval.prompts`, else the built-in task's held-out problems).

    With unpaired training data the held-out file may hold either shape: pairs give KTO a
    held-out preference accuracy, labelled completions only its loss and rewards.
    """
    if unpaired_ok and cfg.train != BUILTIN_ARITHMETIC and _first_row_is_unpaired(cfg.train, cfg, cfg.split):
        data = _load_unpaired(cfg, tokenizer, seed=seed, console=console)
    else:
        pairs = load_preference_data(cfg, tokenizer, seed=seed, console=console)
        data = DPOData(PreferenceSplit.from_pairs(pairs.train), PreferenceSplit.from_pairs(pairs.eval),
                       pairs.eval_prompts, pairs.eval_prompt_ids, pairs.skipped)
        if data.eval_prompts and not eval_cfg.prompts:
            # The built-in task's held-out problems: every row has the same columns, so this
            # either passes or raises (a column no row has).
            checked_eval_prompts(data.eval_prompts, eval_cfg, cfg, BUILTIN_ARITHMETIC + "/test")
    if eval_cfg.prompts:
        loaded = load_examples(eval_cfg.prompts, "prompt", on_bad_row=cfg.on_bad_row, prompt_field=cfg.prompt_field)
        data.eval_prompts = checked_eval_prompts([{"prompt": ex.prompt, **ex.extras} for ex in loaded.examples],
                                                 eval_cfg, cfg, eval_cfg.prompts, [ex.row for ex in loaded.examples])
        data.eval_prompt_ids = [tokenize_prompt(row["prompt"], tokenizer) for row in data.eval_prompts]
        data.skipped += loaded.skipped
    return data


def _first_row_is_unpaired(source: str, cfg: DataConfig, split: str | None = None) -> bool:
    """True when the source's first readable row has a `label` column and no chosen column."""
    for item in iter_rows(source, split=split):
        if isinstance(item, DataError):
            continue
        return LABEL_FIELD in item.data and cfg.chosen_field not in item.data
    return False


def _load_unpaired(cfg: DataConfig, tokenizer, *, seed: int, console=None) -> DPOData:
    """Labelled training completions; held out: `data.eval` (labelled or paired) or a fraction of the training rows."""
    fields = {"prompt_field": cfg.prompt_field, "completion_field": cfg.completion_field,
              "label_field": LABEL_FIELD}

    def tokenize(example: UnpairedExample) -> tuple[TokenizedExample, bool]:
        sft = SFTExample(example.prompt, example.completion, example.source, example.row)
        return tokenize_sft(sft, tokenizer, cfg.max_length), example.label

    train = load_examples(cfg.train, "unpaired", on_bad_row=cfg.on_bad_row, split=cfg.split, limit=cfg.limit,
                          **fields)
    held_out, held_out_pairs = LoadedExamples([]), None
    if cfg.eval and not _first_row_is_unpaired(cfg.eval, cfg):
        held_out_pairs = _load_pairs(cfg.eval, cfg, tokenizer)
    elif cfg.eval:
        held_out = load_examples(cfg.eval, "unpaired", on_bad_row=cfg.on_bad_row, **fields)
    else:
        train.examples, held_out.examples = hold_out(train.examples, cfg.eval_fraction, seed,
                                                     name="data.eval_fraction")
    train_tok = collect(train.examples, tokenize, on_bad_row=cfg.on_bad_row)
    eval_tok = collect(held_out.examples, tokenize, on_bad_row=cfg.on_bad_row)
    parts = [train, held_out, train_tok, eval_tok] + (list(held_out_pairs) if held_out_pairs else [])
    if console is not None:
        for part in parts:
            if part.summary():
                console.print(f"[yellow]data: {part.summary()}[/yellow]")
        desirable = sum(label for _, label in train_tok.examples)
        held = (f"{len(held_out_pairs[1].examples)} held-out pairs" if held_out_pairs
                else f"{len(eval_tok.examples)} held-out labelled completions")
        console.print(f"data: {len(train_tok.examples)} training labelled completions ({desirable} desirable), {held}")
    eval_split = (PreferenceSplit.from_pairs(held_out_pairs[1].examples) if held_out_pairs
                  else PreferenceSplit.from_labelled(eval_tok.examples))
    return DPOData(PreferenceSplit.from_labelled(train_tok.examples), eval_split,
                   skipped=sum(part.skipped for part in parts))


def _load_pairs(source: str, cfg: DataConfig, tokenizer) -> tuple[LoadedExamples, LoadedExamples]:
    """Read and tokenise a file of pairs: (parsed, tokenised) passes, each with its skip count."""
    parsed = load_examples(source, "preference", on_bad_row=cfg.on_bad_row, prompt_field=cfg.prompt_field,
                           chosen_field=cfg.chosen_field, rejected_field=cfg.rejected_field)
    tokenized = collect(parsed.examples, lambda ex: tokenize_preference(ex, tokenizer, cfg.max_length),
                        on_bad_row=cfg.on_bad_row)
    return parsed, tokenized
