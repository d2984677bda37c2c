"""LISA v1 (xinlai/LISA-7B-v1, xinlai/LISA-13B-llama2-v1 and their -explanatory variants) as a host adapter.

| LISA checkpoint key                      | our module                                   |
|------------------------------------------|----------------------------------------------|
| model.embed_tokens / layers.* / norm     | llm.model.* (`LlamaForCausalLM`)             |
| lm_head                                  | llm.lm_head                                  |
| model.mm_projector.{weight,bias}         | projector (one Linear)                       |
| model.text_hidden_fcs.0.{0,2}            | text_hidden_fcs.{0,2} (Linear, ReLU, Linear) |
| model.visual_model.* (Meta SAM)          | sam.* (transformers' SAM modules, renamed)   |
| model.layers.*.self_attn.rotary_emb.inv_freq | skipped (transformers recomputes it)     |

Everything else LISA does the way the core does it: the LLM in bf16 and SAM and `text_hidden_fcs` in fp32 in
the shards (cast on load); the transformers-4.31 tokenization that strips the whitespace around every added token
(`<im_start>`, `<im_end>`, `[SEG]`, and `<im_patch>` in 7B-v1); SAM fed the post-norm final state of the token
*before* each `[SEG]`, located in the spliced sequence (LISA's code shifts its mask by one and prepends 255 =
256 visual tokens - 1; the core finds the same position at any budget). The CLIP tower is ViT-L/14 at 224 px
(16 x 16 = 256 patches), loaded from `vision_tower` (it is not in the checkpoint); its preprocessing is
CLIPImageProcessor's resize + centre crop. One expression per conversation, with LISA's evaluation prompt
"What is {sentence} in this image? Please output segmentation mask." and answer "[SEG]." by default.
Details and deviations: docs/lisa.md.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from torch import nn

from ..prompts import BARE_ANSWER, OUTPUT_MASK_QUESTION
from .host import LLAMA_7B, Host

# LISA-7B-v1's language model: LLaVA-Lightning-7B-v1-1, i.e. Vicuna-7B v1.1 on LLaMA-1, with 4 added tokens.
LLAMA1_7B = {**LLAMA_7B, "vocab_size": 32004, "max_position_embeddings": 2048, "rms_norm_eps": 1e-6}
V0_MARKER = "pytorch_model-text_hidden_fcs.bin"  # LISA v0 saved its [SEG] projection in a file of its own


class LisaHost(Host):
    name = "lisa"
    display_name = "LISA"
    architectures = ("LISAForCausalLM",)
    example_checkpoint = "xinlai/LISA-7B-v1"
    sam_prefix = "model.visual_model."
    projector_input_key = "model.mm_projector.weight"
    skipped_prefixes = ("model.vision_tower.",)
    default_vision_tower = "openai/clip-vit-large-patch14"
    clip_image_size = 224
    added_tokens = ("<im_start>", "<im_end>", "[SEG]")
    image_prefix = "<image>\n"  # LISA's evaluation writes "<image>\n What is ...": the same token ids
    max_turns = 1  # LISA's training and evaluation conversations hold one question each
    default_question = OUTPUT_MASK_QUESTION
    default_answer = BARE_ANSWER
    protocol = "lisa"

    def unsupported_layout(self, directory: Path, config: Mapping) -> str | None:
        if (directory / V0_MARKER).is_file():
            return (
                f"{str(directory)!r} is a LISA v0 checkpoint (wrapper layout with {V0_MARKER}), which litelvlm "
                "does not support; use a v1 checkpoint such as xinlai/LISA-7B-v1 or xinlai/LISA-13B-llama2-v1."
            )
        return None

    def build_projector(self, clip_width: int, llm_width: int) -> nn.Module:
        """LLaVA v1.0's projector: a single Linear with bias (no GELU)."""
        return nn.Linear(clip_width, llm_width)

    def full_size_llama(self) -> dict:
        return dict(LLAMA1_7B)
