"""Per-stage wall-clock timing that is honest on CUDA (synchronised) and free when nobody reads it."""

from __future__ import annotations

import time
from collections import defaultdict
from contextlib import contextmanager

import torch


class StageTimer:
    """Accumulates seconds per named stage: `with timer("llm"): ...`."""

    def __init__(self, device: torch.device | str | None = None) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self._cuda = torch.device(device).type == "cuda" if device is not None else False

    @contextmanager
    def __call__(self, stage: str):
        self._sync()
        start = time.perf_counter()
        try:
            yield
        finally:
            self._sync()
            self.seconds[stage] += time.perf_counter() - start

    def _sync(self) -> None:
        if self._cuda:
            torch.cuda.synchronize()

    def as_dict(self) -> dict[str, float]:
        return dict(self.seconds)
