"""VisPruner: important tokens by CLS attention, then diverse tokens by iterative duplicate removal.

docs/methods.md and the baselines spec (section 1) give the algorithm; this module follows the official
`encode_images`, including its re-ordering of the residual list between removal passes.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..errors import LiteLVLMError
from .base import DOMINANT, KEPT, Selection, TokenScores, register

IMPORTANT_RATIO = 0.5  # the official default, and LightCompress's setting for 192 / 128 / 64 tokens
REMOVED_PER_PASS = 8  # duplicates removed per pass (the last pass removes the remainder)


def diverse_tokens(residual: torch.Tensor, cosine: torch.Tensor, count: int) -> torch.Tensor:
    """VisPruner's diversity pass: shrink each row of `residual` to `count` patches.

    residual [B, R] int64: candidate patches, most important first; cosine [B, N, N]: patch-feature cosine
    similarities. While more than `count` remain, the list is split into even (A) and odd (B) positions, the
    A members most similar to any B member are removed (at most 8 per pass), and the list becomes [remaining
    A by decreasing similarity] + [B in order]. Returns [B, count] patch indices (unordered).
    """
    while residual.shape[1] > count:
        remove = min(REMOVED_PER_PASS, residual.shape[1] - count)
        evens, odds = residual[:, 0::2], residual[:, 1::2]
        rows = cosine.gather(1, evens.unsqueeze(-1).expand(-1, -1, cosine.shape[2]))
        redundancy = rows.gather(2, odds.unsqueeze(1).expand(-1, evens.shape[1], -1)).amax(dim=2)
        most_redundant_first = redundancy.argsort(dim=1, descending=True, stable=True)
        residual = torch.cat([evens.gather(1, most_redundant_first)[:, remove:], odds], dim=1)
    return residual


@register(
    "vispruner",
    needs=("cls_attention", "features"),
    description="important tokens by CLS attention + diverse tokens by iterative duplicate removal (VisPruner)",
)
def vispruner_select(
    scores: TokenScores, budget: int, *, important_ratio: float = IMPORTANT_RATIO
) -> Selection:
    """floor(budget * important_ratio) patches with the highest select-layer CLS attention (kind "dominant"),
    then `diverse_tokens` of the rest in decreasing attention order (kind "kept"); raster order, no merging."""
    if isinstance(important_ratio, bool) or not isinstance(important_ratio, (int, float)):
        raise LiteLVLMError(f"vispruner important_ratio must be a number in [0, 1], got {important_ratio!r}.")
    if not 0.0 <= important_ratio <= 1.0:
        raise LiteLVLMError(
            f"vispruner important_ratio must lie in [0, 1], got {important_ratio!r}; pass a value in [0, 1]."
        )
    important = math.floor(budget * important_ratio)
    diverse = budget - important
    order = scores.cls_attention.argsort(dim=1, descending=True, stable=True)
    kept = order[:, :important]
    if diverse > 0:
        unit = F.normalize(scores.features.float(), dim=-1)
        cosine = unit @ unit.transpose(1, 2)
        kept = torch.cat([kept, diverse_tokens(order[:, important:], cosine, diverse)], dim=1)
    is_important = torch.zeros_like(kept, dtype=torch.bool)
    is_important[:, :important] = True
    raster = kept.argsort(dim=1)
    indices = kept.gather(1, raster)
    kinds = torch.where(is_important.gather(1, raster), DOMINANT, KEPT)
    return Selection(indices, kinds)
