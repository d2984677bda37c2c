"""litelvlm: training-free, text-guided visual-token pruning for pixel-grounding VLMs (LiteLVLM, ICML 2026)."""

from .errors import LiteLVLMError

__version__ = "0.1.0"

# Imported on first use: importing torch takes seconds, and the CLI must be able to say "interrupted" (not
# print a traceback) when Ctrl-C arrives during that import.
_LAZY = {
    "Selection": "selection",
    "TokenScores": "selection",
    "list_methods": "selection",
    "register": "selection",
    "select_tokens": "selection",
    "ClipScorer": "scoring",
    "GroundingPredictor": "hosts",
    "LlavaPredictor": "hosts.llava",
    "prune": "hosts.llava_prune",
}

__all__ = ["LiteLVLMError", "__version__", *_LAZY]


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'litelvlm' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
