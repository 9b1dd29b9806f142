"""Copy and look-up drills: a from-scratch tiny model's stand-in for in-context copying.

Any pretrained language model can copy a name from its context; a tiny model initialised here
cannot, and learning to while also learning a task is slow (induction heads form late, after a
plateau: Olsson et al. 2022, "In-context Learning and Induction Heads"). Agentic tasks are mostly
copying — a sheet name from a tool's output into the next call, a number from a query result into
the answer — so the agentic comparison (`examples/agentic/compare.py`) gives its fresh models a
short pretraining on these drills first, the way a real run starts from a pretrained base.

Two kinds, over words drawn from a corpus (so the drilled tokens are the task's own):
    repeat:  "Repeat: Orders P07 2024-08-14 ..."               → "Orders P07 2024-08-14 ..."
    look up: "Price = 15\nCategory = Tools\nValue of Category?" → "Tools"
Rows are SFT chat records; the loss is on the assistant turn only. The default is repeats of
6-14 words alone: on the `agent` preset (2-core AMD EPYC, AVX512 capability; 32 drills a step,
lr 3e-3 cosine) their held-out loss fell 6.84 → 1.61 → 0.73 → 0.19 → 0.16 at steps 0/150/300/450/600 — the copying
plateau and its drop — while 300 steps of shorter repeats (3-10 words) mixed half and half with
look-ups stayed at 1.42, and SFT on that base still could not copy a query's result into its answer.
"""

from __future__ import annotations

import random
import re
from typing import Iterable

__all__ = ["copy_drill_rows", "drill_words"]

_WORD = re.compile(r"[A-Za-z0-9_\-.]+")


def drill_words(texts: Iterable[str], max_length: int = 24) -> list[str]:
    """The distinct words of `texts` (runs of letters, digits and _-., shorter than `max_length`), sorted."""
    return sorted({w for text in texts for w in _WORD.findall(text) if len(w) < max_length})


def copy_drill_rows(words: list[str], n: int, seed: int = 0, *, min_words: int = 6, max_words: int = 14,
                    kinds: tuple[str, ...] = ("repeat",)) -> list[dict]:
    """`n` drills of `min_words`..`max_words` words from `words`, the `kinds` ("repeat",
    "look_up") taking turns; the same for the same arguments."""
    if len(set(words)) < max_words:
        raise ValueError(f"copy drills need at least {max_words} distinct words, got {len(set(words))}")
    if not 1 <= min_words <= max_words:
        raise ValueError(f"copy drills need 1 <= min_words <= max_words, got {min_words}, {max_words}")
    unknown = sorted(set(kinds) - {"repeat", "look_up"})
    if unknown or not kinds:
        raise ValueError(f"copy drill kinds must be a non-empty subset of ['repeat', 'look_up'], got {list(kinds)}")
    rng = random.Random(f"copy-drills/{seed}")
    rows = []
    for i in range(n):
        k = rng.randint(min_words, max_words)
        values = [rng.choice(words) for _ in range(k)]
        if kinds[i % len(kinds)] == "repeat":
            user, answer = "Repeat: " + " ".join(values), " ".join(values)
        else:
            keys = rng.sample(words, k)  # distinct keys, so the question has one answer
            j = rng.randrange(k)
            user = "\n".join(f"{key} = {value}" for key, value in zip(keys, values)) + f"\nValue of {keys[j]}?"
            answer = values[j]
        rows.append({"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]})
    return rows
