"""LLaVA-PruMerge and PruMerge+: keep patches by last-layer CLS attention, merge 32 key-neighbours into each,
and append one extra token summing the pruned patches.

The baselines spec (section 2) restates the official code; at a fixed budget PruMerge keeps the top tokens and
PruMerge+ follows EffiVLM-Bench's rule (outliers by IQR, then a uniform grid), both with `count_extra=True` giving
budget - 1 merged tokens + the extra token = `budget` rows (docs/methods.md lists every choice).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import LiteLVLMError
from .base import DOMINANT, KEPT, MERGED, Selection, TokenScores, register

NEIGHBOURS = 32  # key-neighbours merged into each kept token
IQR_FACTOR = 1.5  # outliers lie above Q3 + 1.5 (Q3 - Q1); the lower fence is not used
MERGE_ORDERS = ("paper", "raster")  # "paper": the published code's order (the name is shared with litelvlm)


def iqr_outlier_count(attention: torch.Tensor) -> torch.Tensor:
    """[B] number of patches per row whose attention lies above the upper IQR fence.

    attention [B, N]. Percentiles as numpy float32 with linear interpolation, like the official code; it pools
    the whole batch, we take each image alone (identical at its batch size of 1).
    """
    values = attention.detach().float().cpu().numpy()
    first, third = np.percentile(values, [25, 75], axis=1)
    fence = third + IQR_FACTOR * (third - first)
    return torch.from_numpy((values > fence[:, None]).sum(axis=1))


def merge_neighbours(
    kept: torch.Tensor, attention: torch.Tensor, keys: torch.Tensor, features: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """PruMerge's merge for kept patches kept [B, k] (in their list order).

    Each kept patch i takes the min(32, N - 1) other patches whose last-layer keys [B, N, D] are most
    cosine-similar to its own (ties to the earlier entry of [kept without i] + [pruned ascending]) and becomes
    y_i = H_i + sum_j a_j H_j with the raw attention a [B, N] as weights (no normalisation) and the original
    features H [B, N, C]. The extra token is e = sum over pruned patches of a_j H_j.
    Returns y [B, k, C], e [B, C] and the extra token's index [B] (the pruned patch with the largest a;
    0 when none is pruned). All float32.
    """
    batch, num_patches = attention.shape
    attention, features = attention.float(), features.float()
    is_kept = torch.zeros(batch, num_patches, dtype=torch.bool, device=kept.device).scatter_(1, kept, True)
    positions = torch.arange(num_patches, device=kept.device).expand(batch, -1)
    pruned_ascending = torch.where(is_kept, positions + num_patches, positions).sort(dim=1).values
    list_order = torch.cat([kept, pruned_ascending[:, : num_patches - kept.shape[1]]], dim=1)  # [B, N]

    unit = F.normalize(keys.float(), dim=-1)
    kept_unit = unit.gather(1, kept.unsqueeze(-1).expand(-1, -1, unit.shape[-1]))
    cosine = (kept_unit @ unit.transpose(1, 2)).gather(
        2, list_order.unsqueeze(1).expand(-1, kept.shape[1], -1)
    )
    slot = torch.arange(kept.shape[1], device=kept.device)
    cosine[:, slot, slot] = float("-inf")  # a token is not its own neighbour
    count = min(NEIGHBOURS, num_patches - 1)
    nearest = list_order.gather(
        1, cosine.argsort(dim=2, descending=True, stable=True)[:, :, :count].flatten(1)
    )
    nearest = nearest.view(batch, kept.shape[1], count)
    weights = torch.zeros(batch, kept.shape[1], num_patches, device=kept.device)
    weights.scatter_(2, nearest, attention.gather(1, nearest.flatten(1)).view_as(nearest))
    merged = features.gather(1, kept.unsqueeze(-1).expand(-1, -1, features.shape[-1])) + weights @ features

    pruned_attention = attention.masked_fill(is_kept, 0.0)
    extra = (pruned_attention.unsqueeze(1) @ features).squeeze(1)
    extra_index = attention.masked_fill(is_kept, float("-inf")).argmax(dim=1)
    extra_index = torch.where(is_kept.all(dim=1), 0, extra_index)
    return merged, extra, extra_index


def _merged_selection(
    scores: TokenScores, kept: torch.Tensor, kept_kinds: torch.Tensor, order: str
) -> Selection:
    """[merged kept tokens] + [extra token] as a Selection, in the official (list, "paper") or raster order."""
    merged, extra, extra_index = merge_neighbours(
        kept, scores.last_cls_attention, scores.last_keys, scores.features
    )
    if order == "raster":
        by_index = kept.argsort(dim=1)
        kept, kept_kinds = kept.gather(1, by_index), kept_kinds.gather(1, by_index)
        merged = merged.gather(1, by_index.unsqueeze(-1).expand_as(merged))
    indices = torch.cat([kept, extra_index[:, None]], dim=1)
    kinds = torch.cat([kept_kinds, torch.full_like(extra_index[:, None], MERGED)], dim=1)
    features = torch.cat([merged, extra[:, None]], dim=1).to(scores.features.dtype)
    return Selection(indices, kinds, features)


def _check(order: str, count_extra: bool) -> None:
    if order not in MERGE_ORDERS:
        raise LiteLVLMError(
            f"order must be one of {', '.join(MERGE_ORDERS)} for PruMerge, got {order!r}; pass one of those."
        )
    if not isinstance(count_extra, bool):
        raise LiteLVLMError(f"count_extra must be true or false, got {count_extra!r}.")


@register(
    "prumerge",
    needs=("last_cls_attention", "last_keys", "features"),
    description="top tokens by last-layer CLS attention, each merged with its 32 key-neighbours, + 1 extra token",
)
def prumerge_select(
    scores: TokenScores, budget: int, *, count_extra: bool = True, order: str = "paper"
) -> Selection:
    """k = budget - 1 (count_extra, the default: `budget` rows in all) or k = budget (budget + 1 rows, the
    official fixed-ratio switch) patches with the highest attention, descending; each merged (kind "kept"),
    then the extra token (kind "merged"). order "paper": that list order, as the official code; "raster": kept
    tokens by patch index, the extra token last."""
    _check(order, count_extra)
    count = budget - 1 if count_extra else budget
    kept = scores.last_cls_attention.argsort(dim=1, descending=True, stable=True)[:, :count]
    return _merged_selection(scores, kept, torch.full_like(kept, KEPT), order)


def prumerge_plus_tokens(attention: torch.Tensor, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """PruMerge+'s `count` tokens per row at a fixed budget (EffiVLM-Bench's rule on CLIP).

    attention [B, N]. n = max(1, IQR outliers); if count > n: the top-n by attention (descending), then the
    first count - n points of range(0, N, max(1, N // count)) not among them, ascending; else the top-count.
    Returns kept [B, count] and whether each is an outlier [B, count] bool.
    """
    num_patches = attention.shape[1]
    outliers = iqr_outlier_count(attention).clamp(min=1).tolist()
    order = attention.argsort(dim=1, descending=True, stable=True).tolist()
    grid = list(range(0, num_patches, max(1, num_patches // max(count, 1))))
    rows, flags = [], []
    for ranked, outlier_count in zip(order, outliers):
        top = ranked[: min(outlier_count, count)]
        taken = set(top)
        fill = [point for point in grid if point not in taken][: count - len(top)]
        rows.append(top + fill)
        flags.append([True] * len(top) + [False] * len(fill))
    device = attention.device
    return torch.tensor(rows, dtype=torch.long, device=device).view(len(rows), count), torch.tensor(
        flags, dtype=torch.bool, device=device
    ).view(len(rows), count)


@register(
    "prumerge_plus",
    needs=("last_cls_attention", "last_keys", "features"),
    description="PruMerge with outliers by IQR plus a uniform grid of tokens, each merged, + 1 extra token",
)
def prumerge_plus_select(
    scores: TokenScores, budget: int, *, count_extra: bool = True, order: str = "paper"
) -> Selection:
    """`prumerge_plus_tokens` (outliers kind "dominant", grid points "kept"), merged as PruMerge, + the extra
    token; count_extra and order as for `prumerge`."""
    _check(order, count_extra)
    count = budget - 1 if count_extra else budget
    kept, is_outlier = prumerge_plus_tokens(scores.last_cls_attention, count)
    return _merged_selection(scores, kept, torch.where(is_outlier, DOMINANT, KEPT), order)
