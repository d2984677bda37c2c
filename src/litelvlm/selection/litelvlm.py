"""LiteLVLM: keep the patches CLIP finds *least* similar to each text, then fill with context tokens.

DESIGN.md section 1, step by step: per text the k = floor(share * budget) // T lowest-similarity patches, their
union U (index order), then the highest-context patches not in U until the budget is met. With order="paper"
the LLM receives [context tokens in rank order] + [U in index order], as the authors' code does.
"""

from __future__ import annotations

import torch

from ..errors import LiteLVLMError
from .base import CONTEXT, LOW_SIMILARITY, Selection, TokenScores, inverse_permutation, register

ORDERS = ("paper", "raster")


def low_similarity_mask(
    similarity: torch.Tensor, per_text: torch.Tensor, text_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Union over texts of each text's `per_text` lowest-similarity patches.

    similarity [B, T, N], per_text [B] int64, text_mask [B, T] bool -> mask [B, N] bool.
    Ties are broken by patch index (stable sort).
    """
    batch, num_texts, num_patches = similarity.shape
    ascending = similarity.argsort(dim=-1, stable=True)
    rank = inverse_permutation(ascending.reshape(batch * num_texts, num_patches)).view_as(ascending)
    chosen = rank < per_text.view(batch, 1, 1)
    if text_mask is not None:
        chosen &= text_mask.unsqueeze(-1)
    return chosen.any(dim=1)


@register(
    "litelvlm",
    needs=("similarity", "context"),
    description="lowest CLIP text-patch similarity per text (the inversion) + top context tokens to fill",
)
def litelvlm_select(
    scores: TokenScores,
    budget: int,
    *,
    order: str = "paper",
    low_similarity_share: float = 1.0,
) -> Selection:
    """LiteLVLM selection for a batch; returns [B, budget] indices (budget < N).

    order: "paper" ([context by rank] + [low-similarity by index], the authors' order) or "raster" (sorted).
    low_similarity_share: fraction of the budget given to low-similarity tokens before the per-text split;
        1.0 reproduces the authors (k = budget // T), 0.0 keeps context tokens only.
    """
    if order not in ORDERS:
        raise LiteLVLMError(f"order must be one of {', '.join(ORDERS)}, got {order!r}; pass one of those.")
    if not 0.0 <= low_similarity_share <= 1.0:
        raise LiteLVLMError(
            f"low_similarity_share must lie in [0, 1], got {low_similarity_share!r}; pass a value in [0, 1]."
        )
    similarity, context = scores.similarity, scores.context
    batch, num_texts, num_patches = similarity.shape
    device = similarity.device
    text_mask = scores.text_mask
    texts_per_sample = (
        text_mask.sum(dim=1) if text_mask is not None else torch.full((batch,), num_texts, device=device)
    )
    if bool((texts_per_sample == 0).any()):
        raise LiteLVLMError("litelvlm needs at least one text per image; pass the referring expression(s).")

    low_quota = int(low_similarity_share * budget)
    per_text = torch.div(low_quota, texts_per_sample, rounding_mode="floor").long()
    in_low = low_similarity_mask(similarity, per_text, text_mask)

    # Fill from the context ranking, skipping patches already in the low-similarity set.
    context_order = context.argsort(dim=1, descending=True, stable=True)
    context_rank = inverse_permutation(context_order)
    free_in_rank_order = ~in_low.gather(1, context_order)
    num_context = budget - in_low.sum(dim=1, keepdim=True)
    taken_in_rank_order = free_in_rank_order & (free_in_rank_order.cumsum(dim=1) <= num_context)
    in_context = torch.zeros_like(in_low).scatter_(1, context_order, taken_in_rank_order)

    # One sort key puts the kept tokens first, in the requested order.
    positions = torch.arange(num_patches, device=device).expand(batch, -1)
    dropped = 3 * num_patches
    if order == "paper":
        sort_key = torch.where(
            in_context, context_rank, torch.where(in_low, num_patches + positions, dropped)
        )
    else:
        sort_key = torch.where(in_context | in_low, positions, dropped)
    indices = sort_key.argsort(dim=1, stable=True)[:, :budget]
    kinds = torch.where(in_low.gather(1, indices), LOW_SIMILARITY, CONTEXT)
    return Selection(indices, kinds)
