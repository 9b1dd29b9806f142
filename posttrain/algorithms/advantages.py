"""Advantage estimators: pure functions from rewards (and values) to advantages.

Shapes: B sequences, T response tokens, G samples per prompt. Group-based estimators take the
groups either as G (rows [0, G) answer prompt 0, rows [G, 2G) prompt 1…) or as (B,) group ids
in any row order (`GroupLayout`), so filtered, refilled or shuffled batches keep their groups.
`mask` (B, T) marks response tokens; means, stds and token counts use valid tokens only.
All outputs are detached: advantages are targets, never something to differentiate.

Two conventions, chosen once here:
- GRPO divides by the *sample* std of the group (Bessel's N − 1), as torch.std does and as TRL
  and verl do, so numbers match theirs. Rewards [1, 0, 0, 1]: mean ½, sample std √(1/3).
- `whiten` (REINFORCE++'s global normalisation, PPO's advantage whitening) uses the
  *population* variance over valid tokens (divide by N), as in REINFORCE++'s reference code.
A group whose rewards are all equal gets an advantage of exactly 0: the float mean of equal
numbers is not always that number (six copies of 0.3 in float32 leave a residue of 3e-8,
which the std division would blow up to ~0.03), so such groups are zeroed explicitly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union

import torch

from posttrain.algorithms.masked import check_mask, masked_fill_zero, masked_mean, masked_var


Groups = Union[int, torch.Tensor]  # G (rows grouped consecutively, G per group) or (B,) group ids


@dataclass(frozen=True)
class GroupLayout:
    """How the B rows of a batch form groups: `view` gives the (P, G) matrix of a per-row
    quantity, `unview` puts a (P, G) result back in row order.

    Built from a group size G (rows [0, G) are group 0, ...) or from (B,) group ids in any order
    (rows with the same id form a group; order within a group is kept). Every group must have
    the same size G >= 2, which is what group baselines assume.
    """

    size: int
    order: torch.Tensor | None = None  # row permutation making groups contiguous; None = already are

    @classmethod
    def of(cls, groups, num_rows: int) -> "GroupLayout":
        if isinstance(groups, torch.Tensor):
            return cls._from_ids(groups, num_rows)
        if not isinstance(groups, int) or isinstance(groups, bool) or groups < 2:
            raise ValueError(
                f"group_size (samples per prompt) must be an int >= 2 for a group baseline, got {groups!r}"
            )
        if num_rows % groups != 0:
            raise ValueError(
                f"rewards has {num_rows} entries, not a multiple of group_size={groups}; "
                "expected prompts_per_step * samples_per_prompt rewards, grouped consecutively"
            )
        return cls(groups)

    @classmethod
    def _from_ids(cls, ids: torch.Tensor, num_rows: int) -> "GroupLayout":
        if ids.dim() != 1 or ids.numel() != num_rows:
            raise ValueError(f"group_ids must have shape ({num_rows},), got {tuple(ids.shape)}")
        _, inverse, counts = torch.unique(ids, return_inverse=True, return_counts=True)
        if counts.numel() and int(counts.min()) != int(counts.max()):
            raise ValueError(f"groups must all have the same size for a group baseline; sizes range from "
                             f"{int(counts.min())} to {int(counts.max())}")
        size = int(counts[0]) if counts.numel() else 2
        if size < 2:
            raise ValueError("every group needs >= 2 samples for a group baseline; each group id occurs once")
        order = torch.sort(inverse, stable=True).indices
        contiguous = bool((order == torch.arange(num_rows)).all())
        return cls(size, None if contiguous else order)

    def view(self, values: torch.Tensor) -> torch.Tensor:
        rows = values if self.order is None else values[self.order]
        return rows.reshape(-1, self.size)

    def unview(self, grouped: torch.Tensor) -> torch.Tensor:
        flat = grouped.reshape(-1)
        if self.order is None:
            return flat
        out = torch.empty_like(flat)
        out[self.order] = flat
        return out


def _grouped(rewards: torch.Tensor, groups) -> tuple[torch.Tensor, GroupLayout]:
    """(B,) rewards -> ((P, G) float matrix, layout), after validating shape, groups and finiteness."""
    if rewards.dim() != 1:
        raise ValueError(f"rewards must have shape (B,), got {tuple(rewards.shape)}")
    layout = GroupLayout.of(groups, rewards.numel())
    bad = (~torch.isfinite(rewards)).nonzero().flatten()
    if bad.numel() > 0:
        raise ValueError(f"rewards must be finite; entry {int(bad[0])} is {float(rewards[bad[0]])}")
    return layout.view(rewards.detach().float()), layout


def _uniform_groups(grouped: torch.Tensor) -> torch.Tensor:
    """(P, G) -> (P, 1) bool: True where every reward in the group is identical."""
    return (grouped.amax(dim=1, keepdim=True) == grouped.amin(dim=1, keepdim=True))


def grpo_advantages(rewards: torch.Tensor, groups: Groups, *, scale: bool = True, eps: float = 1e-6) -> torch.Tensor:
    """Group-relative advantage (Shao et al. 2024, DeepSeekMath, "GRPO").

    A_i = (r_i − mean_group) / (std_group + eps), std = sample std (N − 1). With `scale=False`
    the division is dropped: A_i = r_i − mean_group, the unbiased advantage of Dr. GRPO
    (Liu et al. 2025, "Understanding R1-Zero-Like Training: A Critical Perspective").

    Args:
        rewards: (B,) one scalar reward per sequence, B = P·G.
        groups: G ≥ 2 (rows grouped consecutively), or (B,) group ids (see `GroupLayout`).
        scale: divide by the group std (GRPO) or not (Dr. GRPO).
        eps: added to the std so a near-uniform group does not divide by ~0.

    Returns:
        (B,) per-sequence advantage (broadcast it over the sequence's tokens); exactly 0 for
        groups with identical rewards.
    """
    r, layout = _grouped(rewards, groups)
    adv = r - r.mean(dim=1, keepdim=True)
    if scale:
        adv = adv / (r.std(dim=1, keepdim=True) + eps)
    adv = torch.where(_uniform_groups(r), torch.zeros_like(adv), adv)
    return layout.unview(adv)


def dr_grpo_advantages(rewards: torch.Tensor, groups: Groups) -> torch.Tensor:
    """Dr. GRPO advantage A_i = r_i − mean_group (Liu et al. 2025). (B,) -> (B,)."""
    return grpo_advantages(rewards, groups, scale=False)


def rloo_advantages(rewards: torch.Tensor, groups: Groups) -> torch.Tensor:
    """REINFORCE leave-one-out (Ahmadian et al. 2024, "Back to Basics").

    A_i = r_i − mean_{j≠i} r_j = r_i − (Σ_j r_j − r_i)/(G − 1), which equals G/(G−1)·(r_i − mean):
    the baseline excludes the sample itself, so it is independent of r_i and unbiased.

    Args:
        rewards: (B,); groups: G ≥ 2 (grouped consecutively) or (B,) group ids.

    Returns:
        (B,) per-sequence advantage; exactly 0 for groups with identical rewards.
    """
    r, layout = _grouped(rewards, groups)
    baseline = (r.sum(dim=1, keepdim=True) - r) / (layout.size - 1)
    adv = torch.where(_uniform_groups(r), torch.zeros_like(r), r - baseline)
    return layout.unview(adv)


def whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8) -> torch.Tensor:
    """Normalise `x` to unit (population) variance over the valid positions of the whole batch.

    Args:
        x: (B, T) values.
        mask: (B, T) response mask.
        shift_mean: True: (x − μ)/σ (zero mean). False: (x − μ)/σ + μ — rescale the spread
            but keep the original mean (e.g. for rewards whose sign matters).
        eps: added to the variance under the square root.

    Returns:
        (B, T) detached; exactly 0 at padded positions.
    """
    m = check_mask(mask, x, like_name="x")
    x = masked_fill_zero(x.detach().float(), m)
    mean = masked_mean(x, m)
    out = (x - mean) * torch.rsqrt(masked_var(x, m) + eps)
    if not shift_mean:
        out = out + mean
    return masked_fill_zero(out, m)


def gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor,
    gamma: float = 1.0,
    lam: float = 0.95,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016, "High-Dimensional Continuous
    Control Using Generalized Advantage Estimation").

    δ_t = r_t + γ V_{t+1} − V_t,   A_t = δ_t + γλ A_{t+1},   returns_t = A_t + V_t.

    Only valid tokens are steps of the episode: a masked position (padding, or tool output in
    the middle of a multi-turn response) is skipped, so "t+1" is the next *valid* token, and
    after the last valid token V = 0 and A = 0 (the episode has ended). Rewards and values
    at masked positions are ignored.

    Args:
        rewards: (B, T) per-token rewards (usually the sequence reward on the last valid token,
            minus a per-token KL penalty; see `sequence_to_token_rewards`).
        values: (B, T) value estimates V(s_t) from the critic.
        mask: (B, T) response mask.
        gamma: discount γ in [0, 1]. lam: GAE λ in [0, 1].

    Returns:
        (advantages, returns), both (B, T), detached, exactly 0 at masked positions.
    """
    if rewards.shape != values.shape or rewards.dim() != 2:
        raise ValueError(f"rewards {tuple(rewards.shape)} and values {tuple(values.shape)} must both be (B, T)")
    if not (0.0 <= gamma <= 1.0 and 0.0 <= lam <= 1.0):
        raise ValueError(f"gamma and lam must lie in [0, 1], got gamma={gamma}, lam={lam}")
    m = check_mask(mask, rewards, like_name="rewards")
    r = masked_fill_zero(rewards.detach().float(), m)
    v = masked_fill_zero(values.detach().float(), m)
    next_value = torch.zeros_like(r[:, 0])
    next_adv = torch.zeros_like(r[:, 0])
    columns = []
    for t in reversed(range(r.shape[1])):  # a loop over T, vectorised over B
        valid = m[:, t]
        adv_t = r[:, t] + gamma * next_value - v[:, t] + gamma * lam * next_adv
        columns.append(torch.where(valid, adv_t, torch.zeros_like(adv_t)))
        # A masked step passes the next valid step's value and advantage through untouched.
        next_value = torch.where(valid, v[:, t], next_value)
        next_adv = torch.where(valid, adv_t, next_adv)
    advantages = torch.stack(columns[::-1], dim=1)
    returns = masked_fill_zero(advantages + v, m)
    return advantages, returns


def sequence_to_token_rewards(
    rewards: torch.Tensor,
    mask: torch.Tensor,
    kl: torch.Tensor | None = None,
    kl_coef: float = 0.0,
) -> torch.Tensor:
    """Place each sequence reward on its last valid token and subtract a per-token KL penalty.

    r_t = 1[t = last valid token]·r − β·KL_t   (Ziegler et al. 2019; Ouyang et al. 2022).

    Args:
        rewards: (B,) sequence rewards.
        mask: (B, T) response mask; every row needs at least one valid token.
        kl: optional (B, T) per-token KL estimate (e.g. k1 of old policy vs reference).
        kl_coef: β.

    Returns:
        (B, T) detached float token rewards, 0 at masked positions.
    """
    if rewards.dim() != 1 or mask.dim() != 2 or rewards.shape[0] != mask.shape[0]:
        raise ValueError(f"rewards must be (B,) and mask (B, T); got {tuple(rewards.shape)} and {tuple(mask.shape)}")
    m = check_mask(mask, mask)
    empty = (~m.any(dim=1)).nonzero().flatten()
    if empty.numel() > 0:
        raise ValueError(f"row {int(empty[0])} of mask has no response tokens; its reward has nowhere to go")
    positions = torch.arange(m.shape[1], device=m.device).expand_as(m)
    last = torch.where(m, positions, torch.full_like(positions, -1)).amax(dim=1)  # (B,)
    token_rewards = torch.zeros(m.shape, dtype=torch.float32, device=m.device)
    token_rewards[torch.arange(m.shape[0], device=m.device), last] = rewards.detach().float()
    if kl is not None and kl_coef != 0.0:
        if kl.shape != m.shape:
            raise ValueError(f"kl has shape {tuple(kl.shape)} but mask has shape {tuple(m.shape)}")
        token_rewards = token_rewards - kl_coef * masked_fill_zero(kl.detach().float(), m)
    return masked_fill_zero(token_rewards, m)


def reward_to_go(token_rewards: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0) -> torch.Tensor:
    """G_t = Σ_{k ≥ t, valid} γ^(steps from t to k) r_k. (B, T) -> (B, T); GAE with V = 0, λ = 1."""
    advantages, _ = gae(token_rewards, torch.zeros_like(token_rewards), mask, gamma=gamma, lam=1.0)
    return advantages


def reinforce_pp_advantages(
    rewards: torch.Tensor,
    mask: torch.Tensor,
    *,
    kl: torch.Tensor | None = None,
    kl_coef: float = 0.0,
    gamma: float = 1.0,
    groups: Groups | None = None,
) -> torch.Tensor:
    """REINFORCE++ (Hu et al. 2025, "REINFORCE++: Stabilizing Critic-Free Policy Optimization
    with Global Advantage Normalization", arXiv 2501.03262).

    Token reward r_t = 1[t = last]·r − β·KL_t; return G_t = Σ_{k≥t} γ^(k−t) r_k; the advantage is
    G whitened over *all valid tokens of the batch* (global, not per group). With γ = 1 this is
    A_t = r − β Σ_{k≥t} KL_k before whitening, the paper's eq. for the token-level advantage.

    With `groups` set, this is "REINFORCE++ w/ baseline": the group mean reward is
    subtracted from each reward first (KL is not part of the baseline), then the same return
    and global whitening follow. The paper pairs that variant with a k2 KL *loss* instead of
    KL in the reward; pass `kl=None` for that.

    Args:
        rewards: (B,) sequence rewards.
        mask: (B, T) response mask.
        kl: optional (B, T) per-token KL estimate (the paper: k1 of old policy vs reference).
        kl_coef: β. gamma: discount.
        groups: G or (B,) group ids for the baseline variant; None for plain REINFORCE++.

    Returns:
        (B, T) detached per-token advantages, 0 at masked positions.
    """
    if groups is not None:
        r, layout = _grouped(rewards, groups)
        centred = torch.where(_uniform_groups(r), torch.zeros_like(r), r - r.mean(dim=1, keepdim=True))
        rewards = layout.unview(centred)
    token_rewards = sequence_to_token_rewards(rewards, mask, kl, kl_coef)
    return whiten(reward_to_go(token_rewards, mask, gamma), mask)


def reinforce_pp_baseline_advantages(
    rewards: torch.Tensor,
    mask: torch.Tensor,
    groups: Groups,
    *,
    kl: torch.Tensor | None = None,
    kl_coef: float = 0.0,
    gamma: float = 1.0,
) -> torch.Tensor:
    """REINFORCE++ w/ baseline: subtract the group mean reward, then whiten globally. (B, T)."""
    return reinforce_pp_advantages(rewards, mask, kl=kl, kl_coef=kl_coef, gamma=gamma, groups=groups)


@dataclass(frozen=True)
class GroupStats:
    """How informative a batch of groups is; for logging and DAPO dynamic sampling."""

    num_groups: int
    num_uniform: int  # groups whose rewards are all equal: zero advantage, no gradient
    frac_uniform: float
    reward_mean: float
    reward_std_within_group: float  # mean over groups of the sample std of the group's rewards


def group_stats(rewards: torch.Tensor, groups: Groups) -> GroupStats:
    """Summarise (B,) grouped rewards; see `GroupStats`."""
    r, _ = _grouped(rewards, groups)
    uniform = _uniform_groups(r).flatten()
    return GroupStats(
        num_groups=r.shape[0],
        num_uniform=int(uniform.sum()),
        frac_uniform=float(uniform.float().mean()),
        reward_mean=float(r.mean()),
        reward_std_within_group=float(r.std(dim=1).mean()),
    )


def keep_mask_for_informative_groups(rewards: torch.Tensor, groups: Groups) -> torch.Tensor:
    """(B,) bool: True for every sample of a group whose rewards are not all equal.

    DAPO's dynamic sampling (Yu et al. 2025) drops the other groups (all right or all wrong:
    zero advantage, no gradient) and keeps sampling until the batch is full of informative ones.
    """
    r, layout = _grouped(rewards, groups)
    return layout.unview((~_uniform_groups(r)).expand_as(r))
