"""Preference losses (the DPO family) as pure functions over sequence log-probabilities, plus a registry.

Notation: x a prompt, y_w the chosen (preferred / desirable) response, y_l the rejected one,
π_θ the policy, π_ref the frozen reference, σ the logistic function. Every function takes one
log-probability per *sequence*: the response tokens' log-probs, either summed,
log π(y|x) = Σ_t log π(y_t | x, y_<t), or averaged over the |y| response tokens (length-normalised).
Which one is each paper's choice, and the registry entry records it so the recipe reduces the
token log-probs accordingly:

    loss    reference   log-probs   per-pair (per-example) loss
    dpo     yes         summed      −log σ(β·h)
    cdpo    yes         summed      −(1 − ε)·log σ(β·h) − ε·log σ(−β·h)
    ipo     yes         summed      (h − 1/(2τ))²
    simpo   no          averaged    −log σ(β·ā(y_w) − β·ā(y_l) − γ)
    orpo    no          averaged    −ā(y_w) − λ·log σ(log odds(y_w) − log odds(y_l))
    kto     yes         summed      λ_D·(1 − σ(β(r − z0))) desirable, λ_U·(1 − σ(β(z0 − r))) undesirable

    h = [log π(y_w) − log π_ref(y_w)] − [log π(y_l) − log π_ref(y_l)];  ā = the average token log-prob;
    odds = P/(1 − P) with P = exp(ā);  r = log π(y) − log π_ref(y);  z0 = KTO's reference point.

Sources: DPO, Rafailov et al. 2023, arXiv 2305.18290, eq. 7. cDPO, Mitchell 2023, "A note on DPO
with noisy preferences & relationship to IPO" (labels flipped with probability ε). IPO, Azar et
al. 2023, arXiv 2310.12036, eq. 17 (τ is its regulariser). SimPO, Meng et al. 2024, arXiv
2405.14734, eq. 6 (γ a target reward margin). ORPO, Hong et al. 2024, arXiv 2403.07691, eqs. 6-7.
KTO, Ethayarajh et al. 2024, arXiv 2402.01306: r = log π_θ(y|x) − log π_ref(y|x), and the
reference point z0 = KL(π_θ ‖ π_ref) estimated on mismatched (prompt, completion) pairs,
max(0, mean log-ratio), with no gradient through it.

IPO and summed log-probs: we follow eq. 17 as written, where h is built from the sequence
probabilities π(y|x), i.e. the same summed log-ratio difference as DPO; then `dpo` and `ipo`
differ only in the function of h, and 1/(2τ) is a target for that h. TRL instead divides each
log-ratio by its response length for IPO (its code cites the IPO authors). For responses of a
few tokens, as in the built-in arithmetic task, the two agree up to that small length factor.

Each function returns per-pair (per-example, for KTO) losses rather than their mean, so a
recipe that accumulates gradients can divide by the whole step's count and get the same
gradient for any micro-batching. Rewards come back detached, for logging: β·(log-ratio) for
the reference-based losses (the implicit reward of the DPO paper), β·ā for SimPO, log odds for
ORPO (the quantity its odds-ratio term compares).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping, Protocol

import torch
import torch.nn.functional as F

from posttrain.import_path import lookup


@dataclass(frozen=True)
class PreferenceLossOutput:
    """What every preference loss returns.

    losses: (U,) one loss per unit: per pair for pairwise losses, per example for KTO. Average
        them (or sum and divide by a step-wide count) to get the scalar to minimise.
    chosen_rewards: (Bc,) detached implicit rewards of the chosen / desirable responses.
    rejected_rewards: (Br,) detached implicit rewards of the rejected / undesirable responses.
    """

    losses: torch.Tensor
    chosen_rewards: torch.Tensor
    rejected_rewards: torch.Tensor


def _check_pairs(*tensors: torch.Tensor | None) -> None:
    shapes = {tuple(t.shape) for t in tensors if t is not None}
    if len(shapes) != 1 or len(next(iter(shapes))) != 1:
        raise ValueError(f"pairwise log-probs must all have the same shape (B,), got {sorted(shapes)}")


def _check_positive(name: str, value: float) -> None:
    if not value > 0:
        raise ValueError(f"{name} must be > 0, got {value}")


def log_ratio_difference(chosen_logps: torch.Tensor, rejected_logps: torch.Tensor,
                         ref_chosen_logps: torch.Tensor, ref_rejected_logps: torch.Tensor) -> torch.Tensor:
    """h = [log π(y_w) − log π_ref(y_w)] − [log π(y_l) − log π_ref(y_l)], (B,); the reference is detached."""
    _check_pairs(chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps)
    return (chosen_logps - ref_chosen_logps.detach()) - (rejected_logps - ref_rejected_logps.detach())


def dpo_loss(chosen_logps: torch.Tensor, rejected_logps: torch.Tensor, ref_chosen_logps: torch.Tensor,
             ref_rejected_logps: torch.Tensor, *, beta: float = 0.1, label_smoothing: float = 0.0
             ) -> PreferenceLossOutput:
    """DPO (Rafailov et al. 2023, arXiv 2305.18290, eq. 7), or conservative DPO when ε > 0.

    loss = −(1 − ε)·log σ(β·h) − ε·log σ(−β·h), with h from `log_ratio_difference`. ε is the
    probability that a preference label is flipped (Mitchell 2023, "A note on DPO with noisy
    preferences"); ε = 0 is plain DPO. With π = π_ref, h = 0 and the loss is log 2 for any β.

    Args:
        chosen_logps, rejected_logps: (B,) summed response log-probs under the policy.
        ref_chosen_logps, ref_rejected_logps: (B,) the same under the reference (no gradient).
        beta: β > 0, the strength of the implicit KL penalty (higher = stay closer to π_ref).
        label_smoothing: ε in [0, 0.5).
    """
    _check_positive("beta", beta)
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing (ε) must be in [0, 0.5), got {label_smoothing}")
    h = log_ratio_difference(chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps)
    losses = -(1.0 - label_smoothing) * F.logsigmoid(beta * h) - label_smoothing * F.logsigmoid(-beta * h)
    return PreferenceLossOutput(losses, *_implicit_rewards(chosen_logps, rejected_logps, ref_chosen_logps,
                                                           ref_rejected_logps, beta))


def ipo_loss(chosen_logps: torch.Tensor, rejected_logps: torch.Tensor, ref_chosen_logps: torch.Tensor,
             ref_rejected_logps: torch.Tensor, *, tau: float = 0.1) -> PreferenceLossOutput:
    """IPO (Azar et al. 2023, arXiv 2310.12036, eq. 17): (h − 1/(2τ))², a squared loss that
    regresses the log-ratio difference h onto 1/(2τ) instead of pushing it to infinity.

    Log-probs are summed, as in the paper's formula (see the module docstring). Rewards are τ·(log-ratio).
    """
    _check_positive("tau", tau)
    h = log_ratio_difference(chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps)
    losses = (h - 1.0 / (2.0 * tau)) ** 2
    return PreferenceLossOutput(losses, *_implicit_rewards(chosen_logps, rejected_logps, ref_chosen_logps,
                                                           ref_rejected_logps, tau))


def simpo_loss(chosen_logps: torch.Tensor, rejected_logps: torch.Tensor, *, beta: float = 2.0,
               gamma: float = 0.5) -> PreferenceLossOutput:
    """SimPO (Meng et al. 2024, arXiv 2405.14734, eq. 6): −log σ(β·ā(y_w) − β·ā(y_l) − γ).

    Reference-free: the reward is β times the *average* token log-prob, ā(y) = log π(y|x) / |y|,
    and γ ≥ 0 is a target margin between the two rewards.

    Args:
        chosen_logps, rejected_logps: (B,) length-normalised (average) response log-probs.
    """
    _check_positive("beta", beta)
    if gamma < 0:
        raise ValueError(f"gamma must be >= 0, got {gamma}")
    _check_pairs(chosen_logps, rejected_logps)
    chosen_rewards, rejected_rewards = beta * chosen_logps, beta * rejected_logps
    losses = -F.logsigmoid(chosen_rewards - rejected_rewards - gamma)
    return PreferenceLossOutput(losses, chosen_rewards.detach(), rejected_rewards.detach())


# exp(ā) = 1 exactly makes log(1 − P) = −inf; a log-prob this close to 0 already means P ≈ 1.
_MAX_AVERAGE_LOGP = -1e-6


def log_odds(average_logps: torch.Tensor) -> torch.Tensor:
    """log odds(y) = log P − log(1 − P) with P = exp(ā), computed stably for ā < 0.

    log(1 − e^a) uses log(−expm1(a)) near 0 and log1p(−e^a) further out (Mächler 2012,
    "Accurately computing log(1 − exp(−|a|))").
    """
    a = average_logps.clamp(max=_MAX_AVERAGE_LOGP)
    log1m_p = torch.where(a > -0.6931471805599453, torch.log(-torch.expm1(a)), torch.log1p(-torch.exp(a)))
    return a - log1m_p


def orpo_loss(chosen_logps: torch.Tensor, rejected_logps: torch.Tensor, *, lam: float = 0.1
              ) -> PreferenceLossOutput:
    """ORPO (Hong et al. 2024, arXiv 2403.07691, eqs. 6-7): L_SFT + λ·L_OR per pair, where
    L_SFT = −ā(y_w) is the chosen response's negative log-likelihood per token and
    L_OR = −log σ(log odds(y_w) − log odds(y_l)), odds(y) = P(y|x) / (1 − P(y|x)),
    P(y|x) = exp(ā(y)) (the length-normalised likelihood). Reference-free; rewards are the log odds.

    Args:
        chosen_logps, rejected_logps: (B,) length-normalised (average) response log-probs.
        lam: λ ≥ 0, the weight of the odds-ratio term.
    """
    if lam < 0:
        raise ValueError(f"lam (λ) must be >= 0, got {lam}")
    _check_pairs(chosen_logps, rejected_logps)
    chosen_odds, rejected_odds = log_odds(chosen_logps), log_odds(rejected_logps)
    losses = -chosen_logps - lam * F.logsigmoid(chosen_odds - rejected_odds)
    return PreferenceLossOutput(losses, chosen_odds.detach(), rejected_odds.detach())


def kto_kl_baseline(kl_logps: torch.Tensor, kl_ref_logps: torch.Tensor) -> torch.Tensor:
    """KTO's reference point z0 (Ethayarajh et al. 2024, arXiv 2402.01306):
    max(0, mean_j [log π_θ(y'_j|x_j) − log π_ref(y'_j|x_j)]) over mismatched pairs (x_j with
    another example's completion y'_j), detached: an estimate of KL(π_θ ‖ π_ref) that the loss
    treats as a constant. Inputs (M,) summed log-probs; returns a 0-d tensor."""
    if kl_logps.shape != kl_ref_logps.shape or kl_logps.dim() != 1 or kl_logps.numel() == 0:
        raise ValueError(f"kl_logps and kl_ref_logps must be non-empty (M,) tensors, got "
                         f"{tuple(kl_logps.shape)} and {tuple(kl_ref_logps.shape)}")
    return (kl_logps.detach() - kl_ref_logps.detach()).mean().clamp(min=0.0)


def kto_loss(desirable_logps: torch.Tensor, undesirable_logps: torch.Tensor, ref_desirable_logps: torch.Tensor,
             ref_undesirable_logps: torch.Tensor, kl_baseline: torch.Tensor | float, *, beta: float = 0.1,
             desirable_weight: float = 1.0, undesirable_weight: float = 1.0) -> PreferenceLossOutput:
    """KTO (Ethayarajh et al. 2024, arXiv 2402.01306): per example λ_y − v(x, y), where
    r = log π_θ(y|x) − log π_ref(y|x) and
        v = λ_D·σ(β(r − z0)) for a desirable y,   v = λ_U·σ(β(z0 − r)) for an undesirable y.
    The examples need not be paired: D desirable and U undesirable ones give D + U losses
    (desirable first). z0 comes from `kto_kl_baseline`; it is treated as a constant.

    Args:
        desirable_logps, ref_desirable_logps: (D,) summed log-probs of desirable responses.
        undesirable_logps, ref_undesirable_logps: (U,) the same for undesirable responses.
        kl_baseline: z0, a float or 0-d tensor (detached here).
        desirable_weight, undesirable_weight: λ_D, λ_U > 0; the paper suggests
            λ_D·D / (λ_U·U) in [1, 4/3] when the classes are imbalanced.
    """
    _check_positive("beta", beta)
    _check_positive("desirable_weight", desirable_weight)
    _check_positive("undesirable_weight", undesirable_weight)
    for name, a, b in (("desirable", desirable_logps, ref_desirable_logps),
                       ("undesirable", undesirable_logps, ref_undesirable_logps)):
        if a.shape != b.shape or a.dim() != 1:
            raise ValueError(f"{name} log-probs and their reference must both be (N,), got "
                             f"{tuple(a.shape)} and {tuple(b.shape)}")
    z0 = torch.as_tensor(kl_baseline, dtype=desirable_logps.dtype, device=desirable_logps.device).detach()
    r_desirable = desirable_logps - ref_desirable_logps.detach()
    r_undesirable = undesirable_logps - ref_undesirable_logps.detach()
    losses = torch.cat([desirable_weight * (1.0 - torch.sigmoid(beta * (r_desirable - z0))),
                        undesirable_weight * (1.0 - torch.sigmoid(beta * (z0 - r_undesirable)))])
    return PreferenceLossOutput(losses, beta * r_desirable.detach(), beta * r_undesirable.detach())


def _implicit_rewards(chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps, beta):
    """β·(log π − log π_ref) for both responses, detached: DPO's implicit reward (section 5)."""
    return ((beta * (chosen_logps - ref_chosen_logps)).detach(),
            (beta * (rejected_logps - ref_rejected_logps)).detach())


# ----------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class PreferenceParams:
    """Hyper-parameters the registered losses read (each reads only some; see `PreferenceLossSpec.defaults`).

    beta: β of DPO / cDPO / SimPO / KTO, and τ of IPO. label_smoothing: cDPO's ε.
    simpo_gamma: SimPO's margin γ. orpo_lambda: ORPO's λ. kto_desirable_weight,
    kto_undesirable_weight: KTO's λ_D, λ_U.
    """

    beta: float = 0.1
    label_smoothing: float = 0.0
    simpo_gamma: float = 0.5
    orpo_lambda: float = 0.1
    kto_desirable_weight: float = 1.0
    kto_undesirable_weight: float = 1.0


PARAM_NAMES = tuple(f.name for f in dataclasses.fields(PreferenceParams))


@dataclass(frozen=True)
class PreferenceInputs:
    """One micro-batch's sequence log-probs, reduced (summed or averaged) as the loss's spec says.

    chosen_logps: (Bc,) the chosen / desirable responses under the policy (with gradient).
    rejected_logps: (Br,) the rejected / undesirable ones. Pairwise losses need Bc = Br, row i
        of each being one pair; KTO takes any Bc, Br.
    ref_chosen_logps, ref_rejected_logps: the same under the reference; None when the loss is
        reference-free.
    kl_baseline: KTO's z0 (0-d tensor), None for the others.
    """

    chosen_logps: torch.Tensor
    rejected_logps: torch.Tensor
    ref_chosen_logps: torch.Tensor | None = None
    ref_rejected_logps: torch.Tensor | None = None
    kl_baseline: torch.Tensor | None = None


class PreferenceLossFn(Protocol):
    def __call__(self, inputs: PreferenceInputs, params: PreferenceParams) -> PreferenceLossOutput: ...


@dataclass(frozen=True)
class PreferenceLossSpec:
    """A registered loss: the function plus what the recipe must feed it.

    fn: maps `PreferenceInputs` + `PreferenceParams` to a `PreferenceLossOutput`.
    needs_reference: reference log-probs are computed (once, cached) only when True.
    length_normalised: the recipe passes average token log-probs (True) or summed ones (False).
    paired: True for pairwise losses (chosen/rejected pairs); False when unpaired labelled
        examples will do (KTO).
    needs_kl_baseline: the recipe estimates KTO's z0 on mismatched pairs.
    defaults: the `PreferenceParams` fields the loss reads, with the paper's default values;
        setting any other field is a config error.
    """

    fn: PreferenceLossFn
    needs_reference: bool
    length_normalised: bool
    paired: bool = True
    needs_kl_baseline: bool = False
    defaults: Mapping[str, float] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        unknown = set(self.defaults) - set(PARAM_NAMES)
        if unknown:
            raise ValueError(f"unknown preference parameter(s) {sorted(unknown)}; known: {list(PARAM_NAMES)}")

    def __call__(self, inputs: PreferenceInputs, params: PreferenceParams) -> PreferenceLossOutput:
        return self.fn(inputs, params)

    def params(self, **overrides: float) -> PreferenceParams:
        """The loss's defaults with `overrides` on top; ValueError for a field the loss does not read."""
        unused = sorted(set(overrides) - set(self.defaults))
        if unused:
            raise ValueError(f"{', '.join(unused)} do(es) not apply to this loss; it reads: "
                             f"{', '.join(self.defaults) or 'nothing'}")
        return PreferenceParams(**{**self.defaults, **overrides})


def _reference(inputs: PreferenceInputs) -> tuple[torch.Tensor, torch.Tensor]:
    if inputs.ref_chosen_logps is None or inputs.ref_rejected_logps is None:
        raise ValueError("this loss needs reference log-probs (PreferenceInputs.ref_*_logps are None)")
    return inputs.ref_chosen_logps, inputs.ref_rejected_logps


def _dpo(inputs: PreferenceInputs, p: PreferenceParams) -> PreferenceLossOutput:
    return dpo_loss(inputs.chosen_logps, inputs.rejected_logps, *_reference(inputs), beta=p.beta)


def _cdpo(inputs: PreferenceInputs, p: PreferenceParams) -> PreferenceLossOutput:
    return dpo_loss(inputs.chosen_logps, inputs.rejected_logps, *_reference(inputs), beta=p.beta,
                    label_smoothing=p.label_smoothing)


def _ipo(inputs: PreferenceInputs, p: PreferenceParams) -> PreferenceLossOutput:
    return ipo_loss(inputs.chosen_logps, inputs.rejected_logps, *_reference(inputs), tau=p.beta)


def _simpo(inputs: PreferenceInputs, p: PreferenceParams) -> PreferenceLossOutput:
    return simpo_loss(inputs.chosen_logps, inputs.rejected_logps, beta=p.beta, gamma=p.simpo_gamma)


def _orpo(inputs: PreferenceInputs, p: PreferenceParams) -> PreferenceLossOutput:
    return orpo_loss(inputs.chosen_logps, inputs.rejected_logps, lam=p.orpo_lambda)


def _kto(inputs: PreferenceInputs, p: PreferenceParams) -> PreferenceLossOutput:
    if inputs.kl_baseline is None:
        raise ValueError("kto needs its reference point z0 (PreferenceInputs.kl_baseline is None)")
    return kto_loss(inputs.chosen_logps, inputs.rejected_logps, *_reference(inputs), inputs.kl_baseline,
                    beta=p.beta, desirable_weight=p.kto_desirable_weight,
                    undesirable_weight=p.kto_undesirable_weight)


PREFERENCE_LOSSES: dict[str, PreferenceLossSpec] = {
    "dpo": PreferenceLossSpec(_dpo, needs_reference=True, length_normalised=False, defaults={"beta": 0.1}),
    # ε = 0.1: the flip rate Mitchell's note uses as its example; ε = 0 is exactly `dpo`.
    "cdpo": PreferenceLossSpec(_cdpo, needs_reference=True, length_normalised=False,
                               defaults={"beta": 0.1, "label_smoothing": 0.1}),
    "ipo": PreferenceLossSpec(_ipo, needs_reference=True, length_normalised=False, defaults={"beta": 0.1}),
    # SimPO's β works on average log-probs, so it is an order of magnitude larger (paper: 2.0-2.5).
    "simpo": PreferenceLossSpec(_simpo, needs_reference=False, length_normalised=True,
                                defaults={"beta": 2.0, "simpo_gamma": 0.5}),
    "orpo": PreferenceLossSpec(_orpo, needs_reference=False, length_normalised=True, defaults={"orpo_lambda": 0.1}),
    "kto": PreferenceLossSpec(_kto, needs_reference=True, length_normalised=False, paired=False,
                              needs_kl_baseline=True,
                              defaults={"beta": 0.1, "kto_desirable_weight": 1.0, "kto_undesirable_weight": 1.0}),
}


def get_preference_loss(name: str) -> PreferenceLossSpec:
    """The spec for a registered name, or for "pkg.module:attr" naming a `PreferenceLossSpec`."""
    return lookup(PREFERENCE_LOSSES, name, "preference loss", expect=PreferenceLossSpec)


def register_preference_loss(name: str, spec: PreferenceLossSpec, *, overwrite: bool = False) -> PreferenceLossSpec:
    """Make `spec` available as `loss.type: name`."""
    if not isinstance(name, str) or not name or ":" in name:
        raise ValueError(f"preference loss name must be a non-empty string without ':', got {name!r}")
    if not isinstance(spec, PreferenceLossSpec):
        raise ValueError(f"cannot register {spec!r} as preference loss {name!r}: not a PreferenceLossSpec")
    if name in PREFERENCE_LOSSES and not overwrite:
        raise ValueError(f"preference loss {name!r} is already registered; pass overwrite=True to replace it")
    PREFERENCE_LOSSES[name] = spec
    return spec


__all__ = [
    "PARAM_NAMES", "PREFERENCE_LOSSES", "PreferenceInputs", "PreferenceLossOutput", "PreferenceLossSpec",
    "PreferenceParams", "dpo_loss", "get_preference_loss", "ipo_loss", "kto_kl_baseline", "kto_loss",
    "log_odds", "log_ratio_difference", "orpo_loss", "register_preference_loss", "simpo_loss",
]
