"""What a pixel-grounding host says about itself: the adapter interface the grounding core is written against.

Every supported model is CLIP vision tower -> projector -> LLaMA -> `[SEG]` hidden state -> `text_hidden_fcs` ->
SAM mask decoder. The core (`model`, `tokenizer`, `conversation`, `llm`, `sam`, `predictor`) runs that pipeline;
a host adapter (one module per host, e.g. `hosts/glamm.py`) subclasses `Host` and fills in only what differs:
how its config.json is read, its checkpoint's key prefixes, its projector, the added tokens its tokenizer must
hold, how the image enters the prompt, how many expressions one conversation may hold, its default question
and answer templates, its evaluation protocol, and the full-size architecture benchmarks build.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from ..checkpoints import (
    COUNT,
    FLAG,
    NUMBER,
    OBJECT,
    POSITIVE,
    TEXT,
    TOKEN_IDS,
    WHOLE,
    check_config_fields,
    error_with_fix,
)

# The LlamaConfig fields a host's config.json carries for its language model.
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
# The sizes every 7B LLaMA generation shares (LLaMA-1, LLaMA-2, Vicuna); hosts add vocabulary, context and norm eps.
LLAMA_7B = {
    "hidden_size": 4096,
    "intermediate_size": 11008,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 32,
    "hidden_act": "silu",
    "bos_token_id": 1,
    "eos_token_id": 2,
    "pad_token_id": 0,
    "tie_word_embeddings": False,
}
MODEL_FLAG = "--model"  # the CLI option that takes a host checkpoint (named only in the CLI's messages)
# config.json fields without which no host's checkpoint can be built.
REQUIRED_FIELDS = ("hidden_size", "num_hidden_layers", "mm_hidden_size")
# The kind of every config.json field the core reads, checked before use (absent or null fields take defaults).
CONFIG_FIELDS = {
    "vocab_size": COUNT,
    "hidden_size": COUNT,
    "intermediate_size": COUNT,
    "num_hidden_layers": COUNT,
    "num_attention_heads": COUNT,
    "num_key_value_heads": COUNT,
    "max_position_embeddings": COUNT,
    "hidden_act": TEXT,
    "rms_norm_eps": POSITIVE,
    "rope_theta": POSITIVE,
    "rope_scaling": OBJECT,
    "initializer_range": NUMBER,
    "bos_token_id": TOKEN_IDS,
    "eos_token_id": TOKEN_IDS,
    "pad_token_id": TOKEN_IDS,
    "tie_word_embeddings": FLAG,
    "mm_hidden_size": COUNT,
    "out_dim": COUNT,
    "mm_vision_select_layer": WHOLE,
    "mm_vision_tower": TEXT,
    "vision_tower": TEXT,
}
# (field, divisor) pairs: attention heads split the width, and key-value heads group the query heads.
DIVISIBLE_FIELDS = (("hidden_size", "num_attention_heads"), ("num_attention_heads", "num_key_value_heads"))


@dataclass(frozen=True)
class HostConfig:
    """What the core reads from a host's config.json.

    llama: LlamaConfig fields of the language model; mm_hidden_size: width of the CLIP features the projector
    takes; out_dim: width of the `[SEG]` embedding SAM receives; select_layer: the CLIP layer the LLM reads;
    vision_tower: the CLIP checkpoint the host reads images with (not stored in the host's checkpoint);
    sam: `sam_vit_h_config` overrides (read from the checkpoint's tensor shapes) and `vision_attention`.
    """

    llama: dict
    mm_hidden_size: int
    out_dim: int
    select_layer: int
    vision_tower: str
    sam: dict | None = None

    def llama_config(self, vocab_size: int | None = None):
        from transformers import LlamaConfig

        fields = dict(self.llama)
        if vocab_size is not None:
            fields["vocab_size"] = vocab_size
        config = LlamaConfig(**fields)
        config._attn_implementation = "sdpa"
        return config


class Host:
    """A pixel-grounding model family. Subclasses set the class attributes and may override the methods."""

    name: str  # registry key and CLI value, e.g. "glamm"
    display_name: str  # for messages, e.g. "GLaMM"
    architectures: tuple[str, ...]  # config.json `architectures` entries that identify the host
    example_checkpoint: str  # a hub id to name in messages
    sam_prefix: str  # where the checkpoint stores SAM (Meta key names below it)
    projector_input_key: str  # the checkpoint's first projector weight, [LLM width, CLIP width]
    skipped_prefixes: tuple[str, ...] = ()  # checkpoint tensors this host never reads
    default_vision_tower: str  # the CLIP checkpoint when config.json names none
    clip_image_size: int  # the CLIP resolution the host was trained with (patches = (size / 14)^2)
    added_tokens: tuple[str, ...]  # added tokens its tokenizer must hold
    image_prefix: str  # the first question is image_prefix + question; it holds "<image>" once
    max_turns: int  # expressions one conversation may hold
    default_question: int  # index into litelvlm.prompts.SEG_QUESTIONS
    default_answer: int  # index into litelvlm.prompts.ANSWER_LIST (teacher-forced answers)
    protocol: str  # default evaluation protocol (litelvlm.evaluation.protocols)
    default_out_dim: int = 256  # `[SEG]` embedding width when config.json has no out_dim

    def matches(self, config: Mapping) -> bool:
        """Whether a config.json names this host."""
        names = config.get("architectures")
        if isinstance(names, str):
            names = [names]
        return isinstance(names, list) and any(name in self.architectures for name in names)

    def unsupported_layout(self, directory: Path, config: Mapping) -> str | None:
        """A sentence saying why a checkpoint of this family cannot be loaded (e.g. a legacy layout), else None."""
        return None

    def parse_config(self, config: Mapping, where: str) -> HostConfig:
        """A HostConfig from config.json (`where` names the file in messages); fields of the wrong kind (a word
        where a size belongs, a layer count of 0) are one sentence naming the field."""
        missing = [name for name in REQUIRED_FIELDS if config.get(name) is None]
        if missing:
            raise error_with_fix(
                f"{where} lacks {', '.join(missing)}, so it is not a {self.display_name} checkpoint config",
                f"pass a directory such as {self.example_checkpoint}",
                MODEL_FLAG,
            )
        check_config_fields(config, CONFIG_FIELDS, where, DIVISIBLE_FIELDS)
        return HostConfig(
            llama={name: config[name] for name in LLAMA_FIELDS if config.get(name) is not None},
            mm_hidden_size=config["mm_hidden_size"],
            out_dim=_or_default(config.get("out_dim"), self.default_out_dim),
            select_layer=_or_default(config.get("mm_vision_select_layer"), -2),
            vision_tower=config.get("mm_vision_tower")
            or config.get("vision_tower")
            or self.default_vision_tower,
        )

    def build_projector(self, clip_width: int, llm_width: int) -> nn.Module:
        """The module mapping CLIP patch features [.., clip_width] into the LLM's embedding space."""
        raise NotImplementedError

    def full_size_llama(self) -> dict:
        """LlamaConfig fields of the host's published 7B language model (benchmarks build it with random
        weights)."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<host {self.name}>"


def _or_default(value, default):
    """A config.json value, or `default` when the field is absent or null."""
    return default if value is None else value
