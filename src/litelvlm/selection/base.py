"""Inputs, outputs and the registry shared by every token-selection method.

A method is a pure function `(scores: TokenScores, budget: int, **options) -> Selection`. Scores are computed
once per image by `litelvlm.scoring.ClipScorer` (or by anything else that fills the fields a method needs).
"""

from __future__ import annotations

import inspect
import numbers
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch

from ..errors import LiteLVLMError

# Kinds of kept tokens, for diagnostics and overlays. Stored per kept token as int64 codes.
KEPT, LOW_SIMILARITY, CONTEXT, DOMINANT, MERGED = range(5)
KIND_NAMES = ("kept", "low_similarity", "context", "dominant", "merged")


@dataclass
class TokenScores:
    """Per-image evidence a selection method may use; each field is optional, batch-first.

    similarity:     [B, T, N] raw text x patch dot products (CLIP projected space, not normalised)
    text_mask:      [B, T] bool, which of the T text slots are real (None: all are)
    context:        [B, N] context contribution of each patch to the CLS token in the last layer
    cls_attention:  [B, N] head-averaged CLS -> patch attention at the select layer
    features:       [B, N, D] select-layer patch features (what the LLM's projector receives)
    keys:           [B, N, Dh] head-averaged select-layer keys (VisionZip's merge metric)
    last_cls_attention: [B, N] full-width CLS -> patch attention in CLIP's last layer (PruMerge)
    last_keys:      [B, N, D] full-width last-layer patch keys (PruMerge's merge metric)
    encode_grid:    (rows, cols) -> [B, rows * cols, D] select-layer patches of the images resized to that patch
                    grid, i.e. a second, smaller vision pass (image downsampling)
    """

    batch_size: int
    num_patches: int
    grid: tuple[int, int]
    similarity: torch.Tensor | None = None
    text_mask: torch.Tensor | None = None
    context: torch.Tensor | None = None
    cls_attention: torch.Tensor | None = None
    features: torch.Tensor | None = None
    keys: torch.Tensor | None = None
    last_cls_attention: torch.Tensor | None = None
    last_keys: torch.Tensor | None = None
    encode_grid: Callable[[tuple[int, int]], torch.Tensor] | None = None

    @property
    def device(self) -> torch.device:
        tensors = (self.similarity, self.context, self.cls_attention, self.features, self.keys)
        for value in (*tensors, self.last_cls_attention, self.last_keys):
            if value is not None:
                return value.device
        return torch.device("cpu")

    def require(self, method: str, *names: str) -> None:
        """The fields `method` reads are present and finite (NaN or infinite scores would rank arbitrarily)."""
        missing = [name for name in names if getattr(self, name) is None]
        if missing:
            raise LiteLVLMError(
                f"method {method!r} needs the score field(s) {', '.join(missing)}; "
                "compute them with ClipScorer.score(..., needs=...)."
            )
        for name in names:
            value = getattr(self, name)
            if name == "similarity" and self.text_mask is not None:
                value = value[self.text_mask.to(value.device)]  # padded text slots are never read
            if isinstance(value, torch.Tensor) and not bool(torch.isfinite(value).all()):
                bad = int((~torch.isfinite(value)).sum())
                raise LiteLVLMError(
                    f"the {name} scores hold {bad} NaN or infinite value(s) of {value.numel()}, so {method!r} cannot "
                    "rank the tokens; check the model's dtype (float16 overflows) and its weights."
                )


@dataclass
class Selection:
    """Kept visual tokens, in the order the LLM receives them.

    indices:  [B, K] int64 patch indices (raster index into the N patches)
    kinds:    [B, K] int64 codes into KIND_NAMES (why each token was kept)
    features: [B, K, D] replacement features for methods that merge or make tokens (VisionZip, PruMerge,
              TRIM, downsampling); None means "gather the select-layer features at `indices`". A made token
              has kind MERGED and, by convention, the index of a patch it stands for (see its method)
    """

    indices: torch.Tensor
    kinds: torch.Tensor
    features: torch.Tensor | None = None

    @property
    def budget(self) -> int:
        return self.indices.shape[1]

    def is_permutation_of_all(self, num_patches: int) -> bool:
        """Every patch kept, but not all rows in raster order (e.g. LiteLVLM's paper order at full budget)."""
        raster = torch.arange(num_patches, device=self.indices.device)
        return self.budget == num_patches and not bool((self.indices == raster).all())

    def kind_names(self, sample: int = 0) -> list[str]:
        return [KIND_NAMES[code] for code in self.kinds[sample].tolist()]

    def gather(self, patch_features: torch.Tensor) -> torch.Tensor:
        """Features [B, K, D] to feed the LLM, from all patch features [B, N, D]."""
        if self.features is not None:
            return self.features
        return gather_rows(patch_features, self.indices.to(patch_features.device))


SelectionFn = Callable[..., Selection]


@dataclass(frozen=True)
class SelectionMethod:
    """A registered method: its function, the score fields it reads, and a one-line description."""

    name: str
    fn: SelectionFn
    needs: frozenset[str]
    description: str
    stage: str = "vision"  # "vision": picks tokens before the LLM; "llm": returns a PruningPlan for inside it

    @property
    def option_names(self) -> tuple[str, ...]:
        """Keyword options the method accepts (e.g. `order`, `seed`)."""
        parameters = inspect.signature(self.fn).parameters.values()
        return tuple(p.name for p in parameters if p.kind is inspect.Parameter.KEYWORD_ONLY)

    def supported(self, **options) -> dict[str, object]:
        """The subset of `options` this method accepts (for front ends offering every method's flags)."""
        return {name: value for name, value in options.items() if name in self.option_names}


_REGISTRY: dict[str, SelectionMethod] = {}


def register(
    name: str, needs: tuple[str, ...] = (), description: str = "", stage: str = "vision"
) -> Callable[[SelectionFn], SelectionFn]:
    """Decorator adding a selection function to the registry under `name`.

    stage "vision": fn(scores, budget, **options) -> Selection; stage "llm": fn(budget, num_layers, num_visual,
    **options) -> PruningPlan, executed by a host between decoder layers.
    """

    def decorator(fn: SelectionFn) -> SelectionFn:
        if name in _REGISTRY:
            raise ValueError(f"a selection method named {name!r} is already registered")
        summary = description or (fn.__doc__ or "").split("\n")[0]
        _REGISTRY[name] = SelectionMethod(name, fn, frozenset(needs), summary, stage)
        return fn

    return decorator


def list_methods(stage: str | None = None) -> list[str]:
    """Names of the registered methods in registration order; `stage` "vision" or "llm" filters them."""
    return [name for name, entry in _REGISTRY.items() if stage is None or entry.stage == stage]


def get_method(name: str) -> SelectionMethod:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise LiteLVLMError(f"unknown method {name!r}; choose one of: {', '.join(_REGISTRY)}.") from None


def check_budget(budget: object) -> int:
    """The budget as an int, or a clear error for zero, negative, fractional or non-numeric values."""
    if isinstance(budget, bool) or not isinstance(budget, numbers.Integral):
        raise LiteLVLMError(f"budget must be a whole number of visual tokens such as 64, got {budget!r}.")
    if budget <= 0:
        raise LiteLVLMError(f"budget must be at least 1 visual token, got {budget}; use a positive number.")
    return int(budget)


def keep_all(batch_size: int, num_patches: int, device: torch.device | str = "cpu") -> Selection:
    """No pruning: every patch in raster order (what any method returns when budget >= N)."""
    indices = torch.arange(num_patches, device=device).expand(batch_size, -1).clone()
    return Selection(indices, torch.full_like(indices, KEPT))


FULL_BUDGET_MODES = ("identity", "method")


def check_full_budget(full_budget: object) -> str:
    if full_budget not in FULL_BUDGET_MODES:
        raise LiteLVLMError(
            f"full_budget must be one of {', '.join(FULL_BUDGET_MODES)}, got {full_budget!r}; pass one of those."
        )
    return full_budget


def check_options(entry: SelectionMethod, options: Mapping[str, object]) -> None:
    """A clear error for an option the method does not take, or of the wrong type (instead of a TypeError deep
    inside it). The expected type is the default's, else the annotation's (e.g. `float | None`)."""
    unknown = [name for name in options if name not in entry.option_names]
    if unknown:
        accepted = ", ".join(entry.option_names) or "none"
        raise LiteLVLMError(
            f"method {entry.name!r} takes no option {unknown[0]!r}; its options are: {accepted}."
        )
    parameters = inspect.signature(entry.fn).parameters
    for name, value in options.items():
        expected = _expected_type(parameters[name])
        if expected is None or (value is None and parameters[name].default is None):
            continue
        kind, accepts = expected
        if not accepts(value):
            raise LiteLVLMError(
                f"option {name!r} of method {entry.name!r} must be {kind}, got {value!r} "
                f"({type(value).__name__}); pass {kind}."
            )
        if name == "seed" and value < 0:
            raise LiteLVLMError(f"seed must be a whole number >= 0, got {value}; pass 0 or more.")


def _is_int(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


# (description, test) by the type name a default or annotation gives.
_OPTION_TYPES = {
    "bool": ("true or false", lambda v: isinstance(v, bool)),
    "int": ("a whole number", _is_int),
    "float": ("a number", _is_real),
    "str": ("a string", lambda v: isinstance(v, str)),
    "tuple": ("a sequence of whole numbers", lambda v: isinstance(v, (tuple, list)) and all(map(_is_int, v))),
}


def _expected_type(parameter: inspect.Parameter) -> tuple[str, Callable[[object], bool]] | None:
    if parameter.default is not None and parameter.default is not inspect.Parameter.empty:
        return _OPTION_TYPES.get(type(parameter.default).__name__)
    annotation = str(parameter.annotation)
    return next((kind for name, kind in _OPTION_TYPES.items() if annotation.startswith(name)), None)


def select_tokens(
    method: str, scores: TokenScores, budget: int, *, full_budget: str = "identity", **options
) -> Selection:
    """Run a registered method on scores for B images; returns [B, min(budget, N)] kept patch indices.

    A budget >= N keeps every patch. With full_budget="identity" (default) that is raster order, for every
    method (no pruning at all). full_budget="method" runs the method at budget N instead, which for
    LiteLVLM's paper order is the authors' behaviour: all patches, permuted.
    """
    entry = get_method(method)
    if not isinstance(scores, TokenScores):
        raise LiteLVLMError(
            f"select_tokens takes the TokenScores of ClipScorer.score (or one built by hand), got "
            f"{type(scores).__name__}; pass scorer.score(texts)."
        )
    budget = check_budget(budget)
    check_full_budget(full_budget)
    check_options(entry, options)
    return run_selection(entry, scores, budget, full_budget, options)


def run_selection(
    entry: SelectionMethod, scores: TokenScores, budget: int, full_budget: str, options: Mapping[str, object]
) -> Selection:
    """`select_tokens` on arguments already validated (for callers that validate once at their own entry)."""
    if budget >= scores.num_patches:
        if full_budget == "identity":
            return keep_all(scores.batch_size, scores.num_patches, scores.device)
        budget = scores.num_patches
    if entry.stage != "vision":
        raise LiteLVLMError(
            f"method {entry.name!r} prunes inside the LLM, so it keeps every visual token here; run it through "
            "a host (GroundingPredictor, litelvlm segment or eval)."
        )
    scores.require(entry.name, *sorted(entry.needs))
    return entry.fn(scores, budget, **options)


def raster_selection(keep: torch.Tensor, kind: int = KEPT) -> Selection:
    """Selection from a boolean keep mask [B, N] with the same count per row, in raster order."""
    counts = keep.sum(1)
    if not bool((counts == counts[0]).all()):
        raise AssertionError("every sample must keep the same number of tokens")
    num_patches = keep.shape[1]
    positions = torch.arange(num_patches, device=keep.device).expand_as(keep)
    sort_key = torch.where(keep, positions, positions + num_patches)
    indices = sort_key.argsort(dim=1)[:, : int(counts[0])]
    return Selection(indices, torch.full_like(indices, kind))


def inverse_permutation(order: torch.Tensor) -> torch.Tensor:
    """rank[b, order[b, i]] = i for permutations order [B, N]."""
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(order.shape[1], device=order.device).expand_as(order))
    return rank


def gather_rows(values: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """values [B, N, D] gathered at index [B, K] -> [B, K, D]."""
    return values.gather(1, index.unsqueeze(-1).expand(-1, -1, values.shape[-1]))
