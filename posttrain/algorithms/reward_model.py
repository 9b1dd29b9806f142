"""Bradley–Terry reward-model loss, with a per-pair margin and a reward-centring term.

The Bradley–Terry model (Bradley & Terry 1952) says a response y_c is preferred to y_r with
probability σ(r(x, y_c) − r(x, y_r)); a reward model is fitted by maximising that likelihood
on human (or synthetic) preference pairs, as in InstructGPT (Ouyang et al. 2022, arXiv 2203.02155):

    loss = −log σ(r_c − r_r − m)  +  η · (r_c + r_r)²

- m, the margin: Llama 2 (Touvron et al. 2023, arXiv 2307.09288, §3.2.2) subtracts a per-pair
  margin that grows with how clearly the annotators preferred y_c, so a pair rated "significantly
  better" must be separated by more than one rated "slightly better". m = 0 is plain Bradley–Terry.
- η, the centring coefficient: the Bradley–Terry likelihood only sees reward *differences*, so the
  reward's offset drifts freely. Eisenstein et al. 2023 ("Helping or Herding? Reward Model
  Ensembles Mitigate but do not Eliminate Reward Hacking", arXiv 2312.09244) add η·(r_c + r_r)²,
  which pulls each pair's mean reward towards 0 and keeps scores comparable across models (they
  use η = 0.01). η = 0 turns it off.

Shapes: B pairs; `chosen_rewards` and `rejected_rewards` are (B,) scalars from the reward model.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class RewardModelLossOutput:
    """The loss (with gradient) and detached per-batch diagnostics (0-d tensors)."""

    loss: torch.Tensor  # scalar: Σ_pairs (−log σ(r_c − r_r − m) + η (r_c + r_r)²) / num_pairs
    accuracy: torch.Tensor  # fraction of pairs with r_c > r_r (ties count as wrong)
    margin: torch.Tensor  # mean of r_c − r_r
    mean_reward: torch.Tensor  # mean of all 2B rewards
    chosen_reward: torch.Tensor  # mean r_c
    rejected_reward: torch.Tensor  # mean r_r


def bradley_terry_loss(
    chosen_rewards: torch.Tensor,
    rejected_rewards: torch.Tensor,
    *,
    margin: torch.Tensor | float | None = None,
    centering_coef: float = 0.0,
    num_pairs: float | None = None,
) -> RewardModelLossOutput:
    """Bradley–Terry negative log-likelihood of the preferences, plus optional margin and centring.

    Args:
        chosen_rewards: (B,) r(x, y_c).
        rejected_rewards: (B,) r(x, y_r).
        margin: None (no margin), a float for every pair, or (B,) per-pair margins m_i (Llama 2).
        centering_coef: η ≥ 0 of the centring term η·(r_c + r_r)² (Eisenstein et al. 2023).
        num_pairs: divide the summed per-pair losses by this instead of B. Pass the number of
            pairs of the whole optimizer step when accumulating gradients, so that 1×8 and 8×1
            micro-batching give the same gradient.

    Returns:
        RewardModelLossOutput; the diagnostics are means over this call's B pairs.
    """
    if chosen_rewards.dim() != 1 or chosen_rewards.shape != rejected_rewards.shape:
        raise ValueError(
            f"chosen_rewards and rejected_rewards must both be (B,), got {tuple(chosen_rewards.shape)} "
            f"and {tuple(rejected_rewards.shape)}"
        )
    if chosen_rewards.numel() == 0:
        raise ValueError("bradley_terry_loss: no pairs (B = 0)")
    if centering_coef < 0:
        raise ValueError(f"centering_coef must be >= 0, got {centering_coef}")
    if num_pairs is not None and not num_pairs > 0:
        raise ValueError(f"num_pairs must be > 0, got {num_pairs}")
    chosen, rejected = chosen_rewards.float(), rejected_rewards.float()
    difference = chosen - rejected
    if margin is not None:
        m = torch.as_tensor(margin, dtype=difference.dtype, device=difference.device)
        if m.dim() not in (0, 1) or (m.dim() == 1 and m.shape != difference.shape):
            raise ValueError(f"margin must be a float or (B,) = {tuple(difference.shape)}, got {tuple(m.shape)}")
        difference = difference - m
    # −log σ(z) = softplus(−z), computed stably for large |z|.
    per_pair = -F.logsigmoid(difference)
    if centering_coef:
        per_pair = per_pair + centering_coef * (chosen + rejected) ** 2
    denominator = float(num_pairs) if num_pairs is not None else float(per_pair.numel())
    with torch.no_grad():
        gap = chosen - rejected
        stats = dict(
            accuracy=(gap > 0).float().mean(),
            margin=gap.mean(),
            mean_reward=torch.cat([chosen, rejected]).mean(),
            chosen_reward=chosen.mean(),
            rejected_reward=rejected.mean(),
        )
    return RewardModelLossOutput(loss=per_pair.sum() / denominator, **stats)
