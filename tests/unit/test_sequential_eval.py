"""`posttrain eval` with `thinking:` and `revision:` (posttrain/recipes/sequential_eval.py): config
checks that name the field, and a whole run with a scripted thinker on the tiny tokenizer."""

import json
import re

import pytest

from posttrain.config import ConfigError, load_config
from posttrain.engines.base import Completion
from scripted_policy import ScriptedEngineBase
from posttrain.recipes.scaling_eval import ScalingEvalConfig, run_eval

CALLS = []


class ScriptedThinker(ScriptedEngineBase):
    """Reads "a+b=" from the prompt. Inside a think block it writes "a+b=c</think>"; after the
    block it answers a+b when the block holds that whole line, else a+b+1. Without a think block
    (plain answers, revisions) it answers a+b+1 until its context says "incorrect", then a+b.
    It honours max_new_tokens, EOS and stop_sequences."""

    def __init__(self, model, tokenizer):
        self.tok = tokenizer

    def ids(self, text):
        return self.tok(text, add_special_tokens=False)["input_ids"]

    def generate(self, prompt_ids, sampling):
        CALLS.append(len(prompt_ids))
        out = []
        for i, ids in enumerate(prompt_ids):
            text = self.tok.decode(ids)
            a, b = map(int, re.search(r"(\d+)\+(\d+)=", text).groups())
            reply = text.split("assistant\n")[-1]
            if "<think>" in reply and "</think>" not in reply:
                thought = reply.split("<think>")[-1]
                target = self.ids(f"{a}+{b}={a + b}</think>")[len(self.ids(thought)):]
            elif "<think>" in reply:
                whole = f"{a}+{b}={a + b}" in reply.split("<think>")[-1].split("</think>")[0]
                target = self.ids(str(a + b if whole else a + b + 1)) + [self.tok.eos_token_id]
            else:
                target = self.ids(str(a + b if "incorrect" in text else a + b + 1)) + [self.tok.eos_token_id]
            new, reason = [], "length"
            for token in target[: sampling.max_new_tokens]:
                new.append(token)
                if token == self.tok.eos_token_id or any(new[-len(s):] == s for s in sampling.stop_sequences or []):
                    reason = "stop"
                    break
            shown = new[:-1] if new and new[-1] == self.tok.eos_token_id else new
            out.append([Completion(i, new, [0.0] * len(new), self.tok.decode(shown), reason)])
        return out


def config(tmp_path, *overrides):
    return load_config(ScalingEvalConfig, None, [
        f"out={tmp_path / 'eval'}", "engine=test_sequential_eval:ScriptedThinker", "samples=1", "ks=[1]",
        "temperature=0", "data.arithmetic.num_train=4", "data.arithmetic.num_eval=4", "prompts_per_batch=2",
        "bootstrap_resamples=50", "thinking.budgets=[0,2,20]", "thinking.max_answer_tokens=4", "revision.rounds=1",
        *overrides])


def test_thinking_budgets_and_revisions_are_strategy_rows(tmp_path):
    CALLS.clear()
    result = run_eval(config(tmp_path))
    rows = {(r["strategy"], r.get("budget", r.get("revisions"))): r for r in result["strategies"]}
    assert rows[("greedy", None)]["accuracy"] == 0.0  # a plain answer is a+b+1
    assert [rows[("thinking_cap", b)]["accuracy"] for b in (0, 2, 20)] == [0.0, 0.0, 1.0]
    assert [rows[("revision_oracle", t)]["accuracy"] for t in (0, 1)] == [0.0, 1.0]
    assert rows[("revision_oracle", 1)]["oracle"] is True
    tokens = [rows[("thinking_cap", b)]["generated_tokens_per_problem"] for b in (0, 2, 20)]
    assert tokens[0] < tokens[1] < tokens[2]
    # budget 0: the open and close delimiters (5 ids each for the tiny tokenizer) + a 1-3 digit answer + EOS
    assert 12 <= tokens[0] <= 14
    for row in result["strategies"]:
        assert row["flops_per_problem"] > 0 and row["tokens_per_problem"] > row.get("generated_tokens_per_problem", 0)
    assert rows[("revision_oracle", 1)]["tokens_per_problem"] > rows[("revision_oracle", 0)]["tokens_per_problem"]

    thinking = [json.loads(line) for line in (tmp_path / "eval" / "thinking.jsonl").read_text().splitlines()[1:]]
    assert {r["budget"] for r in thinking} == {0, 2, 20} and len(thinking) == 12
    assert all(r["thinking_tokens"] <= r["budget"] for r in thinking)
    assert all(r["forced_close"] for r in thinking if r["budget"] == 2)
    revision = [json.loads(line) for line in (tmp_path / "eval" / "revision.jsonl").read_text().splitlines()[1:]]
    for record in revision:
        first, second = record["attempts"]
        assert first["feedback"] == f"Your answer {first['answer']} is incorrect. Try again."
        assert not first["correct"] and second["correct"] and second["feedback"] == ""

    # Everything is on record: a second run generates nothing and gives the same rows.
    CALLS.clear()
    again = run_eval(config(tmp_path))
    assert CALLS == [] and again["strategies"] == result["strategies"]


def test_adding_a_budget_keeps_the_others_and_other_settings_are_refused(tmp_path):
    run_eval(config(tmp_path))
    CALLS.clear()
    run_eval(config(tmp_path, "thinking.budgets=[0,2,20,4]"))
    assert CALLS == [2, 2, 2, 2]  # budget 4 only: a thinking and an answer call per batch of two
    with pytest.raises(ConfigError, match=r"thinking\.max_answer_tokens=4, not 5"):
        run_eval(config(tmp_path, "thinking.max_answer_tokens=5"))


@pytest.mark.parametrize(("override", "field"), [
    ("thinking.budgets=[-1,4]", "thinking.budgets"),
    ("thinking.budgets=[4,4]", "thinking.budgets"),
    ("thinking.mode=slow", "thinking.mode"),
    ("thinking.close=''", "thinking.close"),
    ("thinking.max_answer_tokens=0", "thinking.max_answer_tokens"),
    ("thinking.budget=[4]", "thinking.budget"),
    ("revision.rounds=0", "revision.rounds"),
    ("revision.feedback='The answer is {gold}.'", "revision.feedback"),
    ("revision.no_answer_feedback='You said {answer}.'", "revision.no_answer_feedback"),
    ("revision.turn=assistant", "revision.turn"),
    ("revision.max_new_tokens=0", "revision.max_new_tokens"),
])
def test_bad_sequential_settings_name_the_field(tmp_path, override, field):
    with pytest.raises(ConfigError, match=re.escape(field)):
        config(tmp_path, override)


def test_force_needs_a_cue(tmp_path):
    with pytest.raises(ConfigError, match=r"thinking\.cue"):
        config(tmp_path, "thinking.mode=force", "thinking.cue=''")
