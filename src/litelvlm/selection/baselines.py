"""Before-LLM baselines that rank patches by one score (or none) and keep them in raster order."""

from __future__ import annotations

import math

import torch

from .base import KEPT, Selection, TokenScores, raster_selection, register


def _top_scores(scores: torch.Tensor, budget: int) -> Selection:
    """Top-`budget` entries of scores [B, N] (ties to the lower index), returned in raster order."""
    order = scores.argsort(dim=1, descending=True, stable=True)[:, :budget]
    keep = torch.zeros_like(scores, dtype=torch.bool).scatter_(1, order, True)
    return raster_selection(keep)


@register("random", description="uniformly random patches, reproducible under `seed`, raster order")
def random_select(scores: TokenScores, budget: int, *, seed: int = 0) -> Selection:
    """Each sample draws its own subset from one generator seeded with `seed`."""
    generator = torch.Generator().manual_seed(seed)
    noise = torch.rand(scores.batch_size, scores.num_patches, generator=generator).to(scores.device)
    return _top_scores(noise, budget)


def cell_centres(grid: tuple[int, int], coarse: tuple[int, int]) -> torch.Tensor:
    """[rows * cols] raster index of the original patch under the centre of each coarse cell (uniform's
    sub-grid, downsample/pool's made tokens)."""
    rows, cols = grid
    coarse_rows, coarse_cols = coarse
    row_ids = ((torch.arange(coarse_rows) + 0.5) * rows / coarse_rows).floor().long().clamp(max=rows - 1)
    col_ids = ((torch.arange(coarse_cols) + 0.5) * cols / coarse_cols).floor().long().clamp(max=cols - 1)
    return (row_ids[:, None] * cols + col_ids[None, :]).flatten()


def uniform_indices(grid: tuple[int, int], budget: int) -> torch.Tensor:
    """`budget` patch indices spread evenly over a rows x cols grid, in raster order.

    A sub-grid of about sqrt(budget * rows / cols) rows is laid over the patch grid at cell centres; when it
    holds more points than the budget, evenly spaced points of it are kept.
    """
    rows, cols = grid
    sub_rows = min(rows, max(1, round(math.sqrt(budget * rows / cols))))
    sub_cols = min(cols, math.ceil(budget / sub_rows))
    sub_rows = min(rows, math.ceil(budget / sub_cols))
    points = cell_centres(grid, (sub_rows, sub_cols))
    if points.numel() > budget:
        points = points[torch.linspace(0, points.numel() - 1, budget).round().long()]
    return points


@register("uniform", description="an even spatial grid of patches, independent of the image")
def uniform_select(scores: TokenScores, budget: int) -> Selection:
    indices = uniform_indices(scores.grid, budget).to(scores.device).expand(scores.batch_size, -1).clone()
    return Selection(indices, torch.full_like(indices, KEPT))


@register(
    "topk_similarity",
    needs=("similarity",),
    description="the standard ranking: patches most similar to any text (max over texts)",
)
def topk_similarity_select(scores: TokenScores, budget: int) -> Selection:
    similarity = scores.similarity
    if scores.text_mask is not None:
        similarity = similarity.masked_fill(~scores.text_mask.unsqueeze(-1), float("-inf"))
    return _top_scores(similarity.amax(dim=1), budget)


@register(
    "cls_attention",
    needs=("cls_attention",),
    description="patches the CLS token attends to most at the select layer (FasterVLM style)",
)
def cls_attention_select(scores: TokenScores, budget: int) -> Selection:
    return _top_scores(scores.cls_attention, budget)
