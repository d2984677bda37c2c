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

from ..hosts.sam import SAM_PREFIX, meta_sam_state_dict_keys, sam_vit_h_config
from .clip import make_tiny_clip
from .llama_tokenizer import write_tiny_llama_tokenizer

TINY_LLM = dict(hidden_size=64, intermediate_size=172, num_hidden_layers=4, num_attention_heads=4)
# SAM with the real 1024 px input and 256-wide decoder, but a 2-block, 32-wide image encoder (block 1 global).
TINY_SAM = dict(
    hidden_size=32, num_hidden_layers=2, num_attention_heads=2, global_attn_indexes=(1,), decoder_mlp_dim=64
)
# Region-encoder keys at reduced sizes: never loaded, present so the loader's skipping is exercised.
TINY_REGION_ENCODER = {
    "model.region_encoder.mlvl_fuse.input_conv.0.weight": (8, 10, 1, 1),
    "model.region_encoder.mlvl_fuse.input_conv.0.bias": (8,),
    "model.region_encoder.mlvl_fuse.fuse_convs.0.conv.weight": (8, 8, 3, 3),
    "model.region_encoder.roi_align.pconvs.0.weight": (8, 8, 3, 3),
    "model.region_encoder.roi_align.flatten_linear.weight": (8, 64),
}


def glamm_config(vocab_size: int, mm_hidden_size: int, vision_tower: str, **llm) -> dict:
    """config.json with GLaMM-RefSeg's fields (spec section 3) and the given LLM sizes."""
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
    from transformers import LlamaConfig, LlamaForCausalLM

    hidden, out_dim = config["hidden_size"], config["out_dim"]
    generator = torch.Generator().manual_seed(seed)

    def random(*shape, scale=None):
        fan_in = shape[-1] if len(shape) > 1 else 1
        return torch.randn(*shape, generator=generator) * (scale or fan_in**-0.5)

    fields = {k: config[k] for k in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                                     "num_attention_heads", "num_key_value_heads", "rms_norm_eps")}  # fmt: skip
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        llm = LlamaForCausalLM(LlamaConfig(**fields))
    state = {key: value.to(torch.bfloat16) for key, value in llm.state_dict().items()}
    # Norm scales drawn around 1 make hidden states depend on more than the initialisation's constants.
    for key in state:
        if key.endswith("norm.weight"):
            state[key] = (1 + 0.1 * random(hidden, scale=1.0)).to(torch.bfloat16)
    mm_hidden = config["mm_hidden_size"]
    state.update({
        "model.mm_projector.0.weight": random(hidden, mm_hidden).to(torch.bfloat16),
        "model.mm_projector.0.bias": random(hidden, scale=0.02).to(torch.bfloat16),
        "model.mm_projector.2.weight": random(hidden, hidden).to(torch.bfloat16),
        "model.mm_projector.2.bias": random(hidden, scale=0.02).to(torch.bfloat16),
        "model.text_hidden_fcs.0.0.weight": random(hidden, hidden),
        "model.text_hidden_fcs.0.0.bias": random(hidden, scale=0.02),
        "model.text_hidden_fcs.0.2.weight": random(out_dim, hidden),
        "model.text_hidden_fcs.0.2.bias": random(out_dim, scale=0.02),
    })  # fmt: skip
    for key, shape in meta_sam_state_dict_keys(sam_vit_h_config(**TINY_SAM)).items():
        if key.endswith(
            ("norm1.weight", "norm2.weight", "norm3.weight", "norm4.weight", "norm_final_attn.weight")
        ) or (
            len(shape) == 1
            and ("neck.1" in key or "neck.3" in key or "upscaling.1" in key)
            and key.endswith("weight")
        ):
            value = 1 + 0.1 * random(*shape, scale=1.0)
        else:
            value = random(*shape, scale=1.0 if key.endswith("gaussian_matrix") else None)
        state[SAM_PREFIX + key] = value
    for key, shape in TINY_REGION_ENCODER.items():
        state[key] = random(*shape).to(torch.bfloat16)
    return state


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


def write_sharded_bin(directory: Path, state: dict[str, torch.Tensor], shards: int = 2) -> None:
    """pytorch_model-0000k-of-0000n.bin files and pytorch_model.bin.index.json, as `save_pretrained` writes."""
    keys = list(state)
    per_shard = -(-len(keys) // shards)
    weight_map, total = {}, 0
    for number in range(shards):
        name = f"pytorch_model-{number + 1:05d}-of-{shards:05d}.bin"
        part = {key: state[key].contiguous() for key in keys[number * per_shard : (number + 1) * per_shard]}
        torch.save(part, directory / name)
        for key, value in part.items():
            weight_map[key] = name
            total += value.numel() * value.element_size()
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (directory / "pytorch_model.bin.index.json").write_text(json.dumps(index, indent=2))
