"""CLIP configurations in the layout of openai/clip-vit-large-patch14(-336), and a random-weight scorer.

`full_size_clip_config(336)` is ViT-L/14-336 (GLaMM's tower, 24 x 24 = 576 patches), `full_size_clip_config(224)`
ViT-L/14 (LISA's, 16 x 16 = 256 patches); `clip_config` gives the same fields at any size (tiny test models).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from ..images import ClipPreprocess
from ..scoring import ClipScorer
from .clip_tokenizer import write_clip_tokenizer

# The sizes of openai/clip-vit-large-patch14(-336)'s config.json.
FULL_SIZE_CLIP = {
    "text": dict(hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_hidden_layers=12),
    "vision": dict(hidden_size=1024, intermediate_size=4096, num_attention_heads=16, num_hidden_layers=24),
    "projection_dim": 768,
}


def clip_config(
    *,
    image_size: int = 336,
    patch_size: int = 14,
    vision_hidden: int = 32,
    vision_layers: int = 3,
    vision_heads: int = 4,
    text_hidden: int = 32,
    text_layers: int = 2,
    text_heads: int = 4,
    projection_dim: int = 16,
):
    """A `CLIPConfig` with openai's field values (vocab 49408, 77 positions, quick_gelu, eos id 2) and the
    given sizes (the defaults are tiny)."""
    from transformers import CLIPConfig

    text = dict(
        vocab_size=49408,
        max_position_embeddings=77,
        hidden_size=text_hidden,
        intermediate_size=4 * text_hidden,
        num_attention_heads=text_heads,
        num_hidden_layers=text_layers,
        hidden_act="quick_gelu",
        projection_dim=projection_dim,
        bos_token_id=0,
        eos_token_id=2,
        pad_token_id=1,
    )
    vision = dict(
        image_size=image_size,
        patch_size=patch_size,
        hidden_size=vision_hidden,
        intermediate_size=4 * vision_hidden,
        num_attention_heads=vision_heads,
        num_hidden_layers=vision_layers,
        hidden_act="quick_gelu",
        projection_dim=projection_dim,
    )
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=projection_dim)


def full_size_clip_config(image_size: int = 336):
    """CLIP ViT-L/14 at `image_size` px (336: openai/clip-vit-large-patch14-336; 224: clip-vit-large-patch14)."""
    text, vision = FULL_SIZE_CLIP["text"], FULL_SIZE_CLIP["vision"]
    return clip_config(
        image_size=image_size,
        vision_hidden=vision["hidden_size"],
        vision_layers=vision["num_hidden_layers"],
        vision_heads=vision["num_attention_heads"],
        text_hidden=text["hidden_size"],
        text_layers=text["num_hidden_layers"],
        text_heads=text["num_attention_heads"],
        projection_dim=FULL_SIZE_CLIP["projection_dim"],
    )


def random_clip(
    image_size: int = 336, dtype: torch.dtype = torch.bfloat16, device="cpu", seed: int = 0
) -> ClipScorer:
    """CLIP ViT-L/14 at `image_size` px (vision and text towers) with random weights and the real CLIP
    tokenizer."""
    from transformers import AutoTokenizer, CLIPModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CLIPModel(full_size_clip_config(image_size)).to(device=device, dtype=dtype).eval()
    with tempfile.TemporaryDirectory(prefix="litelvlm-clip-tokenizer-") as directory:  # read into memory
        write_clip_tokenizer(Path(directory))
        tokenizer = AutoTokenizer.from_pretrained(directory)
    return ClipScorer(model, tokenizer, ClipPreprocess(image_size, image_size, image_size))
