"""Tiny random CLIP checkpoints in the layout of openai/clip-vit-large-patch14(-336)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..images import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
from ..synthetic.clip import clip_config
from ..synthetic.clip_tokenizer import write_clip_tokenizer


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
    `directory` and return its path. `sizes` go to `litelvlm.synthetic.clip_config` (default: 336 px, 14 px
    patches = 576 patches, width 32; image_size=224 gives LISA's 256 patches). Loaded with the same `from_pretrained` code as the real checkpoint."""
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
