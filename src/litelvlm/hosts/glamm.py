"""GLaMM (MBZUAI/GLaMM-RefSeg, GLaMM-FullScope) as a host adapter: what differs from the grounding core.

| GLaMM checkpoint key                     | our module                                   |
|------------------------------------------|----------------------------------------------|
| model.embed_tokens / layers.* / norm     | llm.model.* (`LlamaForCausalLM`)             |
| lm_head                                  | llm.lm_head                                  |
| model.mm_projector.{0,2}                 | projector.{0,2} (Linear, GELU, Linear)       |
| model.text_hidden_fcs.0.{0,2}            | text_hidden_fcs.{0,2} (Linear, ReLU, Linear) |
| model.grounding_encoder.* (Meta SAM)     | sam.* (transformers' SAM modules, renamed)   |
| model.region_encoder.*, rotary inv_freq  | skipped, never read into memory              |

The CLIP vision tower (ViT-L/14 at 336 px, 576 patches) is not in the checkpoint; `mm_vision_tower` names it.
Prompts: llava_v1 with the image introduced as "The <image> provides an overview of the picture.", up to 3
expressions as turns of one conversation (GLaMM's RefCOCO evaluation). Details: docs/glamm.md.
"""

from __future__ import annotations

from torch import nn

from ..prompts import DEFAULT_QUESTION
from .host import LLAMA_7B, Host

# GLaMM's language model: Vicuna-7B v1.5 (LLaMA-2 7B) with GLaMM's 7 added tokens.
VICUNA_7B = {**LLAMA_7B, "vocab_size": 32007, "max_position_embeddings": 4096, "rms_norm_eps": 1e-5}


class GlammHost(Host):
    name = "glamm"
    display_name = "GLaMM"
    architectures = ("GLaMMForCausalLM",)
    example_checkpoint = "MBZUAI/GLaMM-RefSeg"
    sam_prefix = "model.grounding_encoder."
    projector_input_key = "model.mm_projector.0.weight"
    skipped_prefixes = ("model.region_encoder.", "model.vision_tower.", "model.vision_model.")
    default_vision_tower = "openai/clip-vit-large-patch14-336"
    clip_image_size = 336
    added_tokens = ("<im_start>", "<im_end>", "<bbox>", "<point>", "[SEG]", "<p>", "</p>")  # in id order
    image_prefix = "The <image> provides an overview of the picture.\n"
    max_turns = 3  # GLaMM's RefSeg conversations hold at most 3 expressions
    default_question = DEFAULT_QUESTION  # "Please segment {class_name} in this image."
    default_answer = 0  # "It is [SEG]."
    protocol = "glamm"
    default_out_dim = 512  # GLaMM's code default when config.json has no out_dim

    def build_projector(self, clip_width: int, llm_width: int) -> nn.Module:
        """LLaVA-1.5's mlp2x_gelu: Linear, GELU, Linear."""
        return nn.Sequential(nn.Linear(clip_width, llm_width), nn.GELU(), nn.Linear(llm_width, llm_width))

    def full_size_llama(self) -> dict:
        return dict(VICUNA_7B)
