"""Running a LLaVA-style causal LM on text with spliced visual tokens: teacher-forced and generating.

Visual tokens replace the single image placeholder of each sequence; every position that matters later (the
token before each `[SEG]`, the image span) is computed from the spliced sequence itself, never from a constant.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from ..errors import LiteLVLMError

IMAGE_TOKEN_INDEX = -200
# RoPE positions of kept visual tokens: consecutive (the authors' and every baseline's code) or each token's
# place among all of the image's tokens (DART and the GAP paper report that the layout matters for grounding).
POSITIONS = ("compact", "original")
_VISUAL = -1  # marks visual positions in the spliced id list (never a real token id)


@dataclass
class SplicedBatch:
    """A right-padded batch of B sequences with their visual tokens spliced in.

    embeds:         [B, L, H] input embeddings (pads are zeros and masked)
    attention_mask: [B, L] int64, 1 for real positions
    lengths:        real length of each sequence
    image_spans:    (start, stop) of the visual tokens in each sequence
    spliced_ids:    each sequence's token ids with -1 at visual positions (for locating special tokens)
    position_ids:   [B, L] int64 RoPE positions (0, 1, 2, ... unless visual tokens keep their original ones)
    """

    embeds: torch.Tensor
    attention_mask: torch.Tensor
    lengths: list[int]
    image_spans: list[tuple[int, int]]
    spliced_ids: list[list[int]]
    position_ids: torch.Tensor

    def next_positions(self) -> torch.Tensor:
        """[B] the RoPE position of the first token generated after each sequence."""
        rows = torch.arange(len(self.lengths), device=self.position_ids.device)
        last = torch.tensor(self.lengths, device=self.position_ids.device) - 1
        return self.position_ids[rows, last] + 1

    def positions_before(self, token_id: int) -> list[list[int]]:
        """Per sequence, the positions whose output predicts `token_id` (one before each occurrence)."""
        return [[j - 1 for j, token in enumerate(ids) if token == token_id] for ids in self.spliced_ids]


def splice_visual_tokens(
    embed_tokens: torch.nn.Embedding,
    id_lists: Sequence[Sequence[int]],
    visual: torch.Tensor,
    visual_positions: torch.Tensor | None = None,
    image_length: int | None = None,
) -> SplicedBatch:
    """Replace the one IMAGE_TOKEN_INDEX of each id list by that row's visual tokens.

    id_lists: B token-id lists, each with exactly one -200; visual: [B, K, H] in the LLM's embedding space.
    Positions are consecutive ("compact") unless visual_positions [B, K] (each visual token's place among the
    `image_length` tokens of the unpruned image, e.g. its patch index) is given: then visual token k sits at
    start + visual_positions[k] and the text after the image continues at start + image_length, as if every
    visual token were present ("original").
    """
    if len(id_lists) != visual.shape[0]:
        raise ValueError(f"{len(id_lists)} sequences but {visual.shape[0]} rows of visual tokens")
    device, dtype = embed_tokens.weight.device, embed_tokens.weight.dtype
    visual = visual.to(device=device, dtype=dtype)
    num_visual = visual.shape[1]
    rows, spans, spliced, position_rows = [], [], [], []
    for row, ids in enumerate(id_lists):
        ids = list(ids)
        if ids.count(IMAGE_TOKEN_INDEX) != 1:
            raise LiteLVLMError(
                f"a prompt must hold exactly one <image>, found {ids.count(IMAGE_TOKEN_INDEX)}."
            )
        at = ids.index(IMAGE_TOKEN_INDEX)
        before = torch.tensor(ids[:at], dtype=torch.long, device=device)
        after = torch.tensor(ids[at + 1 :], dtype=torch.long, device=device)
        rows.append(torch.cat([embed_tokens(before), visual[row], embed_tokens(after)]))
        spans.append((at, at + num_visual))
        spliced.append(ids[:at] + [_VISUAL] * num_visual + ids[at + 1 :])
        if visual_positions is None:
            position_rows.append(torch.arange(rows[-1].shape[0], device=device))
        else:
            image = at + visual_positions[row].to(device)
            text_after = at + image_length + torch.arange(len(ids) - at - 1, device=device)
            position_rows.append(torch.cat([torch.arange(at, device=device), image, text_after]))
    lengths = [row.shape[0] for row in rows]
    longest = max(lengths)
    embeds = torch.zeros(len(rows), longest, rows[0].shape[-1], device=device, dtype=dtype)
    mask = torch.zeros(len(rows), longest, dtype=torch.long, device=device)
    positions = torch.arange(longest, device=device).repeat(len(rows), 1)  # pads: any value, they are masked
    for index, row in enumerate(rows):
        embeds[index, : row.shape[0]] = row
        mask[index, : row.shape[0]] = 1
        positions[index, : row.shape[0]] = position_rows[index]
    return SplicedBatch(embeds, mask, lengths, spans, spliced, positions)


def _cache_argument(model: torch.nn.Module) -> str:
    """transformers >= 5.24 calls the KV cache `cache`, earlier releases `past_key_values`."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def _output_cache(output):
    cache = getattr(output, "cache", None)
    return cache if cache is not None else getattr(output, "past_key_values", None)


@torch.inference_mode()
def final_hidden_states(decoder: torch.nn.Module, batch: SplicedBatch) -> torch.Tensor:
    """Teacher-forced pass of a `LlamaModel`-like decoder: the final hidden states after the last norm,
    [B, L, H]. No KV cache and no logits are computed."""
    output = decoder(
        inputs_embeds=batch.embeds,
        attention_mask=batch.attention_mask,
        position_ids=batch.position_ids,
        use_cache=False,
    )
    return output.last_hidden_state


def shared_prefix_length(batch: SplicedBatch, needed: Sequence[Sequence[int]] = ()) -> int:
    """How many leading positions every sequence of the batch holds identically (same input embedding, same
    RoPE position), stopping before the first position whose output is `needed` (per sequence; none while
    generating) and before each sequence's last token. 0 for a batch of one: nothing to share."""
    if batch.embeds.shape[0] < 2:
        return 0
    limit = min([min(batch.lengths) - 1, *(min(where) for where in needed if where)])
    same = (batch.embeds[1:, :limit] == batch.embeds[:1, :limit]).all(dim=2).all(dim=0)
    same &= (batch.position_ids[1:, :limit] == batch.position_ids[:1, :limit]).all(dim=0)
    differing = (~same).nonzero()
    return int(differing[0]) if len(differing) else max(limit, 0)


def _prefill_shared(decoder: torch.nn.Module, batch: SplicedBatch, prefix: int, stop: int | None = None):
    """Run positions [0, prefix) of the first sequence once, repeat their keys and values for the whole batch,
    then run positions [prefix, stop) of every sequence on that cache. Returns (the rest's output, whose
    `last_hidden_state` is [B, stop - prefix, H] and whose cache covers [0, stop), the prefix's hidden states
    [1, prefix, H])."""
    batch_size = batch.embeds.shape[0]
    stop = batch.embeds.shape[1] if stop is None else stop
    shared = decoder(
        inputs_embeds=batch.embeds[:1, :prefix],
        attention_mask=batch.attention_mask[:1, :prefix],
        position_ids=batch.position_ids[:1, :prefix],
        use_cache=True,
    )
    cache = _output_cache(shared)
    cache.batch_repeat_interleave(batch_size)
    rest = decoder(
        inputs_embeds=batch.embeds[:, prefix:stop],
        attention_mask=batch.attention_mask[:, :stop],
        position_ids=batch.position_ids[:, prefix:stop],
        use_cache=True,
        **{_cache_argument(decoder): cache},
    )
    return rest, shared.last_hidden_state


@torch.inference_mode()
def final_hidden_states_shared(
    decoder: torch.nn.Module, batch: SplicedBatch, prefix: int, needed: Sequence[Sequence[int]] = ()
) -> torch.Tensor:
    """`final_hidden_states` with the first `prefix` positions (identical in every sequence, see
    `shared_prefix_length`) run once: their keys and values are computed for one sequence and repeated for all,
    and only the rest of each sequence runs batched. Positions after the last `needed` one (per sequence) are
    not run at all: causal attention never lets earlier positions see them. Exact up to float rounding.
    Returns [B, L', H] with L' = the last needed position + 1 (L when nothing is named)."""
    if prefix < 1:
        return final_hidden_states(decoder, batch)
    stop = max((max(where) + 1 for where in needed if where), default=batch.embeds.shape[1])
    rest, head = _prefill_shared(decoder, batch, prefix, stop)
    return torch.cat([head.expand(batch.embeds.shape[0], -1, -1), rest.last_hidden_state], dim=1)


def gather_positions(hidden: torch.Tensor, positions: Sequence[Sequence[int]]) -> torch.Tensor:
    """Rows of hidden [B, L, H] at each sequence's positions, concatenated in order: [sum(len), H]."""
    pieces = [hidden[row, list(where)] for row, where in enumerate(positions) if where]
    return torch.cat(pieces) if pieces else hidden.new_zeros(0, hidden.shape[-1])


@dataclass
class Generation:
    """Greedy generation results per sequence: new token ids (up to and including eos) and, for each
    generated `watch_id` token, the final hidden state [H] of the position that predicted it."""

    tokens: list[list[int]]
    watched_hidden: list[list[torch.Tensor]]


@torch.inference_mode()
def generate(
    causal_lm: torch.nn.Module,
    batch: SplicedBatch,
    *,
    eos_id: int,
    watch_id: int,
    max_new_tokens: int = 64,
    choose: Callable[[torch.Tensor, int], torch.Tensor] | None = None,
    locate: Callable[[torch.Tensor], torch.Tensor] | None = None,
    prefix: int = 0,
) -> Generation:
    """Greedy decoding with a KV cache from a right-padded spliced batch.

    Pads stay in the cache as masked holes and every new token gets the position after its own sequence's
    last one, so RoPE positions equal those of an unpadded run. `choose(logits [B, V], step) -> [B]` replaces argmax
    (tests use it to force a known answer through the cached path). `locate(positions [B]) -> rows [B]` maps
    padded-layout positions to rows of the prefill output when layers drop tokens (in-LLM pruning).
    `prefix` > 0 (see `shared_prefix_length`; not with `locate`): the first `prefix` positions, identical in every
    sequence, are prefilled once and their cache repeated.
    """
    if prefix > 0 and locate is not None:
        raise ValueError("a shared prefix cannot be combined with in-LLM pruning")
    decoder, head = causal_lm.model, causal_lm.lm_head
    cache_name = _cache_argument(decoder)
    batch_size = batch.embeds.shape[0]
    device = batch.embeds.device
    lengths = torch.tensor(batch.lengths, device=device)
    rows = torch.arange(batch_size, device=device)
    next_positions = batch.next_positions()
    if prefix > 0:  # the shared prefix's keys and values are computed once and repeated for every sequence
        output, _ = _prefill_shared(decoder, batch, prefix)
        lengths = lengths - prefix  # rows of the output hold positions prefix, prefix + 1, ...
    else:
        output = decoder(
            inputs_embeds=batch.embeds,
            attention_mask=batch.attention_mask,
            position_ids=batch.position_ids,
            use_cache=True,
        )
    last = lengths - 1 if locate is None else locate(lengths - 1)
    previous_hidden = output.last_hidden_state[rows, last]
    cache, mask = _output_cache(output), batch.attention_mask
    tokens: list[list[int]] = [[] for _ in range(batch_size)]
    watched: list[list[torch.Tensor]] = [[] for _ in range(batch_size)]
    finished = torch.zeros(batch_size, dtype=torch.bool, device=device)
    for step in range(max_new_tokens):
        logits = head(previous_hidden).float()
        next_tokens = choose(logits, step) if choose is not None else logits.argmax(dim=-1)
        for row in range(batch_size):
            if finished[row]:
                continue
            token = int(next_tokens[row])
            tokens[row].append(token)
            if token == watch_id:
                watched[row].append(previous_hidden[row].clone())
        finished |= next_tokens == eos_id
        if bool(finished.all()) or step == max_new_tokens - 1:
            break
        mask = torch.cat([mask, torch.ones(batch_size, 1, dtype=mask.dtype, device=device)], dim=1)
        output = decoder(
            inputs_embeds=decoder.embed_tokens(next_tokens.clamp(min=0)).unsqueeze(1),
            attention_mask=mask,
            position_ids=(next_positions + step).unsqueeze(1),
            use_cache=True,
            **{cache_name: cache},
        )
        cache = _output_cache(output)
        previous_hidden = output.last_hidden_state[:, -1]
    return Generation(tokens, watched)
