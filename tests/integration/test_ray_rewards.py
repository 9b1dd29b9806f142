"""RayRewardRunner (`reward.workers`): rewards scored in Ray actors, counted as one process counts them.

One local Ray (2 CPUs) serves the module; the test rewards live in ray_reward_fns.py, put on the
workers' PYTHONPATH. Each runner starts its own actors (about a second each), so the tests keep to
a few runners and tiny batches.
"""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

import pytest

ray = pytest.importorskip("ray", reason="reward.workers needs Ray (pip install 'posttrain[ray]')")

from posttrain.config import ConfigError, load_config  # noqa: E402
from posttrain.recipes import rl  # noqa: E402
from posttrain.rewards import resolve_reward  # noqa: E402
from posttrain.verifiers.combine import RewardError, RewardRunner  # noqa: E402
from posttrain.verifiers.ray_rewards import RayRewardRunner  # noqa: E402

# Starts processes of its own (Ray workers or training ranks): one xdist worker runs all such files (Makefile).
pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("processes"), pytest.mark.usefixtures("one_torch_thread")]

HERE = Path(__file__).parent
EXACT, FLAKY, FRAGILE = NAMES = ["ray_reward_fns:exact", "ray_reward_fns:flaky", "ray_reward_fns:fragile"]
WEIGHTS = {EXACT: 2.0, FLAKY: 0.5, FRAGILE: 1.0}


@pytest.fixture(scope="module", autouse=True)
def ray_session():
    """One local Ray for the module, its workers able to import ray_reward_fns (as this process is)."""
    sys.path.insert(0, str(HERE))
    path = os.pathsep.join(p for p in (str(HERE), os.environ.get("PYTHONPATH")) if p)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, namespace="posttrain",
             runtime_env={"env_vars": {"PYTHONPATH": path}})
    yield
    ray.shutdown()
    sys.path.remove(str(HERE))


@pytest.fixture(scope="module")
def remote():
    """The module's 2-worker runner of the three test rewards, 1 s per call (it keeps its warnings)."""
    warnings: list[str] = []
    runner = RayRewardRunner(NAMES, WEIGHTS, workers=2, timeout_s=1, warn=warnings.append)
    runner.warnings = warnings
    yield runner
    runner.close()


@pytest.fixture
def free_cpus(remote):
    """The module's 2 CPUs for a test's own workers: the module runner closed (tests using it come first)."""
    remote.close()


def batch(completions, **columns):
    rows = [{"answer": "4", **columns} for _ in completions]
    return [f"q{i}" for i in range(len(completions))], list(completions), rows


def counts(stats):
    return {name: (s.calls, s.raised, s.timed_out, s.invalid, s.none) for name, s in stats.items()}


def test_two_workers_score_and_count_a_mixed_batch_as_one_process(remote):
    """Chunks [0:3] and [3:6]: a good item, one that raises, a NaN, a hang (timeout 1 s), None, a good one."""
    prompts, completions, rows = batch(["4", "raise", "nan", "hang", "none", "4"])
    with RewardRunner({n: resolve_reward(n) for n in NAMES}, WEIGHTS, timeout_s=1) as local:
        expected = local(prompts, completions, rows)
    got = remote(prompts, completions, rows)
    assert remote.deadline_s(3) == 3 * 3 * 1 + 60
    assert got.total == expected.total == [3.5, 1.0, 1.0, 1.0, None, 3.5]
    assert got.per_reward == expected.per_reward
    assert counts(got.stats) == counts(expected.stats) == {EXACT: (6, 0, 0, 0, 0), FLAKY: (6, 1, 1, 1, 1),
                                                           FRAGILE: (6, 0, 0, 0, 0)}
    assert got.metrics() == expected.metrics()
    assert counts(remote.totals) == counts(local.totals)
    assert "ValueError: flaky was asked to raise" in got.stats[FLAKY].first_error
    assert remote.summary() == local.summary()
    assert len(remote.warnings) == 1 and "failed on 1 raised, 1 timed out, 1 invalid" in remote.warnings[0]
    assert remote(prompts[:1], completions[:1], rows[:1]).total == [3.5]  # fewer items than workers
    assert remote([], [], []).total == []


def test_a_worker_that_exits_is_restarted_and_its_chunk_scored(remote, tmp_path):
    prompts, completions, rows = batch(["4", "4", "4", "4"])
    for row in rows[2:]:  # worker 1's chunk: its first try exits the actor
        row.update(fault="exit_once", marker=str(tmp_path / "exited"))
    before = remote.restarts
    with pytest.warns(RuntimeWarning, match=r"(?s)reward worker 1 failed .*ActorDiedError.*restarting it"):
        report = remote(prompts, completions, rows)
    assert report.total == [3.5] * 4 and report.failed == 0
    assert remote.restarts == before + 1 and "reward workers restarted" in remote.summary()
    assert (tmp_path / "exited").exists()
    assert remote(prompts, completions, rows).total == [3.5] * 4  # the replacement serves the next batch


@pytest.mark.parametrize("fault, error, deadline", [("exit", "ActorDiedError", "63"),  # 3 × 1 s + 60 s
                                                     ("stall", "GetTimeoutError", "1")])
def test_a_worker_that_fails_twice_raises_a_clear_error(remote, monkeypatch, fault, error, deadline):
    prompts, completions, rows = batch(["4", "4"])
    rows[0]["fault"] = fault
    if fault == "stall":  # a deadline of 1 s for the 1-item chunk: 3 functions × 0.2 s + 0.4 s
        monkeypatch.setattr(remote, "margin_s", 0.4)
        monkeypatch.setattr(remote, "timeout_s", 0.2)
    with pytest.warns(RuntimeWarning, match=f"(?s)reward worker 0 failed.*{error}"), \
            pytest.raises(RuntimeError, match=f"(?s)reward worker 0 failed on a chunk of 1 items .*{error}.* "
                                              f"and again after a restart .*{error}.*deadline is {deadline} s"):
        remote(prompts, completions, rows)
    monkeypatch.undo()
    assert remote(prompts, completions, [{"answer": "4"}] * 2).total == [3.5, 3.5]  # a fresh worker 0


def test_reward_workers_must_be_an_int_of_at_least_zero():
    assert load_config(rl.RLConfig, None, []).reward.workers == 0
    assert load_config(rl.RLConfig, None, ["reward.workers=2"]).reward.workers == 2
    for bad in ("-1", "1.5", "true"):
        with pytest.raises(ConfigError, match="reward.workers"):
            load_config(rl.RLConfig, None, [f"reward.workers={bad}"])


def test_grpo_runs_end_to_end_with_two_reward_workers(tmp_path, free_cpus):
    overrides = [
        "model.name_or_path=tiny", "model.device=cpu", f"run.output_dir={tmp_path}", "run.name=ray-rewards",
        "run.report_to=[]", "run.save_every=1000", "data.arithmetic.max_operand=9", "data.arithmetic.num_train=60",
        "data.arithmetic.num_eval=4", "data.max_length=32", "eval.num_samples=4", "eval.reward=arithmetic",
        "rollout.max_new_tokens=4", "rollout.prompts_per_step=4", "rollout.samples_per_prompt=2",
        "micro_batch_size=8", "optim.lr=1e-3", "steps=2", "reward.workers=2",
    ]
    summary = rl.train(load_config(rl.RLConfig, None, overrides))
    assert summary["rl_steps"] == 2
    rows = [json.loads(line) for line in (tmp_path / "ray-rewards" / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if "train/loss" in r]
    assert len(train) == 2
    assert all(math.isfinite(r["reward/mean"]) and r["rewards/arithmetic/raised"] == 0 for r in train), train
    assert ray.is_initialized()  # the runner used the running Ray and left it running


def test_on_error_raise_raises_the_reward_error_of_one_process(free_cpus):
    prompts, completions, rows = batch(["4", "raise"])
    with RewardRunner({FLAKY: resolve_reward(FLAKY)}, on_error="raise", timeout_s=5) as local, \
            pytest.raises(RewardError) as expected:
        local(prompts, completions, rows)
    with RayRewardRunner([FLAKY], workers=1, on_error="raise", timeout_s=5) as one_worker, \
            pytest.raises(RewardError) as got:
        one_worker(prompts, completions, rows)
    assert type(got.value) is RewardError
    assert str(got.value) == str(expected.value)
    assert "failed (error)" in str(got.value) and "ValueError: flaky was asked to raise" in str(got.value)
