"""A tiny random GLaMM-RefSeg checkpoint in the official layout, plus the tiny CLIP it reads images with.

Same config.json fields, the same state-dict key names (LLM, projector, `text_hidden_fcs`, SAM in Meta's naming,
region-encoder keys so the loader's skipping is exercised), two `pytorch_model-0000k-of-00002.bin` shards with
their index, the LLM in bfloat16 and SAM/`text_hidden_fcs` in float32 as in the real file, and a SentencePiece
tokenizer with the 7 added tokens. The one deliberate difference: `mm_vision_tower` names the tiny CLIP's
directory instead of the hub id, so the checkpoint works offline without `--clip`.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..hosts.glamm import GlammHost
from ..synthetic.llama_tokenizer import write_tiny_llama_tokenizer
from .checkpoint import TINY_LLM, random_host_state_dict, write_sharded_bin
from .clip import make_tiny_clip

# Region-encoder keys at reduced sizes: never loaded, present so the loader's skipping is exercised.
TINY_REGION_ENCODER = {
    "model.region_encoder.mlvl_fuse.input_conv.0.weight": (8, 10, 1, 1),
    "model.region_encoder.mlvl_fuse.input_conv.0.bias": (8,),
    "model.region_encoder.mlvl_fuse.fuse_convs.0.conv.weight": (8, 8, 3, 3),
    "model.region_encoder.roi_align.pconvs.0.weight": (8, 8, 3, 3),
    "model.region_encoder.roi_align.flatten_linear.weight": (8, 64),
}


def glamm_config(vocab_size: int, mm_hidden_size: int, vision_tower: str, **llm) -> dict:
    """config.json with GLaMM-RefSeg's fields (docs/glamm.md) and the given LLM sizes."""
    sizes = {**TINY_LLM, **llm}
    return {
        "architectures": ["GLaMMForCausalLM"],
        "model_type": "llava",
        "bbox_token_idx": vocab_size - 5,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "pad_token_id": 0,
        "freeze_mlp_adapter": True,
        "freeze_mm_mlp_adapter": False,
        "hidden_act": "silu",
        "hidden_size": sizes["hidden_size"],
        "image_aspect": "square",
        "image_aspect_ratio": "square",
        "initializer_range": 0.02,
        "intermediate_size": sizes["intermediate_size"],
        "max_position_embeddings": 4096,
        "mm_hidden_size": mm_hidden_size,
        "mm_projector_type": "mlp2x_gelu",
        "mm_use_im_patch_token": False,
        "mm_use_im_start_end": True,
        "mm_use_image_start_end": True,
        "mm_vision_module": vision_tower,
        "mm_vision_select_feature": "patch",
        "mm_vision_select_layer": -2,
        "mm_vision_tower": vision_tower,
        "num_attention_heads": sizes["num_attention_heads"],
        "num_hidden_layers": sizes["num_hidden_layers"],
        "num_key_value_heads": sizes["num_attention_heads"],
        "num_level_reg_features": 4,
        "num_reg_features": 4,
        "out_dim": 256,
        "pretrain_mm_mlp_adapter": None,
        "pretraining_tp": 1,
        "rms_norm_eps": 1e-05,
        "rope_scaling": None,
        "select_feature_type": "patch",
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
        "train_mask_decoder": True,
        "transformers_version": "4.28.0.dev0",
        "tune_mm_mlp_adapter": False,
        "use_cache": False,
        "use_mm_proj": True,
        "vision_tower": vision_tower,
        "vocab_size": vocab_size,
        "with_region": True,
    }


def glamm_state_dict(config: dict, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights under GLaMM's checkpoint keys (LLM bf16; SAM and text_hidden_fcs fp32)."""
    hidden, mm_hidden = config["hidden_size"], config["mm_hidden_size"]
    projector = {
        "model.mm_projector.0.weight": ((hidden, mm_hidden), None),
        "model.mm_projector.0.bias": ((hidden,), 0.02),
        "model.mm_projector.2.weight": ((hidden, hidden), None),
        "model.mm_projector.2.bias": ((hidden,), 0.02),
    }
    return random_host_state_dict(config, GlammHost.sam_prefix, projector, TINY_REGION_ENCODER, seed)


def make_tiny_glamm(
    directory: str | Path, seed: int = 0, clip_dir: str | Path | None = None, llm_layers: int | None = None
) -> Path:
    """Write a tiny random GLaMM-RefSeg checkpoint into `directory` (and a tiny CLIP into `directory/clip`
    unless `clip_dir` names an existing one); returns `directory`. `llm_layers` overrides the LLM depth (4)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    clip_dir = Path(clip_dir) if clip_dir is not None else make_tiny_clip(directory / "clip", seed=seed)
    clip_config = json.loads((clip_dir / "config.json").read_text())
    added = write_tiny_llama_tokenizer(directory, seed=seed)
    vocab_size = max(added.values()) + 1
    sizes = {} if llm_layers is None else {"num_hidden_layers": llm_layers}
    config = glamm_config(
        vocab_size, clip_config["vision_config"]["hidden_size"], str(clip_dir.resolve()), **sizes
    )
    (directory / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
    (directory / "generation_config.json").write_text(
        json.dumps(
            {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0, "transformers_version": "4.28.0.dev0"}
        )
    )
    write_sharded_bin(directory, glamm_state_dict(config, seed))
    return directory
