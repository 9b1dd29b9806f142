"""Profiling the candidates with the current policy on an engine, saved and reused.

`CandidateProfiler.profile(index, model)` samples K single turns per candidate state
(`engine.generate`, one prefill per state), scores them with the functional verifier through
the run's `RewardRunner`, saves the profile under `profile_dir/profile-<index>.jsonl` with what
it was measured on, and returns the pivots. A profile already saved for the same candidates,
weights, K, seed, temperature and verifier is read back instead of sampled again.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from posttrain.compute import ComputeLedger
from posttrain.engines.base import Engine, SamplingParams
from posttrain.pivot.candidates import Candidate, candidates_fingerprint
from posttrain.pivot.profile import load_profiles, profile_candidates, profile_metrics, save_profiles, select_pivots
from posttrain.verifiers.combine import RewardRunner

__all__ = ["CandidateProfiler", "ProfileSettings", "ProfileResult", "weights_fingerprint"]


@dataclass(frozen=True)
class ProfileSettings:
    samples_per_candidate: int
    max_mean: float
    min_variance: float
    max_new_tokens: int
    temperature: float
    top_p: float = 1.0
    top_k: int = 0


@dataclass(frozen=True)
class ProfileResult:
    pivot_ids: list[str]
    metrics: dict
    sampled_turns: int  # 0 when a saved profile was reused
    generated_tokens: int = 0


class CandidateProfiler:
    """Profiles `candidates` (their states already tokenised as `prompt_ids`, with `rows` the
    verifier's rows) on `engine`, scored by `verifier` (its one reward named `verifier_name`)."""

    def __init__(self, candidates: list[Candidate], prompt_ids: list[list[int]], rows: list[dict], engine: Engine,
                 verifier: RewardRunner, verifier_name: str, settings: ProfileSettings, profile_dir: Path,
                 ledger: ComputeLedger, n_params: int, seed: int) -> None:
        self.candidates, self.prompt_ids, self.rows = candidates, prompt_ids, rows
        self.engine, self.verifier, self.verifier_name = engine, verifier, verifier_name
        self.settings, self.profile_dir = settings, Path(profile_dir)
        self.ledger, self.n_params, self.seed = ledger, n_params, seed
        self._position = {c.id: i for i, c in enumerate(candidates)}
        self._fingerprint = candidates_fingerprint(candidates)

    def profile(self, index: int, model) -> ProfileResult:
        """Profile number `index` (0 = the starting policy) of the weights in `model`."""
        s = self.settings
        meta = {"candidates": self._fingerprint, "policy": weights_fingerprint(model), "k": s.samples_per_candidate,
                "seed": self.seed + index, "temperature": s.temperature, "verifier": self.verifier_name}
        path = self.profile_dir / f"profile-{index}.jsonl"
        profiles = load_profiles(path, meta)
        reused = profiles is not None
        self._generated = 0
        if profiles is None:
            with self.ledger.timed("profile"):
                profiles = profile_candidates(self.candidates, self._sampler(meta["seed"]), self._score,
                                              s.samples_per_candidate)
            save_profiles(path, profiles, meta)
        pivots = select_pivots(profiles, max_mean=s.max_mean, min_variance=s.min_variance)
        metrics = {**profile_metrics(profiles, pivots), "pivots/profile_index": float(index),
                   "pivots/profile_reused": float(reused)}
        return ProfileResult(pivots, metrics, 0 if reused else len(self.candidates) * s.samples_per_candidate,
                             self._generated)

    def _sampler(self, seed: int):
        s = self.settings

        def sample(candidates: list[Candidate], k: int) -> list[list[str]]:
            ids = [self.prompt_ids[self._position[c.id]] for c in candidates]
            sampling = SamplingParams(max_new_tokens=s.max_new_tokens, temperature=s.temperature, top_p=s.top_p,
                                      top_k=s.top_k, n=k, seed=seed)
            groups = self.engine.generate(ids, sampling)
            self._generated += sum(len(c.token_ids) for g in groups for c in g)
            # Each state is prefilled once for its K samples, then every sampled token decoded.
            self.ledger.record("profile", tokens=sum(map(len, ids)) + sum(len(c.token_ids) for g in groups for c in g),
                               params=self.n_params)
            return [[c.text for c in group] for group in groups]

        return sample

    def _score(self, candidates: list[Candidate], texts: list[list[str]]) -> list[list[float | None]]:
        rows = [self.rows[self._position[c.id]] for c, group in zip(candidates, texts) for _ in group]
        report = self.verifier([r["prompt"] for r in rows], [t for group in texts for t in group], rows)
        k = len(texts[0]) if texts else 0
        return [report.total[i * k:(i + 1) * k] for i in range(len(candidates))]


def weights_fingerprint(model) -> str:
    """A short hash of the weights (a sample of every tensor): a profile belongs to one policy."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        flat = tensor.detach().float().flatten()
        digest.update(name.encode())
        digest.update(json.dumps([round(float(x), 6) for x in flat[:: max(1, flat.numel() // 16)][:16]]).encode())
    return digest.hexdigest()[:16]
