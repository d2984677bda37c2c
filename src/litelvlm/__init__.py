"""litelvlm: training-free, text-guided visual-token pruning for pixel-grounding VLMs (LiteLVLM, ICML 2026)."""

from .errors import LiteLVLMError
from .selection import Selection, TokenScores, list_methods, register, select_tokens

__version__ = "0.1.0"

__all__ = [
    "LiteLVLMError",
    "Selection",
    "TokenScores",
    "__version__",
    "list_methods",
    "register",
    "select_tokens",
]


def __getattr__(name: str):
    # The scorer pulls in transformers; import it only when asked for.
    if name == "ClipScorer":
        from .scoring import ClipScorer

        return ClipScorer
    raise AttributeError(name)
