"""Builders of tiny random checkpoints and data sets in the official layouts, for tests, demos and users."""

from .clip import clip_config, full_size_clip_config, make_tiny_clip
from .clip_tokenizer import write_clip_tokenizer
from .glamm import make_tiny_glamm
from .llama_tokenizer import write_tiny_llama_tokenizer
from .refcoco import make_tiny_refcoco

__all__ = [
    "clip_config",
    "full_size_clip_config",
    "make_tiny_clip",
    "make_tiny_glamm",
    "make_tiny_refcoco",
    "write_clip_tokenizer",
    "write_tiny_llama_tokenizer",
]
