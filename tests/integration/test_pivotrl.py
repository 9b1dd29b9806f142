"""`posttrain pivotrl` end to end on the untrained tiny model and a toy tool environment (seconds):
profiling with K samples per expert turn, the pivot filter, training on pivots only, held-out
episodes, profile reuse, re-profiling on saturation, and a killed run resuming to the same numbers."""

import json

import pytest

from posttrain.agents.tool_env import ToolEnvironment
from posttrain.config import ConfigError, load_config
from posttrain.envs.registry import EnvironmentSpec
from posttrain.recipes import pivotrl
from simulated_kill import killed_after_step

pytestmark = pytest.mark.integration

CODES = {name: str(100 + 7 * i) for i, name in enumerate(["ada", "bo", "cy", "di", "ed", "flo", "gus", "hal"])}


def lookup(name: str) -> str:
    """Look up a person's code.

    Args:
        name: the person's name
    """
    if name not in CODES:
        raise ValueError(f"no person {name!r}")
    return CODES[name]


def task_rows(source, split, seed):
    if source != "toy:codes":
        return None
    names = sorted(CODES)[:6] if split == "train" else sorted(CODES)[6:]
    return [{"prompt": [{"role": "user", "content": f"code of {n}?"}], "name": n, "answer": CODES[n]} for n in names]


def expert_rows(rows):
    out = []
    for row in rows:
        call = {"type": "function", "function": {"name": "lookup", "arguments": {"name": row["name"]}}}
        done = {"type": "function", "function": {"name": "answer", "arguments": {"answer": row["answer"]}}}
        out.append({"messages": [*row["prompt"], {"role": "assistant", "content": "", "tool_calls": [call]},
                                 {"role": "tool", "name": "lookup", "content": row["answer"]},
                                 {"role": "assistant", "content": "", "tool_calls": [done]}],
                    "tools": make_env_schemas(row), "name": row["name"],
                    "answer": row["answer"]})
    return out


def make_env(row):
    return ToolEnvironment(prompt=lambda r: r["prompt"], tools=lambda r: [lookup],
                           score=lambda r, answer, t: float(answer == r["answer"]))


def make_env_schemas(row):
    env = make_env(row)
    env.reset(row)
    return env.tool_schemas


def toy_spec(env_cfg):
    return EnvironmentSpec(make=make_env, rows=task_rows, expert_rows=expert_rows)


def exact_answer(prompt, completion, answer, **row):
    return float(completion.strip() == str(answer))


def mostly_right(prompt, completion, expert_action, candidate_id, **row):
    """A stand-in verifier with known statistics: candidate turn 2 ("answer" calls) is always
    right; turn 1 right on about half the samples (by text parity); so only turn-1 candidates are pivots."""
    if candidate_id.endswith(":3"):
        return 1.0
    return float(len(completion) % 2)


def overrides(tmp_path, name, *extra):
    return [
        "model.name_or_path=tiny", "model.device=cpu", f"run.output_dir={tmp_path}", f"run.name={name}",
        "run.report_to=[]", "run.save_every=2", "data.train=toy:codes", "data.max_length=400",
        "env.name=test_pivotrl:toy_spec", "env.max_turns=3", "eval.num_samples=2",
        "eval.reward=test_pivotrl:exact_answer", "pivot.reward=test_pivotrl:mostly_right",
        "pivot.samples_per_candidate=4", "rollout.max_new_tokens=8", "rollout.prompts_per_step=2",
        "rollout.samples_per_prompt=4", "micro_batch_size=8", "optim.lr=1e-3", "steps=4", *extra,
    ]


def logged(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_pivotrl_profiles_filters_and_trains_on_pivots_only(tmp_path):
    summary = pivotrl.train(load_config(pivotrl.PivotRLConfig, None, overrides(tmp_path, "pivot",
                                                                                "pivot.reprofile_at=null")))
    rows = logged(tmp_path / "pivot")
    first = next(r for r in rows if "pivots/candidates" in r)
    assert first["pivots/candidates"] == 12  # 6 expert trajectories × 2 model calls
    assert first["pivots/all_one_fraction"] == 0.5  # every "answer" turn scores 1 on all K samples
    assert 0 < first["pivots/kept"] <= 6 and first["pivots/profile_reused"] == 0.0
    steps = [r for r in rows if "reward/mean" in r]
    assert len(steps) == 4 and all(r["train/update_skipped"] == 0.0 for r in steps)
    assert all(r["pivots/rollout_turns"] == 8 for r in steps)  # 2 pivots × 4 samples, one turn each
    assert summary["candidates"] == 12 and summary["profile_rollout_turns"] == 12 * 4
    evals = [r for r in rows if "eval/accuracy_greedy" in r]
    assert evals and "eval/episodes_greedy/turns_mean" in evals[-1]
    profile = tmp_path / "pivot" / "profiles" / "profile-0.jsonl"
    assert len(profile.read_text().splitlines()) == 1 + 12

    # The same policy and candidates: a second run reuses the saved profile instead of sampling.
    again = pivotrl.train(load_config(pivotrl.PivotRLConfig, None, overrides(
        tmp_path, "again", "pivot.reprofile_at=null", f"pivot.profile_dir={profile.parent}", "steps=1")))
    assert again["profile_rollout_turns"] == 0
    assert next(r for r in logged(tmp_path / "again") if "pivots/candidates" in r)["pivots/profile_reused"] == 1.0


def test_saturated_pivots_are_re_profiled_with_the_current_policy(tmp_path):
    summary = pivotrl.train(load_config(pivotrl.PivotRLConfig, None, overrides(
        tmp_path, "re", "pivot.reprofile_at=0.01", "pivot.reprofile_window=2")))
    rows = logged(tmp_path / "re")
    indices = [r["pivots/profile_index"] for r in rows if "pivots/profile_index" in r]
    assert indices == [0.0, 1.0]  # steps 1-2 fill the window, step 3 re-profiles
    assert summary["profiles"] == 2 and summary["profile_rollout_turns"] == 2 * 12 * 4
    assert (tmp_path / "re" / "profiles" / "profile-1.jsonl").is_file()


def test_a_killed_pivotrl_run_resumes_to_the_same_numbers(tmp_path, monkeypatch):
    def numbers(name):
        return {r["step"]: (r["reward/mean"], r["train/loss"]) for r in logged(tmp_path / name) if "reward/mean" in r}

    pivotrl.train(load_config(pivotrl.PivotRLConfig, None, overrides(tmp_path, "straight")))
    with killed_after_step(monkeypatch, 3, "reward/mean"):
        pivotrl.train(load_config(pivotrl.PivotRLConfig, None, overrides(tmp_path, "killed")))
    pivotrl.train(load_config(pivotrl.PivotRLConfig, None, overrides(tmp_path, "killed", "run.resume=true")))
    expected, got = numbers("straight"), numbers("killed")
    assert sorted(got) == [1, 2, 3, 4]
    for step in expected:
        assert got[step] == pytest.approx(expected[step], rel=1e-5, abs=1e-6), step


def test_max_candidates_profiles_a_seeded_sample_of_the_expert_turns(tmp_path):
    summary = pivotrl.train(load_config(pivotrl.PivotRLConfig, None, overrides(
        tmp_path, "sampled", "pivot.reprofile_at=null", "pivot.max_candidates=5", "steps=1")))
    assert summary["candidates"] == 5 and summary["profile_rollout_turns"] == 5 * 4
    profiled = [json.loads(line)["candidate_id"] for line in
                (tmp_path / "sampled" / "profiles" / "profile-0.jsonl").read_text().splitlines()[1:]]
    order = [tuple(map(int, c.split(":"))) for c in profiled]
    assert order == sorted(order) and len(set(profiled)) == 5  # distinct, in expert order

    assert pivotrl.subsample(list(range(12)), 5, seed=3) == pivotrl.subsample(list(range(12)), 5, seed=3)
    assert pivotrl.subsample(list(range(12)), 5, seed=3) != pivotrl.subsample(list(range(12)), 5, seed=4)
    assert pivotrl.subsample(list(range(4)), 5, seed=3) == [0, 1, 2, 3]
    assert pivotrl.subsample(list(range(4)), None, seed=3) == [0, 1, 2, 3]
    with pytest.raises(ConfigError, match="pivot.max_candidates"):
        load_config(pivotrl.PivotRLConfig, None, overrides(tmp_path, "bad", "pivot.max_candidates=0"))
