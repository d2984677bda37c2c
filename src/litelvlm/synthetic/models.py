"""A host's published 7B architecture with random weights, built in memory (no files, no download).

Speed and memory do not depend on weight values, so benchmarks and memory checks run on these. Depth can be
scaled down (`llm_layers`, `sam_layers`) keeping every width, for quick runs; such models are labelled scaled.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from ..hosts.host import Host, HostConfig
from ..hosts.model import random_grounding_model
from ..hosts.predictor import GroundingPredictor
from ..hosts.sam import SAM_VIT_H, default_sam_attention
from ..hosts.tokenizer import LegacyLlamaTokenizer
from .clip import FULL_SIZE_CLIP, random_clip
from .llama_tokenizer import write_tiny_llama_tokenizer

# A SentencePiece vocabulary this size keeps every token id below the real embedding's 32,000 + added rows.
TOKENIZER_VOCAB = 1100


def sam_depth_overrides(layers: int | None) -> dict:
    """SAM ViT-H with fewer blocks: its global blocks that remain stay global, and the last one always is."""
    if layers is None or layers == SAM_VIT_H.num_hidden_layers:
        return {}
    global_layers = [i for i in SAM_VIT_H.global_attn_indexes if i < layers - 1] + [layers - 1]
    return {"num_hidden_layers": layers, "global_attn_indexes": global_layers}


def full_size_config(
    host: Host, llm_layers: int | None = None, sam_layers: int | None = None, sam_attention: str = "fused"
) -> HostConfig:
    """The host's 7B architecture (LLaMA, CLIP ViT-L/14 features, SAM ViT-H), optionally with fewer layers."""
    llama = host.full_size_llama()
    if llm_layers is not None:
        llama["num_hidden_layers"] = llm_layers
    sam = {**sam_depth_overrides(sam_layers), "vision_attention": sam_attention}
    return HostConfig(
        llama=llama,
        mm_hidden_size=FULL_SIZE_CLIP["vision"]["hidden_size"],
        out_dim=256,
        select_layer=-2,
        vision_tower=host.default_vision_tower,
        sam=sam,
    )


def random_predictor(
    host: Host,
    *,
    llm_layers: int | None = None,
    sam_layers: int | None = None,
    sam_attention: str | None = None,
    dtype: torch.dtype = torch.bfloat16,
    device: str | torch.device = "cpu",
    seed: int = 0,
) -> GroundingPredictor:
    """A GroundingPredictor at the host's 7B architecture with random weights; the tokenizer is a small
    SentencePiece model with the host's added tokens (ids stay below the embedding's rows). sam_attention:
    None takes the device's faster SAM encoder forward (`default_sam_attention`)."""
    sam_attention = sam_attention or default_sam_attention(device)
    model = random_grounding_model(
        host,
        full_size_config(host, llm_layers, sam_layers, sam_attention),
        dtype=dtype,
        device=device,
        seed=seed,
    )
    with tempfile.TemporaryDirectory(prefix="litelvlm-llama-tokenizer-") as directory:  # read into memory
        write_tiny_llama_tokenizer(
            Path(directory), vocab_size=TOKENIZER_VOCAB, added_tokens=host.added_tokens
        )
        tokenizer = LegacyLlamaTokenizer.from_pretrained(
            directory, required_tokens=host.added_tokens, host_name=host.display_name
        )
    return GroundingPredictor(model, tokenizer, random_clip(host.clip_image_size, dtype, device, seed))
