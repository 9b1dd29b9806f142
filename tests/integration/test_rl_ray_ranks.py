"""Ray rollout workers under several training ranks, and on a (simulated) cluster of two nodes.

2 Ray workers under 2 gloo ranks against one process. Each rank's RayEngine owns one of the 2
workers and samples its shard of the prompts through it; rank 0 started the local Ray and rank 1
joined it at the address rank 0 posted in the ranks' store. For the rollouts to be the single
process's, the workers sample with `rl_ranks:prompt_seeded_engine`, which the one-process run
uses in process: a prompt's completions depend on the weights, the prompt and the step, not on
the rank or the process sampling it (rl_ranks.py explains). Rewards and response lengths are
then compared exactly, and the losses, gradient norms, KL, entropy, clip fraction and ratio at
test_rl_distributed.py's tolerance: rel 1e-5 (abs 1e-7 near 0). Beyond that test's float
reordering there is one float-sized difference: a Ray worker samples from a copy of the weights
(received bit-exact through the object store) and, not sharing the trainer's module, gives the
update its sampler log-probs as the old log-probs, where in process the trainer recomputes them.
Both are float32 passes of the same model on one thread, ~1e-7 apart
(train/sampler_logprob_gap), which moves the ratios by as much: measured, the compared figures
agree to 1.2e-6 relative at most. A stale worker (a weight push lost), a rank sampling another
rank's prompts or a lost worker shard changes rewards and lengths outright and the losses by
whole percent. The compute ledger's counts are the single process's too, except the reference
stage, which in process also holds the old log-probs' recomputation (NOT_COUNTED_ALIKE).

Two nodes: `ray.cluster_utils.Cluster` starts a head and a second node (one CPU each) on this
machine; with RAY_ADDRESS pointing at it, `rollout.workers=2` puts one worker on each node (each
takes a CPU), and the run finishes with finite losses and leaves the cluster running.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

ray = pytest.importorskip("ray", reason="rollout.engine=ray needs Ray (pip install 'posttrain[ray]')")

from ray.cluster_utils import Cluster  # noqa: E402
from test_rl_distributed import COMPARED, EXACT, overrides, run_ranks, steps  # noqa: E402

from posttrain.config import ConfigError, load_config  # noqa: E402
from posttrain.engines import factory  # noqa: E402
from posttrain.recipes import rl  # noqa: E402

# Starts processes of its own (Ray workers or training ranks): one xdist worker runs all such files (Makefile).
pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("processes")]

HERE = Path(__file__).parent
# What differs by design between a separate sampler and the in-process one: the in-process engine
# shares the trainer's module, so the trainer recomputes the old log-probs of a batch updated
# twice (counted in the ledger's "reference" stage); a Ray worker's sampler log-probs are them.
NOT_COUNTED_ALIKE = ("compute/reference/tokens", "compute/total/flops")


def test_on_two_ranks_the_ray_workers_must_split_evenly_over_them():
    ray_on_two = ["distributed.world_size=2", "rollout.engine=ray"]
    assert load_config(rl.RLConfig, None, [*ray_on_two, "rollout.workers=4"]).rollout.workers == 4
    with pytest.raises(ConfigError, match=r"rollout.workers \(3\) must be a multiple of the world size \(2\)"):
        load_config(rl.RLConfig, None, [*ray_on_two, "rollout.workers=3"])


def test_two_ray_workers_under_two_gloo_ranks_log_the_single_process_losses(tmp_path, monkeypatch):
    """3 steps of GRPO (2 updates per batch, a KL term) on 4 prompts × 4 samples: 2 ranks with one
    Ray worker each log the per-step losses of one process sampling in process."""
    short = ("steps=3", "run.save_every=1000")
    run_ranks(overrides(tmp_path, "ray-ranks", *short, "distributed.world_size=2", "rollout.workers=2",
                        "rollout.engine=rl_ranks:prompt_seeded_ray_engine", "rollout.worker_timeout_s=120"))
    monkeypatch.syspath_prepend(str(HERE))
    rl.train(load_config(rl.RLConfig, None, overrides(tmp_path, "one", *short)))
    expected, got = steps(tmp_path / "one"), steps(tmp_path / "ray-ranks")
    assert sorted(got) == sorted(expected) == [1, 2, 3]
    for step in (1, 2, 3):
        for key in EXACT:
            if key not in NOT_COUNTED_ALIKE:
                assert got[step][key] == expected[step][key], (step, key)
        for key in COMPARED:
            assert got[step][key] == pytest.approx(expected[step][key], rel=1e-5, abs=1e-7), (step, key)
    assert all(0 <= got[s]["train/sampler_logprob_gap"] < 1e-5 for s in got)  # the workers had the weights


@pytest.fixture
def two_nodes():
    """A head and a second Ray node on this machine, one CPU each; shut down after the test."""
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    try:
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        yield cluster
    finally:
        cluster.shutdown()


def test_a_run_on_a_two_node_ray_cluster_puts_a_worker_on_each_node(tmp_path, monkeypatch, two_nodes):
    monkeypatch.setenv("RAY_ADDRESS", two_nodes.address)
    engines = []

    def kept(model, tokenizer, *, precision=None, workers=1, timeout_s=300.0):  # `ray`, kept to read its nodes
        engines.append(factory._ray_engine(model, tokenizer, precision=precision, workers=workers, timeout_s=timeout_s))
        return engines[-1]

    monkeypatch.setitem(factory.ENGINES, "ray", kept)
    cfg = load_config(rl.RLConfig, None, [
        "model.name_or_path=tiny", "model.device=cpu", f"run.output_dir={tmp_path}", "run.name=two-nodes",
        "run.report_to=[]", "run.save_every=1000", "data.arithmetic.max_operand=9", "data.arithmetic.num_train=60",
        "data.arithmetic.num_eval=4", "data.max_length=32", "eval.num_samples=4", "eval.reward=arithmetic",
        "rollout.max_new_tokens=4", "rollout.prompts_per_step=4", "rollout.samples_per_prompt=2",
        "micro_batch_size=8", "steps=2", "rollout.engine=ray", "rollout.workers=2", "rollout.worker_timeout_s=120",
    ])
    summary = rl.train(cfg)
    assert summary["rl_steps"] == 2
    (engine,) = engines
    nodes = {two_nodes.head_node.node_id, *(node.node_id for node in two_nodes.worker_nodes)}
    assert len(nodes) == 2 and set(engine.node_ids) == nodes
    assert engine.last_stats["nodes"] == 2 and engine.last_stats["workers"] == 2
    rows = [json.loads(line) for line in (tmp_path / "two-nodes" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["train/loss"] for r in rows if "train/loss" in r]
    assert len(losses) == 2 and all(math.isfinite(x) for x in losses)
    assert not ray.is_initialized() and two_nodes.remaining_processes_alive()  # disconnected, cluster left up
