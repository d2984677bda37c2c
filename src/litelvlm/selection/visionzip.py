"""VisionZip: dominant tokens by CLS attention, plus contextual tokens merged from the rest."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import LiteLVLMError
from .base import DOMINANT, MERGED, Selection, TokenScores, gather_rows, register

# VisionZip's published splits (54+10, 108+20, 162+30) all give 10/64 of the budget to contextual tokens.
CONTEXTUAL_SHARE = 10 / 64


def visionzip_split(budget: int, contextual_share: float = CONTEXTUAL_SHARE) -> tuple[int, int]:
    """(dominant, contextual) token counts for a budget; at least one dominant token."""
    contextual = min(round(budget * contextual_share), budget - 1)
    return budget - contextual, contextual


@register(
    "visionzip",
    needs=("cls_attention", "keys", "features"),
    description="dominant tokens by CLS attention + the rest merged into uniformly chosen contextual tokens",
)
def visionzip_select(scores: TokenScores, budget: int, *, contextual: int | None = None) -> Selection:
    """Dominant: the top-D patches by CLS attention, in raster order. Contextual: of the remaining patches
    (raster order) every `step`-th is a target; every other remaining patch is assigned to the target with the
    most similar (cosine) head-averaged key, and each contextual feature is target + mean of its assigned
    features, as in VisionZip. Returns the merged features; `indices` name each contextual token's target.
    """
    dominant, contextual = (
        visionzip_split(budget) if contextual is None else (budget - contextual, contextual)
    )
    if not 0 <= contextual < budget:
        raise LiteLVLMError(
            f"visionzip contextual tokens must lie in [0, {budget - 1}], got {contextual}; pass a value in [0, {budget - 1}]."
        )
    features, keys = scores.features, scores.keys
    batch, num_patches, _ = features.shape
    device = features.device

    top = scores.cls_attention.argsort(dim=1, descending=True, stable=True)[:, :dominant]
    is_dominant = torch.zeros(batch, num_patches, dtype=torch.bool, device=device).scatter_(1, top, True)
    positions = torch.arange(num_patches, device=device).expand(batch, -1)
    # Raster order of dominant patches first, then of the remaining ones.
    by_group = torch.where(is_dominant, positions, positions + num_patches).argsort(dim=1)
    dominant_idx, rest_idx = by_group[:, :dominant], by_group[:, dominant:]
    indices, kept_features = dominant_idx, gather_rows(features, dominant_idx)
    kinds = torch.full_like(dominant_idx, DOMINANT)
    if contextual > 0:
        num_rest = num_patches - dominant
        step = max(1, num_rest // contextual)
        target_slots = torch.arange(0, num_rest, step, device=device)[:contextual]
        is_target = torch.zeros(num_rest, dtype=torch.bool, device=device)
        is_target[target_slots] = True
        target_idx, merge_idx = rest_idx[:, target_slots], rest_idx[:, ~is_target]
        unit_keys = F.normalize(keys.float(), dim=-1)
        similarity = gather_rows(unit_keys, merge_idx) @ gather_rows(unit_keys, target_idx).transpose(1, 2)
        assign = F.one_hot(similarity.argmax(dim=2), num_classes=target_slots.numel()).to(features.dtype)
        counts = assign.sum(dim=1).clamp(min=1).unsqueeze(-1)
        merged = assign.transpose(1, 2) @ gather_rows(features, merge_idx) / counts
        indices = torch.cat([indices, target_idx], dim=1)
        kept_features = torch.cat([kept_features, gather_rows(features, target_idx) + merged], dim=1)
        kinds = torch.cat([kinds, torch.full_like(target_idx, MERGED)], dim=1)
    return Selection(indices, kinds, kept_features)
