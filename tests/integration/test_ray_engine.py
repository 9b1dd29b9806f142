"""RayEngine (`rollout.engine=ray`) on the offline tiny model: two HF-engine replicas in Ray actors.

One local Ray session (2 CPUs) and one 2-worker engine serve the whole module; each actor start
costs seconds, so the tests share them and restore the engine's weights when they change them.
"""

from __future__ import annotations

import copy
import json
from types import SimpleNamespace

import pytest
import torch
from torch.testing import assert_close
from transformers import AutoModelForCausalLM, AutoTokenizer

ray = pytest.importorskip("ray", reason="rollout.engine=ray needs Ray (pip install 'posttrain[ray]')")

from posttrain.config import load_config  # noqa: E402
from posttrain.data.tokenize import tokenize_prompt  # noqa: E402
from posttrain.engines import HFEngine, SamplingParams  # noqa: E402
from posttrain.engines.ray_engine import RayEngine, split_contiguous  # noqa: E402
from posttrain.models.tiny import build_tiny_model  # noqa: E402
from posttrain.recipes import rl  # noqa: E402
from posttrain.training.distributed import Ranks  # noqa: E402

# Starts processes of its own (Ray workers or training ranks): one xdist worker runs all such files (Makefile).
pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("processes")]


@pytest.fixture(scope="module", autouse=True)
def ray_session():
    """One local Ray for the module (an engine finding Ray running neither starts nor stops it)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, namespace="posttrain")
    yield
    ray.shutdown()
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = build_tiny_model(tmp_path_factory.mktemp("ray") / "tiny")
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    texts = ["Hello", "What is 12+34=", "3+4=", "Tom has 25 apples and gives away 3. How many are left?", "7*8="]
    prompts = [tokenize_prompt(text, tokenizer) for text in texts]
    # A policy "after an update": every weight moved, so greedy completions change.
    changed = copy.deepcopy(model)
    with torch.no_grad():
        for parameter in changed.parameters():
            parameter.add_(0.05 * torch.randn(parameter.shape, generator=torch.Generator().manual_seed(1)))
    return SimpleNamespace(model=model, changed=changed, tokenizer=tokenizer, prompts=prompts)


@pytest.fixture(scope="module")
def engine(tiny):
    engine = RayEngine(copy.deepcopy(tiny.model), tiny.tokenizer, workers=2, timeout_s=60)
    yield engine
    engine.close()


GREEDY = SamplingParams(max_new_tokens=8, temperature=0, n=2)


def assert_same(got, expected):
    assert [[c.prompt_index for c in group] for group in got] == [[c.prompt_index for c in group] for group in expected]
    assert [[c.token_ids for c in group] for group in got] == [[c.token_ids for c in group] for group in expected]
    for group, reference in zip(got, expected):
        for c, r in zip(group, reference):
            assert_close(torch.tensor(c.logprobs), torch.tensor(r.logprobs), rtol=0, atol=1e-5)
            assert (c.text, c.finish_reason) == (r.text, r.finish_reason)


def test_split_contiguous_covers_the_prompts_in_order_with_sizes_one_apart():
    assert split_contiguous(5, 2) == [(0, 3), (3, 5)]
    assert split_contiguous(2, 4) == [(0, 1), (1, 2)]
    assert split_contiguous(6, 3) == [(0, 2), (2, 4), (4, 6)]


def test_greedy_through_two_workers_equals_the_hf_engine(engine, tiny):
    expected = HFEngine(tiny.model, tiny.tokenizer).generate(tiny.prompts, GREEDY)
    got = engine.generate(tiny.prompts, GREEDY)
    assert_same(got, expected)
    assert engine.last_stats["workers"] == 2 and engine.last_stats["weight_version"] == engine.version
    assert engine.last_stats["nodes"] == 1 and engine.node_ids == [ray.get_runtime_context().get_node_id()] * 2
    assert engine.last_stats["generated_tokens"] == sum(len(c.token_ids) for g in got for c in g)
    assert not engine.shares_weights(tiny.model)


def test_each_worker_samples_whole_groups_of_a_contiguous_chunk_with_seed_plus_its_index(engine, tiny):
    """Sampled output = the HF engine run on chunk i alone with seed s + i: every sample of a prompt
    came from the one worker that held its chunk, and a rerun reproduces it."""
    sampling = SamplingParams(max_new_tokens=6, temperature=1.0, n=3, seed=11)
    got = engine.generate(tiny.prompts, sampling)
    hf = HFEngine(tiny.model, tiny.tokenizer)
    expected = []
    for i, (lo, hi) in enumerate(split_contiguous(len(tiny.prompts), 2)):
        chunk_sampling = SamplingParams(max_new_tokens=6, temperature=1.0, n=3, seed=11 + i)
        for group in hf.generate(tiny.prompts[lo:hi], chunk_sampling):
            for c in group:
                c.prompt_index += lo
            expected.append(group)
    assert_same(got, expected)
    assert [[c.token_ids for c in g] for g in engine.generate(tiny.prompts, sampling)] == \
        [[c.token_ids for c in g] for g in got]


def test_over_several_ranks_worker_i_adds_i_times_the_world_size_to_the_seed(engine, tiny, monkeypatch):
    """Rank r's round seed is base × N + r (`Ranks.seed`); its worker i samples with that + i × N,
    so no two workers of any rank share a seed. Shown with this engine posing as rank 0 of 2."""
    monkeypatch.setattr(engine, "ranks", Ranks(0, 2))
    sampling = SamplingParams(max_new_tokens=6, temperature=1.0, n=3, seed=11)
    got = engine.generate(tiny.prompts, sampling)
    hf, expected = HFEngine(tiny.model, tiny.tokenizer), []
    for i, (lo, hi) in enumerate(split_contiguous(len(tiny.prompts), 2)):
        for group in hf.generate(tiny.prompts[lo:hi], SamplingParams(max_new_tokens=6, temperature=1.0, n=3,
                                                                     seed=11 + 2 * i)):
            for c in group:
                c.prompt_index += lo
            expected.append(group)
    assert_same(got, expected)


def test_bad_worker_counts_and_worker_engines_fail_before_any_worker_starts(tiny, monkeypatch):
    with pytest.raises(ValueError, match="worker_engine must be 'hf' or an import path"):
        RayEngine(tiny.model, tiny.tokenizer, workers=1, worker_engine="ray")
    with pytest.raises(ValueError, match="rollout worker engine 'nope:missing'"):
        RayEngine(tiny.model, tiny.tokenizer, workers=1, worker_engine="nope:missing")
    monkeypatch.setattr(Ranks, "current", classmethod(lambda cls: cls(0, 2)))
    with pytest.raises(ValueError, match=r"rollout.workers=3\) must be a multiple of the world size \(2\)"):
        RayEngine(tiny.model, tiny.tokenizer, workers=3)


def test_load_weights_bumps_the_version_and_the_workers_sample_the_new_policy(engine, tiny):
    before = engine.generate(tiny.prompts, GREEDY)
    version = engine.version
    engine.load_weights(tiny.changed)
    assert engine.version == version + 1
    after = engine.generate(tiny.prompts, GREEDY)
    assert engine.last_stats["weight_version"] == version + 1
    assert [[c.token_ids for c in g] for g in after] != [[c.token_ids for c in g] for g in before]
    assert_same(after, HFEngine(tiny.changed, tiny.tokenizer).generate(tiny.prompts, GREEDY))
    engine.load_weights(tiny.model.state_dict())  # a state dict works too
    assert engine.version == version + 2
    assert_same(engine.generate(tiny.prompts, GREEDY), before)


def test_a_killed_worker_is_restarted_with_the_latest_weights_and_the_call_returns(engine, tiny):
    engine.load_weights(tiny.changed)
    ray.kill(engine._actors[0], no_restart=True)
    with pytest.warns(RuntimeWarning, match="worker 0 failed during generate"):
        got = engine.generate(tiny.prompts, GREEDY)
    assert engine.last_stats["restarts"] == 1
    assert_same(got, HFEngine(tiny.changed, tiny.tokenizer).generate(tiny.prompts, GREEDY))
    engine.load_weights(tiny.model)


def test_a_worker_that_times_out_twice_raises_a_clear_error(engine, tiny, monkeypatch):
    monkeypatch.setattr(engine, "timeout_s", 1e-3)
    with pytest.warns(RuntimeWarning, match="GetTimeoutError"), \
            pytest.raises(RuntimeError, match="worker 0 failed during generate.*again after a restart"):
        engine.generate(tiny.prompts, GREEDY)
    monkeypatch.undo()
    engine.generate(tiny.prompts, GREEDY)  # the replacement worker serves the next call


def test_grpo_runs_end_to_end_with_two_ray_workers(tmp_path, engine):
    engine.close()  # frees the module's 2 CPUs for the run's own 2 workers
    overrides = [
        "model.name_or_path=tiny", "model.device=cpu", f"run.output_dir={tmp_path}", "run.name=ray",
        "run.report_to=[]", "run.save_every=1000", "data.arithmetic.max_operand=9", "data.arithmetic.num_train=60",
        "data.arithmetic.num_eval=4", "data.max_length=32", "eval.num_samples=4", "eval.reward=arithmetic",
        "rollout.max_new_tokens=4", "rollout.prompts_per_step=4", "rollout.samples_per_prompt=2",
        "micro_batch_size=4", "optim.lr=1e-3", "steps=2",
        "rollout.engine=ray", "rollout.workers=2", "rollout.worker_timeout_s=60",
    ]
    summary = rl.train(load_config(rl.RLConfig, None, overrides))
    assert summary["rl_steps"] == 2
    rows = [json.loads(line) for line in (tmp_path / "ray" / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if "train/loss" in r]
    assert len(train) == 2
    # The workers sample with the weights the trainer has: their log-probs match its own.
    assert all(0 <= r["train/sampler_logprob_gap"] < 1e-4 for r in train), train
    assert ray.is_initialized()  # the engine used the running Ray and left it running
