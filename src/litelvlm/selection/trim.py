"""TRIM: keep the patches CLIP ranks by text similarity, plus one token averaging the rest.

The released code keeps the *lowest*-similarity patches (softmax of -s, every version since the method was
added); the paper's wording suggests the highest. `polarity` offers both, the code's by default (baselines spec,
section 3). Several texts per image (GLaMM's conversations) are combined by averaging their distributions.
"""

from __future__ import annotations

import torch

from ..errors import LiteLVLMError
from .base import (
    KEPT,
    MERGED,
    Selection,
    TokenScores,
    gather_rows,
    inverse_permutation,
    raster_selection,
    register,
)

POLARITIES = ("code", "paper")
TEXT_MODES = ("mean", "split")


def trim_log_distribution(
    similarity: torch.Tensor, text_mask: torch.Tensor | None, polarity: str
) -> torch.Tensor:
    """Per text, log-softmax over patches of -s ("code") or +s ("paper"): similarity [B, T, N] -> [B, T, N]
    float64, rows of padded texts -inf.

    Log space in float64 because a float32 softmax of a wide similarity spread underflows to exact zeros, and
    zeros tie, turning the ranking into index order; the spec's ranking is by the similarity itself."""
    sign = -1.0 if polarity == "code" else 1.0
    log_probabilities = torch.log_softmax(sign * similarity.double(), dim=-1)
    if text_mask is not None:
        log_probabilities = log_probabilities.masked_fill(~text_mask.bool().unsqueeze(-1), float("-inf"))
    return log_probabilities


def _top(
    values: torch.Tensor, count: torch.Tensor | int, exclude: torch.Tensor | None = None
) -> torch.Tensor:
    """[B, N] bool: per row the `count` largest values (ties to the lower index), skipping `exclude`."""
    if exclude is not None:
        values = values.masked_fill(exclude, float("-inf"))
    rank = inverse_permutation(values.argsort(dim=1, descending=True, stable=True))
    chosen = rank < (count if isinstance(count, int) else count[:, None])
    return chosen if exclude is None else chosen & ~exclude


@register(
    "trim",
    needs=("similarity", "features"),
    description="patches by CLIP text similarity (lowest, as TRIM's code) + 1 token averaging the rest",
)
def trim_select(
    scores: TokenScores,
    budget: int,
    *,
    polarity: str = "code",
    text_mode: str = "mean",
    count_extra: bool = True,
) -> Selection:
    """k = budget - 1 (count_extra, default) or budget patches, raster order (kind "kept"), then the unweighted
    mean of the other patches' features (kind "merged", index: the first patch not kept; zeros if none).

    text_mode "mean": top-k of the texts' averaged distribution; "split": each text's own top floor(k / #texts),
    their union, topped up from the averaged ranking (LiteLVLM's per-text split). With one text both are TRIM.
    """
    if polarity not in POLARITIES:
        raise LiteLVLMError(
            f"trim polarity must be one of {', '.join(POLARITIES)}, got {polarity!r}; pass one of those."
        )
    if text_mode not in TEXT_MODES:
        raise LiteLVLMError(
            f"trim text_mode must be one of {', '.join(TEXT_MODES)}, got {text_mode!r}; pass one of those."
        )
    if not isinstance(count_extra, bool):
        raise LiteLVLMError(f"count_extra must be true or false, got {count_extra!r}.")
    count = budget - 1 if count_extra else budget
    similarity, text_mask = scores.similarity, scores.text_mask
    batch, num_texts, _ = similarity.shape
    texts = text_mask.sum(dim=1) if text_mask is not None else torch.full((batch,), num_texts)
    texts = texts.to(similarity.device)
    if bool((texts == 0).any()):
        raise LiteLVLMError("trim needs at least one text per image; pass the referring expression(s).")
    per_text = trim_log_distribution(similarity, text_mask, polarity)
    # log of the texts' mean distribution: the same ranking as the mean, without underflow
    mean = torch.logsumexp(per_text, dim=1) - texts[:, None].double().log()
    if text_mode == "mean":
        keep = _top(mean, count)
    else:
        quota = torch.div(count, texts, rounding_mode="floor")
        keep = torch.zeros_like(mean, dtype=torch.bool)
        for text in range(num_texts):
            real = text_mask[:, text] if text_mask is not None else torch.ones_like(keep[:, 0])
            keep |= _top(per_text[:, text], quota) & real[:, None]
        keep |= _top(mean, count - keep.sum(dim=1), exclude=keep)
    kept = raster_selection(keep)
    features = scores.features.float()
    rest = (~keep).float()
    average = (rest.unsqueeze(1) @ features).squeeze(1) / rest.sum(dim=1, keepdim=True).clamp(min=1)
    first_rest = torch.where((~keep).any(dim=1), (~keep).float().argmax(dim=1), 0)
    indices = torch.cat([kept.indices, first_rest[:, None]], dim=1)
    kinds = torch.cat(
        [torch.full_like(kept.indices, KEPT), torch.full_like(first_rest[:, None], MERGED)], dim=1
    )
    rows = torch.cat([gather_rows(features, kept.indices), average[:, None]], dim=1)
    return Selection(indices, kinds, rows.to(scores.features.dtype))
