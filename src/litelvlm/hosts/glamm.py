"""GLaMM (MBZUAI/GLaMM-RefSeg) on transformers modules: checkpoint layout, module tree, streaming loader.

| GLaMM checkpoint key                     | our module                                   |
|------------------------------------------|----------------------------------------------|
| model.embed_tokens / layers.* / norm     | llm.model.* (`LlamaForCausalLM`)             |
| lm_head                                  | llm.lm_head                                  |
| model.mm_projector.{0,2}                 | projector.{0,2} (Linear, GELU, Linear)       |
| model.text_hidden_fcs.0.{0,2}            | text_hidden_fcs.{0,2} (Linear, ReLU, Linear) |
| model.grounding_encoder.* (Meta SAM)     | sam.* (transformers' SAM modules, renamed)   |
| model.region_encoder.*, rotary inv_freq  | skipped, never read into memory              |

The CLIP vision tower is not in the checkpoint; it is loaded from its own directory (see `predictor.py`).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace

import torch
from torch import nn

from ..checkpoints import hub_error, looks_like_hub_id, read_config, resolve_checkpoint
from ..errors import LiteLVLMError
from .checkpoint_files import iter_shards, tensor_shapes, weight_files
from .sam import SAM_PREFIX, build_grounding_sam, glamm_to_hf_sam_key

LLAMA_FIELDS = (
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "hidden_act",
    "max_position_embeddings",
    "rms_norm_eps",
    "rope_theta",
    "rope_scaling",
    "bos_token_id",
    "eos_token_id",
    "pad_token_id",
    "tie_word_embeddings",
    "initializer_range",
)
SKIPPED_PREFIXES = ("model.region_encoder.", "model.vision_tower.", "model.vision_model.")
REQUIRED_FIELDS = ("hidden_size", "num_hidden_layers", "mm_hidden_size")  # without them it is not GLaMM


@dataclass(frozen=True)
class GlammConfig:
    """What we read from a GLaMM `config.json` (spec section 3)."""

    llama: dict
    mm_hidden_size: int = 1024
    out_dim: int = 256
    select_layer: int = -2
    vision_tower: str = "openai/clip-vit-large-patch14-336"
    # build_grounding_sam options: the encoder's sizes (read from the checkpoint's shapes), vision_attention
    sam: dict | None = None

    @classmethod
    def from_dict(cls, config: Mapping, where: str = "config.json") -> GlammConfig:
        missing = [name for name in REQUIRED_FIELDS if name not in config]
        if missing or "GLaMMForCausalLM" not in config.get("architectures", ["GLaMMForCausalLM"]):
            raise LiteLVLMError(
                f"{where} is not a GLaMM checkpoint config (missing {', '.join(missing) or 'GLaMMForCausalLM'}); "
                "pass a GLaMM-RefSeg directory with --model."
            )
        llama = {name: config[name] for name in LLAMA_FIELDS if name in config and config[name] is not None}
        return cls(
            llama=llama,
            mm_hidden_size=int(config["mm_hidden_size"]),
            out_dim=int(config.get("out_dim", 512)),  # GLaMM's code default when the field is absent
            select_layer=int(config.get("mm_vision_select_layer", -2)),
            vision_tower=config.get("mm_vision_tower") or config.get("vision_tower") or cls.vision_tower,
        )

    def llama_config(self, vocab_size: int | None = None):
        from transformers import LlamaConfig

        fields = dict(self.llama)
        if vocab_size is not None:
            fields["vocab_size"] = vocab_size
        config = LlamaConfig(**fields)
        config._attn_implementation = "sdpa"
        return config


class GlammModel(nn.Module):
    """The GLaMM module tree on transformers modules (region encoder omitted: unused for segmentation)."""

    def __init__(self, config: GlammConfig, vocab_size: int | None = None) -> None:
        super().__init__()
        from transformers import LlamaForCausalLM

        self.config = config
        llama = config.llama_config(vocab_size)
        hidden = llama.hidden_size
        self.llm = LlamaForCausalLM(llama)
        self.projector = nn.Sequential(
            nn.Linear(config.mm_hidden_size, hidden), nn.GELU(), nn.Linear(hidden, hidden)
        )
        self.text_hidden_fcs = nn.Sequential(
            nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, config.out_dim), nn.Dropout(0.0)
        )
        self.sam = build_grounding_sam(**(config.sam or {}))

    @property
    def device(self) -> torch.device:
        return self.projector[0].weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.projector[0].weight.dtype


def infer_sam_overrides(shapes: Mapping[str, tuple[int, ...]]) -> dict:
    """SAM image-encoder sizes from the checkpoint's tensor shapes (GLaMM's config.json does not describe SAM).

    ViT-H gives {} (the defaults); tiny test checkpoints give their own sizes under the same key names.
    """
    encoder = SAM_PREFIX + "image_encoder."
    try:
        hidden = shapes[encoder + "patch_embed.proj.weight"][0]
        blocks = sorted(
            {int(m.group(1)) for k in shapes if (m := re.match(re.escape(encoder) + r"blocks\.(\d+)\.", k))}
        )
        rel_pos = [shapes[f"{encoder}blocks.{i}.attn.rel_pos_h"] for i in blocks]
        mlp_dim = shapes[encoder + "blocks.0.mlp.lin1.weight"][0]
        decoder_mlp = shapes[SAM_PREFIX + "mask_decoder.transformer.layers.0.mlp.lin1.weight"][0]
        grid = shapes[encoder + "pos_embed"][1]
    except (KeyError, IndexError):
        raise LiteLVLMError(
            "the checkpoint lacks SAM image-encoder weights (model.grounding_encoder.*)."
        ) from None
    head_dim = rel_pos[0][1]
    global_blocks = [i for i, shape in zip(blocks, rel_pos) if shape[0] == 2 * grid - 1]
    windowed = [shape[0] for shape in rel_pos if shape[0] != 2 * grid - 1]
    found = {
        "hidden_size": hidden,
        "num_hidden_layers": len(blocks),
        "num_attention_heads": hidden // head_dim,
        "mlp_dim": mlp_dim,
        "window_size": (windowed[0] + 1) // 2 if windowed else 14,
        "global_attn_indexes": global_blocks,
        "decoder_mlp_dim": decoder_mlp,
    }
    defaults = {
        "hidden_size": 1280,
        "num_hidden_layers": 32,
        "num_attention_heads": 16,
        "mlp_dim": 5120,
        "window_size": 14,
        "global_attn_indexes": [7, 15, 23, 31],
        "decoder_mlp_dim": 2048,
    }
    return {name: value for name, value in found.items() if value != defaults[name]}


def our_keys(glamm_key: str) -> list[str] | None:
    """Our parameter name(s) for a GLaMM checkpoint key; None for keys we skip; [] for unknown keys."""
    if glamm_key.startswith(SKIPPED_PREFIXES) or glamm_key.endswith("rotary_emb.inv_freq"):
        return None
    if glamm_key.startswith(SAM_PREFIX):
        mapped = glamm_to_hf_sam_key(glamm_key[len(SAM_PREFIX) :])
        return ["sam." + key for key in ([mapped] if isinstance(mapped, str) else mapped)]
    if glamm_key.startswith("model.mm_projector."):
        return ["projector." + glamm_key[len("model.mm_projector.") :]]
    if glamm_key.startswith("model.text_hidden_fcs.0."):
        return ["text_hidden_fcs." + glamm_key[len("model.text_hidden_fcs.0.") :]]
    if glamm_key.startswith("lm_head."):
        return ["llm." + glamm_key]
    if glamm_key.startswith("model."):
        return ["llm." + glamm_key]
    return []


def load_glamm(
    path_or_id: str | os.PathLike, *, dtype: torch.dtype = torch.bfloat16, device: str | torch.device = "cpu"
) -> GlammModel:
    """Build GLaMM empty, then stream the checkpoint in shard by shard (cast to `dtype` on `device`).

    Missing, unknown or mis-shaped keys raise `LiteLVLMError` naming the first few; nothing is left randomly
    initialised. The region encoder's tensors are never read.
    """
    from accelerate import init_empty_weights
    from accelerate.utils import set_module_tensor_to_device

    directory = local_checkpoint_dir(path_or_id)
    config = GlammConfig.from_dict(
        read_config(directory, "GLaMM checkpoint", "--model"), f"{directory}/config.json"
    )
    files = weight_files(directory)
    shapes = tensor_shapes(files, lambda key: key.startswith((SAM_PREFIX, "model.embed_tokens.")))
    if "model.embed_tokens.weight" not in shapes:
        raise LiteLVLMError(f"{directory!r} has no model.embed_tokens.weight; it is not a GLaMM checkpoint.")
    config = replace(config, sam=infer_sam_overrides(shapes))
    with init_empty_weights(include_buffers=False):
        model = GlammModel(config, vocab_size=shapes["model.embed_tokens.weight"][0])
    expected = dict(model.state_dict(keep_vars=True))
    loaded: set[str] = set()
    unexpected: list[str] = []
    for shard in iter_shards(files, wanted=lambda key: our_keys(key) is not None):
        for key, tensor in shard.items():
            targets = our_keys(key)
            if not targets or any(target not in expected for target in targets):
                unexpected.append(key)
                continue
            for target in targets:
                if tuple(expected[target].shape) != tuple(tensor.shape):
                    raise LiteLVLMError(
                        f"checkpoint tensor {key!r} has shape {tuple(tensor.shape)} but GLaMM expects "
                        f"{tuple(expected[target].shape)}; the checkpoint does not match its config.json."
                    )
                set_module_tensor_to_device(model, target, device, value=tensor, dtype=dtype)
                loaded.add(target)
        del shard
    if unexpected:
        raise LiteLVLMError(
            f"the checkpoint has {len(unexpected)} unexpected key(s), e.g. {', '.join(unexpected[:3])}; "
            "it is not a GLaMM checkpoint this loader understands."
        )
    missing = [name for name in expected if name not in loaded]
    if missing:
        raise LiteLVLMError(
            f"the checkpoint lacks {len(missing)} weight(s), e.g. {', '.join(missing[:3])}; "
            "it is incomplete (re-download it) — nothing is initialised at random."
        )
    return model.to(device).eval()


def random_glamm(config: GlammConfig, *, dtype: torch.dtype = torch.bfloat16, device="cpu", seed: int = 0):
    """GLaMM with random weights made directly in `dtype` on `device`, one tensor at a time (benchmarks: speed
    and memory do not depend on weight values, and a full-size model never exists in float32)."""
    from accelerate import init_empty_weights
    from accelerate.utils import set_module_tensor_to_device

    with init_empty_weights(include_buffers=False):
        model = GlammModel(config)
    generator = torch.Generator().manual_seed(seed)
    for name, parameter in list(model.named_parameters()):
        if parameter.ndim == 1:  # norm scales 1, biases 0
            value = torch.full(parameter.shape, 1.0 if name.endswith("weight") else 0.0, dtype=dtype)
        else:  # unit-variance activations whatever the width
            value = (
                torch.randn(parameter.shape, generator=generator, dtype=dtype) / parameter[0].numel() ** 0.5
            )
        set_module_tensor_to_device(model, name, device, value=value, dtype=dtype)
    return model.to(device).eval()


def local_checkpoint_dir(path_or_id: str | os.PathLike) -> str:
    """A local directory for a checkpoint given as a directory or a hub id (downloaded by the hub client)."""
    name = resolve_checkpoint(path_or_id, "GLaMM checkpoint", "--model")
    if os.path.isdir(name):
        return name
    try:
        from huggingface_hub import snapshot_download

        return snapshot_download(name)
    except Exception as error:  # noqa: BLE001 - any hub failure gets the same advice
        if looks_like_hub_id(name):
            raise hub_error(name, "GLaMM checkpoint", "--model", error) from None
        raise
