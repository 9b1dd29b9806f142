"""Profiling candidates with the frozen policy, and the pivot filter.

PivotRL (Yi et al. 2026, arXiv 2603.21383, §3.2) samples K actions per candidate state from the
starting policy and scores each with the functional verifier. A candidate whose K rewards are all
equal teaches a group-normalised policy gradient nothing (every advantage is 0), and one the
policy already solves most of the time teaches little; so the pivots are the candidates with
reward variance > 0 and mean < λ (default 0.6, as in NVIDIA's public recipe, which keeps
mean ≤ 0.6; we use the strict bound the paper states). Profiles are saved with what they were
measured on (the candidates' fingerprint, the policy, K, the seed), so a later run — or a resumed
one — reuses them instead of paying K samples per candidate again.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from posttrain.pivot.candidates import Candidate

__all__ = ["CandidateProfile", "is_pivot", "load_profiles", "profile_candidates", "profile_metrics",
           "profile_stats", "save_profiles", "select_pivots"]


@dataclass(frozen=True)
class CandidateProfile:
    """K verifier rewards of one candidate (None: unscorable, left out of the statistics)."""

    candidate_id: str
    rewards: list[float | None]
    mean: float
    variance: float


def profile_stats(rewards: Sequence[float | None]) -> tuple[float, float]:
    """Mean and population variance of the scorable rewards ((nan, nan) when none is)."""
    valid = [float(r) for r in rewards if r is not None and math.isfinite(r)]
    if not valid:
        return float("nan"), float("nan")
    mean = sum(valid) / len(valid)
    return mean, sum((r - mean) ** 2 for r in valid) / len(valid)


def is_pivot(profile: CandidateProfile, *, max_mean: float = 0.6, min_variance: float = 0.0) -> bool:
    """Informative (variance > min_variance) and not yet mastered (mean < max_mean)."""
    return (math.isfinite(profile.variance) and profile.variance > min_variance
            and profile.mean < max_mean)


def select_pivots(profiles: Sequence[CandidateProfile], *, max_mean: float = 0.6,
                  min_variance: float = 0.0) -> list[str]:
    """Ids of the pivots, in profile order."""
    return [p.candidate_id for p in profiles if is_pivot(p, max_mean=max_mean, min_variance=min_variance)]


# sample(candidates, K) -> K action texts per candidate; score(candidates, texts) -> K rewards per candidate
Sampler = Callable[[Sequence[Candidate], int], list[list[str]]]
Scorer = Callable[[Sequence[Candidate], list[list[str]]], list[list[float | None]]]


def profile_candidates(candidates: Sequence[Candidate], sample: Sampler, score: Scorer, k: int) -> list[CandidateProfile]:
    """K sampled actions per candidate, scored; one profile per candidate, in order."""
    if k < 2:
        raise ValueError(f"profiling needs K >= 2 samples per candidate (a variance), got {k}")
    texts = sample(candidates, k)
    rewards = score(candidates, texts)
    if len(rewards) != len(candidates) or any(len(r) != k for r in rewards):
        raise ValueError(f"the scorer returned {[len(r) for r in rewards]} rewards for {len(candidates)} "
                         f"candidates × K={k}")
    return [CandidateProfile(c.id, list(r), *profile_stats(r)) for c, r in zip(candidates, rewards)]


def profile_metrics(profiles: Sequence[CandidateProfile], pivots: Sequence[str], prefix: str = "pivots") -> dict[str, float]:
    """How the candidates split: all wrong, all right, mixed; how many pivots; their mean reward."""
    n = max(len(profiles), 1)
    scored = [p for p in profiles if math.isfinite(p.mean)]
    chosen = set(pivots)
    means = [p.mean for p in scored if p.candidate_id in chosen]
    return {
        f"{prefix}/candidates": float(len(profiles)),
        f"{prefix}/kept": float(len(chosen)),
        f"{prefix}/kept_fraction": len(chosen) / n,
        f"{prefix}/all_zero_fraction": sum(p.variance == 0 and p.mean == 0 for p in scored) / n,
        f"{prefix}/all_one_fraction": sum(p.variance == 0 and p.mean == 1 for p in scored) / n,
        f"{prefix}/mixed_fraction": sum(p.variance > 0 for p in scored) / n,
        f"{prefix}/unscorable_fraction": (len(profiles) - len(scored)) / n,
        f"{prefix}/candidate_mean_reward": sum(p.mean for p in scored) / max(len(scored), 1),
        f"{prefix}/kept_mean_reward": sum(means) / len(means) if means else float("nan"),
    }


def save_profiles(path: str | Path, profiles: Sequence[CandidateProfile], meta: Mapping[str, Any]) -> Path:
    """JSONL: a first line with `meta` (what the profile was measured on), then one profile per line.
    Written to a temporary name and renamed, so a killed run never leaves half a profile."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    lines = [json.dumps({"meta": dict(meta)}, sort_keys=True)] + [json.dumps(asdict(p)) for p in profiles]
    tmp.write_text("\n".join(lines) + "\n")
    tmp.replace(path)
    return path


def load_profiles(path: str | Path, meta: Mapping[str, Any]) -> list[CandidateProfile] | None:
    """The saved profiles when `path` exists and was measured on exactly `meta`; else None."""
    path = Path(path)
    if not path.is_file():
        return None
    lines = path.read_text().splitlines()
    try:
        saved = json.loads(lines[0])["meta"]
    except (IndexError, KeyError, json.JSONDecodeError):
        return None
    if saved != json.loads(json.dumps(dict(meta), sort_keys=True)):
        return None
    out = []
    for number, line in enumerate(lines[1:], start=2):
        try:
            row = json.loads(line)
            out.append(CandidateProfile(row["candidate_id"], row["rewards"], row["mean"], row["variance"]))
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise ValueError(f"{path}: line {number}: not a candidate profile ({exc})") from None
    return out
