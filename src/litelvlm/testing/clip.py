"""Tiny random CLIP checkpoints in the layout of openai/clip-vit-large-patch14-336."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..images import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
from .clip_tokenizer import write_clip_tokenizer

# The fields of openai/clip-vit-large-patch14-336's config.json; sizes are overridden by make_tiny_clip.
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
    given sizes. `full_size_clip_config()` gives ViT-L/14-336 itself."""
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


def full_size_clip_config():
    """CLIP ViT-L/14 at 336 px (openai/clip-vit-large-patch14-336), for random-weight benchmarks."""
    return clip_config(
        vision_hidden=1024,
        vision_layers=24,
        vision_heads=16,
        text_hidden=768,
        text_layers=12,
        text_heads=12,
        projection_dim=768,
    )


def write_preprocessor_config(directory: Path, image_size: int) -> None:
    """preprocessor_config.json in openai's (legacy integer) format."""
    config = {
        "crop_size": image_size,
        "do_center_crop": True,
        "do_normalize": True,
        "do_resize": True,
        "feature_extractor_type": "CLIPFeatureExtractor",
        "image_mean": list(OPENAI_CLIP_MEAN),
        "image_std": list(OPENAI_CLIP_STD),
        "resample": 3,
        "size": image_size,
    }
    (directory / "preprocessor_config.json").write_text(json.dumps(config, indent=2))


def make_tiny_clip(directory: str | Path, seed: int = 0, **sizes) -> Path:
    """Write a random CLIP checkpoint (config.json, weights, the real tokenizer, preprocessor config) into
    `directory` and return its path. `sizes` go to `clip_config` (default: 336 px, 14 px patches = 576 patches,
    width 32). Loaded with the same `from_pretrained` code as the real checkpoint."""
    from transformers import CLIPModel

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = clip_config(**sizes)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CLIPModel(config).eval()
    model.save_pretrained(directory)
    write_clip_tokenizer(directory)
    write_preprocessor_config(directory, config.vision_config.image_size)
    return directory
