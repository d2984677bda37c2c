"""Analytical FLOPs of each stage of a grounding host (GLaMM, LISA) or of LLaVA (a multiply-add counts 2), for the
FLOP-ideal speed-up.

Counts what our implementation computes: matrix products of every linear layer, the attention score and
weighted-sum products (the full L x L square, as SDPA's math path computes it; causal kernels skip about half),
convolutions. Element-wise work (norms, softmax, activations) is left out: it is memory-bound and small in FLOPs.
"""

from __future__ import annotations

from dataclasses import dataclass

from .hosts.sam import SAM_IMAGE_SIZE, SAM_VIT_H

SAM_PATCH = 16  # SAM's patch size: a 1024 px input gives a 64 x 64 embedding grid


def transformer_layer(
    tokens: int, width: int, mlp: int, context: int | None = None, gated: bool = False
) -> float:
    """One pre-norm transformer layer on `tokens` queries attending to `context` keys (default: themselves)."""
    context = tokens if context is None else context
    projections = 4 * width * width  # q, k, v, o
    feed_forward = (3 if gated else 2) * width * mlp
    attention = 2 * tokens * context * width  # scores + weighted sum
    return 2.0 * (tokens * (projections + feed_forward) + attention)


@dataclass(frozen=True)
class PipelineDims:
    """Every size the FLOP counts depend on; the defaults are GLaMM-7B (CLIP ViT-L/14-336, Vicuna-7B, an
    MLP projector, SAM ViT-H). `projector_macs`: multiply-adds per visual token of the projector."""

    clip_width: int = 1024
    clip_mlp: int = 4096
    clip_layers: int = 24
    clip_select_layer: int = -2
    clip_patches: int = 576
    clip_patch_size: int = 14
    text_width: int = 768
    text_mlp: int = 3072
    text_layers: int = 12
    projection: int = 768
    llm_width: int = 4096
    llm_mlp: int = 11008
    llm_layers: int = 32
    llm_vocab: int = 32064  # LM head rows (LLaVA-1.5's padded vocabulary); only `llava_stages` reads it
    projector_macs: int = 1024 * 4096 + 4096 * 4096
    sam_width: int = SAM_VIT_H.hidden_size
    sam_mlp: int = SAM_VIT_H.mlp_dim
    sam_layers: int = SAM_VIT_H.num_hidden_layers
    sam_global_layers: int = len(SAM_VIT_H.global_attn_indexes)
    sam_grid: int = SAM_IMAGE_SIZE // SAM_PATCH
    sam_window: int = SAM_VIT_H.window_size
    sam_patch: int = SAM_PATCH
    decoder_width: int = 256
    decoder_mlp: int = SAM_VIT_H.decoder_mlp_dim


def clip_vision(d: PipelineDims) -> float:
    """Patch embedding, the layers up to the select layer, and the last layer's q/k/v (context scores)."""
    tokens = d.clip_patches + 1
    patch_embed = 2.0 * d.clip_patches * 3 * d.clip_patch_size**2 * d.clip_width
    layers = d.clip_layers + 1 + d.clip_select_layer  # -2 -> 23 full layers
    last_qkv = 2.0 * (1 + 2 * d.clip_patches) * d.clip_width * d.clip_width
    return patch_embed + layers * transformer_layer(tokens, d.clip_width, d.clip_mlp) + last_qkv


def clip_text(d: PipelineDims, texts: int, tokens: int) -> float:
    """T texts of `tokens` tokens (padded to the longest) through the text tower and its projection."""
    return texts * (
        d.text_layers * transformer_layer(tokens, d.text_width, d.text_mlp)
        + 2.0 * d.text_width * d.projection
    )


def scoring(d: PipelineDims, texts: int) -> float:
    """Patch projection into CLIP space and the text x patch similarities."""
    return 2.0 * d.clip_patches * d.clip_width * d.projection + 2.0 * texts * d.clip_patches * d.projection


def projector(d: PipelineDims, visual_tokens: int) -> float:
    return 2.0 * visual_tokens * d.projector_macs


def llm_prefill(d: PipelineDims, text_tokens: int, visual_per_layer: list[int]) -> float:
    """Decoder layers with the given visual tokens per layer (+ text tokens everywhere); no LM head."""
    return sum(
        transformer_layer(text_tokens + visual, d.llm_width, d.llm_mlp, gated=True)
        for visual in visual_per_layer
    )


def llm_decode(d: PipelineDims, text_tokens: int, visual_per_layer: list[int], new_tokens: int) -> float:
    """The decoder steps after the prefill that produce `new_tokens` tokens in all (the prefill gives the first):
    step s runs one token per layer against a cache of the prompt (that layer's visual tokens + `text_tokens`)
    and the s tokens before it; no LM head."""
    return sum(
        transformer_layer(1, d.llm_width, d.llm_mlp, context=text_tokens + visual + step + 1, gated=True)
        for step in range(new_tokens - 1)
        for visual in visual_per_layer
    )


def lm_head(d: PipelineDims, positions: int) -> float:
    """The LM head on `positions` hidden states (one per generated token)."""
    return 2.0 * positions * d.llm_width * d.llm_vocab


def vision_tower(d: PipelineDims) -> float:
    """A CLIP vision transformer run whole (patch embedding and every layer), as transformers' CLIPVisionModel
    runs when asked for all hidden states (LLaVA's tower in `LlavaPredictor.set_image`)."""
    patch_embed = 2.0 * d.clip_patches * 3 * d.clip_patch_size**2 * d.clip_width
    return patch_embed + d.clip_layers * transformer_layer(d.clip_patches + 1, d.clip_width, d.clip_mlp)


def seg_projection(d: PipelineDims, segs: int) -> float:
    return 2.0 * segs * (d.llm_width * d.llm_width + d.llm_width * 256)


def sam_encoder(d: PipelineDims) -> float:
    tokens = d.sam_grid * d.sam_grid
    patch_embed = 2.0 * tokens * 3 * d.sam_patch**2 * d.sam_width
    linear = 2.0 * tokens * (4 * d.sam_width**2 + 2 * d.sam_width * d.sam_mlp)
    padded = -(-d.sam_grid // d.sam_window) * d.sam_window
    windows = (padded // d.sam_window) ** 2
    windowed_attention = 2.0 * 2 * windows * (d.sam_window**2) ** 2 * d.sam_width
    global_attention = 2.0 * 2 * tokens * tokens * d.sam_width
    windowed = d.sam_layers - d.sam_global_layers
    neck = 2.0 * tokens * (d.sam_width * 256 + 256 * 256 * 9)
    return (
        patch_embed
        + d.sam_layers * linear
        + windowed * windowed_attention
        + d.sam_global_layers * global_attention
        + neck
    )


def sam_decoder(d: PipelineDims, prompts: int) -> float:
    """Two-way transformer (2 layers + final attention) on 6 tokens x 4096 image tokens, upscaling, masks."""
    image = d.sam_grid * d.sam_grid
    width, half, tokens = d.decoder_width, d.decoder_width // 2, 6
    cross = 2.0 * (2 * image * width * half + 2 * tokens * width * half + 2 * tokens * image * half)
    layer = 2 * cross + 2.0 * tokens * (4 * width * width + 2 * width * d.decoder_mlp)
    final = cross
    upscale = 2.0 * (image * width * 64 * 4 + 4 * image * 64 * 32 * 4)
    masks = 2.0 * 16 * image * 32
    return prompts * (2 * layer + final + upscale + masks)


def pipeline_stages(
    d: PipelineDims,
    *,
    texts: int,
    text_tokens: int,
    clip_text_tokens: int,
    visual_per_layer: list[int],
    segs: int,
) -> dict[str, float]:
    """FLOPs per stage of one image with one conversation (names as in the predictor's timings)."""
    return {
        "clip_vision": clip_vision(d),
        "sam_encoder": sam_encoder(d),
        "clip_text": clip_text(d, texts, clip_text_tokens) if texts else 0.0,
        "selection": scoring(d, texts) if texts else 0.0,
        "projector": projector(d, visual_per_layer[0]),
        "llm": llm_prefill(d, text_tokens, visual_per_layer),
        "seg_projection": seg_projection(d, segs),
        "sam_decoder": sam_decoder(d, segs),
    }


def llava_stages(
    d: PipelineDims,
    *,
    texts: int,
    text_tokens: int,
    clip_text_tokens: int,
    visual_per_layer: list[int],
    new_tokens: int,
) -> dict[str, float]:
    """FLOPs per stage of one image and one question through `LlavaPredictor` (set_image, then answer with
    `new_tokens` generated tokens): the CLIP pass for scores, LLaVA's own tower, the text tower and scores
    (`selection`, text-guided methods only), the projector, the decoder's prefill, and the rest of generation
    (`decode`: the later decoder steps and the LM head on every generated token). `text_tokens`: the prompt's
    tokens other than the visual ones."""
    return {
        "clip_vision": clip_vision(d),
        "llava_vision": vision_tower(d),
        "selection": (clip_text(d, texts, clip_text_tokens) + scoring(d, texts)) if texts else 0.0,
        "projector": projector(d, visual_per_layer[0]),
        "prefill": llm_prefill(d, text_tokens, visual_per_layer),
        "decode": llm_decode(d, text_tokens, visual_per_layer, new_tokens) + lm_head(d, new_tokens),
    }
