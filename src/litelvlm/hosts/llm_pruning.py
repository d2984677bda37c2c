"""Dropping visual tokens between decoder layers of transformers' Llama (FastV, PyramidDrop, SparseVLM).

`apply_pruning(model, state)` wraps every decoder layer of a `LlamaModel` in a thin `_PruningLayer` (ToMe's
`apply_patch`/`remove_patch` pattern: idempotent, all state in one attribute); `remove_pruning(model)` puts the
original layers back. The `pruning(...)` context manager does both around one call.

Between layers the state keeps `positions` [B, L_now]: the position (in the padded input layout) of every token
still alive. Each wrapped layer slices what LlamaModel computed once for the full sequence (attention mask, RoPE
cos/sin, position ids) down to those positions, so RoPE positions of kept tokens never change and padding stays
masked. Text tokens are never dropped: every `[SEG]` and the token before it survive, and `index_of` maps a
padded-layout position to its row in the final (shorter) hidden states.

Scores come from the one attention map a method needs, computed here from that layer's input (RMSNorm, q/k
projections, RoPE, causal and padding mask, softmax in float32): SDPA or flash attention stays on everywhere.
The KV cache of a pruned layer holds only the kept tokens; while decoding, each layer's mask columns are
gathered at the positions its cache holds.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ..selection.in_llm import PruneStep, PruningPlan

ATTRIBUTE = "_litelvlm_pruning"
KEY_CHUNK = 128  # keys scored at a time when computing a pruning layer's attention rows


@dataclass
class PruningState:
    """Everything the wrapped layers share during one forward (prefill) and the decoding steps after it."""

    plan: PruningPlan
    image_spans: list[tuple[int, int]]  # (start, stop) of the visual tokens of each row, padded layout
    query_ends: list[int]  # per row, the last token of the instruction (the one that predicts the answer)
    positions: torch.Tensor | None = None  # [B, L_now] padded-layout positions alive before the next layer
    kv_positions: dict[int, torch.Tensor] = field(
        default_factory=dict
    )  # layer -> [B, n] positions in its cache
    scores: dict[int, torch.Tensor] = field(default_factory=dict)  # pruning layer -> [B, V_now] visual scores
    kept: dict[int, torch.Tensor] = field(default_factory=dict)  # pruning layer -> [B, keep] kept positions
    prefill_length: int = 0  # padded prefill length: decoded tokens take mask columns from here on

    def __post_init__(self) -> None:
        self.steps = {step.layer: step for step in self.plan.steps}

    def is_visual(self, positions: torch.Tensor) -> torch.Tensor:
        starts = torch.tensor([s for s, _ in self.image_spans], device=positions.device)[:, None]
        stops = torch.tensor([e for _, e in self.image_spans], device=positions.device)[:, None]
        return (positions >= starts) & (positions < stops)

    def index_of(self, positions: torch.Tensor) -> torch.Tensor:
        """Rows, in the current (pruned) sequence, of padded-layout positions [B, n] that are alive."""
        found = (self.positions.unsqueeze(1) == positions.unsqueeze(2)).float().argmax(dim=2)
        return found


class _PruningLayer(nn.Module):
    """A decoder layer that first drops tokens (if the plan says so), then runs on the survivors."""

    def __init__(self, inner: nn.Module, index: int, state: PruningState) -> None:
        super().__init__()
        self.inner, self.index, self.state = inner, index, state

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs):
        state = self.state
        decoding = (
            hidden_states.shape[1] == 1 and state.positions is not None and self.index in state.kv_positions
        )
        if decoding:
            kwargs = self._slice_for_decoding(kwargs)
        else:
            if state.positions is None:
                batch, length = hidden_states.shape[:2]
                state.positions = torch.arange(length, device=hidden_states.device).expand(batch, -1)
                state.prefill_length = length
            if self.index in state.steps:
                hidden_states = self._drop(hidden_states, state.steps[self.index])
            kwargs = self._slice_for_prefill(kwargs)
            state.kv_positions[self.index] = state.positions
            if self.index + 1 in state.steps:
                step = state.steps[self.index + 1]
                state.scores[self.index + 1] = visual_scores(
                    self.inner, hidden_states, kwargs, state, step.rule
                )
        return self.inner(hidden_states, *args, **kwargs)

    # ------------------------------------------------------------------ prefill
    def _slice_for_prefill(self, kwargs: dict) -> dict:
        positions = self.state.positions
        if positions.shape[1] == self._full_length(kwargs):
            return kwargs
        kwargs = dict(kwargs)
        mask = kwargs.get("attention_mask")
        if isinstance(mask, torch.Tensor) and mask.dim() == 4:
            rows = positions[:, None, :, None].expand(-1, mask.shape[1], -1, mask.shape[3])
            mask = mask.gather(2, rows)
            cols = positions[:, None, None, :].expand(-1, mask.shape[1], mask.shape[2], -1)
            kwargs["attention_mask"] = mask.gather(3, cols)
        if kwargs.get("position_embeddings") is not None:
            kwargs["position_embeddings"] = tuple(_take(t, positions) for t in kwargs["position_embeddings"])
        if isinstance(kwargs.get("position_ids"), torch.Tensor):
            kwargs["position_ids"] = _take(kwargs["position_ids"].expand(positions.shape[0], -1), positions)
        if isinstance(kwargs.get("cache_position"), torch.Tensor):  # transformers 4.x
            kwargs["cache_position"] = torch.arange(positions.shape[1], device=positions.device)
        return kwargs

    @staticmethod
    def _full_length(kwargs: dict) -> int:
        cos = (kwargs.get("position_embeddings") or (None,))[0]
        return cos.shape[1] if cos is not None else -1

    def _drop(self, hidden: torch.Tensor, step: PruneStep) -> torch.Tensor:
        state = self.state
        positions = state.positions
        visual = state.is_visual(positions)
        scores = state.scores.pop(self.index)  # [B, V_now], visual tokens in sequence order
        visual_positions = positions[visual].view(positions.shape[0], -1)
        keep = min(step.keep, visual_positions.shape[1])
        plain = keep - min(step.recycle, keep)
        order = scores.argsort(dim=1, descending=True, stable=True)
        top = order[:, :plain]
        kept_visual = torch.zeros_like(scores, dtype=torch.bool).scatter_(1, top, True)
        if plain < keep:  # SparseVLM: merge the best of the dropped tokens into `recycle` slots
            hidden = _recycle(
                hidden, positions, visual_positions, order[:, plain:], keep - plain, kept_visual
            )
        alive = ~visual
        alive[visual] = kept_visual.flatten()
        new_positions = positions[alive].view(positions.shape[0], -1)
        state.kept[self.index] = new_positions[state.is_visual(new_positions)].view(positions.shape[0], -1)
        hidden = _take(hidden, _rows_of(positions, new_positions))
        state.positions = new_positions
        return hidden

    # ------------------------------------------------------------------ decoding
    def _slice_for_decoding(self, kwargs: dict) -> dict:
        state = self.state
        cached = state.kv_positions[self.index]
        mask = kwargs.get("attention_mask")
        if not isinstance(mask, torch.Tensor) or mask.dim() != 4:
            return kwargs
        # this layer's cache holds its `cached` prefill positions, then every decoded token so far
        decoded = torch.arange(state.prefill_length, mask.shape[3], device=mask.device).expand(
            cached.shape[0], -1
        )
        columns = torch.cat([cached, decoded], dim=1)
        kwargs = dict(kwargs)
        kwargs["attention_mask"] = mask.gather(
            3, columns[:, None, None, :].expand(-1, mask.shape[1], mask.shape[2], -1)
        )
        return kwargs


def _take(values: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """values [B, L, ...] (or [1, L, ...], shared by the batch) at index [B, n] -> [B, n, ...]."""
    if values.shape[0] != index.shape[0]:
        values = values.expand(index.shape[0], *values.shape[1:])
    shape = index.shape + values.shape[2:]
    expanded = index.reshape(*index.shape, *([1] * (values.dim() - 2))).expand(shape)
    return values.gather(1, expanded)


def _rows_of(positions: torch.Tensor, wanted: torch.Tensor) -> torch.Tensor:
    """Rows of `wanted` positions [B, m] within `positions` [B, n] (both sorted)."""
    return torch.searchsorted(positions.contiguous(), wanted.contiguous())


def _recycle(hidden, positions, visual_positions, dropped_order, slots, kept_visual):
    """SparseVLM-style recycling: the best-scored dropped tokens are grouped around `slots` centres (the best
    of them) by cosine similarity and averaged; each merged token takes its centre's place (and position)."""
    batch = hidden.shape[0]
    candidates = dropped_order[:, : max(slots, min(dropped_order.shape[1], 3 * slots))]
    centres = candidates[:, :slots]
    visual_rows = _rows_of(positions, visual_positions)  # sequence rows of the visual tokens
    candidate_rows = visual_rows.gather(1, candidates)
    centre_rows = visual_rows.gather(1, centres)
    features = _take(hidden, candidate_rows).float()
    unit = F.normalize(features, dim=-1)
    assignment = (unit @ unit[:, :slots].transpose(1, 2)).argmax(dim=2)  # [B, candidates] -> centre
    assignment[:, :slots] = torch.arange(slots, device=hidden.device)  # a centre belongs to itself
    one_hot = F.one_hot(assignment, slots).to(features.dtype)  # [B, candidates, slots]
    merged = (one_hot.transpose(1, 2) @ features) / one_hot.sum(dim=1).unsqueeze(-1)
    hidden = hidden.clone()
    hidden[torch.arange(batch)[:, None], centre_rows] = merged.to(hidden.dtype)
    kept_visual.scatter_(1, centres, True)
    return hidden


def visual_scores(layer: nn.Module, hidden: torch.Tensor, kwargs: dict, state: PruningState, rule: str):
    """[B, V] importance of the alive visual tokens (in sequence order) from this decoder layer's attention,
    computed here in float32 from the layer's input."""
    positions = state.positions
    batch, length, _ = hidden.shape
    visual = state.is_visual(positions)
    query_end = torch.tensor(state.query_ends, device=positions.device)[:, None]
    end_rows = state.index_of(query_end)  # [B, 1]
    valid = _valid_keys(kwargs, positions, end_rows[:, 0])  # [B, L] real (non-pad) tokens
    if rule == "last_token":
        query_rows = end_rows
    elif rule == "text_raters":
        image_stop = torch.tensor([stop for _, stop in state.image_spans], device=positions.device)[:, None]
        text_after_image = valid & (positions >= image_stop) & (positions <= query_end)
        counts = text_after_image.sum(1)
        rows = torch.arange(length, device=hidden.device).expand(batch, -1)
        query_rows = torch.where(text_after_image, rows, rows + length).argsort(1)[:, : int(counts.max())]
        # a row with fewer raters than the longest fills up with its instruction end (a real token; with left
        # padding the next rows would be pads, whose attention over no valid key is NaN); weighted 0 below
        slots = torch.arange(query_rows.shape[1], device=hidden.device)[None]
        query_rows = torch.where(slots < counts[:, None], query_rows, end_rows)
    else:
        raise ValueError(f"unknown scoring rule {rule!r}")
    probabilities = attention_rows(layer, hidden, kwargs, query_rows, valid)  # [B, heads, Q, L]
    mean = probabilities.mean(dim=1)  # head-averaged [B, Q, L]
    to_visual = mean[visual.unsqueeze(1).expand_as(mean)].view(batch, mean.shape[1], -1)  # [B, Q, V]
    if rule == "last_token":
        return to_visual[:, 0]
    real = (torch.arange(to_visual.shape[1], device=hidden.device)[None] < counts[:, None]).float()  # [B, Q]
    share = to_visual.sum(dim=2) * real  # attention each text token pays to the image
    mean_share = share.sum(1, keepdim=True) / real.sum(1, keepdim=True)
    raters = (share >= mean_share) & (real > 0)
    weights = raters.float() / raters.float().sum(1, keepdim=True).clamp(min=1)
    return (weights.unsqueeze(-1) * to_visual).sum(dim=1)


def _valid_keys(kwargs: dict, positions: torch.Tensor, query_end_rows: torch.Tensor) -> torch.Tensor:
    """[B, L] the keys each row's instruction end may attend: its real tokens up to it. Read from that query's
    row of the 4-d mask, not the diagonal: transformers unmasks fully masked rows (the pads' own rows) for SDPA,
    so a left pad's diagonal says "attend" (later keys never matter: every query is at or before the end)."""
    mask = kwargs.get("attention_mask")
    if isinstance(mask, torch.Tensor) and mask.dim() == 4:
        index = query_end_rows[:, None, None].expand(-1, 1, mask.shape[-1])
        row = mask[:, 0].gather(1, index)[:, 0]
        return row if row.dtype == torch.bool else row == 0
    return torch.ones(positions.shape, dtype=torch.bool, device=positions.device)


def attention_rows(layer, hidden, kwargs, query_rows, valid) -> torch.Tensor:
    """Softmax attention probabilities [B, heads, Q, L] of the given query rows over all keys of a decoder
    layer, with RoPE, causality and padding, computed in float32 from the layer's own norm and projections."""
    batch, length, _ = hidden.shape
    attention = layer.self_attn
    normed = layer.input_layernorm(hidden)
    head_dim = attention.head_dim
    queries_in = _take(normed, query_rows)
    q = (
        attention.q_proj(queries_in)
        .view(batch, -1, attention.config.num_attention_heads, head_dim)
        .transpose(1, 2)
    )
    cos, sin = kwargs["position_embeddings"]
    q = _rotate(q.float(), _take(cos, query_rows).float(), _take(sin, query_rows).float())
    if cos.shape[0] != batch:
        cos, sin = cos.expand(batch, -1, -1), sin.expand(batch, -1, -1)
    # Keys in chunks: float32 keys for the whole sequence would add tens of MiB to the layer's peak memory.
    pieces = []
    for start in range(0, length, KEY_CHUNK):
        stop = min(length, start + KEY_CHUNK)
        k = attention.k_proj(normed[:, start:stop]).view(batch, stop - start, -1, head_dim).transpose(1, 2)
        k = _rotate(k.float(), cos[:, start:stop].float(), sin[:, start:stop].float())
        k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1) if k.shape[1] != q.shape[1] else k
        pieces.append(q @ k.transpose(2, 3))
    logits = torch.cat(pieces, dim=-1) / math.sqrt(head_dim)
    key_index = torch.arange(length, device=hidden.device)
    allowed = (key_index[None, None, :] <= query_rows[:, :, None]) & valid[:, None, :]
    logits = logits.masked_fill(~allowed[:, None], float("-inf"))
    return logits.softmax(dim=-1)


def _rotate(x, cos, sin):
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin


def surviving_patches(state: PruningState | None, rows: int) -> list[list[int] | None]:
    """Per row, the patch indices (raster: every patch entered the LLM) alive after the last pruning step; None
    per row when nothing was pruned inside the LLM (no state, or no step taken)."""
    if state is None or not state.kept:
        return [None] * rows
    deepest = state.kept[max(state.kept)]
    return [(deepest[row] - start).tolist() for row, (start, _) in enumerate(state.image_spans)]


def apply_pruning(model: nn.Module, state: PruningState) -> None:
    """Wrap every decoder layer of a LlamaModel (idempotent: re-applying replaces the state)."""
    if hasattr(model, ATTRIBUTE):
        remove_pruning(model)
    originals = model.layers  # the ModuleList object itself comes back on removal
    model.layers = nn.ModuleList(_PruningLayer(layer, index, state) for index, layer in enumerate(originals))
    setattr(model, ATTRIBUTE, (originals, state))


def remove_pruning(model: nn.Module) -> None:
    """Put the original decoder layers back (no-op when not applied)."""
    if not hasattr(model, ATTRIBUTE):
        return
    originals, _ = getattr(model, ATTRIBUTE)
    model.layers = originals
    delattr(model, ATTRIBUTE)


@contextmanager
def pruning(
    model: nn.Module, plan: PruningPlan | None, image_spans: list[tuple[int, int]], query_ends: list[int]
):
    """Prune inside `model` (a LlamaModel) for the duration of the block; yields the state (None: no plan).

    query_ends: per sequence (padded layout), the last token of the instruction: the token whose output
    predicts the (last) answer. FastV/PyramidDrop rank by its attention; SparseVLM's raters are the text tokens
    between the image and it. In generation it is the last prompt token; teacher-forced, the token before the
    last answer, so both paths prune the same tokens.
    """
    if plan is None or not plan.steps:
        yield None
        return
    state = PruningState(plan, image_spans, list(query_ends))
    apply_pruning(model, state)
    try:
        yield state
    finally:
        remove_pruning(model)
