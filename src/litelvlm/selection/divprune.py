"""DivPrune: greedy max-min diversity over the cosine distances of patch features."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import Selection, TokenScores, raster_selection, register


def cosine_distances(features: torch.Tensor) -> torch.Tensor:
    """1 - cosine similarity between all pairs: [B, N, D] -> [B, N, N] (float32)."""
    unit = F.normalize(features.float(), dim=-1)
    return 1.0 - unit @ unit.transpose(1, 2)


@register(
    "divprune",
    needs=("features",),
    description="greedy max-min diversity of the patch features (cosine distance)",
)
def divprune_select(scores: TokenScores, budget: int) -> Selection:
    """First the patch farthest from its nearest neighbour, then repeatedly the patch whose distance to the
    kept set is largest. Kept in raster order. The min-distance to the kept set is updated incrementally,
    which picks the same patches as recomputing it from scratch each step.
    """
    distances = cosine_distances(scores.features)
    batch, num_patches, _ = distances.shape
    rows = torch.arange(batch, device=distances.device)
    # Nearest-neighbour distance excludes the patch itself (DivPrune takes the 2nd smallest of each column).
    nearest = distances.topk(2, dim=1, largest=False).values[:, 1, :]
    first = nearest.argmax(dim=1)
    keep = torch.zeros(batch, num_patches, dtype=torch.bool, device=distances.device)
    keep[rows, first] = True
    min_distance = distances[rows, first]
    for _ in range(budget - 1):
        candidate = min_distance.masked_fill(keep, float("-inf")).argmax(dim=1)
        keep[rows, candidate] = True
        min_distance = torch.minimum(min_distance, distances[rows, candidate])
    return raster_selection(keep)
