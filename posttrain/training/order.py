"""The data order of every offline recipe and of RL prompt sampling: a pure function of the step."""

from __future__ import annotations

import torch


def step_indices(step: int, *, per_step: int, num_examples: int, seed: int) -> list[int]:
    """The example indices of an optimizer step: epoch e visits a permutation seeded by (seed, e).

    A pure function of the step, so resuming needs no sampler state beyond the step number.
    """
    permutations: dict[int, list[int]] = {}  # a step spans at most a few epochs: one permutation each
    indices = []
    for position in range(step * per_step, (step + 1) * per_step):
        epoch, offset = divmod(position, num_examples)
        if epoch not in permutations:
            generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
            permutations[epoch] = torch.randperm(num_examples, generator=generator).tolist()
        indices.append(permutations[epoch][offset])
    return indices
