"""KL coefficient controllers for KL-penalised RL (the β in r_t = score·1[last] − β·KL_t).

Ziegler et al. 2019, "Fine-Tuning Language Models from Human Preferences" (arXiv 1909.08593, §2.2):
a fixed β, or an adaptive one that steers the observed KL towards a target:

    e_t = clip(KL_t / KL_target − 1, −0.2, 0.2)        (proportional error, clipped)
    β_{t+1} = β_t · (1 + K_β · e_t),   K_β = n_t / horizon

where KL_t is the batch mean of each sample's KL summed over its tokens (nats per sample) and n_t
the number of samples in the batch, so β can change by at most a factor (1 ± 0.2·n/horizon) per
batch and responds on a time scale of `horizon` samples. Their reference code
(openai/lm-human-preferences, `AdaptiveKLController`) uses horizon = 10 000.

The controllers hold β as plain state (`state_dict`) so a resumed run continues with the β it had.
"""

from __future__ import annotations

from dataclasses import dataclass

MAX_PROPORTIONAL_ERROR = 0.2


def adaptive_kl_coef(beta: float, observed_kl: float, *, target: float, horizon: float, n_steps: int) -> float:
    """β_{t+1} = β_t · (1 + clip(KL / target − 1, ±0.2) · n_steps / horizon); see module doc."""
    if target <= 0 or horizon <= 0:
        raise ValueError(f"target and horizon must be > 0, got target={target}, horizon={horizon}")
    if n_steps < 0:
        raise ValueError(f"n_steps must be >= 0, got {n_steps}")
    error = min(max(observed_kl / target - 1.0, -MAX_PROPORTIONAL_ERROR), MAX_PROPORTIONAL_ERROR)
    return beta * (1.0 + error * n_steps / horizon)


@dataclass
class FixedKLController:
    """β stays at `value` whatever KL is observed."""

    value: float

    def update(self, observed_kl: float, n_steps: int) -> float:
        return self.value

    def state_dict(self) -> dict:
        return {"value": self.value}

    def load_state_dict(self, state: dict) -> None:
        self.value = float(state["value"])


@dataclass
class AdaptiveKLController:
    """β moves towards the value that keeps the per-sample KL at `target` (Ziegler et al. 2019)."""

    value: float
    target: float
    horizon: float = 10_000

    def __post_init__(self) -> None:
        if self.target <= 0 or self.horizon <= 0:
            raise ValueError(f"adaptive KL needs target > 0 and horizon > 0, got {self.target}, {self.horizon}")

    def update(self, observed_kl: float, n_steps: int) -> float:
        """Fold in one batch (`n_steps` samples, mean summed KL `observed_kl`); returns the new β."""
        self.value = adaptive_kl_coef(self.value, observed_kl, target=self.target, horizon=self.horizon,
                                      n_steps=n_steps)
        return self.value

    def state_dict(self) -> dict:
        return {"value": self.value, "target": self.target, "horizon": self.horizon}

    def load_state_dict(self, state: dict) -> None:
        self.value = float(state["value"])


def build_kl_controller(kl_coef: float, target: float | None = None,
                        horizon: float = 10_000) -> FixedKLController | AdaptiveKLController:
    """Fixed β = `kl_coef` when `target` is None, else adaptive starting from `kl_coef`."""
    if kl_coef < 0:
        raise ValueError(f"kl_coef must be >= 0, got {kl_coef}")
    if target is None:
        return FixedKLController(kl_coef)
    if kl_coef == 0:
        raise ValueError("an adaptive KL controller needs kl_coef > 0 to start from (β·(1 + e) stays 0 forever)")
    return AdaptiveKLController(kl_coef, target, horizon)
