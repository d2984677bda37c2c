"""Fewer tokens by a coarser image: `downsample` (the image resized, a second, smaller CLIP pass; VTC-Bench's
baseline) and `pool` (the patch features average-pooled to the same grid; no second pass).

Neither selects patches: every output token is made (kind "merged"); its index is the original patch under the
centre of its cell, so overlays and recall diagnostics show where it looks (two cells may share a patch when
the coarse grid is wider than the patch grid).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..errors import LiteLVLMError
from .base import MERGED, Selection, TokenScores, register
from .baselines import cell_centres

GRIDS = ("exact", "square")


def token_grid(
    budget: int, grid: str = "exact", patch_grid: tuple[int, int] | None = None
) -> tuple[int, int]:
    """(rows, cols) of the coarser grid for a budget below the patch grid's size (at or above it: the patch
    grid itself).

    "exact": rows = the largest divisor of the budget <= sqrt(budget), cols = budget / rows (rows <= cols):
    exactly `budget` tokens (192 -> 12 x 16, 128 -> 8 x 16, 64 -> 8 x 8; a prime budget is one row, which
    may be wider than the patch grid). "square": round(sqrt(budget)) on both sides, VTC-Bench's square images
    (192 -> 14 x 14 = 196 tokens).
    """
    if grid not in GRIDS:
        raise LiteLVLMError(f"grid must be one of {', '.join(GRIDS)}, got {grid!r}; pass one of those.")
    if patch_grid is not None and budget >= patch_grid[0] * patch_grid[1]:
        return patch_grid
    if grid == "square":
        side = max(1, round(math.sqrt(budget)))
        return side, side
    rows = max(divisor for divisor in range(1, math.isqrt(budget) + 1) if budget % divisor == 0)
    return rows, budget // rows


def _made_tokens(scores: TokenScores, coarse: tuple[int, int], features: torch.Tensor) -> Selection:
    indices = cell_centres(scores.grid, coarse).to(features.device).expand(features.shape[0], -1).clone()
    return Selection(indices, torch.full_like(indices, MERGED), features)


@register(
    "downsample",
    needs=("encode_grid",),
    description="the image resized so CLIP yields `budget` tokens (a second, smaller vision pass)",
)
def downsample_select(scores: TokenScores, budget: int, *, grid: str = "exact") -> Selection:
    """The select-layer patches of the image resized (bicubic, antialiased) to `token_grid(budget, grid)`
    patches, position embeddings interpolated; raster order."""
    coarse = token_grid(budget, grid, scores.grid)
    return _made_tokens(scores, coarse, scores.encode_grid(coarse))


@register(
    "pool",
    needs=("features",),
    description="the patch features average-pooled to a coarser grid of `budget` tokens",
)
def pool_select(scores: TokenScores, budget: int, *, grid: str = "exact") -> Selection:
    """adaptive_avg_pool2d of the [rows, cols] patch grid to `token_grid(budget, grid)` (PyTorch's bins,
    overlapping where the sizes do not divide); raster order."""
    coarse = token_grid(budget, grid, scores.grid)
    features = scores.features
    batch, _, width = features.shape
    rows, cols = scores.grid
    pooled = F.adaptive_avg_pool2d(features.float().transpose(1, 2).reshape(batch, width, rows, cols), coarse)
    return _made_tokens(scores, coarse, pooled.flatten(2).transpose(1, 2).to(features.dtype))
