"""`posttrain eval`'s sequential strategies: thinking budgets and revisions, as strategy rows.

    posttrain eval examples/eval_thinking.yaml thinking.budgets=[0,8,16,32] thinking.mode=force

Parallel strategies (pass@k, maj@k, best-of-N) spend tokens on more samples; sequential ones
spend them on a longer single line of thought. Both are measured in tokens per problem, so they
share eval.json's `strategies` and the plot's x axis:

* `thinking:` -- one row per budget B (strategy `thinking_cap` or `thinking_force`;
  posttrain/scaling/thinking.py): greedy (or `thinking.temperature`) thinking held to B tokens,
  then the answer, which alone is scored (the reward reads the text after the close delimiter).
* `revision:` -- one row per revision count t = 0..rounds (strategy `revision_oracle`;
  posttrain/scaling/revision.py): wrong answers get the verifier's verdict as feedback and are
  tried again. The verifier is an ORACLE here, so this curve is an upper bound on what feedback
  buys, not a strategy one can deploy (rows carry ``"oracle": true``).

Each row: accuracy with its bootstrap interval over prompts, ``tokens_per_problem`` (prompt +
everything after it: the figure parallel rows are drawn against), ``generated_tokens_per_problem``
(thinking + answer, or all attempts; delimiters, cues and the suppressed closes of budget forcing
included) and ``flops_per_problem`` (2 N per token, as for parallel rows). Every completion is kept
in `<out>/thinking.jsonl` / `<out>/revision.jsonl`, so a stopped evaluation resumes (batches
already there are not generated again) and the rows can be recomputed.
"""

from __future__ import annotations

import dataclasses
import json
import string
from pathlib import Path
from typing import Any, Callable, Hashable, Literal, Optional, Union

from posttrain.config import ConfigError, require

__all__ = ["RevisionConfig", "ThinkingConfig", "answer_reader", "feedback_text", "format_sequential_table",
           "run_sequential"]


@dataclasses.dataclass
class ThinkingConfig:
    """Thinking budgets (`thinking:` of `posttrain eval`)."""

    # Thinking tokens allowed; each budget is a row. 0 = no thinking (an empty think block).
    budgets: list[int] = dataclasses.field(default_factory=lambda: [0, 8, 16, 32, 64])
    # cap: think at most B tokens (the close is appended at B); force: exactly B (an early close is
    # cut off and `cue` appended; s1's budget forcing).
    mode: Literal["cap", "force"] = "cap"
    # The delimiters of the thinking segment, and the continuation cue of budget forcing. `open`
    # is appended to the prompt ("" when the chat template already opens the segment).
    open: str = "<think>"
    close: str = "</think>"
    cue: str = "Wait"
    max_answer_tokens: int = 16  # after the close
    temperature: float = 0.0  # 0 = greedy

    def validate(self) -> None:
        budgets = self.budgets
        require(bool(budgets) and all(b >= 0 for b in budgets) and len(set(budgets)) == len(budgets),
                f"thinking.budgets must be distinct ints >= 0, got {budgets}")
        require(bool(self.close), "thinking.close must not be empty: the end of thinking is where the answer starts")
        require(self.mode != "force" or bool(self.cue), "thinking.cue must not be empty with thinking.mode=force")
        require(self.max_answer_tokens >= 1, f"thinking.max_answer_tokens must be >= 1, got {self.max_answer_tokens}")
        require(self.temperature >= 0, f"thinking.temperature must be >= 0, got {self.temperature}")


@dataclasses.dataclass
class RevisionConfig:
    """Revisions with the verifier's feedback (`revision:` of `posttrain eval`)."""

    rounds: int = 2  # revisions after the first attempt, for the prompts still wrong
    # The feedback; it may name the model's own answer, `{answer}`, and nothing else (never the
    # right one). `no_answer_feedback` when the attempt has no answer.
    feedback: str = "Your answer {answer} is incorrect. Try again."
    no_answer_feedback: str = "Your reply has no final answer. Try again."
    # user: the feedback is a new user turn through the chat template; text: appended as it is
    # (for prompts without a chat template: include the separators you want).
    turn: Literal["user", "text"] = "user"
    max_new_tokens: Union[int, None] = None  # per attempt; null = the eval's max_new_tokens
    temperature: float = 0.0

    def validate(self) -> None:
        require(self.rounds >= 1, f"revision.rounds must be >= 1, got {self.rounds}")
        for name in ("feedback", "no_answer_feedback"):
            fields = {f for _, f, _, _ in string.Formatter().parse(getattr(self, name)) if f is not None}
            require(fields <= {"answer"}, f"revision.{name} may use only {{answer}} (the model's own answer), "
                                          f"got {sorted(fields - {'answer'})}")
        require(not {f for _, f, _, _ in string.Formatter().parse(self.no_answer_feedback) if f},
                "revision.no_answer_feedback has no answer to name: drop {answer}")
        require(self.max_new_tokens is None or self.max_new_tokens >= 1,
                f"revision.max_new_tokens must be >= 1 or null, got {self.max_new_tokens}")
        require(self.temperature >= 0, f"revision.temperature must be >= 0, got {self.temperature}")


def answer_reader(thinking: Optional[ThinkingConfig]) -> Callable[[str], str]:
    """What the reward reads of a completion: with `thinking`, the text after the close (the
    partial results of a scratchpad are not the answer); else all of it."""
    if thinking is None:
        return lambda text: text
    from posttrain.scaling.thinking import answer_part

    return lambda text: answer_part(text, thinking.open, thinking.close)


# -- the records files -----------------------------------------------------------------------------

def _settings(cfg: Any, section: str) -> dict:
    """What a records file was made with, flat (`thinking.max_answer_tokens`), so a refused resume
    names the very key. Budgets and mode are left out: records are keyed by strategy and budget,
    so adding a budget or a mode keeps the others."""
    values = dataclasses.asdict(cfg)
    settings = {key: values[key] for key in ("model", "data", "engine", "reward", "top_p", "max_new_tokens", "seed")}
    settings.update({f"{section}.{key}": value for key, value in values[section].items()
                     if key not in ("budgets", "mode")})
    if section == "revision":
        settings["answer_after"] = cfg.thinking.close if cfg.thinking is not None else None
    return settings


def _read_records(path: Path, settings: dict, overwrite: bool) -> dict[tuple, dict]:
    """(strategy key, prompt id) -> record of an earlier pass; refuses one made with other settings."""
    if overwrite and path.exists():
        path.unlink()
    if not path.exists() or path.stat().st_size == 0:
        path.write_text(json.dumps({"settings": settings}) + "\n", encoding="utf-8")
        return {}
    lines = path.read_text(encoding="utf-8").splitlines()
    saved = json.loads(lines[0]).get("settings", {})
    for key, value in settings.items():
        if saved.get(key) != value:
            raise ConfigError(f"{path} was written with {key}={saved.get(key)!r}, not {value!r}: set out= to a "
                              "new directory, or overwrite=true to start again")
    records = {}
    for number, line in enumerate(lines[1:], start=2):
        try:
            record = json.loads(line)
        except ValueError:
            if number == len(lines):  # cut short by a kill: its batch is generated again
                break
            raise ValueError(f"{path}, line {number}: not JSON") from None
        records[(record["key"], record["prompt_id"])] = record
    return records


def _append(path: Path, records: dict[tuple, dict], new: list[dict]) -> None:
    with path.open("a", encoding="utf-8") as f:
        for record in new:
            f.write(json.dumps(record) + "\n")
            records[(record["key"], record["prompt_id"])] = record


# -- running --------------------------------------------------------------------------------------

def run_sequential(cfg: Any, engine: Any, tokenizer: Any, rows: list[dict], prompt_ids: list[list[int]],
                   scorer: Any, extract: Callable[[str], Optional[Hashable]], out: Path, *,
                   flops_per_token: float) -> list[dict]:
    """The sequential rows `cfg.thinking` and `cfg.revision` ask for (none when neither is set)."""
    table: list[dict] = []
    judge = _Judge(scorer, rows, extract, answer_reader(cfg.thinking))
    if cfg.thinking is not None:
        table += _thinking_rows(cfg, engine, tokenizer, prompt_ids, judge, out, flops_per_token)
    if cfg.revision is not None:
        table += _revision_rows(cfg, engine, tokenizer, prompt_ids, judge, out, flops_per_token)
    return table


class _Judge:
    """Scores texts of given prompts through the eval's reward runner: (score, correct, extracted
    answer) each, what both strategies record."""

    def __init__(self, scorer: Any, rows: list[dict], extract: Callable, read: Callable[[str], str]) -> None:
        self.scorer, self.rows, self.extract, self.read = scorer, rows, extract, read

    def __call__(self, prompt_indices: list[int], texts: list[str], *, answers_only: bool = False):
        """`answers_only`: the texts are answers already (a thinking budget's answer phase)."""
        from posttrain.evaluation import score_report
        from posttrain.scaling.revision import Verdict
        from posttrain.scaling.estimators import Sample, is_correct

        answers = texts if answers_only else [self.read(text) for text in texts]
        scores = score_report(self.scorer, [self.rows[i] for i in prompt_indices], answers).total
        return [Verdict(is_correct(Sample(score=score)), _jsonable(self.extract(answer)), score)
                for score, answer in zip(scores, answers)]


def _batches(cfg: Any, n: int, done: Callable[[int], bool]):
    """(seed, prompt ids still to generate) per batch of `cfg.prompts_per_batch`; the seed is fixed by
    the batch's position, so a resumed run matches an uninterrupted one."""
    for first in range(0, n, cfg.prompts_per_batch):
        ids = [i for i in range(first, min(first + cfg.prompts_per_batch, n)) if not done(i)]
        if ids:
            yield cfg.seed + first, ids


def _thinking_rows(cfg, engine, tokenizer, prompt_ids, judge: _Judge, out: Path, flops_per_token: float) -> list[dict]:
    from posttrain.engines.base import SamplingParams
    from posttrain.scaling.thinking import ThinkingDelimiters, think_with_budget

    th = cfg.thinking
    path = out / "thinking.jsonl"
    records = _read_records(path, _settings(cfg, "thinking"), cfg.overwrite)
    delimiters = ThinkingDelimiters.from_tokenizer(tokenizer, th.open, th.close, th.cue)
    strategy = f"thinking_{th.mode}"
    table = []
    for budget in th.budgets:
        key = f"{strategy}@{budget}"
        for seed, ids in _batches(cfg, len(prompt_ids), lambda i: (key, i) in records):
            results = think_with_budget(
                engine, [prompt_ids[i] for i in ids], budget, mode=th.mode, delimiters=delimiters,
                sampling=SamplingParams(max_new_tokens=1, temperature=th.temperature, top_p=cfg.top_p, seed=seed),
                max_answer_tokens=th.max_answer_tokens)
            verdicts = judge(ids, [r.answer_text for r in results], answers_only=True)
            _append(path, records, [
                {"key": key, "prompt_id": i, "budget": budget, "text": tokenizer.decode(r.token_ids),
                 "answer": v.answer, "score": v.score, "correct": v.correct, "prompt_tokens": len(prompt_ids[i]),
                 "generated_tokens": r.generated_tokens, "thinking_tokens": r.thinking_tokens,
                 "answer_tokens": r.answer_tokens, "inserted_tokens": r.inserted_tokens,
                 "suppressed_tokens": r.suppressed_tokens, "cues": r.cues, "forced_close": r.forced_close,
                 "finish_reason": r.finish_reason}
                for i, r, v in zip(ids, results, verdicts)])
        mine = [records[(key, i)] for i in range(len(prompt_ids))]
        table.append(_row(cfg, strategy, mine, [float(r["correct"]) for r in mine],
                          [r["prompt_tokens"] + r["generated_tokens"] for r in mine],
                          [r["generated_tokens"] for r in mine], flops_per_token, budget=budget,
                          thinking_tokens_per_problem=_mean(r["thinking_tokens"] for r in mine)))
    return table


def _revision_rows(cfg, engine, tokenizer, prompt_ids, judge: _Judge, out: Path, flops_per_token: float) -> list[dict]:
    from posttrain.engines.base import SamplingParams
    from posttrain.scaling.revision import Attempt, RevisionTrace, revise, revision_curve

    rv = cfg.revision
    path = out / "revision.jsonl"
    records = _read_records(path, _settings(cfg, "revision"), cfg.overwrite)
    follow_up = _follow_up(rv, tokenizer)
    for seed, ids in _batches(cfg, len(prompt_ids), lambda i: ("revision", i) in records):
        traces = revise(engine, [prompt_ids[i] for i in ids], SamplingParams(
            max_new_tokens=rv.max_new_tokens or cfg.max_new_tokens, temperature=rv.temperature, top_p=cfg.top_p,
            seed=seed), rounds=rv.rounds, follow_up=follow_up,
            judge=lambda positions, completions: judge([ids[p] for p in positions], [c.text for c in completions]))
        _append(path, records, [{"key": "revision", "prompt_id": ids[t.prompt_index], "prompt_tokens": t.prompt_tokens,
                                 "attempts": [dataclasses.asdict(a) for a in t.attempts]} for t in traces])
    mine = [records[("revision", i)] for i in range(len(prompt_ids))]
    traces = [RevisionTrace(i, r["prompt_tokens"], [Attempt(**a) for a in r["attempts"]]) for i, r in enumerate(mine)]
    return [_row(cfg, "revision_oracle", mine, point["correct"], point["context"], point["generated"],
                 flops_per_token, revisions=t, oracle=True)
            for t, point in enumerate(revision_curve(traces, rv.rounds))]


def feedback_text(rv: RevisionConfig, answer: Optional[Hashable]) -> str:
    """The feedback on a wrong attempt: its own answer named, the right one never (the templates
    are given nothing else; RevisionConfig.validate refuses other fields)."""
    return rv.no_answer_feedback if answer is None else rv.feedback.format(answer=answer)


def _follow_up(rv: RevisionConfig, tokenizer: Any):
    """(wrong completion, its answer) -> (feedback, ids appended after the attempt)."""
    encoder = None
    if rv.turn == "user":
        from posttrain.agents.episodes import TemplateEncoder

        if not getattr(tokenizer, "chat_template", None):
            raise ConfigError("revision.turn=user needs a tokenizer with a chat template; use revision.turn=text")
        encoder = TemplateEncoder(tokenizer)

    def follow_up(completion, verdict) -> tuple[str, list[int]]:
        text = feedback_text(rv, verdict.answer)
        if encoder is None:
            return text, list(tokenizer(text, add_special_tokens=False)["input_ids"])
        # The template's glue after the attempt (minus the stop token it already holds), the
        # feedback as a user turn and the next assistant header, as ids.
        stop_text = tokenizer.decode(completion.token_ids[-1:]) if completion.finish_reason == "stop" else None
        return text, encoder.observation_ids([{"role": "user", "content": text}], None, stop_text)

    return follow_up


# -- rows and the table ---------------------------------------------------------------------------

def _row(cfg: Any, strategy: str, records: list[dict], correct: list[float], context: list[float],
         generated: list[float], flops_per_token: float, **extra: Any) -> dict:
    from posttrain.scaling import bootstrap_interval

    lo, hi = bootstrap_interval(correct, confidence=cfg.confidence, resamples=cfg.bootstrap_resamples, seed=cfg.seed)
    tokens = _mean(context)
    return {"strategy": strategy, "k": 1, **{k: v for k, v in extra.items() if not k.endswith("_per_problem")},
            "accuracy": sum(correct) / len(correct), "interval": [lo, hi], "tokens_per_problem": tokens,
            "generated_tokens_per_problem": _mean(generated),
            **{k: v for k, v in extra.items() if k.endswith("_per_problem")},
            "flops_per_problem": tokens * flops_per_token, "num_prompts": len(records)}


def format_sequential_table(table: list[dict]) -> str:
    lines = [f"{'strategy':<16}{'step':>7}{'accuracy':>10}   {'interval':<15}{'tokens/problem':>16}"
             f"{'generated':>11}"]
    for row in table:
        lo, hi = row["interval"]
        step = f"B={row['budget']}" if "budget" in row else f"r={row['revisions']}"
        lines.append(f"{row['strategy']:<16}{step:>7}{row['accuracy']:>10.3f}   [{lo:.3f}, {hi:.3f}]"
                     f"{row['tokens_per_problem']:>16.1f}{row['generated_tokens_per_problem']:>11.1f}")
    if any(row.get("oracle") for row in table):
        lines.append("revision: the verifier tells the model when it is wrong (an oracle): an upper bound")
    return "\n".join(lines)


def _mean(values) -> float:
    values = list(values)
    return sum(values) / len(values) if values else 0.0


def _jsonable(answer: Any) -> Any:
    return answer if answer is None or isinstance(answer, (str, int, float, bool)) else str(answer)
