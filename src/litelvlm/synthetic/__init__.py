"""Models with random weights at the hosts' published architectures, and the tokenizer files they need, built
offline: for benchmarks (speed and memory do not depend on weight values), tests and demos."""

from .clip import clip_config, full_size_clip_config, random_clip
from .clip_tokenizer import write_clip_tokenizer
from .llama_tokenizer import write_tiny_llama_tokenizer
from .models import full_size_config, random_predictor

__all__ = [
    "clip_config",
    "full_size_clip_config",
    "full_size_config",
    "random_clip",
    "random_predictor",
    "write_clip_tokenizer",
    "write_tiny_llama_tokenizer",
]
