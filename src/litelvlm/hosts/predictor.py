"""GroundingPredictor: image -> masks for referring expressions, for any host, with any token-selection method.

Like SAM's predictor, `set_image` caches the text-independent work (CLIP vision pass, SAM image embedding) and
`predict` answers many expressions, methods and budgets against it. One call is one straight path: arguments
validated once -> conversations in the host's prompt format, each tokenised once -> CLIP scores of the images
(computed once per image, cached, gathered per conversation) -> selection -> projector -> splice -> LLM ->
the final state before each `[SEG]` -> text_hidden_fcs -> SAM decoder -> masks at the image's size.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image

from ..checkpoints import check_device, check_dtype, check_path_argument
from ..errors import LiteLVLMError
from ..images import describe, image_list, load_image
from ..prompts import TEXT_SOURCES, clip_texts
from ..scoring import ClipScorer, VisionFeatures, check_text
from ..selection import (
    KIND_NAMES,
    PruningPlan,
    Selection,
    check_budget,
    check_full_budget,
    check_options,
    get_method,
    keep_all,
    run_selection,
)
from ..timing import StageTimer
from .conversation import Turn, build_turns, render_conversation
from .llm import (
    POSITIONS,
    final_hidden_states_shared,
    gather_positions,
    generate,
    shared_prefix_length,
    splice_visual_tokens,
)
from .llm_pruning import pruning, surviving_patches
from .model import GroundingModel, load_grounding_model
from .registry import detect_host, local_checkpoint_dir
from .sam import postprocess_masks, sam_preprocess
from .tokenizer import LegacyLlamaTokenizer

DEFAULT_MAX_NEW_TOKENS = 64  # generation length limit of predict(generate_answer=True)


@dataclass
class ImageState:
    """Text-independent work for the I images of the last `set_image`."""

    features: VisionFeatures  # CLIP, batch of I (derived scores cached on it when first needed)
    sam_embeddings: torch.Tensor  # [I, 256, 64, 64]
    resized: list[tuple[int, int]]  # (h, w) of each image inside SAM's 1024 x 1024 input
    original: list[tuple[int, int]]  # (H, W) of each image


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
    predicted together); `GroundingPredictor.image_timings` holds those of `set_image`."""

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
    ids: list[int]  # token ids with one IMAGE_TOKEN_INDEX where the visual tokens go


class GroundingPredictor:
    """A pixel-grounding host (GLaMM, LISA, ...) with token pruning. All tensors live on the model's device; no
    `.cuda()` anywhere."""

    def __init__(self, model: GroundingModel, tokenizer: LegacyLlamaTokenizer, scorer: ClipScorer) -> None:
        self.model = model.eval()
        self.host = model.host
        self.tokenizer = tokenizer
        self.scorer = scorer
        self._images: ImageState | None = None
        self.last_shared_prefix = (
            0  # positions the last teacher-forced run computed once for all conversations
        )
        self.image_timings: dict[str, float] = {}  # stage seconds of the last set_image
        host, clip = self.host, scorer.vision.config
        fix = f"pass the CLIP checkpoint it was trained with ({host.default_vision_tower})"
        problem = None
        if clip.hidden_size != model.config.mm_hidden_size:
            problem = (
                f"the CLIP tower is {clip.hidden_size} wide but {host.display_name}'s projector expects "
                f"{model.config.mm_hidden_size}"
            )
        elif clip.image_size != host.clip_image_size:
            problem = (
                f"{host.display_name} reads images with CLIP at {host.clip_image_size} px, but the CLIP given "
                f"works at {clip.image_size} px ({scorer.num_patches} patches)"
            )
        if problem:
            raise LiteLVLMError(f"{problem}; {fix} as clip=.", cli_message=f"{problem}; {fix} with --clip.")

    @classmethod
    def from_pretrained(
        cls,
        path_or_id: str | os.PathLike,
        *,
        clip: str | os.PathLike | None = None,
        dtype: torch.dtype = torch.bfloat16,
        device: str | torch.device | None = None,
        tokenization: str = "reference",
    ) -> GroundingPredictor:
        """Load a host checkpoint directory (or hub id); the host (GLaMM, LISA) is read from the checkpoint.
        CLIP comes from `clip` (default: the config's vision tower, e.g. openai/clip-vit-large-patch14-336)."""
        device, dtype = check_device(device), check_dtype(dtype)  # before any file is read
        check_path_argument(path_or_id, "path_or_id")
        if clip is not None:
            check_path_argument(clip, "clip")
        directory = local_checkpoint_dir(path_or_id)
        host, config = detect_host(directory)
        tokenizer = LegacyLlamaTokenizer.from_pretrained(
            directory, mode=tokenization, required_tokens=host.added_tokens, host_name=host.display_name
        )
        model = load_grounding_model(directory, host, config, dtype=dtype, device=device, tokenizer=tokenizer)
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

    @property
    def num_patches(self) -> int:
        return self.scorer.num_patches

    @property
    def num_llm_layers(self) -> int:
        return self.model.llm.config.num_hidden_layers

    # ------------------------------------------------------------------ images
    @torch.inference_mode()
    def set_image(
        self, images: Image.Image | str | os.PathLike | Sequence, timer: StageTimer | None = None
    ) -> None:
        """Run CLIP's vision pass and SAM's image encoder once for one image (or a list) and cache them."""
        timer = timer or StageTimer(self.device)
        images = image_list(images, "set_image")
        pictures = [load_image(image) for image in images]
        with timer("clip_vision"):
            features = self.scorer.encode_image(self.scorer.preprocess(pictures))
        with timer("sam_encoder"):
            prepared = [sam_preprocess(picture) for picture in pictures]
            pixels = torch.stack([pixels for pixels, _, _ in prepared]).to(self.device, self.model.dtype)
            embeddings = self.model.sam.embed_image(pixels)
        self._images = ImageState(
            features,
            embeddings,
            [resized for _, resized, _ in prepared],
            [original for _, _, original in prepared],
        )
        self.image_timings = timer.as_dict()

    # ------------------------------------------------------------------ prediction
    def predict(
        self,
        expressions: Sequence[str],
        *,
        question_templates: Sequence[int] | None = None,
        answer_templates: Sequence[int] | None = None,
        **options,
    ) -> Prediction:
        """Masks for referring expressions about the one set image.

        budget: visual tokens the LLM receives (default: all). method: a registered selection method.
        Teacher-forced (default, the evaluation protocol): expressions go into conversations of up to
        `turns_per_conversation` turns (default and maximum: the host's, GLaMM 3, LISA 1) with the answers in the
        input; templates index litelvlm.prompts.SEG_QUESTIONS / ANSWER_LIST, one per expression (default: the
        host's). `generate_answer=True`: each expression is its own conversation and the model writes the
        answer; its mask comes from the first [SEG] it generated; `decoding(logits [B, V], step) -> [B]`
        replaces greedy argmax. `full_budget`: "identity" (budget >= patches: no selection at all) or "method".
        `positions`: RoPE positions of the kept visual tokens, "compact" (consecutive, the authors' code) or
        "original" (each at its patch index among all patches; the text after the image as if none were
        pruned). `share_prefix=True` (before-LLM methods, teacher-forced or generating): the leading tokens every
        conversation of the batch holds identically (the system prompt; for text-independent methods through
        the image) run once, their keys and values shared, the rest batched, and teacher-forced runs stop at the
        last position a [SEG] state is read from; equal to the unshared run up to float rounding (off by
        default, so default results stay bit-identical). Further keyword options go to the selection
        method (e.g. order="raster", seed=1).
        """
        if isinstance(expressions, str):
            raise LiteLVLMError(
                f"predict takes a list of expressions, got the string {expressions!r}; pass [{expressions!r}]."
            )
        if not isinstance(expressions, Sequence) or not all(isinstance(e, str) for e in expressions):
            raise LiteLVLMError(
                f"predict takes a list of expression strings for the set image, got {describe(expressions)}; "
                "use predict_batch([[...], [...]]) with one list per image for several images."
            )
        templates = {
            "question_templates": None if question_templates is None else [list(question_templates)],
            "answer_templates": None if answer_templates is None else [list(answer_templates)],
        }
        return self._predict([list(expressions)], **templates, **options)[0]

    def predict_batch(
        self,
        expressions: Sequence[Sequence[str]],
        *,
        question_templates: Sequence[Sequence[int]] | None = None,
        answer_templates: Sequence[Sequence[int]] | None = None,
        **options,
    ) -> list[Prediction | None]:
        """`predict` for every set image: one list of expressions (and of templates) per image, in the order of
        `set_image`. All conversations run as one padded batch. None in place of an image's list skips that
        image (its entry of the result is None): one `set_image` of several images serves any subset of them."""
        if isinstance(expressions, str) or any(isinstance(group, str) for group in expressions):
            raise LiteLVLMError(
                "predict_batch takes one list of expressions per set image, e.g. [['the cat'], ['a dog']]; "
                "use predict(['the cat']) for a single image."
            )
        return self._predict(
            [None if group is None else list(group) for group in expressions],
            question_templates=question_templates,
            answer_templates=answer_templates,
            **options,
        )

    def conversation_ids(self, expressions: Sequence[str]) -> list[int]:
        """Token ids (with one IMAGE_TOKEN_INDEX) of one teacher-forced conversation of `expressions` with the
        host's default templates."""
        count = len(expressions)
        turns = build_turns(
            expressions, [self.host.default_question] * count, [self.host.default_answer] * count
        )
        return self.tokenizer.encode_with_image(render_conversation(turns, self.host.image_prefix))

    def _predict(
        self,
        per_image: list[list[str]],
        *,
        budget: int | None = None,
        method: str = "litelvlm",
        generate_answer: bool = False,
        question_templates: Sequence[Sequence[int]] | None = None,
        answer_templates: Sequence[Sequence[int]] | None = None,
        turns_per_conversation: int | None = None,
        text_source: str = "questions",
        max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
        decoding: Callable[[torch.Tensor, int], torch.Tensor] | None = None,
        full_budget: str = "identity",
        positions: str = "compact",
        share_prefix: bool = False,
        **method_options,
    ) -> list[Prediction]:
        images = self._images
        if images is None:
            raise LiteLVLMError("no image is set; call set_image(image) before predict(expressions).")
        if len(per_image) != len(images.original):
            raise LiteLVLMError(
                f"got expressions for {len(per_image)} image(s) but {len(images.original)} are set; pass one "
                "list of expressions per image (predict for one image, predict_batch for several)."
            )
        skipped = {image for image, group in enumerate(per_image) if group is None}
        if len(skipped) == len(per_image):
            raise LiteLVLMError("every image is skipped (None); pass a list of expressions for at least one.")
        per_image = [group or [] for group in per_image]
        for image, group in enumerate(per_image):
            if not group and image not in skipped:
                raise LiteLVLMError(
                    "an image has no expressions; pass at least one per image, or None to skip it."
                )
            for expression in group:
                self._check_expression(expression)
        entry = get_method(method)
        check_options(entry, method_options)
        check_full_budget(full_budget)
        num_patches = images.features.num_patches
        budget = num_patches if budget is None else check_budget(budget)
        if text_source not in TEXT_SOURCES:
            raise LiteLVLMError(f"text_source must be one of {', '.join(TEXT_SOURCES)}, got {text_source!r}.")
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
            raise LiteLVLMError(f"max_new_tokens must be a whole number >= 1, got {max_new_tokens!r}.")
        if not isinstance(share_prefix, bool):
            raise LiteLVLMError(f"share_prefix must be True or False, got {share_prefix!r}.")
        if not isinstance(generate_answer, bool):
            raise LiteLVLMError(f"generate_answer must be True or False, got {generate_answer!r}.")
        if decoding is not None and not callable(decoding):
            raise LiteLVLMError(f"decoding must be a function (logits, step) -> token ids, got {decoding!r}.")
        if positions not in POSITIONS:
            raise LiteLVLMError(f"positions must be one of {', '.join(POSITIONS)}, got {positions!r}.")
        turns = self._turns_per_conversation(turns_per_conversation)
        conversations = self._conversations(
            per_image,
            _templates(question_templates, per_image, self.host.default_question, "question"),
            None
            if generate_answer
            else _templates(answer_templates, per_image, self.host.default_answer, "answer"),
            1 if generate_answer else turns,
            text_source,
        )
        # The longest sequence the LLM will see: every patch enters for in-LLM methods and keeps its position
        # with positions="original"; generation adds its answer.
        visual = num_patches if entry.stage == "llm" or positions == "original" else min(budget, num_patches)
        self._check_context(conversations, visual, max_new_tokens if generate_answer else 0)

        timer = StageTimer(self.device)
        selection, plan = self._select(conversations, entry, budget, full_budget, method_options, timer)
        results = self._run(
            conversations,
            selection,
            plan,
            generate_answer,
            max_new_tokens,
            decoding,
            positions,
            timer,
            share_prefix,
        )
        num_layers = self.model.llm.config.num_hidden_layers
        if plan is not None:
            tokens_per_layer = plan.tokens_per_layer(num_layers, selection.budget)
        else:
            tokens_per_layer = [selection.budget] * num_layers
        permuted = selection.is_permutation_of_all(num_patches)
        return [
            None
            if image in skipped
            else Prediction(
                [r for r in results if conversations[r.conversation].image == image],
                method,
                budget,
                selection.budget,
                permuted=permuted,
                timings=timer.as_dict(),
                tokens_per_layer=tokens_per_layer,
            )
            for image in range(len(per_image))
        ]

    def _check_expression(self, expression: object) -> None:
        """A referring expression: non-empty UTF-8 text without <image> (check_text) nor the host's special
        tokens, which would be tokenized as those tokens (an extra [SEG] takes a mask from the wrong place)."""
        check_text(expression)
        special = [token for token in self.host.added_tokens if token in expression]
        if special:
            raise LiteLVLMError(
                f"expression {expression!r} contains {self.host.display_name}'s special token {special[0]!r}, "
                "which the model would read as that token; remove it from the expression."
            )

    def _check_context(self, conversations: list[_Conversation], visual: int, new_tokens: int) -> None:
        """Every conversation, with its `visual` tokens and `new_tokens` to generate, fits the LLM's context."""
        context = self.model.llm.config.max_position_embeddings
        for conversation in conversations:
            prompt = len(conversation.ids) - 1 + visual  # the image placeholder becomes `visual` tokens
            if prompt + new_tokens > context:
                problem = (
                    f"the conversation of {conversation.expressions[0][:60]!r}"
                    f"{' and others' if len(conversation.expressions) > 1 else ''} is {prompt} tokens with the "
                    f"image's {visual}{f' plus {new_tokens} to generate' if new_tokens else ''}, above "
                    f"{self.host.display_name}'s context of {context}; shorten the expression"
                )
                raise LiteLVLMError(
                    f"{problem}{' or lower max_new_tokens' if new_tokens else ''}.",
                    cli_message=f"{problem}{' or lower --max-new-tokens' if new_tokens else ''}.",
                )

    def _turns_per_conversation(self, turns: int | None) -> int:
        limit = self.host.max_turns
        if turns is None:
            return limit
        if isinstance(turns, bool) or not isinstance(turns, int) or not 1 <= turns <= limit:
            raise LiteLVLMError(
                f"turns_per_conversation must be a whole number from 1 to {limit} for "
                f"{self.host.display_name} (its conversations hold at most {limit} expression(s)), got {turns!r}."
            )
        return turns

    def _conversations(self, per_image, questions, answers, group, text_source) -> list[_Conversation]:
        """Each image's expressions in conversations of up to `group` turns, rendered and tokenised once."""
        conversations = []
        for image, texts in enumerate(per_image):
            for start in range(0, len(texts), group):
                chunk = texts[start : start + group]
                qs = questions[image][start : start + group]
                turns = build_turns(
                    chunk, qs, None if answers is None else answers[image][start : start + group]
                )
                ids = self.tokenizer.encode_with_image(render_conversation(turns, self.host.image_prefix))
                conversations.append(
                    _Conversation(image, chunk, turns, clip_texts(chunk, text_source, qs), ids)
                )
        return conversations

    def _select(
        self, conversations, entry, budget: int, full_budget: str, options: dict, timer: StageTimer
    ) -> tuple[Selection, PruningPlan | None]:
        """Visual tokens for every conversation (one row each), and the in-LLM plan if the method prunes inside
        the LLM. Image scores are computed once per image and gathered per conversation."""
        features = self._images.features
        num_patches = features.num_patches
        device = features.hidden.device
        if entry.stage == "llm":
            plan = None
            if budget < num_patches:
                plan = entry.fn(budget, self.model.llm.config.num_hidden_layers, num_patches, **options)
            return keep_all(len(conversations), num_patches, device), plan
        if budget >= num_patches and full_budget == "identity":  # no pruning, no scores
            return keep_all(len(conversations), num_patches, device), None
        texts = [c.clip_texts for c in conversations] if "similarity" in entry.needs else ()
        embeds = None
        if texts:
            with timer("clip_text"):
                embeds = self.scorer.encode_text([text for group in texts for text in group])
        with timer("selection"):
            rows = torch.tensor([c.image for c in conversations], device=device)
            scores = self.scorer.score(texts, entry.needs, features, rows=rows, text_embeds=embeds)
            return run_selection(entry, scores, budget, full_budget, options), None

    @torch.inference_mode()
    def _run(
        self,
        conversations,
        selection: Selection,
        plan,
        generate_answer,
        max_new_tokens,
        decoding,
        positions,
        timer,
        share_prefix: bool = False,
    ) -> list[ExpressionResult]:
        model, tokenizer, images = self.model, self.tokenizer, self._images
        with timer("projector"):
            rows = torch.tensor([c.image for c in conversations], device=images.features.hidden.device)
            visual = selection.gather(images.features.patch_features[rows].to(self.device))
            visual = model.projector(visual.to(model.dtype))
        batch = splice_visual_tokens(
            model.llm.model.embed_tokens,
            [c.ids for c in conversations],
            visual,
            visual_positions=selection.indices if positions == "original" else None,
            image_length=images.features.num_patches,
        )
        query_ends = [] if plan is None else [self._query_end(c) + visual.shape[1] - 1 for c in conversations]
        with timer("llm"), pruning(model.llm.model, plan, batch.image_spans, query_ends) as state:
            share = share_prefix and state is None  # in-LLM methods: see docs/performance.md
            if generate_answer:
                prefix = shared_prefix_length(batch) if share else 0
                self.last_shared_prefix = prefix
                output = generate(
                    model.llm,
                    batch,
                    eos_id=tokenizer.eos_id,
                    watch_id=tokenizer.seg_id,
                    max_new_tokens=max_new_tokens,
                    choose=decoding,
                    locate=None if state is None else (lambda p: state.index_of(p[:, None])[:, 0]),
                    prefix=prefix,
                )
                answers = [tokenizer.decode(tokens) for tokens in output.tokens]
                # one expression per conversation: its mask comes from the first generated [SEG]
                seg_hidden = [watched[:1] for watched in output.watched_hidden]
            else:
                positions = batch.positions_before(tokenizer.seg_id)
                prefix = shared_prefix_length(batch, positions) if share else 0
                hidden = final_hidden_states_shared(model.llm.model, batch, prefix, positions)
                self.last_shared_prefix = prefix
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
                found = gather_positions(hidden, positions)
                seg_hidden, start = [], 0
                for where in positions:
                    seg_hidden.append(list(found[start : start + len(where)]))
                    start += len(where)
            llm_kept = surviving_patches(state, len(conversations))
        with timer("seg_projection"):
            prompts_per_conversation = [
                model.text_hidden_fcs(torch.stack(states)) if states else None for states in seg_hidden
            ]
        results: list[ExpressionResult] = []
        for index, conversation in enumerate(conversations):
            image = conversation.image
            embeddings = prompts_per_conversation[index]
            masks: list[np.ndarray | None] = [None] * len(conversation.expressions)
            if embeddings is not None:
                with timer("sam_decoder"):
                    low_res = model.sam.decode(images.sam_embeddings[image : image + 1], embeddings)
                with timer("postprocess"):
                    logits = postprocess_masks(low_res, images.resized[image], images.original[image])
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

    def _query_end(self, conversation: _Conversation) -> int:
        """Index (in the conversation's ids, before splicing) of the token that predicts the last answer: the end
        of the same conversation's generation prompt when the two share that prefix, else the last token. Only
        in-LLM methods need it (they rank visual tokens by that token's attention)."""
        turns, ids = conversation.turns, conversation.ids
        if turns[-1].answer is None:
            return len(ids) - 1
        prompt = self.tokenizer.encode_with_image(
            render_conversation([*turns[:-1], Turn(turns[-1].question, None)], self.host.image_prefix)
        )
        return len(prompt) - 1 if ids[: len(prompt)] == prompt else len(ids) - 1


def _templates(templates, per_image: list[list[str]], default: int, name: str) -> list[list[int]]:
    """One template index per expression of each image (the host's default where none are given)."""
    if templates is None:
        return [[default] * len(group) for group in per_image]
    if isinstance(templates, (str, bytes)) or len(templates) != len(per_image):
        raise LiteLVLMError(
            f"{name}_templates must hold one list of template indices per image ({len(per_image)}), got "
            f"{templates!r}."
        )
    lists = [[] if group is None else list(group) for group in templates]
    for group, texts in zip(lists, per_image):
        if len(group) != len(texts):
            raise LiteLVLMError(
                f"got {len(group)} {name} templates for {len(texts)} expressions; give one template index per "
                "expression."
            )
    return lists
