"""`litelvlm.prune(model, processor, ...)`: the user's own transformers LLaVA code runs pruned inside the block.

    with litelvlm.prune(model, processor, method="litelvlm", budget=64, clip="openai/clip-vit-large-patch14-336"):
        output = model.generate(**inputs, max_new_tokens=32)

ToMe's pattern: `apply_prune` installs three public PyTorch hooks on the model *instance* (no transformers
class is patched) and keeps all state in one attribute; `remove_prune` takes them off. Applying again only
replaces the settings (idempotent). What the hooks do:
- the vision tower's pre-hook and the projector's hook note the pixels and LLaVA's projected image features of
  the call (whoever computes them: `generate` encodes the image before the first forward in transformers 5);
- the model's forward pre-hook, on a prefill (input ids holding the image tokens), scores the patches with CLIP
  on those pixels, selects `budget` of them and replaces the call's arguments: `inputs_embeds` with only the kept
  visual tokens (in the selection's order), the attention mask and position ids to match, no pixels;
- on each decoding step after it, it drops the pruned columns from `generate`'s growing attention mask and
  shifts the position ids (and cache positions) by the pruned count, so the shorter KV cache lines up.
In-LLM methods (FastV, PyramidDrop, SparseVLM) leave the prefill to transformers: each prefill wraps the
language model's decoder layers (`llm_pruning.apply_pruning`, the same code `LlavaPredictor.answer` runs) with a
fresh plan for that call's image spans, and leaving the block puts the original layers back.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from ..errors import LiteLVLMError
from ..scoring import DEFAULT_CLIP, ClipScorer
from ..selection import check_budget, check_full_budget, check_options, get_method, run_selection
from .llava import (
    check_llava_config,
    image_patches,
    image_token_id,
    language_parts,
    vision_parts,
    warn_if_other_tower,
)
from .llm import POSITIONS
from .llm_pruning import PruningState, apply_pruning, remove_pruning

ATTRIBUTE = "_litelvlm_prune"
GENERATION_PROMPT = (
    "ASSISTANT:"  # llava-1.5's chat template ends the prompt with it; not part of the question
)


@dataclass
class PruneSettings:
    method: str
    budget: int
    scorer: ClipScorer | None  # None for in-LLM methods
    positions: str = "compact"
    full_budget: str = "identity"
    texts: list[str] | None = None  # what CLIP compares patches with, one per batch row (default: the prompt)
    options: dict = field(default_factory=dict)


@dataclass
class _PruneState:
    settings: PruneSettings
    processor: object
    handles: list = field(default_factory=list)
    pixel_values: torch.Tensor | None = None  # [B, 3, S, S] of the current call
    patches: torch.Tensor | None = None  # [B, N, D] what LLaVA's projector received in the current call
    prefill_mask: torch.Tensor | None = None  # [B, L'] the pruned prefill's attention mask
    original_length: int = 0  # L: the prefill's length before pruning
    removed: int = 0  # N - K: visual tokens taken out of every row
    position_shift: int = 0  # what decoding position ids lose (N - K compact, 0 original)
    last_kept: torch.Tensor | None = None  # [B, K] the last prefill's kept patch indices (before-LLM methods)
    # in-LLM methods: the last prefill's pruning state (`kept` per layer)
    llm_state: PruningState | None = None
    # The last prefill's ids and selection: without a KV cache generate re-runs the prompt plus the tokens
    # generated so far at every step, and must keep the prompt's selection (the pixels stay noted for it).
    last_ids: torch.Tensor | None = None
    last_selection: object = None
    own_call: bool = False  # the hooks' own projector call is running


def apply_prune(model, processor, *, method: str = "litelvlm", budget: int, clip=DEFAULT_CLIP,
                positions: str = "compact", full_budget: str = "identity", texts=None, **options) -> None:  # fmt: skip
    """Install pruning on a LlavaForConditionalGeneration instance (see the module docstring). clip: a CLIP
    checkpoint (directory or hub id) or a loaded ClipScorer; texts: CLIP's text per batch row (default: each
    prompt's text after the image, without the generation prompt)."""
    if getattr(getattr(model, "config", None), "model_type", None) != "llava":
        raise LiteLVLMError(
            f"litelvlm.prune takes a transformers LlavaForConditionalGeneration, got a {type(model).__name__}; pass "
            "the model loaded with LlavaForConditionalGeneration.from_pretrained."
        )
    entry = get_method(method)
    check_options(entry, options)
    check_full_budget(full_budget)
    budget = check_budget(budget)
    if positions not in POSITIONS:
        raise LiteLVLMError(f"positions must be one of {', '.join(POSITIONS)}, got {positions!r}.")
    check_llava_config(model.config, "the model's config")
    scorer = None  # in-LLM methods rank tokens by the LLM's own attention: no CLIP
    if entry.stage != "llm":
        scorer = clip if isinstance(clip, ClipScorer) else ClipScorer.from_pretrained(
            clip, dtype=model.dtype, device=model.device, select_layer=model.config.vision_feature_layer
        )  # fmt: skip
    if scorer is not None:
        warn_if_other_tower(scorer, model)
    settings = PruneSettings(method, budget, scorer, positions, full_budget,
                             None if texts is None else list(texts), dict(options))  # fmt: skip
    state = getattr(model, ATTRIBUTE, None)
    if state is not None:  # already pruned: new settings, same hooks
        state.settings = settings
        return
    state = _PruneState(settings, processor)
    vision = vision_parts(model)
    state.handles = [
        vision.tower.register_forward_pre_hook(_note_pixels(state), with_kwargs=True),
        vision.projector.register_forward_hook(_note_patches(state)),
        model.register_forward_pre_hook(_rewrite(model, state), with_kwargs=True),
    ]
    setattr(model, ATTRIBUTE, state)


def remove_prune(model) -> None:
    """Take pruning off the model (nothing happens if it is not pruned)."""
    state = getattr(model, ATTRIBUTE, None)
    if state is None:
        return
    for handle in state.handles:
        handle.remove()
    remove_pruning(language_parts(model).model)
    delattr(model, ATTRIBUTE)


@contextmanager
def prune(model, processor, **settings):
    """Run the block's calls of `model` (generate, forward) with pruned visual tokens; the model is as before
    afterwards (an outer block's settings come back when blocks nest). Settings as `apply_prune`."""
    previous = getattr(model, ATTRIBUTE, None)
    previous_settings = None if previous is None else previous.settings
    apply_prune(model, processor, **settings)
    try:
        yield getattr(model, ATTRIBUTE)
    finally:
        if previous_settings is None:
            remove_prune(model)
        else:
            getattr(model, ATTRIBUTE).settings = previous_settings
            remove_pruning(
                language_parts(model).model
            )  # the outer block's next prefill wraps them if it prunes in the LLM


def _note_pixels(state: _PruneState):
    def hook(module, args, kwargs):
        pixels = args[0] if args else kwargs.get("pixel_values")
        state.pixel_values = pixels
        state.patches = None
        state.last_ids = None  # a new image: the next prompt is a new prefill

    return hook


def _note_patches(state: _PruneState):
    def hook(module, args, output):
        if not state.own_call:
            state.patches = args[0]

    return hook


def _rewrite(model, state: _PruneState):
    token = image_token_id(model.config)

    def hook(module, args, kwargs):
        if args:  # positional input_ids
            kwargs = {"input_ids": args[0], **kwargs}
        ids = kwargs.get("input_ids")
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        cached = cache is not None and cache.get_seq_length() > 0
        if not cached and ids is not None and bool((ids == token).any()):
            if get_method(state.settings.method).stage == "llm":
                _wrap_decoder_layers(model, state, token, ids)
                return (), kwargs
            return (), _prefill(model, state, token, kwargs)
        if cached and state.prefill_mask is not None:
            return (), _decoding_step(state, kwargs)
        return (), kwargs

    return hook


@torch.inference_mode()
def _prefill(model, state: _PruneState, token: int, kwargs: dict) -> dict:
    """The prefill's arguments with only the kept visual tokens (see the module docstring)."""
    settings = state.settings
    ids = kwargs["input_ids"]
    batch_size, length = ids.shape
    pixels = kwargs.get("pixel_values")
    if pixels is not None:  # a plain forward: the image is encoded here
        state.pixel_values, state.patches = pixels, image_patches(model, pixels)
    if state.pixel_values is None or state.patches is None:
        raise LiteLVLMError("the prompt holds image tokens but no image was given; pass pixel_values.")
    patches, pixel_values = state.patches, state.pixel_values
    if patches.dim() == 2:  # a flat [images * N, D]
        patches = patches.view(pixel_values.shape[0], -1, patches.shape[-1])
    if patches.shape[0] and batch_size != patches.shape[0] and batch_size % patches.shape[0] == 0:
        repeats = batch_size // patches.shape[0]  # beams / num_return_sequences: generate repeats each prompt
        patches, pixel_values = (
            patches.repeat_interleave(repeats, 0),
            pixel_values.repeat_interleave(repeats, 0),
        )
    num_patches = patches.shape[1]
    is_image = ids == token
    counts = is_image.sum(dim=1)
    if patches.shape[0] != batch_size or bool((counts != num_patches).any()):
        raise LiteLVLMError(
            f"litelvlm.prune handles one image per prompt; the prompts hold {counts.tolist()} image tokens for "
            f"{patches.shape[0]} images of {num_patches} patches."
        )
    starts = is_image.float().argmax(dim=1)
    if _continues_last_prompt(
        state, ids
    ):  # use_cache=False: every step re-runs the prompt plus what came since
        selection = state.last_selection
    else:
        selection = _select(state, ids, pixel_values, starts, num_patches)
        state.last_ids, state.last_selection = ids, selection
    kept = selection.indices.to(ids.device)
    state.last_kept = kept
    state.own_call = True  # the projector hook must not take the kept tokens for the next image's patches
    try:
        visual = vision_parts(model).projector(selection.gather(patches))  # [B, K, H]
    finally:
        state.own_call = False
    embed = language_parts(model).model.embed_tokens
    embeds = embed(ids.masked_fill(is_image, 0))
    mask = kwargs.get("attention_mask")
    mask = torch.ones_like(ids) if mask is None else mask
    original_positions = kwargs.get("position_ids")
    if original_positions is None:
        original_positions = (mask.cumsum(-1) - 1).clamp(min=0)
    rows_embeds, rows_mask, rows_positions = [], [], []
    for row in range(batch_size):
        start = int(starts[row])
        stop = start + num_patches
        rows_embeds.append(torch.cat([embeds[row, :start], visual[row].to(embeds.dtype), embeds[row, stop:]]))
        rows_mask.append(torch.cat([mask[row, :start], mask.new_ones(kept.shape[1]), mask[row, stop:]]))
        positions = original_positions.expand(batch_size, -1)[row]
        rows_positions.append(torch.cat([positions[:start], positions[start + kept[row]], positions[stop:]]))
    new_mask = torch.stack(rows_mask)
    if settings.positions == "compact":
        new_positions = (new_mask.cumsum(-1) - 1).masked_fill(new_mask == 0, 1)
    else:
        new_positions = torch.stack(rows_positions)
    state.prefill_mask, state.original_length = new_mask, length
    state.removed = num_patches - kept.shape[1]
    state.position_shift = state.removed if settings.positions == "compact" else 0
    kwargs = {
        key: value
        for key, value in kwargs.items()
        if key not in ("input_ids", "pixel_values", "mm_encoder_outputs")
    }
    kwargs.update(inputs_embeds=torch.stack(rows_embeds), attention_mask=new_mask, position_ids=new_positions)
    if kwargs.get("cache_position") is not None:  # transformers 4.x
        kwargs["cache_position"] = torch.arange(new_mask.shape[1], device=new_mask.device)
    return kwargs


def _select(state: _PruneState, ids: torch.Tensor, pixel_values: torch.Tensor, starts: torch.Tensor,
            num_patches: int):  # fmt: skip
    """The kept visual tokens of every row: CLIP on the call's pixels against each prompt's text."""
    settings = state.settings
    batch_size = ids.shape[0]
    budget = min(settings.budget, num_patches)
    entry = get_method(settings.method)
    features = settings.scorer.encode_image(pixel_values)
    texts = settings.texts if settings.texts is not None else [_prompt_text(state, row, start + num_patches)
                                                                for row, start in zip(ids, starts.tolist())]  # fmt: skip
    if len(texts) != batch_size:
        raise LiteLVLMError(
            f"litelvlm.prune got {len(texts)} texts for a batch of {batch_size}; pass one per prompt."
        )
    needs = entry.needs
    scores = settings.scorer.score([[t] for t in texts] if "similarity" in needs else (), needs, features)
    selection = run_selection(entry, scores, budget, settings.full_budget, settings.options)
    return selection


def _continues_last_prompt(state: _PruneState, ids: torch.Tensor) -> bool:
    """Whether `ids` is the last prefill's prompt plus generated tokens, with no new image in between (generate
    without a KV cache)."""
    last = state.last_ids
    return (
        last is not None
        and ids.shape[0] == last.shape[0]
        and ids.shape[1] > last.shape[1]
        and torch.equal(ids[:, : last.shape[1]], last)
    )


def _wrap_decoder_layers(model, state: _PruneState, token: int, ids: torch.Tensor) -> None:
    """In-LLM methods: wrap the decoder layers with a plan for this prefill (the padded layout transformers
    runs: each row's image tokens where the processor put them, the instruction ending at the last token)."""
    settings = state.settings
    decoder = language_parts(model).model
    remove_pruning(decoder)
    state.llm_state = None
    prompt_end = (
        ids.shape[1] - 1
    )  # without a KV cache every step re-runs the prompt: rank by its end, as cached
    if _continues_last_prompt(state, ids):
        prompt_end = state.last_ids.shape[1] - 1
    else:
        state.last_ids = ids
    is_image = ids == token
    num_patches = int(is_image.sum(dim=1).max())
    if settings.budget >= num_patches:
        return
    plan = get_method(settings.method).fn(settings.budget, decoder.config.num_hidden_layers, num_patches,
                                          **settings.options)  # fmt: skip
    starts = is_image.float().argmax(dim=1).tolist()
    spans = [(start, start + num_patches) for start in starts]
    state.llm_state = PruningState(plan, spans, [prompt_end] * ids.shape[0])
    apply_pruning(decoder, state.llm_state)


def _decoding_step(state: _PruneState, kwargs: dict) -> dict:
    """A decoding step's arguments for the pruned cache: generate's mask without the pruned columns, positions
    shifted by the pruned count."""
    kwargs = dict(kwargs)
    mask = kwargs.get("attention_mask")
    if mask is not None and mask.shape[1] > state.original_length:
        kwargs["attention_mask"] = torch.cat([state.prefill_mask, mask[:, state.original_length :]], dim=1)
    if kwargs.get("position_ids") is not None:
        kwargs["position_ids"] = kwargs["position_ids"] - state.position_shift
    if kwargs.get("cache_position") is not None:
        kwargs["cache_position"] = kwargs["cache_position"] - state.removed
    return kwargs


def _prompt_text(state: _PruneState, ids: torch.Tensor, after_image: int) -> str:
    """The prompt's text after the image (the question), without the chat template's generation prompt."""
    text = state.processor.tokenizer.decode(ids[after_image:], skip_special_tokens=True).strip()
    if text.endswith(GENERATION_PROMPT):
        text = text[: -len(GENERATION_PROMPT)].strip()
    return text or " "
