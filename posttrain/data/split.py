"""The held-out split every recipe shares: a seeded fraction of the training items.

SFT, preference pairs (DPO, reward model), KTO's labelled completions and RL prompts all hold
out their evaluation items through `hold_out`, so a given file, fraction and seed give the same
split in every recipe.
"""

from __future__ import annotations

import random
from typing import Sequence, TypeVar

T = TypeVar("T")


def held_out_count(n: int, fraction: float, *, name: str = "the held-out fraction") -> int:
    """How many of `n` items `hold_out` holds out: ``max(1, int(n * fraction))`` when
    ``fraction > 0`` and there are at least 2 items (so a small file still gets one held-out
    item and keeps at least one for training), else 0."""
    if not 0 <= fraction < 1:
        raise ValueError(f"{name} must be in [0, 1), got {fraction}")
    if fraction == 0 or n < 2:
        return 0
    return max(1, int(n * fraction))


def hold_out(items: Sequence[T], fraction: float, seed: int, *,
             name: str = "the held-out fraction") -> tuple[list[T], list[T]]:
    """(train, held_out): the first ``held_out_count(len(items), fraction)`` items of a
    ``random.Random(seed)`` shuffle are held out, the rest (in shuffled order) train.

    When nothing is held out (fraction 0, or fewer than 2 items) the items come back unshuffled,
    in their original order, with an empty held-out list. `name` (e.g. "data.eval_fraction")
    names the fraction in the ValueError raised when it is not in [0, 1).
    """
    cut = held_out_count(len(items), fraction, name=name)
    if cut == 0:
        return list(items), []
    shuffled = list(items)
    random.Random(seed).shuffle(shuffled)
    return shuffled[cut:], shuffled[:cut]
