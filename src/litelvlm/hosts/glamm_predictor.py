"""GlammPredictor: image -> masks for referring expressions, with any token-selection method at any budget.

Like SAM's predictor, `set_image` caches the text-independent work (CLIP vision pass, SAM image embedding)
and `predict` answers many expressions, methods and budgets against it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image

from ..errors import LiteLVLMError
from ..images import load_image
from ..prompts import DEFAULT_QUESTION, TEXT_SOURCES, clip_texts
from ..scoring import ClipScorer, VisionFeatures, check_text
from ..selection import KIND_NAMES, PruningPlan, Selection, check_budget, get_method, keep_all, select_tokens
from ..timing import StageTimer
from .glamm import GlammModel, load_glamm, local_checkpoint_dir
from .glamm_text import GlammTokenizer, Turn, build_turns, render_conversation
from .llm import final_hidden_states, gather_positions, generate, splice_visual_tokens
from .llm_pruning import pruning
from .sam import postprocess_masks, sam_preprocess

MAX_TURNS = 3  # GLaMM's RefSeg conversations hold at most 3 expressions
DEFAULT_ANSWER = 0  # "It is [SEG]."


@dataclass
class ImageState:
    """Text-independent work for one image."""

    features: VisionFeatures  # CLIP, batch of 1
    sam_embedding: torch.Tensor  # [1, 256, 64, 64]
    resized: tuple[int, int]  # (h, w) inside SAM's 1024 x 1024 input
    original: tuple[int, int]  # (H, W)


@dataclass
class ExpressionResult:
    """One referring expression's outcome.

    mask: bool [H, W] at the image's size, or None when generation produced no [SEG] token.
    indices / kinds: the visual tokens its conversation kept, in the order the LLM received them.
    """

    expression: str
    mask: np.ndarray | None
    answer: str
    conversation: int
    indices: list[int]
    kinds: list[str]
    llm_kept: list[int] | None = None  # in-LLM methods: the patches still alive in the deepest layers

    @property
    def seg_found(self) -> bool:
        return self.mask is not None


@dataclass
class Prediction:
    """All expressions of one image. `permuted`: every patch kept but not in raster order (the authors'
    LiteLVLM at full budget). `timings`: seconds per stage of this call (the batch's, when several images were
    predicted together); `GlammPredictor.image_timings` holds those of `set_image`."""

    results: list[ExpressionResult]
    method: str
    budget: int
    num_visual_tokens: int
    permuted: bool
    timings: dict[str, float] = field(default_factory=dict)
    tokens_per_layer: list[int] = field(default_factory=list)  # visual tokens each decoder layer processed

    @property
    def average_visual_tokens(self) -> float:
        return sum(self.tokens_per_layer) / len(self.tokens_per_layer) if self.tokens_per_layer else 0.0

    @property
    def masks(self) -> np.ndarray:
        """[n, H, W] bool; an expression without a generated [SEG] gets an empty mask."""
        shape = next((r.mask.shape for r in self.results if r.mask is not None), None)
        if shape is None:
            raise LiteLVLMError("no expression produced a mask (no [SEG] was generated).")
        return np.stack([r.mask if r.mask is not None else np.zeros(shape, bool) for r in self.results])


@dataclass
class _Conversation:
    image: int
    expressions: list[str]
    turns: list[Turn]
    clip_texts: list[str]


class GlammPredictor:
    """GLaMM-RefSeg with token pruning. All tensors live on the model's device; no `.cuda()` anywhere."""

    def __init__(self, model: GlammModel, tokenizer: GlammTokenizer, scorer: ClipScorer) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.scorer = scorer
        self._images: list[ImageState] = []
        self.image_timings: dict[str, float] = {}  # stage seconds of the last set_image
        if scorer.vision.config.hidden_size != model.config.mm_hidden_size:
            raise LiteLVLMError(
                f"the CLIP tower is {scorer.vision.config.hidden_size} wide but GLaMM's projector expects "
                f"{model.config.mm_hidden_size}; pass the CLIP checkpoint GLaMM was trained with (--clip)."
            )

    @classmethod
    def from_pretrained(
        cls,
        path_or_id: str | os.PathLike,
        *,
        clip: str | os.PathLike | None = None,
        dtype: torch.dtype = torch.bfloat16,
        device: str | torch.device | None = None,
        tokenization: str = "reference",
    ) -> GlammPredictor:
        """Load GLaMM from its checkpoint directory (or hub id) and CLIP from `clip` (default: the config's
        `mm_vision_tower`, openai/clip-vit-large-patch14-336)."""
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        directory = local_checkpoint_dir(path_or_id)
        model = load_glamm(directory, dtype=dtype, device=device)
        tokenizer = GlammTokenizer.from_pretrained(directory, mode=tokenization)
        scorer = ClipScorer.from_pretrained(
            clip or model.config.vision_tower,
            dtype=dtype,
            device=device,
            select_layer=model.config.select_layer,
        )
        return cls(model, tokenizer, scorer)

    @property
    def device(self) -> torch.device:
        return self.model.device

    # ------------------------------------------------------------------ images
    @torch.inference_mode()
    def set_image(self, images: Image.Image | str | os.PathLike | Sequence, timer: StageTimer | None = None):
        """Run CLIP's vision pass and SAM's image encoder once per image and cache them."""
        timer = timer or StageTimer(self.device)
        if isinstance(images, (Image.Image, str, os.PathLike)):
            images = [images]
        pictures = [load_image(image) for image in images]
        with timer("clip_vision"):
            features = self.scorer.encode_image(self.scorer.pixel_values(pictures))
        with timer("sam_encoder"):
            prepared = [sam_preprocess(picture) for picture in pictures]
            pixels = torch.stack([pixels for pixels, _, _ in prepared]).to(self.device, self.model.dtype)
            embeddings = self.model.sam.embed_image(pixels)
        self._images = [
            ImageState(features.select(i), embeddings[i : i + 1], resized, original)
            for i, (_, resized, original) in enumerate(prepared)
        ]
        self.image_timings = timer.as_dict()
        return self._images

    # ------------------------------------------------------------------ prediction
    def predict(
        self,
        expressions: Sequence[str] | Sequence[Sequence[str]],
        *,
        budget: int = 576,
        method: str = "litelvlm",
        generate_answer: bool = False,
        question_templates: Sequence[int] | Sequence[Sequence[int]] | None = None,
        answer_templates: Sequence[int] | Sequence[Sequence[int]] | None = None,
        turns_per_conversation: int = MAX_TURNS,
        text_source: str = "questions",
        max_new_tokens: int = 64,
        decoding: Callable[[torch.Tensor, int], torch.Tensor] | None = None,
        **method_options,
    ) -> Prediction | list[Prediction]:
        """Masks for the expressions of the set image (a list of str), or of each set image (a list of lists).

        Teacher-forced (default, the evaluation protocol): expressions go into multi-turn conversations of up
        to `turns_per_conversation` (GLaMM: 3; 1 = each alone, LISA style) with the answers in the input.
        `generate_answer=True`: each expression is its own conversation and the model writes the answer; its
        masks come from the [SEG] tokens it generated; `decoding(logits [B, V], step) -> [B]` replaces greedy
        argmax. Conversations of all images run as one padded batch. `method_options` go to the selection
        method (e.g. order="raster", seed=1, full_budget="method").
        """
        if not self._images:
            raise LiteLVLMError("no image is set; call set_image(image) before predict(expressions).")
        if text_source not in TEXT_SOURCES:
            raise LiteLVLMError(f"text_source must be one of {', '.join(TEXT_SOURCES)}, got {text_source!r}.")
        entry = get_method(method)
        per_image = _per_image(expressions, len(self._images))
        q_templates = _per_image_templates(question_templates, per_image, DEFAULT_QUESTION)
        a_templates = _per_image_templates(answer_templates, per_image, DEFAULT_ANSWER)
        group = 1 if generate_answer else max(1, turns_per_conversation)
        conversations = []
        for image, texts in enumerate(per_image):
            for start in range(0, len(texts), group):
                chunk = texts[start : start + group]
                qs = q_templates[image][start : start + group]
                answers = None if generate_answer else a_templates[image][start : start + group]
                turns = build_turns(chunk, qs, answers)
                conversations.append(_Conversation(image, chunk, turns, clip_texts(chunk, text_source, qs)))

        timer = StageTimer(self.device)
        num_layers = self.model.llm.config.num_hidden_layers
        features = VisionFeatures.concat([self._images[c.image].features for c in conversations])
        selection, plan = self._select(conversations, features, entry, budget, method_options, timer)
        results = self._run(
            conversations, features, selection, plan, generate_answer, max_new_tokens, decoding, timer
        )
        if plan is not None:
            tokens_per_layer = plan.tokens_per_layer(num_layers, selection.budget)
        else:
            tokens_per_layer = [selection.budget] * num_layers
        predictions = []
        for image in range(len(per_image)):
            mine = [r for r in results if conversations[r.conversation].image == image]
            predictions.append(
                Prediction(
                    mine,
                    method,
                    budget,
                    selection.budget,
                    permuted=selection.is_permutation_of_all(self.scorer.num_patches),
                    timings=timer.as_dict(),
                    tokens_per_layer=tokens_per_layer,
                )
            )
        return predictions[0] if isinstance(expressions[0], str) else predictions

    def _select(
        self, conversations, features: VisionFeatures, entry, budget, options, timer
    ) -> tuple[Selection, PruningPlan | None]:
        """Visual tokens for every conversation (`features`: one row per conversation, image work cached per
        image), and the in-LLM plan if the method prunes inside the LLM."""
        num_patches = features.num_patches
        if entry.stage == "llm":
            check_budget(budget)
            options = {name: value for name, value in options.items() if name != "full_budget"}
            plan = None
            if budget < num_patches:
                plan = entry.fn(budget, self.model.llm.config.num_hidden_layers, num_patches, **options)
            return keep_all(len(conversations), num_patches, features.hidden.device), plan
        full_identity = budget >= num_patches and options.get("full_budget", "identity") == "identity"
        if full_identity:  # no pruning, no scores
            return keep_all(len(conversations), num_patches, features.hidden.device), None
        texts = [c.clip_texts for c in conversations] if "similarity" in entry.needs else ()
        if texts:
            with timer("clip_text"):  # fills the scorer's text cache, which scoring then reads
                self.scorer.encode_text([text for group in texts for text in group])
        with timer("selection"):
            for state in self._images:
                self.scorer.precompute(state.features, entry.needs)
            scores = self.scorer.score(texts, needs=entry.needs, features=features)
            return select_tokens(entry.name, scores, budget, **options), None

    @torch.inference_mode()
    def _run(
        self,
        conversations,
        features,
        selection: Selection,
        plan,
        generate_answer,
        max_new_tokens,
        decoding,
        timer,
    ) -> list[ExpressionResult]:
        model, tokenizer = self.model, self.tokenizer
        with timer("projector"):
            visual = selection.gather(features.patch_features.to(self.device))
            visual = model.projector(visual.to(model.dtype))
        prompts = [tokenizer.encode_with_image(render_conversation(c.turns)) for c in conversations]
        batch = splice_visual_tokens(model.llm.model.embed_tokens, prompts, visual)
        query_ends = [
            _query_end_of(tokenizer, c.turns, ids) + visual.shape[1] - 1
            for c, ids in zip(conversations, prompts)
        ]
        with timer("llm"), pruning(model.llm.model, plan, batch.image_spans, query_ends) as state:
            if generate_answer:
                output = generate(
                    model.llm,
                    batch,
                    eos_id=tokenizer.eos_id,
                    watch_id=tokenizer.seg_id,
                    max_new_tokens=max_new_tokens,
                    choose=decoding,
                    locate=None if state is None else (lambda p: state.index_of(p[:, None])[:, 0]),
                )
                answers = [tokenizer.decode(tokens) for tokens in output.tokens]
                # one expression per conversation: its mask comes from the first generated [SEG]
                seg_hidden = [watched[:1] for watched in output.watched_hidden]
            else:
                hidden = final_hidden_states(model.llm.model, batch)
                positions = batch.positions_before(tokenizer.seg_id)
                for conversation, where in zip(conversations, positions):
                    if len(where) != len(conversation.expressions):
                        raise LiteLVLMError(
                            f"the prompt holds {len(where)} [SEG] tokens for {len(conversation.expressions)} "
                            "expressions; expressions must not contain the text '[SEG]'."
                        )
                if state is not None:  # rows of the (shorter) pruned sequence; text tokens are never dropped
                    positions = [
                        torch.searchsorted(
                            state.positions[row], torch.tensor(where, device=hidden.device)
                        ).tolist()
                        for row, where in enumerate(positions)
                    ]
                answers = [[turn.answer for turn in c.turns] for c in conversations]
                rows = gather_positions(hidden, positions)
                seg_hidden, start = [], 0
                for where in positions:
                    seg_hidden.append(list(rows[start : start + len(where)]))
                    start += len(where)
            llm_kept = _surviving_patches(state, batch) if state is not None else [None] * len(conversations)
        with timer("seg_projection"):
            prompts_per_conversation = [
                model.text_hidden_fcs(torch.stack(rows)) if rows else None for rows in seg_hidden
            ]
        results: list[ExpressionResult] = []
        for index, conversation in enumerate(conversations):
            image_state = self._images[conversation.image]
            embeddings = prompts_per_conversation[index]
            masks: list[np.ndarray | None] = [None] * len(conversation.expressions)
            if embeddings is not None:
                with timer("sam_decoder"):
                    low_res = model.sam.decode(image_state.sam_embedding, embeddings)
                with timer("postprocess"):
                    logits = postprocess_masks(low_res, image_state.resized, image_state.original)
                    for k, mask in enumerate((logits > 0).cpu().numpy()):
                        masks[k] = mask
            kept = selection.indices[index].tolist()
            kinds = [KIND_NAMES[k] for k in selection.kinds[index].tolist()]
            for k, expression in enumerate(conversation.expressions):
                answer = answers[index] if generate_answer else answers[index][k]
                results.append(
                    ExpressionResult(expression, masks[k], answer, index, kept, kinds, llm_kept[index])
                )
        return results


def _query_end_of(tokenizer, turns, ids) -> int:
    """Index (in `ids`, before splicing) of the token that predicts the last answer: the end of the same
    conversation's generation prompt when the two share that prefix, else the last token."""
    if turns[-1].answer is None:
        return len(ids) - 1
    prompt = tokenizer.encode_with_image(render_conversation([*turns[:-1], Turn(turns[-1].question, None)]))
    return len(prompt) - 1 if ids[: len(prompt)] == prompt else len(ids) - 1


def _surviving_patches(state, batch) -> list[list[int]]:
    """Patch indices (raster: every patch entered the LLM) alive after the last in-LLM pruning step."""
    if not state.kept:
        return [None] * len(batch.image_spans)
    deepest = state.kept[max(state.kept)]
    return [(deepest[row] - start).tolist() for row, (start, _) in enumerate(batch.image_spans)]


def _per_image(expressions, num_images: int) -> list[list[str]]:
    if isinstance(expressions, str) or not expressions:
        raise LiteLVLMError("pass the referring expressions as a non-empty list of strings.")
    if all(isinstance(e, str) for e in expressions):
        if num_images != 1:
            raise LiteLVLMError(f"{num_images} images are set; pass one list of expressions per image.")
        groups = [list(expressions)]
    else:
        groups = [list(group) for group in expressions]
        if len(groups) != num_images:
            raise LiteLVLMError(f"got expressions for {len(groups)} images but {num_images} are set.")
    for group in groups:
        if not group:
            raise LiteLVLMError("an image has no expressions; pass at least one per image.")
        for expression in group:
            check_text(expression)
    return groups


def _per_image_templates(templates, per_image: list[list[str]], default: int) -> list[list[int]]:
    if templates is None:
        return [[default] * len(group) for group in per_image]
    if len(per_image) == 1 and all(isinstance(t, int) for t in templates):
        return [list(templates)]
    return [list(group) for group in templates]
