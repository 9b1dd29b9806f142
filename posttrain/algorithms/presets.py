"""Algorithm presets: `algorithm: <name>` in a config expands to the combination a paper used.

Each preset names registry entries (advantage estimator, policy loss, aggregation, KL
estimator) plus the hyperparameters that define the method. Anything a user sets explicitly in
the config overrides the preset; the config layer does that merge, this module only holds
the table. Values the paper does not pin down for our setting are marked "ours".
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Literal


@dataclass(frozen=True)
class AlgorithmPreset:
    """One RL method as a combination of registry names and hyperparameters."""

    advantage: str  # key of ADVANTAGE_ESTIMATORS
    policy_loss: str  # key of POLICY_LOSSES
    aggregation: str  # key of AGGREGATIONS
    eps_low: float  # clip range below 1
    eps_high: float  # clip range above 1 (> eps_low is DAPO's clip-higher)
    kl_coef: float  # β; 0 disables the reference model entirely
    kl_estimator: str  # key of KL_ESTIMATORS
    kl_placement: Literal["loss", "reward"]  # add β·KL to the loss, or subtract it from the reward
    dynamic_sampling: bool = False  # DAPO: drop groups with identical rewards, resample to fill the batch
    overlong_cache_fraction: float | None = None  # DAPO soft overlong punishment: L_cache = fraction · max_new_tokens
    # constant for "seq-mean-token-sum-norm": a number, or "max_new_tokens" (the generation budget)
    loss_normaliser: float | Literal["max_new_tokens"] | None = None
    dual_clip: float | None = None
    gamma: float = 1.0
    lam: float = 1.0
    # Adaptive KL control (Ziegler et al. 2019): steer the per-sample KL towards kl_target, reacting
    # over kl_horizon samples; None keeps β = kl_coef fixed. Used by the critic loop (ppo).
    kl_target: float | None = None
    kl_horizon: float = 10_000
    paper: str = ""

    def as_dict(self) -> dict[str, object]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


ALGORITHM_PRESETS: dict[str, AlgorithmPreset] = {
    # Shao et al. 2024, "DeepSeekMath" (arXiv 2402.03300): group-normalised advantage, PPO clip
    # 0.2, loss (1/G) Σ_i (1/|o_i|) Σ_t, KL to the reference with the k3 estimator in the loss, β = 0.04.
    "grpo": AlgorithmPreset(
        advantage="grpo", policy_loss="ppo_clip", aggregation="seq-mean-token-mean",
        eps_low=0.2, eps_high=0.2, kl_coef=0.04, kl_estimator="k3", kl_placement="loss",
        paper="Shao et al. 2024, DeepSeekMath, arXiv 2402.03300",
    ),
    # Liu et al. 2025, "Understanding R1-Zero-Like Training" (arXiv 2503.20783): drop the std
    # division and the 1/|o_i| length normalisation; token sums divided by the generation budget.
    # β = 0 is ours (their fix concerns the advantage and the normaliser, not the KL term).
    "dr_grpo": AlgorithmPreset(
        advantage="dr_grpo", policy_loss="ppo_clip", aggregation="seq-mean-token-sum-norm",
        eps_low=0.2, eps_high=0.2, kl_coef=0.0, kl_estimator="k3", kl_placement="loss",
        loss_normaliser="max_new_tokens",
        paper="Liu et al. 2025, Understanding R1-Zero-Like Training, arXiv 2503.20783",
    ),
    # Yu et al. 2025, "DAPO" (arXiv 2503.14476): clip-higher 0.2/0.28, dynamic sampling,
    # token-level loss, overlong reward shaping (L_max 20480, L_cache 4096 → 20 %), no KL term.
    "dapo": AlgorithmPreset(
        advantage="grpo", policy_loss="ppo_clip", aggregation="token-mean",
        eps_low=0.2, eps_high=0.28, kl_coef=0.0, kl_estimator="k3", kl_placement="loss",
        dynamic_sampling=True, overlong_cache_fraction=0.2,
        paper="Yu et al. 2025, DAPO, arXiv 2503.14476",
    ),
    # Ahmadian et al. 2024, "Back to Basics" (arXiv 2402.14740): leave-one-out baseline, REINFORCE
    # on the whole sequence (token *sum*: normaliser 1 → "seq-mean-token-sum-norm" with 1), KL in
    # the sequence reward. On-policy (one update per batch) the clip never binds, so ppo_clip
    # reduces to REINFORCE. β = 0.05 is ours; the paper tunes it per task.
    "rloo": AlgorithmPreset(
        advantage="rloo", policy_loss="ppo_clip", aggregation="seq-mean-token-sum-norm",
        eps_low=0.2, eps_high=0.2, kl_coef=0.05, kl_estimator="k1", kl_placement="reward",
        loss_normaliser=1.0,
        paper="Ahmadian et al. 2024, Back to Basics: Revisiting REINFORCE Style Optimization, arXiv 2402.14740",
    ),
    # PivotRL (Yi et al. 2026, arXiv 2603.21383) as NVIDIA's public recipe runs it: a leave-one-out
    # baseline, PPO clip 0.2 / 0.2, no KL term (the policy stays near the expert's turns because it
    # is only ever trained on them). Token-mean aggregation is ours.
    "pivotrl": AlgorithmPreset(
        advantage="rloo", policy_loss="ppo_clip", aggregation="token-mean",
        eps_low=0.2, eps_high=0.2, kl_coef=0.0, kl_estimator="k1", kl_placement="loss",
        paper="Yi et al. 2026, PivotRL: High Accuracy Agentic Post-Training at Low Compute Cost, arXiv 2603.21383",
    ),
    # Hu et al. 2025, "REINFORCE++" (arXiv 2501.03262): k1 KL folded into the token reward,
    # reward-to-go, advantages whitened over the global batch, PPO clip 0.2, token-mean loss.
    # β = 0.01 is ours.
    "reinforce_pp": AlgorithmPreset(
        advantage="reinforce_pp", policy_loss="ppo_clip", aggregation="token-mean",
        eps_low=0.2, eps_high=0.2, kl_coef=0.01, kl_estimator="k1", kl_placement="reward",
        paper="Hu et al. 2025, REINFORCE++, arXiv 2501.03262",
    ),
    # The paper's group-sampling variant: group-mean baseline, global whitening, k2 KL as a loss
    # term. β = 0.001 is ours.
    "reinforce_pp_baseline": AlgorithmPreset(
        advantage="reinforce_pp_baseline", policy_loss="ppo_clip", aggregation="token-mean",
        eps_low=0.2, eps_high=0.2, kl_coef=0.001, kl_estimator="k2", kl_placement="loss",
        paper="Hu et al. 2025, REINFORCE++ (w/ baseline), arXiv 2501.03262",
    ),
    # Zheng et al. 2025, "Group Sequence Policy Optimization" (arXiv 2507.18071): GRPO's group
    # advantage, sequence-level length-normalised ratio clipped at 3e-4 / 4e-4, sequence-mean loss.
    # No KL term (the paper uses none).
    "gspo": AlgorithmPreset(
        advantage="grpo", policy_loss="gspo", aggregation="seq-mean-token-mean",
        eps_low=3e-4, eps_high=4e-4, kl_coef=0.0, kl_estimator="k3", kl_placement="loss",
        paper="Zheng et al. 2025, GSPO, arXiv 2507.18071",
    ),
    # PPO for language models (Ziegler et al. 2019, arXiv 1909.08593; Ouyang et al. 2022, arXiv
    # 2203.02155): a critic + GAE (γ = 1: no discount within a response), advantages whitened over
    # the batch's valid tokens, the per-token k1 KL to the reference subtracted from the reward,
    # the score added at the last response token, clip 0.2, token-mean loss. β is fixed unless
    # kl_target is set (adaptive, horizon 10 000 as in Ziegler et al.'s code). λ = 0.95 and
    # β = 0.05 are ours (InstructGPT used β = 0.02 on 1.3B–175B models). The critic's settings
    # (init, vf_coef, value clip) live in the config's `critic` section. Loop: recipes/rl/ppo.py.
    "ppo": AlgorithmPreset(
        advantage="gae", policy_loss="ppo_clip", aggregation="token-mean",
        eps_low=0.2, eps_high=0.2, kl_coef=0.05, kl_estimator="k1", kl_placement="reward",
        gamma=1.0, lam=0.95, kl_target=None, kl_horizon=10_000,
        paper="Schulman et al. 2017, arXiv 1707.06347 (PPO); Ziegler et al. 2019, arXiv 1909.08593; "
              "Ouyang et al. 2022, arXiv 2203.02155 (InstructGPT)",
    ),
}


def get_preset(name: str) -> AlgorithmPreset:
    """The preset for `algorithm: name`; ValueError listing the valid names otherwise."""
    try:
        return ALGORITHM_PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown algorithm {name!r}; valid algorithms: {sorted(ALGORITHM_PRESETS)}") from None
