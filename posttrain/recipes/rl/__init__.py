"""`posttrain rl`: online RL. `grpo.py` is the critic-free loop (GRPO, Dr. GRPO, DAPO, RLOO,
REINFORCE++, GSPO), `ppo.py` the loop with a critic; both collect rollouts through
`rollouts.py` into the batches of `batch.py`, with rewards from `rewards.py`. With
`distributed.world_size` > 1 (or under torchrun) the critic-free loop runs on every rank
(`training/distributed.py`)."""

from __future__ import annotations

from posttrain.recipes.rl.config import RLConfig


def train(cfg: RLConfig) -> dict:
    """Run RL as configured (the critic loop when the algorithm's advantage needs values)."""
    from posttrain.training.distributed import launch, world_size

    cfg.check_world_size(world_size(cfg.distributed))  # also checked at load; a config built in code may skip that
    if cfg.needs_critic():
        from posttrain.recipes.rl import ppo

        return ppo.train(cfg)
    from posttrain.recipes.rl import grpo

    return launch(grpo.train, cfg)
