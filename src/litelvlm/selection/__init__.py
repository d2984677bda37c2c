"""Token selection: pure functions from scores to kept patch indices, looked up by name."""

# Registration order is the order the methods are listed in (help texts, reports); the paper's baselines follow
# the earlier ones.
# isort: off
from . import baselines, divprune, in_llm, litelvlm, visionzip  # noqa: F401  (registration side effects)
from . import vispruner, prumerge, trim, downsample  # noqa: F401

# isort: on
from .base import (
    CONTEXT,
    DOMINANT,
    FULL_BUDGET_MODES,
    KEPT,
    KIND_NAMES,
    LOW_SIMILARITY,
    MERGED,
    Selection,
    SelectionMethod,
    TokenScores,
    check_budget,
    check_full_budget,
    check_options,
    get_method,
    keep_all,
    list_methods,
    register,
    run_selection,
    select_tokens,
)
from .in_llm import PruneStep, PruningPlan
from .litelvlm import ORDERS

__all__ = [
    "CONTEXT",
    "DOMINANT",
    "FULL_BUDGET_MODES",
    "KEPT",
    "KIND_NAMES",
    "LOW_SIMILARITY",
    "MERGED",
    "ORDERS",
    "PruneStep",
    "PruningPlan",
    "Selection",
    "SelectionMethod",
    "TokenScores",
    "check_budget",
    "check_full_budget",
    "check_options",
    "get_method",
    "keep_all",
    "list_methods",
    "register",
    "run_selection",
    "select_tokens",
]
