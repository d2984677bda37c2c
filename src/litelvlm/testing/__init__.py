"""Builders of tiny random checkpoints and data sets in the official layouts, for tests, demos and users."""

from .clip import clip_config, full_size_clip_config, make_tiny_clip
from .clip_tokenizer import write_clip_tokenizer

__all__ = ["clip_config", "full_size_clip_config", "make_tiny_clip", "write_clip_tokenizer"]
