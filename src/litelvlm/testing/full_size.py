"""GLaMM-7B at its exact architecture with random weights, built in memory (no files, no download).

Speed and memory do not depend on weight values, so benchmarks and memory checks run on these. Depth can be
scaled down (`llm_layers`, `sam_layers`) keeping every width, for quick runs; such models are labelled scaled.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from ..hosts.glamm import GlammConfig, random_glamm
from ..hosts.glamm_predictor import GlammPredictor
from ..hosts.glamm_text import GlammTokenizer
from ..images import ClipPreprocess
from ..scoring import ClipScorer
from .clip import full_size_clip_config
from .llama_tokenizer import write_tiny_llama_tokenizer

VICUNA_7B = {
    "vocab_size": 32007,
    "hidden_size": 4096,
    "intermediate_size": 11008,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 32,
    "hidden_act": "silu",
    "max_position_embeddings": 4096,
    "rms_norm_eps": 1e-5,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "pad_token_id": 0,
    "tie_word_embeddings": False,
}
SAM_VIT_H_LAYERS = 32
SAM_GLOBAL_LAYERS = (7, 15, 23, 31)


def sam_depth_overrides(layers: int | None) -> dict:
    """ViT-H with fewer blocks: every 8th block (from the 8th) stays global, and the last one always is."""
    if layers is None or layers == SAM_VIT_H_LAYERS:
        return {}
    global_layers = [i for i in SAM_GLOBAL_LAYERS if i < layers - 1] + [layers - 1]
    return {"num_hidden_layers": layers, "global_attn_indexes": global_layers}


def full_size_glamm_config(
    llm_layers: int | None = None, sam_layers: int | None = None, sam_attention: str = "fused"
) -> GlammConfig:
    llama = dict(VICUNA_7B)
    if llm_layers is not None:
        llama["num_hidden_layers"] = llm_layers
    sam = {**sam_depth_overrides(sam_layers), "vision_attention": sam_attention}
    return GlammConfig(llama=llama, mm_hidden_size=1024, out_dim=256, sam=sam)


def random_clip(dtype: torch.dtype = torch.bfloat16, device="cpu", seed: int = 0) -> ClipScorer:
    """CLIP ViT-L/14-336 (vision and text towers) with random weights and the real CLIP tokenizer."""
    from transformers import AutoTokenizer, CLIPModel

    from .clip_tokenizer import write_clip_tokenizer

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CLIPModel(full_size_clip_config()).to(device=device, dtype=dtype).eval()
    with tempfile.TemporaryDirectory(prefix="litelvlm-clip-tokenizer-") as directory:  # read into memory
        write_clip_tokenizer(Path(directory))
        tokenizer = AutoTokenizer.from_pretrained(directory)
    return ClipScorer(model, tokenizer, ClipPreprocess())


def random_glamm_predictor(
    *,
    llm_layers: int | None = None,
    sam_layers: int | None = None,
    sam_attention: str = "fused",
    dtype: torch.dtype = torch.bfloat16,
    device: str | torch.device = "cpu",
    seed: int = 0,
) -> GlammPredictor:
    """A GlammPredictor at GLaMM-7B's architecture with random weights; the tokenizer is a small SentencePiece
    model with GLaMM's 7 added tokens (ids stay below the 32,007-row embedding)."""
    model = random_glamm(
        full_size_glamm_config(llm_layers, sam_layers, sam_attention), dtype=dtype, device=device, seed=seed
    )
    with tempfile.TemporaryDirectory(prefix="litelvlm-llama-tokenizer-") as directory:  # read into memory
        write_tiny_llama_tokenizer(Path(directory), vocab_size=1100)
        tokenizer = GlammTokenizer.from_pretrained(directory)
    return GlammPredictor(model, tokenizer, random_clip(dtype, device, seed))
