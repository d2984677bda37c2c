"""In-LLM pruning methods (FastV, PyramidDrop, SparseVLM): budgets turned into per-layer token schedules.

These methods keep every visual token at the LLM's input and drop some between decoder layers, so a budget
has two meanings; both are offered (`budget_mode`):
  "average": the mean number of visual tokens per decoder layer (how SparseVLM reports "192"),
  "final":   the number of visual tokens the deepest layers see.
Each function returns a `PruningPlan`; the host (`litelvlm.hosts.llm_pruning`) executes it.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import LiteLVLMError
from .base import register

BUDGET_MODES = ("average", "final")
REFERENCE_LAYERS = 32  # depth the published layer choices refer to (Vicuna-7B)


@dataclass(frozen=True)
class PruneStep:
    """Before decoder layer `layer`, keep `keep` visual tokens ranked by `rule` on the attention of layer
    `layer - 1`. rule "last_token": attention paid by the last real token (FastV, PyramidDrop);
    "text_raters": mean attention of the text tokens that look at the image more than average (SparseVLM).
    `recycle` of the kept tokens are merges of dropped ones (SparseVLM's recycling)."""

    layer: int
    keep: int
    rule: str = "last_token"
    recycle: int = 0


@dataclass(frozen=True)
class PruningPlan:
    method: str
    steps: tuple[PruneStep, ...]

    def tokens_per_layer(self, num_layers: int, num_visual: int) -> list[int]:
        """Visual tokens each decoder layer processes."""
        by_layer = {step.layer: step.keep for step in self.steps}
        counts, current = [], num_visual
        for layer in range(num_layers):
            current = min(current, by_layer.get(layer, current))
            counts.append(current)
        return counts

    def average_tokens(self, num_layers: int, num_visual: int) -> float:
        return sum(self.tokens_per_layer(num_layers, num_visual)) / num_layers


def scaled_layer(reference_layer: int, num_layers: int) -> int:
    """A published layer index (for 32 layers) at another depth; at least 1 (layer 0 has no earlier scores)."""
    check_depth(num_layers)
    return min(num_layers - 1, max(1, round(reference_layer * num_layers / REFERENCE_LAYERS)))


def check_depth(num_layers: int) -> None:
    """In-LLM methods drop tokens before a layer by the attention of the layer before it: two layers at least."""
    if num_layers < 2:
        raise LiteLVLMError(
            f"in-LLM methods need an LLM of at least 2 decoder layers (they rank tokens by an earlier layer's "
            f"attention), got {num_layers}; use a deeper model (e.g. --llm-layers 2)."
        )


def _check_mode(budget_mode: str) -> None:
    if budget_mode not in BUDGET_MODES:
        raise LiteLVLMError(
            f"budget_mode must be one of {', '.join(BUDGET_MODES)}, got {budget_mode!r}; pass one of those."
        )


def _average(layers: list[int], keeps: list[int], num_layers: int, num_visual: int) -> float:
    steps = tuple(PruneStep(layer, keep) for layer, keep in zip(layers, keeps))
    return PruningPlan("", steps).average_tokens(num_layers, num_visual)


def _fit_ratio(layers: list[int], budget: float, num_layers: int, num_visual: int) -> float:
    """The per-stage keep ratio r (stage i keeps N * r^(i+1)) whose average tokens per layer equal `budget`."""
    low, high = 0.0, 1.0
    for _ in range(60):
        middle = (low + high) / 2
        keeps = [round(num_visual * middle ** (i + 1)) for i in range(len(layers))]
        if _average(layers, keeps, num_layers, num_visual) > budget:
            high = middle
        else:
            low = middle
    return low


def _unreachable(method: str, budget: int, minimum: float) -> LiteLVLMError:
    problem = (
        f"{method} cannot average {budget} visual tokens per layer: its unpruned early layers alone average "
        f"{minimum:.0f}; use a larger budget or"
    )
    return LiteLVLMError(f"{problem} budget_mode='final'.", cli_message=f"{problem} --budget-mode final.")


@register(
    "fastv",
    stage="llm",
    description="inside the LLM: after layer K keep the tokens the last token attends to",
)
def fastv_plan(
    budget: int, num_layers: int, num_visual: int, *, layer: int = 2, ratio: float | None = None,
    budget_mode: str = "average",
) -> PruningPlan:  # fmt: skip
    """FastV: layers < K see every visual token; from layer K on, the R most attended by the last token
    (K is clamped to the model's last layer for depth-scaled models).

    ratio: FastV's own parameterisation (share of visual tokens dropped); when given, it overrides the budget.
    """
    _check_mode(budget_mode)
    if layer < 1:
        raise LiteLVLMError(
            f"fastv layer K must be at least 1 (layer 0 has no earlier attention), got {layer}."
        )
    check_depth(num_layers)
    layer = min(layer, num_layers - 1)  # depth-scaled models (benchmarks) may have fewer layers than K
    if ratio is not None:
        if not 0.0 <= ratio <= 1.0:
            raise LiteLVLMError(f"fastv ratio must lie in [0, 1], got {ratio}; pass a value in [0, 1].")
        keep = round(num_visual * (1 - ratio))
    elif budget_mode == "final":
        keep = budget
    else:
        keep = round((num_layers * budget - layer * num_visual) / (num_layers - layer))
        if keep < 1:
            raise _unreachable("fastv", budget, layer * num_visual / num_layers)
    keep = min(keep, num_visual)
    return PruningPlan("fastv", () if keep >= num_visual else (PruneStep(layer, keep),))


PDROP_LAYERS = (8, 16, 24)
PDROP_EARLY_LAYERS = (2, 6, 12)  # for average budgets the default stages cannot reach (below 144 of 576)


@register(
    "pdrop",
    stage="llm",
    description="inside the LLM: PyramidDrop, stages at layers 8/16/24 (2/6/12 at low budgets) keeping r, r^2, r^3",
)
def pdrop_plan(
    budget: int, num_layers: int, num_visual: int, *, layers: tuple[int, ...] | None = None,
    ratio: float | None = None, budget_mode: str = "average",
) -> PruningPlan:  # fmt: skip
    """PyramidDrop: at each stage boundary keep N * ratio^i visual tokens, ranked by the attention of the last
    instruction token. `ratio` (lambda; PDrop's default 0.5) overrides the budget when given; otherwise it is
    fitted so the average (or final) token count meets the budget. `layers` refer to 32 layers and scale; by
    default 8/16/24, or 2/6/12 when the average budget leaves the later stages nothing to keep (with 8
    unpruned layers, every stage's fitted share would round to no token)."""
    _check_mode(budget_mode)
    candidates = [layers] if layers is not None else [PDROP_LAYERS, PDROP_EARLY_LAYERS]
    fixed = ratio is not None or budget_mode == "final"
    for choice in candidates:
        stages = sorted({scaled_layer(layer, num_layers) for layer in choice})
        minimum = _average(stages, [0] * len(stages), num_layers, num_visual)
        if fixed:
            break
        if budget >= minimum:
            ratio = _fit_ratio(stages, budget, num_layers, num_visual)
            if round(num_visual * ratio ** len(stages)) >= 1:  # no stage left with nothing to keep
                break
            ratio = None
    else:
        raise _unreachable("pdrop", budget, minimum)
    if ratio is None:  # budget_mode "final": the deepest stage keeps the budget (all of it: no pruning)
        ratio = (min(budget, num_visual) / num_visual) ** (1 / len(stages))
    if not 0.0 <= ratio <= 1.0:
        raise LiteLVLMError(f"pdrop ratio must lie in [0, 1], got {ratio}; pass a value in [0, 1].")
    keeps = [max(1, round(num_visual * ratio ** (i + 1))) for i in range(len(stages))]
    steps = tuple(PruneStep(layer, keep) for layer, keep in zip(stages, keeps) if keep < num_visual)
    return PruningPlan("pdrop", steps)


# SparseVLM's published schedules for LLaVA-1.5 (32 layers): kept tokens at layers 2, 6 and 15.
SPARSEVLM_LAYERS = (2, 6, 15)
SPARSEVLM_SCHEDULES = {192: (300, 200, 110), 128: (303, 110, 36), 64: (66, 30, 17)}


@register(
    "sparsevlm", stage="llm", description="inside the LLM: text-rater attention at layers 2/6/15, recycling"
)
def sparsevlm_plan(
    budget: int, num_layers: int, num_visual: int, *, recycle_ratio: float = 0.1, budget_mode: str = "average",
) -> PruningPlan:  # fmt: skip
    """SparseVLM: visual tokens scored by the attention of "rater" text tokens (those attending to the image
    more than average); at each stage a `recycle_ratio` share of the kept tokens are merges of dropped ones.
    Budgets 192/128/64 (average, 32 layers, 576 tokens) use the published schedules; others are fitted."""
    _check_mode(budget_mode)
    if not 0.0 <= recycle_ratio < 1.0:
        raise LiteLVLMError(
            f"sparsevlm recycle_ratio must lie in [0, 1), got {recycle_ratio}; pass a value in [0, 1)."
        )
    # Shallow models can map two published layers onto one; each layer prunes once.
    stages = sorted({scaled_layer(layer, num_layers) for layer in SPARSEVLM_LAYERS})
    published = SPARSEVLM_SCHEDULES.get(budget)
    if budget_mode == "average" and published and num_layers == REFERENCE_LAYERS and num_visual == 576:
        keeps = list(published)
    elif budget_mode == "final":
        ratio = (budget / num_visual) ** (1 / len(stages))
        keeps = [round(num_visual * ratio ** (i + 1)) for i in range(len(stages))]
    else:
        minimum = _average(stages, [0] * len(stages), num_layers, num_visual)
        if budget < minimum:
            raise _unreachable("sparsevlm", budget, minimum)
        ratio = _fit_ratio(stages, budget, num_layers, num_visual)
        keeps = [round(num_visual * ratio ** (i + 1)) for i in range(len(stages))]
    steps = []
    for layer, keep in zip(stages, keeps):
        keep = max(1, min(keep, num_visual))
        if keep < num_visual and (not steps or layer > steps[-1].layer):
            steps.append(PruneStep(layer, keep, "text_raters", round(recycle_ratio * keep)))
    return PruningPlan("sparsevlm", tuple(steps))
