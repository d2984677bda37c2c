"""Builders of tiny random checkpoints and data sets in the official layouts, for tests, demos and users."""

from ..synthetic import clip_config, full_size_clip_config, write_clip_tokenizer, write_tiny_llama_tokenizer
from .clip import make_tiny_clip
from .glamm import make_tiny_glamm
from .lisa import make_tiny_lisa
from .llava_hf import make_tiny_llava_hf
from .refcoco import make_tiny_refcoco

__all__ = [
    "clip_config",
    "full_size_clip_config",
    "make_tiny_clip",
    "make_tiny_glamm",
    "make_tiny_lisa",
    "make_tiny_llava_hf",
    "make_tiny_refcoco",
    "write_clip_tokenizer",
    "write_tiny_llama_tokenizer",
]
