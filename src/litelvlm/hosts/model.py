"""The grounding model on transformers modules, and the streaming loader of a host's checkpoint.

`GroundingModel` holds what every host stores in its checkpoint: a `LlamaForCausalLM`, the projector (whose shape
the host decides), `text_hidden_fcs` (Linear, ReLU, Linear: the `[SEG]` state -> SAM's prompt embedding) and SAM
ViT-H. Checkpoint keys map onto it the same way for every host, given the host's SAM prefix:

| checkpoint key                           | our module                                   |
|------------------------------------------|----------------------------------------------|
| model.embed_tokens / layers.* / norm     | llm.model.*                                  |
| lm_head                                  | llm.lm_head                                  |
| model.mm_projector.*                     | projector.*                                  |
| model.text_hidden_fcs.0.*                | text_hidden_fcs.*                            |
| <sam prefix>* (Meta SAM names)           | sam.* (renamed by `meta_to_hf_sam_key`)      |
| host.skipped_prefixes, rotary inv_freq   | skipped, never read into memory              |

The CLIP vision tower is not in the checkpoints; the predictor loads it from its own directory.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

from ..checkpoints import check_device, reason_of, size_mismatch
from ..errors import LiteLVLMError
from .checkpoint_files import Shapes, iter_shards, layer_count, tensor_index, weight_files
from .host import Host, HostConfig
from .sam import (
    SAM_ATTENTIONS,
    build_grounding_sam,
    default_sam_attention,
    infer_sam_overrides,
    meta_to_hf_sam_key,
)
from .tokenizer import LegacyLlamaTokenizer

EMBEDDINGS_KEY = "model.embed_tokens.weight"
LAYERS_PREFIX = "model.layers."
# Checkpoint tensors whose shapes (metadata only) config.json's sizes are checked against.
SIZE_KEYS = (EMBEDDINGS_KEY, "model.mm_projector.", LAYERS_PREFIX)


class GroundingModel(nn.Module):
    """A host's trained modules: llm, projector, text_hidden_fcs, sam (CLIP lives in the predictor's scorer)."""

    def __init__(self, host: Host, config: HostConfig, vocab_size: int | None = None) -> None:
        super().__init__()
        from transformers import LlamaForCausalLM

        self.host = host
        self.config = config
        llama = config.llama_config(vocab_size)
        hidden = llama.hidden_size
        self.llm = LlamaForCausalLM(llama)
        self.projector = host.build_projector(config.mm_hidden_size, hidden)
        self.text_hidden_fcs = nn.Sequential(
            nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, config.out_dim), nn.Dropout(0.0)
        )
        self.sam = build_grounding_sam(**(config.sam or {}))

    @property
    def device(self) -> torch.device:
        return self.text_hidden_fcs[0].weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.text_hidden_fcs[0].weight.dtype


def checkpoint_key_targets(host: Host, key: str) -> list[str] | None:
    """Our parameter name(s) for a checkpoint key; None for keys the host skips; [] for unknown keys."""
    if key.startswith(host.skipped_prefixes) or key.endswith("rotary_emb.inv_freq"):
        return None
    if key.startswith(host.sam_prefix):
        mapped = meta_to_hf_sam_key(key[len(host.sam_prefix) :])
        return ["sam." + name for name in ([mapped] if isinstance(mapped, str) else mapped)]
    if key.startswith("model.mm_projector."):
        return ["projector." + key[len("model.mm_projector.") :]]
    if key.startswith("model.text_hidden_fcs.0."):
        return ["text_hidden_fcs." + key[len("model.text_hidden_fcs.0.") :]]
    if key.startswith(("lm_head.", "model.")):
        return ["llm." + key]
    return []


def load_grounding_model(
    directory: str | Path,
    host: Host,
    config: Mapping,
    *,
    dtype: torch.dtype = torch.bfloat16,
    device: str | torch.device = "cpu",
    tokenizer: LegacyLlamaTokenizer | None = None,
    sam_attention: str | None = None,
) -> GroundingModel:
    """Build the host's model empty, then stream the checkpoint in shard by shard (cast to `dtype` on `device`).

    sam_attention: SAM's image-encoder forward ("fused", "sdpa" or "eager", as `build_grounding_sam` takes it);
    None: the faster one on `device` (`default_sam_attention`). A loaded model switches between "fused" and
    "sdpa" with `model.sam.fused_encoder`.

    `config` is the directory's config.json. Before any weight is read: the device must exist, config.json's
    fields must have the right kinds and agree with the weights' shapes, and the tokenizer must fit the embedding
    matrix. Missing, unknown or mis-shaped keys raise `LiteLVLMError` naming the first few; nothing is left
    randomly initialised. Skipped tensors are never read.
    """
    from accelerate import init_empty_weights
    from accelerate.utils import set_module_tensor_to_device

    device = check_device(device)
    if sam_attention is None:
        sam_attention = default_sam_attention(device)
    elif sam_attention not in SAM_ATTENTIONS:
        raise LiteLVLMError(
            f"sam_attention must be one of {', '.join(SAM_ATTENTIONS)}, not {sam_attention!r}."
        )
    directory = Path(directory)
    where = repr(str(directory / "config.json"))
    parsed = host.parse_config(config, where)
    files = weight_files(directory)
    found = tensor_index(files, lambda key: key.startswith((host.sam_prefix, *SIZE_KEYS)))
    if EMBEDDINGS_KEY not in found:
        raise LiteLVLMError(
            f"{str(directory)!r} has no {EMBEDDINGS_KEY}; it is not a {host.display_name} checkpoint."
        )
    check_sizes(host, config, found, where)
    rows = found[EMBEDDINGS_KEY][0][0]
    if tokenizer is None:  # (the predictor passes the one it uses, read once)
        tokenizer = LegacyLlamaTokenizer.from_pretrained(
            directory, required_tokens=host.added_tokens, host_name=host.display_name
        )
    tokenizer.check_fits(rows, f"{EMBEDDINGS_KEY} in {str(found[EMBEDDINGS_KEY][1])!r}")
    shapes = {key: shape for key, (shape, _) in found.items()}
    parsed = replace(
        parsed, sam={**infer_sam_overrides(shapes, host.sam_prefix), "vision_attention": sam_attention}
    )
    try:
        with init_empty_weights(include_buffers=False):
            model = GroundingModel(host, parsed, vocab_size=rows)
    except Exception as error:  # noqa: BLE001 - e.g. an activation transformers does not know (no memory is used)
        raise LiteLVLMError(
            f"{where} describes a {host.display_name} that cannot be built ({reason_of(error)}); fix config.json "
            "or re-download it."
        ) from None
    expected = dict(model.state_dict(keep_vars=True))
    loaded: set[str] = set()
    unexpected: list[str] = []
    for path, shard in iter_shards(files, wanted=lambda key: checkpoint_key_targets(host, key) is not None):
        for key, tensor in shard.items():
            targets = checkpoint_key_targets(host, key)
            if not targets or any(target not in expected for target in targets):
                unexpected.append(key)
                continue
            for target in targets:
                if tuple(expected[target].shape) != tuple(tensor.shape):
                    raise LiteLVLMError(
                        f"checkpoint tensor {key!r} in {str(path)!r} has shape {tuple(tensor.shape)} but "
                        f"{host.display_name} expects {tuple(expected[target].shape)} from {where}; the "
                        "checkpoint does not match its config.json (re-download it)."
                    )
                set_module_tensor_to_device(model, target, device, value=tensor, dtype=dtype)
                loaded.add(target)
        del shard
    if unexpected:
        raise LiteLVLMError(
            f"the checkpoint has {len(unexpected)} unexpected key(s), e.g. {', '.join(unexpected[:3])}; "
            f"it is not a {host.display_name} checkpoint this loader understands."
        )
    missing = [name for name in expected if name not in loaded]
    if missing:
        raise LiteLVLMError(
            f"the checkpoint lacks {len(missing)} weight(s), e.g. {', '.join(missing[:3])}; "
            "it is incomplete (re-download it) — nothing is initialised at random."
        )
    return model.to(device).eval()


def check_sizes(host: Host, config: Mapping, found: Shapes, where: str) -> None:
    """Refuse a config.json whose sizes its weights contradict: hidden_size against the embedding matrix,
    num_hidden_layers against the decoder layers present, mm_hidden_size against the projector's input (a
    vocab_size other than the embedding's rows is only a warning).
    (The model is built to the config, so a wrong size would refuse good weights, or, for the layer count, drop
    some silently.)"""
    shape, embeddings = found[EMBEDDINGS_KEY]
    if len(shape) != 2:
        raise LiteLVLMError(
            f"{EMBEDDINGS_KEY} in {str(embeddings)!r} has shape {shape}, not (rows, width); re-download the "
            "checkpoint."
        )
    rows, width = shape
    embedding = f"{EMBEDDINGS_KEY} in {str(embeddings)!r}"
    layers = layer_count(found, LAYERS_PREFIX)
    stated_vocab = config.get("vocab_size")
    if stated_vocab is not None and stated_vocab != rows:
        # Only a warning: the model is built with the embedding's rows, and the tokenizer is checked against
        # those below; a config that missed a resize must not block a good checkpoint.
        warnings.warn(
            f"{where} says vocab_size = {stated_vocab} but {embedding} has {rows} rows; using {rows}.",
            stacklevel=2,
        )
    checks = [
        ("hidden_size", width, f"{embedding} is {width} wide"),
        ("num_hidden_layers", layers, f"the weights hold {layers} decoder layers ({LAYERS_PREFIX}N)"),
    ]
    if host.projector_input_key in found:
        shape, path = found[host.projector_input_key]
        projector = f"{host.projector_input_key} in {str(path)!r}"
        checks.append(("mm_hidden_size", shape[-1], f"{projector} takes {shape[-1]}-wide CLIP features"))
    for field, actual, evidence in checks:
        stated = config.get(field)
        if stated is not None and actual and stated != actual:  # no layers found: the key check names them
            raise size_mismatch(where, field, stated, actual, evidence)


def random_grounding_model(
    host: Host, config: HostConfig, *, dtype: torch.dtype = torch.bfloat16, device="cpu", seed: int = 0
) -> GroundingModel:
    """The host's model with random weights made directly in `dtype` on `device`, one tensor at a time
    (benchmarks: speed and memory do not depend on weight values, and a full-size model never exists in
    float32)."""
    from accelerate import init_empty_weights

    with init_empty_weights(include_buffers=False):
        model = GroundingModel(host, config)
    return fill_random(model, dtype=dtype, device=device, seed=seed)


def fill_random(model: nn.Module, *, dtype: torch.dtype, device, seed: int = 0) -> nn.Module:
    """Give a model built on the meta device (`init_empty_weights`) random weights, made directly in `dtype` on
    `device` one tensor at a time: norm scales 1, biases 0, matrices with unit-variance outputs."""
    from accelerate.utils import set_module_tensor_to_device

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
