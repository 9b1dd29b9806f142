"""Config names -> algorithm functions, and the hooks to plug in your own.

Four tables, looked up by the name in a config:
    ADVANTAGE_ESTIMATORS  "grpo", "dr_grpo", "rloo", "reinforce_pp", "reinforce_pp_baseline", "gae"
    POLICY_LOSSES         "ppo_clip", "gspo"
    KL_ESTIMATORS         "k1", "k2", "k3"
    AGGREGATIONS          "token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"

A new algorithm is a new function plus a registry entry, never a new `elif`:

    @register_advantage_estimator("my_adv")
    def my_adv(inputs: AdvantageInputs) -> AdvantageOutput: ...

or, without touching posttrain, name it by import path in the config:
`advantage: "my_pkg.my_module:my_adv"`. Every `get_*` accepts either form.
`ALGORITHM_PRESETS` / `get_preset` (from `presets.py`) map `algorithm: grpo | dr_grpo | dapo |
rloo | reinforce_pp | reinforce_pp_baseline | gspo | ppo` to these names.

Advantage estimators share one signature so a recipe can call any of them: they take an
`AdvantageInputs` and return an `AdvantageOutput` with per-token (B, T) advantages. The
plain functions in `advantages.py` keep their natural signatures; the adapters below map
the common inputs onto them. Policy losses share the signature of `ppo_clip_loss`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Protocol, TypeVar

import torch

from posttrain.algorithms import advantages as adv
from posttrain.algorithms.aggregation import AGGREGATIONS, Aggregation
from posttrain.import_path import lookup
from posttrain.algorithms.kl import KL_ESTIMATORS, KLEstimator
from posttrain.algorithms.masked import check_mask, masked_fill_zero, masked_sum
from posttrain.algorithms.policy_loss import PolicyLossOutput, gspo_loss, ppo_clip_loss
from posttrain.algorithms.presets import ALGORITHM_PRESETS, AlgorithmPreset, get_preset  # noqa: F401 (re-export)


@dataclass(frozen=True)
class AdvantageInputs:
    """Everything an advantage estimator may need. B sequences, T response tokens.

    rewards: (B,) one scalar per sequence.
    mask: (B, T) response mask.
    group_ids: (B,) the group (prompt) of each sequence, in any row order; group estimators
        group by these. When None, rows are grouped consecutively, `group_size` per group.
    group_size: samples per prompt G (group estimators need G >= 2).
    values: (B, T) critic values at rollout time (GAE only).
    kl: (B, T) per-token KL estimate between the sampling policy and the reference, to be
        folded into the reward (KL-in-reward placement); None when KL goes into the loss.
    kl_coef: β for `kl`. gamma, lam: discount and GAE λ.
    """

    rewards: torch.Tensor
    mask: torch.Tensor
    group_size: int = 1
    group_ids: torch.Tensor | None = None
    values: torch.Tensor | None = None
    kl: torch.Tensor | None = None
    kl_coef: float = 0.0
    gamma: float = 1.0
    lam: float = 0.95


    @property
    def groups(self) -> adv.Groups:
        return self.group_ids if self.group_ids is not None else self.group_size


@dataclass(frozen=True)
class AdvantageOutput:
    advantages: torch.Tensor  # (B, T), detached, 0 at padding
    returns: torch.Tensor | None = None  # (B, T) value targets (GAE only)


class AdvantageEstimator(Protocol):
    def __call__(self, inputs: AdvantageInputs) -> AdvantageOutput: ...


class PolicyLoss(Protocol):
    def __call__(
        self,
        logp: torch.Tensor,
        old_logp: torch.Tensor,
        advantages: torch.Tensor,
        mask: torch.Tensor,
        *,
        eps_low: float = ...,
        eps_high: float | None = ...,
        dual_clip: float | None = ...,
    ) -> PolicyLossOutput: ...


def _sequence_rewards_with_kl(inputs: AdvantageInputs) -> torch.Tensor:
    """(B,) rewards minus β·Σ_t KL_t when KL is placed in the reward (RLOO, Ahmadian et al. 2024)."""
    if inputs.kl is None or inputs.kl_coef == 0.0:
        return inputs.rewards
    m = check_mask(inputs.mask, inputs.kl, like_name="kl")
    return inputs.rewards.detach().float() - inputs.kl_coef * masked_sum(inputs.kl.detach().float(), m, dim=1)


def _per_token(sequence_advantages: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B,) -> (B, T): the sequence's advantage on each of its valid tokens, 0 on padding."""
    if mask.dim() != 2 or mask.shape[0] != sequence_advantages.shape[0]:
        raise ValueError(f"mask must be (B, T) with B = {sequence_advantages.shape[0]}, got {tuple(mask.shape)}")
    m = check_mask(mask, mask)
    return masked_fill_zero(sequence_advantages.unsqueeze(1).expand(m.shape), m)


def _grpo(inputs: AdvantageInputs) -> AdvantageOutput:
    a = adv.grpo_advantages(_sequence_rewards_with_kl(inputs), inputs.groups, scale=True)
    return AdvantageOutput(_per_token(a, inputs.mask))


def _dr_grpo(inputs: AdvantageInputs) -> AdvantageOutput:
    a = adv.dr_grpo_advantages(_sequence_rewards_with_kl(inputs), inputs.groups)
    return AdvantageOutput(_per_token(a, inputs.mask))


def _rloo(inputs: AdvantageInputs) -> AdvantageOutput:
    a = adv.rloo_advantages(_sequence_rewards_with_kl(inputs), inputs.groups)
    return AdvantageOutput(_per_token(a, inputs.mask))


def _reinforce_pp(inputs: AdvantageInputs) -> AdvantageOutput:
    a = adv.reinforce_pp_advantages(
        inputs.rewards, inputs.mask, kl=inputs.kl, kl_coef=inputs.kl_coef, gamma=inputs.gamma
    )
    return AdvantageOutput(a)


def _reinforce_pp_baseline(inputs: AdvantageInputs) -> AdvantageOutput:
    a = adv.reinforce_pp_baseline_advantages(
        inputs.rewards, inputs.mask, inputs.groups, kl=inputs.kl, kl_coef=inputs.kl_coef, gamma=inputs.gamma
    )
    return AdvantageOutput(a)


def _gae(inputs: AdvantageInputs) -> AdvantageOutput:
    """PPO: reward on the last token minus per-token β·KL, GAE, then advantages whitened over the batch."""
    if inputs.values is None:
        raise ValueError("advantage estimator 'gae' needs values (B, T) from a critic; AdvantageInputs.values is None")
    token_rewards = adv.sequence_to_token_rewards(inputs.rewards, inputs.mask, inputs.kl, inputs.kl_coef)
    advantages, returns = adv.gae(token_rewards, inputs.values, inputs.mask, inputs.gamma, inputs.lam)
    return AdvantageOutput(adv.whiten(advantages, inputs.mask), returns)


ADVANTAGE_ESTIMATORS: dict[str, AdvantageEstimator] = {
    "grpo": _grpo,
    "dr_grpo": _dr_grpo,
    "rloo": _rloo,
    "reinforce_pp": _reinforce_pp,
    "reinforce_pp_baseline": _reinforce_pp_baseline,
    "gae": _gae,
}

POLICY_LOSSES: dict[str, PolicyLoss] = {"ppo_clip": ppo_clip_loss, "gspo": gspo_loss}

F = TypeVar("F", bound=Callable[..., Any])


def _register(table: dict[str, Any], kind: str, name: str, overwrite: bool) -> Callable[[F], F]:
    if not isinstance(name, str) or not name or ":" in name:
        raise ValueError(f"{kind} name must be a non-empty string without ':', got {name!r}")
    if name in table and not overwrite:
        raise ValueError(f"{kind} {name!r} is already registered; pass overwrite=True to replace it")

    def decorator(fn: F) -> F:
        if not callable(fn):
            raise ValueError(f"cannot register {fn!r} as {kind} {name!r}: not callable")
        table[name] = fn
        return fn

    return decorator


def get_advantage_estimator(name: str) -> AdvantageEstimator:
    """Estimator for a config name or "pkg.module:function"; ValueError listing valid names."""
    return lookup(ADVANTAGE_ESTIMATORS, name, "advantage estimator")


def get_policy_loss(name: str) -> PolicyLoss:
    return lookup(POLICY_LOSSES, name, "policy loss")


def get_kl_estimator(name: str) -> KLEstimator:
    return lookup(KL_ESTIMATORS, name, "KL estimator")


def get_aggregation(name: str) -> Aggregation:
    return lookup(AGGREGATIONS, name, "aggregation")


def register_advantage_estimator(name: str, *, overwrite: bool = False) -> Callable[[F], F]:
    """Decorator: `fn(AdvantageInputs) -> AdvantageOutput` becomes available as `name`."""
    return _register(ADVANTAGE_ESTIMATORS, "advantage estimator", name, overwrite)


def register_policy_loss(name: str, *, overwrite: bool = False) -> Callable[[F], F]:
    """Decorator: a function with `ppo_clip_loss`'s signature becomes available as `name`."""
    return _register(POLICY_LOSSES, "policy loss", name, overwrite)


def register_kl_estimator(name: str, *, overwrite: bool = False) -> Callable[[F], F]:
    """Decorator: `fn(logp (B,T), ref_logp (B,T)) -> (B,T)`; also usable as `kl_estimate(kind=name)`."""
    return _register(KL_ESTIMATORS, "KL estimator", name, overwrite)


def register_aggregation(name: str, *, overwrite: bool = False) -> Callable[[F], F]:
    """Decorator: a function with `token_mean`'s signature; also usable as `aggregate(mode=name)`."""
    return _register(AGGREGATIONS, "aggregation", name, overwrite)
