"""Pixel-grounding hosts: one grounding core (CLIP -> LLaMA -> [SEG] -> SAM) and one small adapter per model.

    from litelvlm.hosts import GroundingPredictor
    predictor = GroundingPredictor.from_pretrained("xinlai/LISA-7B-v1")   # or MBZUAI/GLaMM-RefSeg

The host is read from the checkpoint itself (`registry.detect_host`). Adding a host: docs/hosts.md.
"""

from .host import Host, HostConfig
from .registry import HOSTS, detect_host, get_host, list_hosts

_PREDICTOR_NAMES = ("ExpressionResult", "GroundingPredictor", "Prediction")


def __getattr__(name: str):
    # The predictor pulls in transformers' models; command-line parsing only needs the registry above.
    if name in _PREDICTOR_NAMES:
        from . import predictor

        return getattr(predictor, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "HOSTS",
    "ExpressionResult",
    "GroundingPredictor",
    "Host",
    "HostConfig",
    "Prediction",
    "detect_host",
    "get_host",
    "list_hosts",
]
