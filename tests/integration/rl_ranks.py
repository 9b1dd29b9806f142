"""What the data-parallel RL tests plug in by import path (`rl_ranks:...`), so that the spawned
ranks and their reward workers can import it. Nothing heavy is imported at the top: every
reward worker process imports this module.

Why a special engine: the ranks sample with seeds that include the rank (`Ranks.seed`), so the
default engine's union of rollouts over 2 ranks differs from one process's. `prompt_seeded_engine`
samples each prompt alone, seeded by the prompt's ids and the round's seed *without* the rank,
so a prompt's completions depend only on the weights, the prompt and the step — not on which
rank samples it, nor on what else is in its batch. With it a 2-rank run and one process train on
the same union batch.

`prompt_seeded_ray_engine` is the same sampler in Ray workers (`rollout.engine=ray`'s RayEngine
with `worker_engine=rl_ranks:prompt_seeded_engine`): on the driver it takes the rank out of the
round's seed before the workers see it (inside a worker there is no process group to ask), so a
prompt's completions are again those of the one-process run — with one worker per rank (a
rank's worker i > 0 adds i × world size to the seed).
"""

from __future__ import annotations

import os
import zlib


def text_hash(prompt, completion, **row):
    """A reward in [0, 1) that differs between any two different completions, so the groups of an
    untrained model are never uniform (an arithmetic reward would be 0 everywhere)."""
    return zlib.crc32(completion.encode("utf-8")) / 2**32


def text_hash_on_rank_0(prompt, completion, **row):
    """`text_hash` on rank 0, 0 on every other rank: there every group is uniform, DAPO drops all of
    them, and that rank trains on nothing. RANK is what the launcher (or torchrun) sets."""
    return text_hash(prompt, completion) if os.environ.get("RANK", "0") == "0" else 0.0


def prompt_seeded_engine(model, tokenizer, *, precision=None):
    """An HF engine whose completions of a prompt do not depend on the rank sampling it."""
    import dataclasses

    from posttrain.engines.hf import HFEngine
    from posttrain.training.distributed import Ranks

    class PromptSeededEngine(HFEngine):
        def generate(self, prompt_ids, sampling):
            # `Ranks.seed` made the round's seed base × world size + rank: the base is the same on every rank.
            base = (sampling.seed or 0) // Ranks.current().world_size
            groups = []
            for i, ids in enumerate(prompt_ids):
                seed = base * 1_000_003 + zlib.crc32(repr(list(ids)).encode())
                (group,) = super().generate([ids], dataclasses.replace(sampling, seed=seed))
                groups.append([dataclasses.replace(c, prompt_index=i) for c in group])
            return groups

    return PromptSeededEngine(model, tokenizer, precision=precision)


def prompt_seeded_ray_engine(model, tokenizer, *, precision=None, workers=1, timeout_s=300.0):
    """A RayEngine whose workers sample with `prompt_seeded_engine`, seeded without the rank."""
    import dataclasses

    from posttrain.engines.ray_engine import RayEngine
    from posttrain.training.distributed import Ranks

    class RankFreeSeeds(RayEngine):
        def generate(self, prompt_ids, sampling):
            base = (sampling.seed or 0) // Ranks.current().world_size  # as prompt_seeded_engine does
            return super().generate(prompt_ids, dataclasses.replace(sampling, seed=base))

    return RankFreeSeeds(model, tokenizer, workers=workers, timeout_s=timeout_s, precision=precision,
                         worker_engine="rl_ranks:prompt_seeded_engine")
