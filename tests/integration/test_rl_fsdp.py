"""`posttrain rl` with `distributed.strategy=fsdp` (FSDP2) on 2 gloo ranks against one process.

The same set-up as test_rl_distributed.py (its helpers, the prompt-seeded engine, the same
tolerance, rel 1e-5): with every decoder layer and the root sharded, the ranks' losses divide by
the step's global counts and FSDP2's reduce-scatter sums (no average, see
`training.distributed._shard`), so the per-step losses, gradient norms (clipping over DTensor
gradients: the global norm), KL and entropy must be the single process's. The ranks generate
under `Ranks.full_weights` (unsharded, so their different numbers of forwards gather nothing);
the reference model is a plain copy made before sharding. The checkpoint and the final model
are gathered to rank 0 in the DDP / single-process format, so the model loads with
`from_pretrained` and a 2-rank FSDP run resumes from its checkpoint to the same steps.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from safetensors.torch import load_file
from torch.testing import assert_close
from transformers import AutoModelForCausalLM

from posttrain.config import load_config
from posttrain.recipes import rl
from test_rl_distributed import HERE, assert_same_steps, overrides, run_ranks, steps

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("processes")]

FSDP = ("distributed.world_size=2", "distributed.strategy=fsdp")


@pytest.fixture(scope="module")
def fsdp_ranks(tmp_path_factory):
    """The 2-rank FSDP run (4 steps, a checkpoint at step 2), made once for this module."""
    out = tmp_path_factory.mktemp("fsdp-ranks")
    run_ranks(overrides(out, "fsdp", *FSDP))
    return out / "fsdp"


def test_two_fsdp_gloo_ranks_log_the_single_process_losses_and_save_an_hf_model(tmp_path, fsdp_ranks, monkeypatch):
    monkeypatch.syspath_prepend(str(HERE))
    one = rl.train(load_config(rl.RLConfig, None, overrides(tmp_path, "one")))
    expected, got = steps(tmp_path / "one"), steps(fsdp_ranks)
    assert sorted(got) == sorted(expected) == [1, 2, 3, 4]
    assert any(expected[s]["train/clip_fraction"] > 0 for s in expected)
    assert_same_steps(got, expected, [1, 2, 3, 4])
    assert [p.name for p in (fsdp_ranks / "checkpoints").iterdir()] == ["step-00000002"]
    # The final model is a whole HF model (gathered, not shards), as the single process's to
    # float noise (test_rl_distributed.py explains the 3e-5).
    weights = load_file(fsdp_ranks / "model" / "model.safetensors")
    for key, value in load_file(Path(one["model_dir"]) / "model.safetensors").items():
        assert_close(weights[key], value, rtol=0, atol=3e-5)
    loaded = AutoModelForCausalLM.from_pretrained(fsdp_ranks / "model")
    assert_close(loaded.state_dict()["model.embed_tokens.weight"], weights["model.embed_tokens.weight"])


def test_a_two_rank_fsdp_run_resumes_from_its_checkpoint_to_the_same_steps(tmp_path, fsdp_ranks):
    """Every rank loads the gathered step-2 checkpoint (weights and AdamW state) into its shards;
    steps 3 and 4 are then the straight run's."""
    resumed = tmp_path / "fsdp"
    shutil.copytree(fsdp_ranks, resumed)
    for name in ("model", "summary.json"):
        path = resumed / name
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    run_ranks(overrides(tmp_path, "fsdp", *FSDP, "run.resume=true"))
    got = steps(resumed)
    assert sorted(got) == [1, 2, 3, 4]
    assert_same_steps(got, steps(fsdp_ranks), [3, 4])


def test_fsdp_with_every_group_of_one_rank_filtered_finishes_and_trains_on_the_other(tmp_path):
    """Rank 1 keeps no group (DAPO, `rl_ranks:text_hash_on_rank_0`): it runs as many zero-weight
    micro-batches as rank 0 runs real ones (`Ranks.joins`), so FSDP's per-layer gathers pair up."""
    run_ranks(overrides(tmp_path, "dapo", *FSDP, "algorithm.name=dapo", "algorithm.overlong_cache_fraction=0",
                        "rollout.max_refill_rounds=1", "reward.functions=[rl_ranks:text_hash_on_rank_0]",
                        "steps=2", "updates_per_batch=1", "micro_batch_size=2"))
    logged = steps(tmp_path / "dapo")
    assert sorted(logged) == [1, 2]
    for row in logged.values():
        assert row["groups/kept"] == 2 and row["groups/sampled"] == 6, row
        assert row["train/update_skipped"] == 0 and row["train/grad_norm"] > 0, row
