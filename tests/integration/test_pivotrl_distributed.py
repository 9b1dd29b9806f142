"""Data-parallel `posttrain pivotrl` on 2 gloo ranks on the CPU against the same run in one process.

The toy environment and verifier of test_pivotrl.py; both runs sample with `rank_free_engine`
below, whose completions of a prompt do not depend on the rank sampling it (rl_ranks.py
explains `prompt_seeded_engine`), so the ranks' union of rollouts is the single process's. Rank
0 profiles alone and broadcasts the pivots; the re-profile (saturation at step 2, so step 3
profiles again) must happen at the same step on both ranks. Per-step losses and gradient norms
agree to rel 1e-5 (float32 summed in other orders, as in test_rl_distributed.py); rewards,
pivot counts and rollout turns exactly (measured: 1.2e-7 at most, over 3 steps).
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from posttrain.config import load_config
from posttrain.recipes import pivotrl
from test_rl_distributed import TIMEOUT_S, steps

# Starts processes of its own (training ranks): one xdist worker runs all such files (Makefile).
pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("processes")]

HERE = Path(__file__).parent

K = 3  # profiling samples per candidate: unlike G (4) or evaluation's 1, so the engine tells them apart

COMPARED = ("train/loss", "train/grad_norm", "entropy/mean", "train/clip_fraction", "train/ratio_mean")
EXACT = ("reward/mean", "response/length_mean", "groups/sampled", "train/update_skipped", "pivots/rollout_turns",
         "pivots/profile_turns_total", "compute/rollout/tokens", "compute/update/tokens")
PROFILE_EXACT = ("pivots/kept", "pivots/candidates", "pivots/candidate_mean_reward", "pivots/profile_index",
                 "pivots/profile_reused")


def rank_free_engine(model, tokenizer, *, precision=None):
    """`rl_ranks.prompt_seeded_engine`, which divides each round's seed by the world size (the
    rollout seeds are `Ranks.seed`s), with the profiling seed (rank 0's own, not a `Ranks.seed`)
    multiplied by it first, so that profiles are sampled as in one process too."""
    from rl_ranks import prompt_seeded_engine

    from posttrain.training.distributed import Ranks

    engine = prompt_seeded_engine(model, tokenizer, precision=precision)
    generate = engine.generate

    def rank_free(prompt_ids, sampling):
        if sampling.n == K:
            sampling = dataclasses.replace(sampling, seed=(sampling.seed or 0) * Ranks.current().world_size)
        return generate(prompt_ids, sampling)

    engine.generate = rank_free
    return engine


def overrides(tmp_path, name, *extra):
    """test_pivotrl's toy run: 12 candidates, 2 pivots × 4 samples a step in micro-batches of 4
    (one process: 2 of the union; 2 ranks: 1 each), two updates a batch, re-profiled at step 3; evaluation
    on one held-out task, greedy only (rank 0 evaluates alone: not compared)."""
    return [
        "model.name_or_path=tiny", "model.device=cpu", f"run.output_dir={tmp_path}", f"run.name={name}",
        "run.report_to=[]", "run.save_every=10", "data.train=toy:codes", "data.max_length=400",
        "env.name=test_pivotrl:toy_spec", "env.max_turns=3", "eval.num_samples=1", "eval.temperature=0",
        "eval.max_new_tokens=4", "eval.reward=test_pivotrl:exact_answer", "pivot.reward=test_pivotrl:mostly_right",
        f"pivot.samples_per_candidate={K}", "pivot.reprofile_at=0.01", "pivot.reprofile_window=2",
        "rollout.max_new_tokens=8", "rollout.prompts_per_step=2", "rollout.samples_per_prompt=4",
        "rollout.engine=test_pivotrl_distributed:rank_free_engine", "micro_batch_size=4", "updates_per_batch=2",
        "optim.lr=1e-3", "steps=3", *extra,
    ]


def run_ranks(args: list[str], timeout_s: float = TIMEOUT_S) -> str:
    """`posttrain pivotrl ARGS` in a new process session; killed with all its ranks past `timeout_s`."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.Popen([sys.executable, "-m", "posttrain.cli", "pivotrl", *args], env=env, cwd=HERE,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the launcher and the ranks it spawned
        out, _ = proc.communicate()
        pytest.fail(f"posttrain pivotrl did not finish within {timeout_s} s (a hung collective?):\n{out[-4000:]}")
    assert proc.returncode == 0, out[-6000:]
    return out


def test_two_gloo_ranks_train_on_the_single_process_pivots(tmp_path):
    one = pivotrl.train(load_config(pivotrl.PivotRLConfig, None, overrides(tmp_path, "one")))
    run_ranks(overrides(tmp_path, "two", "distributed.world_size=2"))
    expected, got = steps(tmp_path / "one"), steps(tmp_path / "two")
    assert sorted(got) == sorted(expected) == [1, 2, 3]
    assert [s for s in expected if "pivots/profile_index" in expected[s]] == [1, 3]  # profiled, then re-profiled
    for step in expected:
        assert expected[step]["train/grad_norm"] > 0
        for key in EXACT + (PROFILE_EXACT if "pivots/profile_index" in expected[step] else ()):
            assert got[step][key] == expected[step][key], (step, key)
        for key in COMPARED:
            assert got[step][key] == pytest.approx(expected[step][key], rel=1e-5, abs=1e-7), (step, key)
    summary = json.loads((tmp_path / "two" / "summary.json").read_text())
    for key in ("candidates", "profiles", "profile_rollout_turns", "profile_generated_tokens"):
        assert summary[key] == one[key], key
    # Rank 0 alone profiled and saved the profiles: the single process's candidates' rewards.
    for index in (0, 1):
        lines = [(tmp_path / run / "profiles" / f"profile-{index}.jsonl").read_text().splitlines()[1:]
                 for run in ("one", "two")]
        assert lines[0] == lines[1]
