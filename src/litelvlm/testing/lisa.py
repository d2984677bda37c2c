"""A tiny random LISA v1 checkpoint in the official layout, plus the tiny 224 px CLIP it reads images with.

Same config.json fields as xinlai/LISA-7B-v1 (or LISA-13B-llama2-v1 with variant="13b"), the same state-dict key
names (LLM, `model.mm_projector.{weight,bias}`, `text_hidden_fcs`, SAM in Meta's naming under
`model.visual_model.`, and the `rotary_emb.inv_freq` buffers transformers 4.31 saved, which the loader must
skip), two `pytorch_model-0000k-of-00002.bin` shards with their index, the LLM in bfloat16 and SAM and
`text_hidden_fcs` in float32 as in the real files, and a SentencePiece tokenizer with LISA's added tokens in its
order, saved as transformers 4.31 did (`"legacy": true`). The one deliberate difference: `vision_tower` names
the tiny CLIP's directory instead of openai/clip-vit-large-patch14, so the checkpoint works offline.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..errors import LiteLVLMError
from ..hosts.lisa import LisaHost
from ..synthetic.llama_tokenizer import write_tiny_llama_tokenizer
from .checkpoint import TINY_LLM, random_host_state_dict, write_sharded_bin
from .clip import make_tiny_clip

# added_tokens.json of each release, in id order: 7B-v1 kept LLaVA-7B's <im_patch>/<im_start>/<im_end> and added
# [SEG]; 13B-llama2-v1 added [SEG] first, then <im_start>/<im_end>.
ADDED_TOKENS = {
    "7b": ("<im_patch>", "<im_start>", "<im_end>", "[SEG]"),
    "13b": ("[SEG]", "<im_start>", "<im_end>"),
}
# The LLaMA generation's fields: LLaMA-1 (7B-v1) or LLaMA-2 (13B-llama2-v1).
LLAMA_GENERATION = {
    "7b": {"max_position_embeddings": 2048, "max_sequence_length": 2048, "rms_norm_eps": 1e-06},
    "13b": {
        "max_position_embeddings": 4096,
        "rms_norm_eps": 1e-05,
        "mm_resampler_type": None,
        "tune_mm_vision_resampler": False,
        "freeze_mm_vision_resampler": False,
    },
}


def lisa_config(vocab_size: int, mm_hidden_size: int, vision_tower: str, variant: str = "7b", **llm) -> dict:
    """config.json with LISA v1's fields (docs/lisa.md) and the given LLM sizes."""
    sizes = {**TINY_LLM, **llm}
    return {
        "architectures": ["LISAForCausalLM"],
        "model_type": "llava",
        "bos_token_id": 1,
        "eos_token_id": 2,
        "pad_token_id": 0,
        "hidden_act": "silu",
        "hidden_size": sizes["hidden_size"],
        "initializer_range": 0.02,
        "intermediate_size": sizes["intermediate_size"],
        "num_attention_heads": sizes["num_attention_heads"],
        "num_hidden_layers": sizes["num_hidden_layers"],
        "num_key_value_heads": sizes["num_attention_heads"],
        "pretraining_tp": 1,
        "rope_scaling": None,
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
        "transformers_version": "4.31.0",
        "use_cache": False,
        "vocab_size": vocab_size,
        "mm_vision_tower": vision_tower,
        "vision_tower": vision_tower,
        "mm_hidden_size": mm_hidden_size,
        "use_mm_proj": True,
        "mm_vision_select_layer": -2,
        "mm_vision_select_feature": "patch",
        "mm_use_im_start_end": True,
        "mm_use_im_patch_token": False,
        "image_aspect_ratio": "square",
        "image_grid_pinpoints": None,
        "tune_mm_mlp_adapter": False,
        "freeze_mm_mlp_adapter": True,
        "pretrain_mm_mlp_adapter": None,
        "train_mask_decoder": True,
        "out_dim": 256,
        **LLAMA_GENERATION[variant],
    }


def lisa_state_dict(config: dict, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights under LISA v1's checkpoint keys (LLM and projector bf16; SAM and text_hidden_fcs fp32),
    with the fp32 `rotary_emb.inv_freq` buffers of a transformers-4.31 save."""
    hidden, mm_hidden = config["hidden_size"], config["mm_hidden_size"]
    projector = {
        "model.mm_projector.weight": ((hidden, mm_hidden), None),
        "model.mm_projector.bias": ((hidden,), 0.02),
    }
    state = random_host_state_dict(config, LisaHost.sam_prefix, projector, seed=seed)
    head_dim = hidden // config["num_attention_heads"]
    inv_freq = 1.0 / (10000 ** (torch.arange(0, head_dim, 2).float() / head_dim))
    for layer in range(config["num_hidden_layers"]):
        state[f"model.layers.{layer}.self_attn.rotary_emb.inv_freq"] = inv_freq.clone()
    return state


def make_tiny_lisa(
    directory: str | Path,
    seed: int = 0,
    clip_dir: str | Path | None = None,
    variant: str = "7b",
    llm_layers: int | None = None,
) -> Path:
    """Write a tiny random LISA v1 checkpoint into `directory` (and a tiny 224 px CLIP, 256 patches, into
    `directory/clip` unless `clip_dir` names an existing one); returns `directory`. variant "7b": the layout of
    xinlai/LISA-7B-v1 (LLaMA-1 fields; [SEG] is the 4th added token), "13b": of xinlai/LISA-13B-llama2-v1
    (LLaMA-2 fields; [SEG] is the 1st). `llm_layers` overrides the LLM depth (4)."""
    if variant not in ADDED_TOKENS:
        raise LiteLVLMError(f"variant must be one of {', '.join(ADDED_TOKENS)}, got {variant!r}.")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    clip_dir = (
        Path(clip_dir)
        if clip_dir is not None
        else make_tiny_clip(directory / "clip", seed=seed, image_size=LisaHost.clip_image_size)
    )
    clip_config = json.loads((clip_dir / "config.json").read_text())
    added = write_tiny_llama_tokenizer(
        directory, seed=seed, added_tokens=ADDED_TOKENS[variant], saved_by="4.31"
    )
    sizes = {} if llm_layers is None else {"num_hidden_layers": llm_layers}
    config = lisa_config(
        max(added.values()) + 1,
        clip_config["vision_config"]["hidden_size"],
        str(clip_dir.resolve()),
        variant,
        **sizes,
    )
    (directory / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    generation = {"_from_model_config": True, "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0,
                  "transformers_version": "4.31.0"}  # fmt: skip
    (directory / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")
    write_sharded_bin(directory, lisa_state_dict(config, seed))
    return directory
