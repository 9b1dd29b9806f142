"""Data-parallel `posttrain rl` on 2 gloo ranks on the CPU against the same run in one process.

The comparison is exact up to float summation order because the rollouts are the same: both
runs sample with `rl_ranks:prompt_seeded_engine` (a prompt's completions depend on the weights,
the prompt and the step, not on the rank sampling it; rl_ranks.py explains), and the reward
(`rl_ranks:text_hash`) differs within every group, so every step has a real gradient. Then the
2-rank run trains on the union of its ranks' batches with global loss normalisers and summed
gradients, and must log the single-process run's per-step losses, gradient norms, KL and
entropy. Tolerance: rel 1e-5 (abs 1e-7 near 0). The two runs add the same float32 terms in
different orders (micro-batches of 4 rows of one rank vs of the union, per-rank partial sums
then an all-reduce, padding to each rank's own widest sequence), which moves float32 results
by ~1e-7 relative per step, and the weights they step carry it to later steps; a real
mistake (a rank-local normaliser, DDP's averaging instead of a sum, a lost micro-batch) moves
the loss and the gradient norm by tens of percent. Rewards and response lengths are compared
exactly: they show that the rollouts were the same.

Every multi-rank run goes through the `posttrain` command in its own process session, under a
timeout: a hung collective fails the test instead of hanging the suite.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file
from torch.testing import assert_close
from transformers import AutoModelForCausalLM

from posttrain.algorithms.aggregation import loss_counts
from posttrain.compute import ComputeLedger
from posttrain.config import load_config
from posttrain.models.build import resolve_model_path
from posttrain.models.reference import reference_model
from posttrain.recipes import rl
from posttrain.recipes.rl import grpo
from posttrain.recipes.rl.batch import RolloutBatch, TokenSequence, build_batch
from posttrain.training.distributed import Ranks
from posttrain.training.modes import train_mode

# Starts processes of its own (Ray workers or training ranks): one xdist worker runs all such files (Makefile).
pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("processes")]

HERE = Path(__file__).parent
# Seconds a 2-rank run of a few steps may take on a loaded 2-core machine (~30 s measured,
# most of it the two ranks and their reward workers importing torch).
TIMEOUT_S = 240

COMPARED = ("train/loss", "train/grad_norm", "kl/mean", "entropy/mean", "train/clip_fraction", "train/ratio_mean")
EXACT = ("reward/mean", "response/length_mean", "groups/sampled", "groups/kept", "train/update_skipped",
         # The compute ledger is the run's over every rank (each rank counts its share; the loop
         # merges them), so its token and FLOP counts are the single process's to the token.
         "compute/rollout/tokens", "compute/reference/tokens", "compute/update/tokens", "compute/eval/tokens",
         "compute/total/flops")


def overrides(tmp_path, name, *extra):
    """GRPO (seq-mean-token-mean, a KL term to the reference), 4 prompts × 4 samples per step in
    micro-batches of 4 (one process: 4 of the union; 2 ranks: 2 each of their 8), two updates per
    batch (old log-probs, ratios away from 1, clipping)."""
    return [
        "model.name_or_path=tiny", "model.device=cpu", f"run.output_dir={tmp_path}", f"run.name={name}",
        "run.report_to=[]", "run.save_every=2", "data.arithmetic.max_operand=9", "data.arithmetic.num_train=60",
        "data.arithmetic.num_eval=4", "data.max_length=32", "eval.num_samples=4", "eval.reward=arithmetic",
        "rollout.max_new_tokens=4", "rollout.prompts_per_step=4", "rollout.samples_per_prompt=4",
        "micro_batch_size=4", "updates_per_batch=2", "optim.lr=3e-3", "steps=4",
        "rollout.engine=rl_ranks:prompt_seeded_engine", "reward.functions=[rl_ranks:text_hash]", *extra,
    ]


def run_ranks(args: list[str], timeout_s: float = TIMEOUT_S) -> str:
    """`posttrain rl ARGS` in a new process session; killed with all its ranks past `timeout_s`."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.Popen([sys.executable, "-m", "posttrain.cli", "rl", *args], env=env, cwd=HERE,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the launcher and the ranks it spawned
        out, _ = proc.communicate()
        pytest.fail(f"posttrain rl did not finish within {timeout_s} s (a hung collective?):\n{out[-4000:]}")
    assert proc.returncode == 0, out[-6000:]
    return out


def steps(run_dir: Path) -> dict[int, dict]:
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r for r in lines if "reward/mean" in r}


def assert_same_steps(got: dict[int, dict], expected: dict[int, dict], which) -> None:
    for step in which:
        for key in EXACT:
            assert got[step][key] == expected[step][key], (step, key)
        for key in COMPARED:
            assert got[step][key] == pytest.approx(expected[step][key], rel=1e-5, abs=1e-7), (step, key)


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    """The 2-rank run (4 steps, a checkpoint at step 2), made once for the tests of this module."""
    out = tmp_path_factory.mktemp("two-ranks")
    run_ranks(overrides(out, "two", "distributed.world_size=2"))
    return out / "two"


def test_two_gloo_ranks_log_the_single_process_losses(tmp_path, two_ranks, monkeypatch):
    monkeypatch.syspath_prepend(str(HERE))
    one = rl.train(load_config(rl.RLConfig, None, overrides(tmp_path, "one")))
    expected, got = steps(tmp_path / "one"), steps(two_ranks)
    assert sorted(got) == sorted(expected) == [1, 2, 3, 4]
    assert all(expected[s]["train/grad_norm"] > 0 and expected[s]["train/clip_fraction"] >= 0 for s in expected)
    assert any(expected[s]["train/clip_fraction"] > 0 for s in expected)  # the second updates clip somewhere
    assert_same_steps(got, expected, [1, 2, 3, 4])
    # Rank 0 alone wrote the run: one line per logged step, the same rollouts.jsonl, one checkpoint.
    lines = (two_ranks / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == len((tmp_path / "one" / "metrics.jsonl").read_text().splitlines())
    assert (two_ranks / "rollouts.jsonl").read_text().count("\n") == (tmp_path / "one" / "rollouts.jsonl").read_text().count("\n")
    assert [p.name for p in (two_ranks / "checkpoints").iterdir()] == ["step-00000002"]
    summary = json.loads((two_ranks / "summary.json").read_text())
    assert summary["after/eval/num_prompts"] == one["after/eval/num_prompts"]
    # The final weights agree to 1% of one AdamW step (lr 3e-3): Adam scales each element's step
    # by its own gradient's size, so an element whose gradient is a near-cancelling sum can step
    # differently on float noise (measured: 2 of 64 elements of one norm weight, 7e-6 apart).
    weights = load_file(two_ranks / "model" / "model.safetensors")
    for key, value in load_file(Path(one["model_dir"]) / "model.safetensors").items():
        assert_close(weights[key], value, rtol=0, atol=3e-5)


def test_a_two_rank_run_resumes_from_its_checkpoint_to_the_same_steps(tmp_path, two_ranks):
    """A copy of the 2-rank run cut back to its step-2 checkpoint, resumed on 2 ranks: steps 3 and
    4 as the straight run logged them (every rank loads rank 0's checkpoint)."""
    resumed = tmp_path / "two"
    shutil.copytree(two_ranks, resumed)
    for name in ("model", "summary.json"):
        path = resumed / name
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    run_ranks(overrides(tmp_path, "two", "distributed.world_size=2", "run.resume=true"))
    got = steps(resumed)
    assert sorted(got) == [1, 2, 3, 4]
    assert_same_steps(got, steps(two_ranks), [3, 4])


# ----------------------------------------------------------------------------- a rank with nothing


def test_dapo_with_every_group_of_one_rank_filtered_finishes_and_trains_on_the_other(tmp_path):
    """Rank 1's rewards are all 0 (`rl_ranks:text_hash_on_rank_0`): DAPO drops every group it
    samples, in both of its rounds, so it enters each update with no sequence and joins the
    gradient all-reduce with a zero-weight backward. The run must finish (under the timeout)
    and train on rank 0's 2 groups: per step 2 kept, 2 + 2 × 2 sampled (rank 1 refilled once)."""
    run_ranks(overrides(tmp_path, "dapo", "distributed.world_size=2", "algorithm.name=dapo",
                        "algorithm.overlong_cache_fraction=0", "rollout.max_refill_rounds=1",
                        "reward.functions=[rl_ranks:text_hash_on_rank_0]", "steps=2", "updates_per_batch=1"))
    logged = steps(tmp_path / "dapo")
    assert sorted(logged) == [1, 2]
    for row in logged.values():
        assert row["groups/kept"] == 2 and row["groups/sampled"] == 6, row
        assert row["train/update_skipped"] == 0 and row["train/grad_norm"] > 0, row


def hand_batch():
    """4 groups × 2 samples of random tokens: prompts of 2-4 tokens, responses of 1-5 (so token
    and sequence means differ), rewards that differ within every group."""
    g = torch.Generator().manual_seed(0)
    sequences, rewards, groups = [], [], []
    for group in range(4):
        prompt = torch.randint(3, 1000, (2 + group % 3,), generator=g).tolist()
        for sample in range(2):
            n = 1 + (group + 2 * sample) % 5
            response = torch.randint(3, 1000, (n,), generator=g).tolist()
            sequences.append(TokenSequence(prompt + response, [0] * len(prompt) + [1] * n,
                                           [0.0] * len(prompt) + [-7.0] * n))
            rewards.append(float(sample) + 0.3 * group)
            groups.append(group)
    return build_batch(sequences, rewards, groups, pad_id=0)


class _SharedEngine:
    def shares_weights(self, model):
        return True


class _Run:
    def check_finite(self, step, metrics):
        pass


def update_once(model_dir: str, algorithm: str, batch, ranks: Ranks) -> tuple[dict, dict]:
    """One update of the tiny model on `batch` (this rank's share) as `grpo.rl_step` makes it
    (global counts, then `train_on_batch`), with SGD at lr 1 and no clipping, so the weights move
    by exactly minus the summed gradient. Returns the metrics and that weight change."""
    torch.manual_seed(0)
    cfg = load_config(rl.RLConfig, None, [f"algorithm.name={algorithm}", "rollout.prompts_per_step=4",
                                          "rollout.samples_per_prompt=2", "micro_batch_size=4",
                                          "optim.max_grad_norm=1e9"])
    algo = cfg.algorithm.resolve()
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    train_mode(model, dropout=False)
    reference = reference_model(model) if algo.kl_coef > 0 else None
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    counts = loss_counts(grpo.loss_mask(batch), ranks.sum)
    metrics = grpo.train_on_batch(model, reference, _SharedEngine(), optimizer, scheduler, batch, cfg, algo, _Run(),
                                  0, ComputeLedger(), 1, counts=counts, ranks=ranks, trainer=ranks.wrap(model))
    return metrics, {k: (v.detach() - before[k]) for k, v in model.named_parameters()}


SPLITS = {"rank 1 empty": [(0, 8), (8, 8)], "uneven (6 + 2)": [(0, 6), (6, 8)]}
ALGORITHMS = ("grpo", "dapo")  # seq-mean-token-mean with a KL term; token-mean


def _updates_on_a_rank(rank: int, store: str, model_dir: str, out: str) -> None:
    torch.distributed.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    try:
        ranks, batch, results = Ranks.current(), hand_batch(), {}
        for split, bounds in SPLITS.items():
            lo, hi = bounds[rank]
            share = batch.select(torch.arange(lo, hi)) if hi > lo else RolloutBatch.empty()
            for algorithm in ALGORITHMS:
                results[split, algorithm] = update_once(model_dir, algorithm, share, ranks)
        if rank == 0:
            torch.save(results, out)
    finally:
        torch.distributed.destroy_process_group()


def test_an_empty_rank_joins_the_update_and_the_gradient_is_the_single_process_one(tmp_path):
    """Rank 0 holds all 8 sequences (2 micro-batches), rank 1 none (a zero-weight backward); then
    6 + 2 (2 micro-batches against 1). Either way the summed gradient — the weight change of one
    SGD step at lr 1 — and the logged loss and gradient norm are the single process's on the whole
    batch. A rank-local normaliser or DDP's default averaging would be off by a factor (e.g. 2 for
    the averaging), far outside rel 1e-5; the weight changes are compared at rtol 1e-4 with an
    atol of 1e-6 × the largest gradient element (a near-cancelling element's relative error is larger)."""
    model_dir = resolve_model_path("tiny")
    expected = {algorithm: update_once(model_dir, algorithm, hand_batch(), Ranks()) for algorithm in ALGORITHMS}
    out = tmp_path / "rank0.pt"
    context = mp.start_processes(_updates_on_a_rank, args=(str(tmp_path / "store"), model_dir, str(out)), nprocs=2,
                                 join=False, start_method="spawn")
    deadline = time.monotonic() + TIMEOUT_S
    while not context.join(timeout=5):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail(f"the 2 ranks did not finish within {TIMEOUT_S} s: a collective waits on a rank")
    got = torch.load(out, weights_only=False)
    for (split, algorithm), (metrics, change) in got.items():
        want_metrics, want_change = expected[algorithm]
        for key in ("train/loss", "train/grad_norm", "entropy/mean", "train/ratio_mean") + (
                ("kl/mean",) if algorithm == "grpo" else ()):
            assert metrics[key] == pytest.approx(want_metrics[key], rel=1e-5), (split, algorithm, key)
        scale = max(float(v.abs().max()) for v in want_change.values())
        for key, value in want_change.items():
            assert_close(change[key], value, rtol=1e-4, atol=1e-6 * scale, msg=lambda m: f"{split} {algorithm} {key}: {m}")


def test_torchrun_ranks_run_the_same_steps_as_spawned_ones(tmp_path, two_ranks):
    """`torchrun --nproc-per-node 2 -m posttrain.cli rl ...`: the ranks join through env:// instead
    of posttrain's file store; everything after that is the same code, so the same steps."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]))
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    proc = subprocess.Popen([*torchrun, "-m", "posttrain.cli", "rl", *overrides(tmp_path, "two")], env=env, cwd=HERE,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"torchrun did not finish within {TIMEOUT_S} s:\n{out[-4000:]}")
    assert proc.returncode == 0, out[-6000:]
    assert out.count("resolved config") == 1  # rank 0 prints it
    assert_same_steps(steps(tmp_path / "two"), steps(two_ranks), [1, 2, 3, 4])
