"""Data parallel without processes: global loss normalisers, the rank seed scheme, prompt
sharding by whole groups, step metrics merged over ranks, the config checks, the follower run.
(tests/integration/test_rl_distributed.py runs 2 real gloo ranks.)"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch.testing import assert_close

from posttrain.algorithms.aggregation import LossCounts, aggregate, loss_counts
from posttrain.config import ConfigError, load_config
from posttrain.recipes.prompt_data import PromptSet
from posttrain.recipes.rl.batch import TokenSequence
from posttrain.recipes.rl.config import RLConfig
from posttrain.recipes.rl.rollouts import ScoredRound, collect_rollouts, rollout_metrics
from posttrain.training.distributed import FollowerRun, Ranks

# Per-token losses of 3 sequences with 3, 1 and 2 valid tokens; rank 0 holds rows 0-1, rank 1 row 2.
LOSS = torch.tensor([[1.0, 2.0, 3.0], [4.0, 9.0, 9.0], [5.0, 6.0, 9.0]])
MASK = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0], [1.0, 1.0, 0.0]])
SHARDS = [slice(0, 2), slice(2, 3)]


def summed_over(masks):
    """What `Ranks.sum` returns on every rank: the element-wise sum of each rank's local counts."""
    local = [[c.rows, c.tokens, c.sequences] for c in map(loss_counts, masks)]
    total = [sum(column) for column in zip(*local)]

    def reduce(values):
        assert list(values) in local  # called with this rank's own counts
        return total

    return reduce


def test_global_counts_give_the_single_process_loss_split_over_two_ranks():
    """token-mean: one process (1+2+3+4+5+6)/6 = 3.5. Rank 0 adds (1+2+3+4)/6, rank 1 (5+6)/6:
    summed 21/6 = 3.5. With rank-local counts and DDP's averaging, (10/4 + 11/2)/2 = 4.0.
    seq-mean-token-mean: sequence means 2, 4, 5.5, one process 11.5/3; ranks (2+4)/3 + 5.5/3,
    the same; locally averaged ((2+4)/2 + 5.5)/2 = 4.25."""
    reduce = summed_over([MASK[s] for s in SHARDS])
    counts = [loss_counts(MASK[s], reduce) for s in SHARDS]
    assert counts[0] == counts[1] == LossCounts(rows=3, tokens=6.0, sequences=3.0)
    for mode, single, local_average in (("token-mean", 3.5, 4.0), ("seq-mean-token-mean", 11.5 / 3, 4.25)):
        assert_close(aggregate(LOSS, MASK, mode), torch.tensor(single))
        ranks = [aggregate(LOSS[s], MASK[s], mode, global_tokens=c.tokens, global_sequences=c.sequences)
                 for s, c in zip(SHARDS, counts)]
        assert_close(sum(ranks), torch.tensor(single))
        assert_close(sum(aggregate(LOSS[s], MASK[s], mode) for s in SHARDS) / 2, torch.tensor(local_average))


@pytest.mark.parametrize("mode", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"])
def test_summed_rank_gradients_over_micro_batches_equal_the_single_process_gradient(mode):
    """Loss (x·w)² per token; 6 sequences of lengths 6, 1, 3, 2, 5, 1 split 4 + 2 over two ranks,
    each in micro-batches of 2 (no_sync in between, one all-reduce SUM at the end). The sum of
    the ranks' accumulated gradients is the one-process gradient of the whole batch."""
    torch.manual_seed(0)
    x = torch.randn(6, 6, 3)
    mask = torch.zeros(6, 6)
    for row, length in enumerate([6, 1, 3, 2, 5, 1]):
        mask[row, :length] = 1
    w = torch.randn(3, requires_grad=True)
    constant = {"constant_normaliser": 6.0} if mode.endswith("norm") else {}
    (single,) = torch.autograd.grad(aggregate((x @ w) ** 2, mask, mode, **constant), w)
    shards = [slice(0, 4), slice(4, 6)]
    reduce = summed_over([mask[s] for s in shards])
    total = torch.zeros(3)
    for shard in shards:
        xs, ms = x[shard], mask[shard]
        c = loss_counts(ms, reduce)
        for start in range(0, len(ms), 2):
            rows = slice(start, start + 2)
            loss = aggregate((xs[rows] @ w) ** 2, ms[rows], mode, global_tokens=c.tokens,
                             global_sequences=c.sequences, **constant)
            total += torch.autograd.grad(loss, w)[0]
    assert_close(total, single)


def test_counts_of_an_empty_share_are_zero():
    assert loss_counts(torch.zeros(0, 0)) == LossCounts(0, 0.0, 0.0)
    assert loss_counts(torch.zeros(0)) == LossCounts(0, 0.0, 0.0)  # RolloutBatch.empty()'s 1-d mask
    assert loss_counts(MASK, lambda values: [v * 2 for v in values]) == LossCounts(6, 12.0, 6.0)


def test_the_single_process_is_rank_0_of_1_and_keeps_its_seeds():
    single = Ranks()
    assert single.is_main and not single.distributed and single.seed(12345) == 12345
    assert single.sum([1.5, 2]) == [1.5, 2.0] and single.gather("x") == ["x"] and single.broadcast(3) == 3
    model = torch.nn.Linear(2, 2)
    assert single.wrap(model) is model
    assert Ranks.current() == single  # no process group in this process


def test_rank_seeds_are_distinct_and_prompts_split_into_contiguous_blocks():
    seeds = {Ranks(rank, 3).seed(base) for base in range(50) for rank in range(3)}
    assert len(seeds) == 150
    prompts = list(range(8))
    blocks = [Ranks(rank, 4).shard(prompts) for rank in range(4)]
    assert blocks == [[0, 1], [2, 3], [4, 5], [6, 7]]
    with pytest.raises(ValueError, match="do not split evenly"):
        Ranks(0, 3).shard(prompts)


@dataclasses.dataclass(frozen=True)
class RankWithoutGroup(Ranks):
    """A rank of a run without a process group: `gather` keeps this rank's tally and returns it alone."""

    tallies: list = dataclasses.field(default_factory=list, compare=False)

    def gather(self, obj):
        self.tallies.append(obj)
        return [obj]


PROMPTS = PromptSet([{"prompt": str(i)} for i in range(8)], [[1, 10 + i] for i in range(8)])


def scripted_round(calls):
    """Sample s of prompt p: a one-token answer scoring (p + s) % 3 / 2, whatever the seed."""
    def generate_and_score(rows, prompt_ids, sampling):
        calls.append(([row["prompt"] for row in rows], sampling.seed))
        sequences, rewards, index = [], [], []
        for i, (row, ids) in enumerate(zip(rows, prompt_ids)):
            for s in range(sampling.n):
                sequences.append(TokenSequence(ids + [3 + s], [0] * len(ids) + [1], [0.0] * len(ids) + [-1.0]))
                rewards.append((int(row["prompt"]) + s) % 3 / 2)
                index.append(i)
        return ScoredRound(sequences, rewards, index, {"rewards/total/mean": sum(rewards) / len(rewards)})

    return generate_and_score


def test_each_rank_samples_its_block_of_whole_groups_and_the_step_metrics_are_the_union_s():
    """4 prompts × 2 samples over 2 ranks: rank r samples the r-th half of the prompts the single
    process samples, with seed = single seed × 2 + r; group ids are the single process's; the
    two ranks' tallies give the single process's metrics."""
    cfg = load_config(RLConfig, None, ["rollout.prompts_per_step=4", "rollout.samples_per_prompt=2",
                                       "micro_batch_size=4", "rollout.max_new_tokens=4"])
    algo = cfg.algorithm.resolve()
    calls: list = []
    single_batch, single = collect_rollouts(scripted_round(calls), PROMPTS, cfg, algo, 3, pad_id=0)
    (single_prompts, single_seed), = calls
    shares, tallies = [], []
    for rank in range(2):
        calls.clear()
        ranks = RankWithoutGroup(rank, 2)
        batch, _ = collect_rollouts(scripted_round(calls), PROMPTS, cfg, algo, 3, pad_id=0, ranks=ranks)
        (prompts, seed), = calls
        assert prompts == single_prompts[2 * rank: 2 * rank + 2] and seed == single_seed * 2 + rank
        shares.append(batch)
        tallies += ranks.tallies
    assert torch.cat([b.group_ids for b in shares]).tolist() == single_batch.group_ids.tolist()
    assert_close(torch.cat([b.rewards for b in shares]), single_batch.rewards)
    merged = rollout_metrics(tallies)
    assert merged.keys() == single.keys()
    for key, value in single.items():
        assert merged[key] == pytest.approx(value), key


@pytest.mark.parametrize("overrides,message", [
    (["rollout.prompts_per_step=3"], "multiple of the world size"),
    (["rollout.prompts_per_step=4", "rollout.samples_per_prompt=2", "micro_batch_size=8"],
     "each of the 2 ranks trains on 2 prompts"),
    (["algorithm.name=ppo", "rollout.samples_per_prompt=1", "rollout.prompts_per_step=4", "micro_batch_size=2"],
     "runs in one process for now"),
    (["rollout.engine=ray"], "rollout.engine=ray"),
])
def test_configs_that_two_ranks_cannot_run_fail_at_load(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(RLConfig, None, ["distributed.world_size=2", *overrides])


def test_a_torchrun_world_size_wins_and_must_agree_with_the_config(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match="multiple of the world size"):
        load_config(RLConfig, None, ["rollout.prompts_per_step=3"])  # the launcher's 2 ranks, not the config's 1
    with pytest.raises(ConfigError, match="torchrun"):
        load_config(RLConfig, None, ["distributed.world_size=4"])
    load_config(RLConfig, None, ["distributed.world_size=2"])
    with pytest.raises(ConfigError, match="world_size must be an int >= 1"):
        load_config(RLConfig, None, ["distributed.world_size=0"])


def test_a_follower_run_writes_and_prints_nothing(tmp_path):
    run = FollowerRun(tmp_path / "run", {"a": 1}, None)
    with run:
        run.log(1, {"x": 1.0})
        run.log_rollouts(1, [{"prompt": "p"}])
        run.write_summary({"x": 1})
        run.print("nothing")
        with run.progress(3, description="rl") as bar:
            bar.advance(postfix="x")
    assert not run.is_main and not (tmp_path / "run").exists()
    with pytest.raises(RuntimeError, match="only rank 0"):
        run.save_checkpoint(1)


# ------------------------------------------------------------------------------- strategy (FSDP2)


def test_the_strategy_is_ddp_or_fsdp_and_a_bad_one_names_the_key():
    assert load_config(RLConfig, None, []).distributed.strategy == "ddp"
    assert load_config(RLConfig, None, ["distributed.strategy=fsdp"]).distributed.strategy == "fsdp"
    with pytest.raises(ConfigError, match="distributed.strategy"):
        load_config(RLConfig, None, ["distributed.strategy=zero3"])


def test_fsdp_in_one_process_is_the_identity():
    """World size 1 shards nothing, whatever the strategy: wrap, full weights, joins, state."""
    ranks = Ranks(strategy="fsdp")
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    assert not ranks.sharded and ranks.wrap(model) is model
    with ranks.full_weights(model):
        pass
    assert ranks.joins(0) == 0 and ranks.joins(3) == 0
    assert ranks.full_state(model, optimizer) == (None, None)


def test_a_ddp_rank_joins_only_when_it_has_no_micro_batch():
    ranks = Ranks(rank=1, world_size=2)
    assert (ranks.joins(0), ranks.joins(1), ranks.joins(5)) == (1, 0, 0)


def test_optimizer_ids_name_each_parameter_once_in_state_dict_order():
    """A checkpoint's optimizer.pt keeps `optimizer.state_dict()`'s integer ids; a sharded run maps
    them to parameter names (a tied weight by its first name) through this order."""
    from posttrain.training.distributed import _optimizer_names

    model = torch.nn.Sequential(torch.nn.Embedding(4, 2), torch.nn.Linear(2, 4, bias=False))
    model[1].weight = model[0].weight  # tied
    extra = torch.nn.Linear(2, 2)
    model.append(extra)
    optimizer = torch.optim.AdamW([{"params": [extra.weight]}, {"params": [model[0].weight, extra.bias]}])
    assert _optimizer_names(model, optimizer) == ["2.weight", "0.weight", "2.bias"]
    ids = [i for group in optimizer.state_dict()["param_groups"] for i in group["params"]]
    assert ids == [0, 1, 2]
