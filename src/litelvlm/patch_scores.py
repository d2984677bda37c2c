"""The CLIP formulas token selection rests on, as pure functions (no model, no cache).

`ClipScorer` (scoring.py) computes their inputs from a CLIP model and caches the results per image; anything else
that has the same tensors can call them directly. All inputs are float32.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def text_patch_similarity(text_embeds: torch.Tensor, patch_embeds: torch.Tensor) -> torch.Tensor:
    """Raw dot products of texts and patches in CLIP's joint space (not L2-normalised, as the authors' code).

    text_embeds [B, T, P] (`text_projection` of the pooled end-of-text state), patch_embeds [B, N, P] (patches
    through `post_layernorm` and `visual_projection`) -> similarity [B, T, N].
    """
    return torch.einsum("btp,bnp->btn", text_embeds, patch_embeds)


def context_contribution(query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """LiteLVLM's context score of each patch: ||a_i v_i||_2 with a = softmax_i(cos(q, k_i) / sqrt(D)).

    query [B, 1, D]: the CLS token's full-width `q_proj` output in CLIP's last layer; keys, values [B, N, D]: the
    patches' `k_proj` / `v_proj` outputs there (before the head split) -> context [B, N].
    """
    cosine = F.normalize(keys, dim=-1) @ F.normalize(query, dim=-1).transpose(1, 2)  # [B, N, 1]
    weights = torch.softmax(cosine.squeeze(-1) / math.sqrt(keys.shape[-1]), dim=-1)
    return weights * values.norm(dim=-1)


def cls_attention(query: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """Head-averaged attention of the CLS token to each patch (FasterVLM / VisionZip's dominant-token score).

    query [B, 1, H, d]: the CLS query per head; keys [B, 1+N, H, d]: keys of CLS and the N patches -> [B, N]:
    softmax over all 1+N keys of q k / sqrt(d), the patch columns, averaged over the H heads.
    """
    logits = torch.einsum("bqhd,bkhd->bhqk", query, keys) * query.shape[-1] ** -0.5
    attention = logits.softmax(dim=-1)[:, :, 0, 1:]
    return attention.mean(dim=1)
