"""What the tiny host checkpoints share: random weights under the hosts' key names, and the sharded .bin files
`save_pretrained` writes."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import torch

from ..hosts.sam import meta_sam_state_dict_keys, sam_vit_h_config

TINY_LLM = dict(hidden_size=64, intermediate_size=172, num_hidden_layers=4, num_attention_heads=4)
# SAM with the real 1024 px input and 256-wide decoder, but a 2-block, 32-wide image encoder (block 1 global).
TINY_SAM = dict(
    hidden_size=32, num_hidden_layers=2, num_attention_heads=2, global_attn_indexes=(1,), decoder_mlp_dim=64
)
LLAMA_CONFIG_FIELDS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                       "num_attention_heads", "num_key_value_heads", "rms_norm_eps")  # fmt: skip


def random_host_state_dict(
    config: Mapping,
    sam_prefix: str,
    projector: Mapping[str, tuple[tuple[int, ...], float | None]],
    extra: Mapping[str, tuple[int, ...]] = {},  # noqa: B006 - read only
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """Random weights under a host's checkpoint keys: the LLaMA (bf16, norm scales around 1), `projector`
    (key -> (shape, scale; None = 1/sqrt(fan-in)), bf16), `text_hidden_fcs` and SAM under `sam_prefix` (fp32, as
    in the real files), then `extra` keys (bf16, e.g. modules the loader must skip)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    hidden, out_dim = config["hidden_size"], config["out_dim"]
    generator = torch.Generator().manual_seed(seed)

    def random(*shape, scale=None):
        fan_in = shape[-1] if len(shape) > 1 else 1
        return torch.randn(*shape, generator=generator) * (scale or fan_in**-0.5)

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        llm = LlamaForCausalLM(LlamaConfig(**{name: config[name] for name in LLAMA_CONFIG_FIELDS}))
    state = {key: value.to(torch.bfloat16) for key, value in llm.state_dict().items()}
    # Norm scales drawn around 1 make hidden states depend on more than the initialisation's constants.
    for key in state:
        if key.endswith("norm.weight"):
            state[key] = (1 + 0.1 * random(hidden, scale=1.0)).to(torch.bfloat16)
    for key, (shape, scale) in projector.items():
        state[key] = random(*shape, scale=scale).to(torch.bfloat16)
    state.update({
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
        state[sam_prefix + key] = value
    for key, shape in extra.items():
        state[key] = random(*shape).to(torch.bfloat16)
    return state


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
