"""Checking every method x budget x option combination of a run before any work is done.

A sweep (eval, bench, analyze) must not fail on its fifth configuration, after minutes of work and with files
written, for a combination it could have refused at the start. Each combination is run once on small synthetic
scores (every score field filled, the real patch grid), which exercises the same validation the real run does.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from ..errors import LiteLVLMError
from .base import TokenScores, check_budget, check_options, get_method, run_selection

SYNTHETIC_WIDTH = 8  # feature width of the synthetic scores (methods never depend on it)


def synthetic_scores(grid: tuple[int, int]) -> TokenScores:
    """One image, one text, every field filled with seeded random values, on the given patch grid."""
    generator = torch.Generator().manual_seed(0)
    count = grid[0] * grid[1]

    def values(*shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=generator)

    return TokenScores(
        batch_size=1,
        num_patches=count,
        grid=grid,
        similarity=values(1, 1, count),
        context=values(1, count),
        cls_attention=values(1, count).softmax(-1),
        features=values(1, count, SYNTHETIC_WIDTH),
        keys=values(1, count, SYNTHETIC_WIDTH),
        last_cls_attention=values(1, count).softmax(-1),
        last_keys=values(1, count, SYNTHETIC_WIDTH),
        encode_grid=lambda coarse: values(1, coarse[0] * coarse[1], SYNTHETIC_WIDTH),
    )


def check_combinations(
    methods: Sequence[str],
    budgets: Sequence[int],
    options: Mapping[str, Mapping[str, object]],
    *,
    grid: tuple[int, int],
    num_layers: int | None,
    full_budget: str = "identity",
) -> None:
    """Raise the error the run would raise later, now. options: {method: its options}; num_layers: the LLM's
    depth (None: no LLM is run, so in-LLM methods are refused)."""
    num_patches = grid[0] * grid[1]
    scores = synthetic_scores(grid)
    for method in methods:
        entry = get_method(method)
        method_options = dict(options.get(method, {}))
        check_options(entry, method_options)
        if entry.stage == "llm" and num_layers is None:
            raise LiteLVLMError(
                f"method {method!r} prunes inside the LLM, and this command runs CLIP alone; drop it, or "
                "evaluate it with a host (eval, segment, bench)."
            )
        for budget in budgets:
            budget = check_budget(budget)
            if entry.stage == "llm":
                if budget < num_patches:  # (as the host: at full budget an in-LLM method does nothing)
                    entry.fn(budget, num_layers, num_patches, **method_options)
            elif budget < num_patches or full_budget != "identity":
                run_selection(entry, scores, budget, full_budget, method_options)
