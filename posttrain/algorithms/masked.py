"""Masked reductions shared by the RL functions.

A response mask (B, T) is 1 (or True) on response tokens and 0 on prompt, padding and tool
output. Every statistic in `posttrain.algorithms` is taken over the mask only, and padded
positions are *selected away* with `torch.where` rather than multiplied by zero: `0 * nan`
and `0 * inf` are nan, so a garbage value in padding (a -inf log-prob, say) would otherwise
leak into the result and into the gradient.
"""

from __future__ import annotations

import torch


def check_mask(mask: torch.Tensor, like: torch.Tensor, *, name: str = "mask", like_name: str = "x") -> torch.Tensor:
    """Validate `mask` against `like` and return it as a bool tensor of the same shape.

    Args:
        mask: (B, T) bool or 0/1 numeric tensor.
        like: (B, T) tensor the mask applies to.

    Raises:
        ValueError: shapes differ, or a numeric mask holds values other than 0 and 1.
    """
    if mask.shape != like.shape:
        raise ValueError(f"{name} has shape {tuple(mask.shape)} but {like_name} has shape {tuple(like.shape)}")
    if mask.dtype == torch.bool:
        return mask
    if not bool(((mask == 0) | (mask == 1)).all()):
        raise ValueError(f"{name} must contain only 0 and 1 (or be a bool tensor)")
    return mask.bool()


def masked_fill_zero(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """`x` where `mask` is true, exactly 0 elsewhere (also where x is nan/inf). Shapes: (B, T)."""
    return torch.where(mask, x, torch.zeros((), dtype=x.dtype, device=x.device))


def masked_sum(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Sum of `x` over valid positions; `dim=None` sums everything. Shapes: x, mask (B, T)."""
    filled = masked_fill_zero(x, mask)
    return filled.sum() if dim is None else filled.sum(dim=dim)


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of `x` over valid positions; 0 where there are none (never nan).

    Shapes: x, mask (B, T); returns a scalar (`dim=None`) or the reduced shape.
    """
    count = mask.sum() if dim is None else mask.sum(dim=dim)
    return masked_sum(x, mask, dim) / count.clamp(min=1).to(x.dtype)


def masked_var(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Population variance (divide by N, not N - 1) of `x` over all valid positions. Scalar."""
    mean = masked_mean(x, mask)
    return masked_mean((x - mean) ** 2, mask)
