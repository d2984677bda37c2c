"""A faster forward for transformers' SAM ViT image encoder: the same modules and weights, the same mathematics.

SAM ViT-H's image encoder is the largest budget-independent stage of every host (5.6 TFLOP per image), so every
second it wastes caps what token pruning can gain end to end. transformers' `SamVisionEncoder` loses time in places
that have nothing to do with its matrix products; on a 2-core CPU in bf16 this forward takes 7.3 s against 13.1 s
(`benchmarks/sam_encoder.py`, results in `benchmarks/results/sam_encoder_cpu_bf16.md`):

- the decomposed relative-position bias is materialised as a [B*heads, L, L] mask (512 MB per global block) and
  handed to SDPA; here it goes into the scores directly (`(q * scale) @ k^T + rel_h + rel_w`, as Meta's code),
  attention runs in blocks of 8 MB of scores that stay in cache (one head x 1,024 queries for a global block:
  2.4x faster than transformers' SDPA call), and the softmax runs in the module dtype (as Meta's bf16 SAM);
- windowed blocks pad the normalised tokens and run `qkv` and `proj` on the padding (4,900 instead of 4,096
  tokens); here `qkv` runs on the real tokens and the padding gets its exact value, the `qkv` bias (Meta pads the
  LayerNorm output with zeros before `qkv`);
- the MLP's exact GELU is a separate pass over [B, 64, 64, 5120]; on a CPU with oneDNN it runs inside the
  `lin1` GEMM (the fused linear-pointwise kernel PyTorch's own compiler uses), 15 % faster in bf16. That kernel
  is a private PyTorch op (`torch.ops.mkldnn._linear_pointwise`): it is probed once per dtype and used only when
  it exists and agrees with the plain path; `LITELVLM_PRIVATE_KERNELS=0` turns it (and any future private fast
  path) off;
- its patch embedding returns a permuted (channels-first in memory) view, so the residual stream stays
  non-contiguous; here it is made contiguous once.

`encode_image(encoder, pixels)` is a drop-in for `encoder(pixels).last_hidden_state`; tests hold every layer to
transformers' forward (fp32, 1e-5) and the whole encoder to Meta's segment-anything (fp32, 1e-4).
"""

from __future__ import annotations

import functools
import os

import torch
import torch.nn.functional as F
from torch import Tensor
from transformers.activations import GELUActivation
from transformers.models.sam.modeling_sam import (
    SamMLPBlock,
    SamVisionAttention,
    SamVisionEncoder,
    SamVisionLayer,
)

# Scores of at most this many elements exist at once (8 MB in bf16), so that the softmax and `@ v` read them
# from cache rather than memory: 2.4x faster for a global block of ViT-H on a 2-core CPU (one head and 1,024
# queries at a time) than 64 MB blocks, 1.4x for a windowed one (109 windows x heads at a time).
MAX_SCORE_ELEMENTS = 2**22
# Set to "0" to run only public PyTorch operators (the private oneDNN kernels are faster on CPUs that have them).
PRIVATE_KERNELS_VARIABLE = "LITELVLM_PRIVATE_KERNELS"


def private_kernels_enabled() -> bool:
    """Whether private PyTorch kernels may be used (read at each call, so the switch takes effect at once)."""
    return os.environ.get(PRIVATE_KERNELS_VARIABLE, "1") != "0"


@torch.no_grad()
def encode_image(encoder: SamVisionEncoder, pixel_values: Tensor) -> Tensor:
    """[B,3,S,S] pixels (encoder dtype) -> image embeddings [B,out_channels,S/patch,S/patch]."""
    # The patch embedding is a permuted view of the convolution output; one copy makes the stream contiguous.
    hidden = encoder.patch_embed(pixel_values).contiguous()  # [B,H,W,C]
    if encoder.pos_embed is not None:
        hidden += encoder.pos_embed
    for layer in encoder.layers:
        hidden = layer_forward(layer, hidden)
    return encoder.neck(hidden)


def layer_forward(layer: SamVisionLayer, hidden: Tensor) -> Tensor:
    """One ViT block, windowed (`layer.window_size > 0`) or global: [B,H,W,C] contiguous -> [B,H,W,C]."""
    attn = layer.attn
    batch, height, width, channels = hidden.shape
    heads = attn.num_attention_heads
    head_dim = channels // heads
    qkv = attn.qkv(layer.layer_norm1(hidden))  # [B,H,W,3C]
    window = layer.window_size
    if window > 0:
        qkv = _pad_to_windows(qkv, window, attn.qkv.bias)
        rows, cols = qkv.shape[1] // window, qkv.shape[2] // window
        grid = (window, window)
        # [B, rows, win, cols, win, 3, heads, d] -> [3, B*rows*cols*heads, win*win, d]
        parts = qkv.view(batch, rows, window, cols, window, 3, heads, head_dim).permute(
            5, 0, 1, 3, 6, 2, 4, 7
        )
    else:
        grid = (height, width)
        # [B, H*W, 3, heads, d] -> [3, B*heads, H*W, d]
        parts = qkv.view(batch, height * width, 3, heads, head_dim).permute(2, 0, 3, 1, 4)
    query, key, value = parts.reshape(3, -1, grid[0] * grid[1], head_dim).unbind(0)
    rel_h, rel_w = relative_position_terms(attn, query, grid) if attn.use_rel_pos else (None, None)
    out = attention(query, key, value, attn.scale, grid, rel_h, rel_w)  # [N, L, d]
    if window > 0:
        out = out.view(batch, rows, cols, heads, window, window, head_dim).permute(0, 1, 4, 2, 5, 3, 6)
        out = out.reshape(batch, rows * window, cols * window, channels)[:, :height, :width]
    else:
        out = out.view(batch, heads, height, width, head_dim).permute(0, 2, 3, 1, 4)
    hidden = hidden + attn.proj(out.reshape(batch, height, width, channels))
    return hidden + mlp_forward(layer.mlp, layer.layer_norm2(hidden))


def mlp_forward(mlp: SamMLPBlock, hidden: Tensor) -> Tensor:
    """lin2(gelu(lin1(x))) for [..., C]; with an exact GELU on a oneDNN CPU the GELU is fused into `lin1`."""
    exact_gelu = isinstance(mlp.act, GELUActivation) and mlp.act.act is F.gelu
    if exact_gelu and _fused_linear_gelu_supported(hidden):
        inner = torch.ops.mkldnn._linear_pointwise(hidden, mlp.lin1.weight, mlp.lin1.bias, "gelu", [], "none")
        return mlp.lin2(inner)
    return mlp(hidden)


def _fused_linear_gelu_supported(hidden: Tensor) -> bool:
    if not private_kernels_enabled():
        return False
    if hidden.device.type != "cpu" or hidden.dtype not in (torch.float32, torch.bfloat16):
        return False
    return _onednn_supports(hidden.dtype)


@functools.cache
def _onednn_supports(dtype: torch.dtype) -> bool:
    """oneDNN is built in, has native kernels for `dtype` on this CPU, and its private fused op (the one
    PyTorch's compiler uses) still exists with this signature and meaning: probed once on a tiny input."""
    if not torch.backends.mkldnn.is_available() or not hasattr(torch.ops.mkldnn, "_linear_pointwise"):
        return False
    if dtype == torch.bfloat16 and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return False
    generator = torch.Generator().manual_seed(0)
    x, weight, bias = (
        torch.randn(shape, generator=generator, dtype=dtype) for shape in ((3, 8), (4, 8), (4,))
    )
    try:
        fused = torch.ops.mkldnn._linear_pointwise(x, weight, bias, "gelu", [], "none")
    except (RuntimeError, TypeError):
        return False
    return torch.allclose(fused.float(), F.gelu(F.linear(x, weight, bias)).float(), rtol=0.02, atol=0.02)


def _pad_to_windows(qkv: Tensor, window: int, bias: Tensor | None) -> Tensor:
    """[B,H,W,3C] -> [B,Hp,Wp,3C] with Hp, Wp multiples of `window`. Padded tokens get `qkv(0) = bias`, exactly
    what Meta's zero padding of the LayerNorm output produces, without running `qkv` on them."""
    batch, height, width, features = qkv.shape
    padded_h, padded_w = -(-height // window) * window, -(-width // window) * window
    if (padded_h, padded_w) == (height, width):
        return qkv
    padded = qkv.new_empty(batch, padded_h, padded_w, features)
    padded[:, :height, :width] = qkv
    fill = bias if bias is not None else 0.0
    padded[:, height:] = fill
    padded[:, :height, width:] = fill
    return padded


def relative_position_terms(
    attn: SamVisionAttention, query: Tensor, grid: tuple[int, int]
) -> tuple[Tensor, Tensor]:
    """MViTv2's decomposed relative positions for queries [N, gh*gw, d] on a gh x gw grid.

    Returns rel_h [N, L, gh] and rel_w [N, L, gw]: the bias of query i and key (kh, kw) is
    rel_h[:, i, kh] + rel_w[:, i, kw] (from the unscaled query, as in Meta's code).
    """
    grid_h, grid_w = grid
    table_h = attn.get_rel_pos(grid_h, grid_h, attn.rel_pos_h)  # [gh, gh, d]
    table_w = attn.get_rel_pos(grid_w, grid_w, attn.rel_pos_w)  # [gw, gw, d]
    n, length, dim = query.shape
    spatial = query.view(n, grid_h, grid_w, dim)
    rel_h = torch.einsum("nhwc,hkc->nhwk", spatial, table_h.to(query.dtype)).reshape(n, length, grid_h)
    rel_w = torch.einsum("nhwc,wkc->nhwk", spatial, table_w.to(query.dtype)).reshape(n, length, grid_w)
    return rel_h, rel_w


def attention(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    scale: float,
    grid: tuple[int, int],
    rel_h: Tensor | None = None,
    rel_w: Tensor | None = None,
    max_score_elements: int = MAX_SCORE_ELEMENTS,
) -> Tensor:
    """softmax((q * scale) @ k^T + rel_h + rel_w) @ v for q, k, v [N, L, d] (keys on a gh x gw grid) -> [N, L, d].

    Small grids (gh + gw <= d: SAM's 14 x 14 windows) fold the bias into the product: q' = [q * scale, rel_h,
    rel_w], k' = [k, one-hot key row, one-hot key column], so one GEMM with d + gh + gw inner terms gives the
    biased scores (2x faster than adding [N, L, gh, gw]-broadcast terms, whose inner dimension is only 14). Large
    grids (global blocks) add the two terms in place instead, which costs less than growing the GEMM. Items and
    queries go in blocks so that the scores [items, queries, L] stay under `max_score_elements`; the softmax runs
    in the input dtype.
    """
    n, length, _ = query.shape
    grid_h, grid_w = grid
    fold = rel_h is not None and grid_h + grid_w <= query.shape[-1]
    if fold:
        query, key = _fold_relative_positions(query * scale, key, rel_h, rel_w, grid)
    else:
        query = query * scale
    key_t = key.transpose(1, 2).contiguous()  # bmm would copy a transposed view once per block
    out = torch.empty_like(value)
    # Whole sequences of as many items as fit (windows), else one item and as many queries as fit (global).
    items = max(1, min(n, max_score_elements // (length * length)))
    queries = length if items > 1 else max(1, min(length, max_score_elements // length))
    for first in range(0, n, items):
        rows = slice(first, first + items)
        for start in range(0, length, queries):
            cols = slice(start, start + queries)
            scores = torch.bmm(query[rows, cols], key_t[rows])  # [items, queries, L]
            if rel_h is not None and not fold:
                grid_scores = scores.view(scores.shape[0], scores.shape[1], grid_h, grid_w)
                grid_scores.add_(rel_h[rows, cols, :, None]).add_(rel_w[rows, cols, None, :])
            out[rows, cols] = torch.bmm(scores.softmax(dim=-1), value[rows])
    return out


def _fold_relative_positions(
    scaled_query: Tensor, key: Tensor, rel_h: Tensor, rel_w: Tensor, grid: tuple[int, int]
) -> tuple[Tensor, Tensor]:
    """Queries [N, L, d+gh+gw] and keys [N, L, d+gh+gw] whose dot products are the biased, scaled scores."""
    grid_h, grid_w = grid
    n, length, _ = key.shape
    eye_h = torch.eye(grid_h, dtype=key.dtype, device=key.device)
    eye_w = torch.eye(grid_w, dtype=key.dtype, device=key.device)
    # Key j sits at row j // gw and column j % gw of the grid.
    key_position = torch.cat([eye_h.repeat_interleave(grid_w, dim=0), eye_w.repeat(grid_h, 1)], dim=1)
    query = torch.cat([scaled_query, rel_h, rel_w], dim=-1)
    key = torch.cat([key, key_position.expand(n, length, -1)], dim=-1)
    return query, key
