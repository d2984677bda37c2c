"""transformers' own `LlavaForConditionalGeneration` (e.g. llava-hf/llava-1.5-7b-hf) with token pruning.

No modeling code is copied and no transformers class is patched: the image goes through the model's own vision
tower and projector (`get_image_features`), the kept visual tokens are spliced into the prompt's embeddings, and
the model's language model and `lm_head` run them (`inputs_embeds`), with the KV cache and in-LLM pruning of
`llm.generate` / `llm_pruning`. CLIP scores come from the matching CLIP checkpoint (its text tower for
text-guided methods), run on the very pixels LLaVA's processor made, so patch k is the same square of the image
for both.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import SimpleNamespace

import torch
from PIL import Image

from ..checkpoints import check_device, check_dtype, check_path_argument, reason_of
from ..errors import LiteLVLMError
from ..images import image_list, load_image
from ..scoring import DEFAULT_CLIP, ClipScorer, VisionFeatures, check_text
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
from .llm import IMAGE_TOKEN_INDEX, POSITIONS, generate, shared_prefix_length, splice_visual_tokens
from .llm_pruning import pruning, surviving_patches
from .registry import local_checkpoint_dir

ARCHITECTURE = "LlavaForConditionalGeneration"
EXAMPLE_CHECKPOINT = "llava-hf/llava-1.5-7b-hf"
DEFAULT_MAX_NEW_TOKENS = 64


@dataclass
class Answer:
    """One question's outcome: the generated text, its token ids (up to and including eos) and the visual
    tokens its prompt kept (patch indices in the order the LLM received them, with why each was kept)."""

    question: str
    text: str
    tokens: list[int]
    image: int
    indices: list[int]
    kinds: list[str]
    llm_kept: list[int] | None = None  # in-LLM methods: the patches alive in the deepest layers


@dataclass
class AnswerBatch:
    """All answers of one `answer` call, with its method, budget and per-stage seconds."""

    answers: list[Answer]
    method: str
    budget: int
    num_visual_tokens: int
    timings: dict[str, float] = field(default_factory=dict)
    tokens_per_layer: list[int] = field(default_factory=list)


@dataclass
class _Images:
    pixel_values: torch.Tensor  # [I, 3, S, S] as LLaVA's processor made them
    features: VisionFeatures  # the CLIP checkpoint's pass over those pixels (scores)
    patches: torch.Tensor  # [I, N, D] LLaVA's tower's select-layer patches (the projector's input)
    sizes: list[tuple[int, int]]  # (H, W) of each image as given


def image_token_id(config) -> int:
    """The id of the "<image>" placeholder (transformers >= 4.47 calls the field image_token_id)."""
    value = getattr(config, "image_token_id", None)
    return value if value is not None else config.image_token_index


def language_parts(model) -> SimpleNamespace:
    """The decoder (a LlamaModel-like module with `embed_tokens`) and `lm_head` of a LlavaForConditionalGeneration
    (transformers 5: model.model.language_model; 4.x: model.language_model.model), as `llm.generate` takes them."""
    inner = getattr(model, "model", None)
    decoder = getattr(inner, "language_model", None)
    if decoder is None:  # transformers 4.x: a LlamaForCausalLM inside
        decoder, head = model.language_model.model, model.language_model.lm_head
    else:
        head = model.lm_head
    return SimpleNamespace(model=decoder, lm_head=head)


def vision_parts(model) -> SimpleNamespace:
    """LLaVA's vision tower and projector (transformers 5: under model.model; 4.x: on the model itself)."""
    owner = model.model if hasattr(getattr(model, "model", None), "vision_tower") else model
    return SimpleNamespace(tower=owner.vision_tower, projector=owner.multi_modal_projector)


def image_patches(model, pixel_values: torch.Tensor) -> torch.Tensor:
    """[B, N, D] what LLaVA's projector receives for pixels [B, 3, S, S]: its tower's `vision_feature_layer`
    hidden state without CLS (the "default" strategy), as `get_image_features` computes it."""
    output = vision_parts(model).tower(pixel_values.to(model.dtype), output_hidden_states=True)
    return output.hidden_states[model.config.vision_feature_layer][:, 1:]


def warn_if_other_tower(scorer: ClipScorer, model) -> None:
    """A warning when the CLIP checkpoint's vision weights are not LLaVA's tower's (compared on the patch
    embedding): the scores would then rank patches of another image encoder than the one the LLM reads."""
    tower = vision_parts(model).tower
    theirs = getattr(tower, "vision_model", tower).embeddings.patch_embedding.weight
    ours = scorer.vision.embeddings.patch_embedding.weight
    if ours.shape != theirs.shape or not torch.allclose(
        ours.float().cpu(), theirs.float().cpu(), rtol=1e-2, atol=1e-3
    ):
        warnings.warn(
            "the CLIP checkpoint's vision weights differ from LLaVA's vision tower, so CLIP ranks the patches of "
            "another encoder than the one the LLM reads; pass the CLIP checkpoint LLaVA was built on "
            f"({DEFAULT_CLIP} for LLaVA-1.5) unless that is intended.",
            stacklevel=3,
        )


def check_llava_config(config, where: str) -> None:
    """Refuse what this host does not handle, naming the field (one image token per patch, CLS dropped)."""
    strategy = getattr(config, "vision_feature_select_strategy", "default")
    if strategy != "default":
        raise LiteLVLMError(
            f"{where} has vision_feature_select_strategy {strategy!r}; litelvlm's LLaVA host prunes the patch "
            "tokens of the 'default' strategy (CLS dropped), as LLaVA-1.5 uses."
        )
    layer = getattr(config, "vision_feature_layer", -2)
    if not isinstance(layer, int):
        raise LiteLVLMError(
            f"{where} has vision_feature_layer {layer!r} (several layers); litelvlm's LLaVA host reads one layer."
        )


class LlavaPredictor:
    """Answers questions about images with a transformers LLaVA model and token pruning.

    >>> llava = LlavaPredictor.from_pretrained("llava-hf/llava-1.5-7b-hf", device="cuda")
    >>> llava.set_image("photo.jpg")
    >>> llava.answer(["What is the man holding?"], method="litelvlm", budget=64).answers[0].text
    """

    def __init__(self, model, processor, scorer: ClipScorer) -> None:
        self.model = model.eval()
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.scorer = scorer
        self.language = language_parts(model)
        config = model.config
        check_llava_config(config, "the model's config")
        self.image_token_id = image_token_id(config)
        vision = config.vision_config
        self.num_patches = (vision.image_size // vision.patch_size) ** 2
        clip = scorer.vision.config
        if (clip.image_size, clip.patch_size) != (vision.image_size, vision.patch_size):
            raise LiteLVLMError(
                f"the CLIP checkpoint works at {clip.image_size} px with {clip.patch_size} px patches but LLaVA's "
                f"tower at {vision.image_size} px with {vision.patch_size} px patches; pass the CLIP checkpoint "
                f"LLaVA was built on ({DEFAULT_CLIP} for LLaVA-1.5) as clip=.",
                cli_message=f"the CLIP checkpoint works at {clip.image_size} px but LLaVA's tower at "
                f"{vision.image_size} px; pass the CLIP LLaVA was built on with --clip.",
            )
        warn_if_other_tower(scorer, model)
        self._images: _Images | None = None
        self.image_timings: dict[str, float] = {}

    @classmethod
    def from_pretrained(
        cls,
        path_or_id: str | os.PathLike,
        *,
        clip: str | os.PathLike = DEFAULT_CLIP,
        dtype: torch.dtype = torch.bfloat16,
        device: str | torch.device | None = None,
    ) -> LlavaPredictor:
        """Load a LlavaForConditionalGeneration checkpoint (directory or hub id) with its processor, and the CLIP
        checkpoint its vision tower comes from (scores; its text tower for text-guided methods)."""
        device, dtype = check_device(device), check_dtype(dtype)
        check_path_argument(path_or_id, "path_or_id")
        check_path_argument(clip, "clip")
        model, processor = load_llava(path_or_id, dtype=dtype, device=device)
        scorer = ClipScorer.from_pretrained(
            clip, dtype=dtype, device=device, select_layer=model.config.vision_feature_layer
        )
        return cls(model, processor, scorer)

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def num_llm_layers(self) -> int:
        return self.language.model.config.num_hidden_layers

    # ------------------------------------------------------------------ images
    @torch.inference_mode()
    def set_image(self, images, timer: StageTimer | None = None) -> None:
        """Run the CLIP pass (scores) and LLaVA's tower once for one image (or a list), cached."""
        timer = timer or StageTimer(self.device)
        pictures = [load_image(image) for image in image_list(images, "set_image")]
        pixel_values = self.pixel_values(pictures)
        with timer("clip_vision"):
            features = self.scorer.encode_image(pixel_values)
        with timer("llava_vision"):
            patches = image_patches(self.model, pixel_values)
        self._images = _Images(pixel_values, features, patches, [(p.height, p.width) for p in pictures])
        self.image_timings = timer.as_dict()

    def pixel_values(self, pictures: Sequence[Image.Image]) -> torch.Tensor:
        """[I, 3, S, S] LLaVA's processor's pixels for RGB pictures, on the model's device."""
        pixels = self.processor.image_processor(list(pictures), return_tensors="pt")["pixel_values"]
        return pixels.to(self.device, self.model.dtype)

    # ------------------------------------------------------------------ prompts
    def prompt_ids(self, question: str) -> list[int]:
        """Token ids of one user turn [image, question] in the model's chat template with the generation prompt,
        the image as one IMAGE_TOKEN_INDEX (the processor would expand it to one token per patch)."""
        conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
        text = self.processor.apply_chat_template(conversation, add_generation_prompt=True)
        ids = self.tokenizer(text, add_special_tokens=True)["input_ids"]
        if ids.count(self.image_token_id) != 1:
            raise LiteLVLMError(
                f"the chat template rendered {ids.count(self.image_token_id)} image tokens for one image; "
                "use the processor that came with the checkpoint."
            )
        return [IMAGE_TOKEN_INDEX if token == self.image_token_id else token for token in ids]

    # ------------------------------------------------------------------ answering
    def answer(
        self,
        questions: Sequence[str],
        *,
        images: Sequence[int] | None = None,
        clip_texts: Sequence[str] | None = None,
        method: str = "litelvlm",
        budget: int | None = None,
        max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
        positions: str = "compact",
        full_budget: str = "identity",
        share_prefix: bool = False,
        decoding: Callable[[torch.Tensor, int], torch.Tensor] | None = None,
        **method_options,
    ) -> AnswerBatch:
        """Greedy answers to questions about the set images, all as one padded batch.

        images: the set image each question is about (default: all about the one image, or one question per
            image in order). clip_texts: what CLIP compares the patches with, one per question (default: the
            question; a referring-expression prompt passes the expression). budget: visual tokens the LLM
            receives (default: all). positions, full_budget, share_prefix, decoding and method options as in
            `GroundingPredictor.predict`.
        """
        state = self._images
        if state is None:
            raise LiteLVLMError("no image is set; call set_image(image) before answer(questions).")
        if isinstance(questions, str):
            raise LiteLVLMError(
                f"answer takes a list of questions, got the string {questions!r}; pass [{questions!r}]."
            )
        questions = [check_text(question) for question in questions]
        if not questions:
            raise LiteLVLMError("answer got no questions; pass at least one.")
        rows = self._image_rows(images, len(questions), len(state.sizes))
        texts = list(questions if clip_texts is None else clip_texts)
        if len(texts) != len(questions):
            raise LiteLVLMError(
                f"got {len(texts)} clip_texts for {len(questions)} questions; pass one per question."
            )
        entry = get_method(method)
        check_options(entry, method_options)
        check_full_budget(full_budget)
        budget = self.num_patches if budget is None else check_budget(budget)
        if positions not in POSITIONS:
            raise LiteLVLMError(f"positions must be one of {', '.join(POSITIONS)}, got {positions!r}.")
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
            raise LiteLVLMError(f"max_new_tokens must be a whole number >= 1, got {max_new_tokens!r}.")
        if not isinstance(share_prefix, bool):
            raise LiteLVLMError(f"share_prefix must be True or False, got {share_prefix!r}.")
        id_lists = [self.prompt_ids(question) for question in questions]
        self._check_context(id_lists, self.num_patches if entry.stage == "llm" or positions == "original"
                            else min(budget, self.num_patches), max_new_tokens)  # fmt: skip

        timer = StageTimer(self.device)
        selection, plan = self._select(entry, budget, full_budget, rows, texts, method_options, timer)
        with timer("projector"):  # merging methods (visionzip) merge in the tower's space, as the authors do
            row_index = torch.tensor(rows, device=state.patches.device)
            visual = vision_parts(self.model).projector(selection.gather(state.patches[row_index]))
        batch = splice_visual_tokens(
            self.language.model.embed_tokens,
            id_lists,
            visual,
            visual_positions=selection.indices if positions == "original" else None,
            image_length=self.num_patches,
        )
        query_ends = [length - 1 for length in batch.lengths]
        with timer("llm"), pruning(self.language.model, plan, batch.image_spans, query_ends) as pruned:
            prefix = shared_prefix_length(batch) if share_prefix and pruned is None else 0
            output = generate(
                self.language,
                batch,
                eos_id=self.tokenizer.eos_token_id,
                watch_id=-1,  # nothing to watch: LLaVA has no [SEG]
                max_new_tokens=max_new_tokens,
                choose=decoding,
                locate=None if pruned is None else (lambda p: pruned.index_of(p[:, None])[:, 0]),
                prefix=prefix,
            )
            llm_kept = surviving_patches(pruned, len(id_lists))
        num_layers = self.num_llm_layers
        tokens_per_layer = (plan.tokens_per_layer(num_layers, selection.budget) if plan is not None
                            else [selection.budget] * num_layers)  # fmt: skip
        answers = [
            Answer(
                question,
                self.tokenizer.decode(tokens, skip_special_tokens=True).strip(),
                tokens,
                rows[index],
                selection.indices[index].tolist(),
                [KIND_NAMES[k] for k in selection.kinds[index].tolist()],
                llm_kept[index],
            )
            for index, (question, tokens) in enumerate(zip(questions, output.tokens))
        ]
        return AnswerBatch(answers, method, budget, selection.budget, timer.as_dict(), tokens_per_layer)

    def _image_rows(self, images, count: int, num_images: int) -> list[int]:
        if images is None:
            if num_images == 1:
                return [0] * count
            if count == num_images:
                return list(range(count))
            raise LiteLVLMError(
                f"{num_images} images are set but {count} questions given; pass images=[...] naming the image of "
                "each question, or one question per image."
            )
        rows = list(images)
        if len(rows) != count or not all(isinstance(r, int) and 0 <= r < num_images for r in rows):
            raise LiteLVLMError(
                f"images must give, for each of the {count} questions, the index of a set image (0 to "
                f"{num_images - 1}), got {images!r}."
            )
        return rows

    def _check_context(self, id_lists: list[list[int]], visual: int, new_tokens: int) -> None:
        context = self.language.model.config.max_position_embeddings
        longest = max(len(ids) - 1 + visual for ids in id_lists)
        if longest + new_tokens > context:
            raise LiteLVLMError(
                f"a prompt is {longest} tokens with the image's {visual} plus {new_tokens} to generate, above the "
                f"model's context of {context}; shorten the question or lower max_new_tokens.",
                cli_message=f"a prompt is {longest} tokens with the image's {visual} plus {new_tokens} to generate, "
                f"above the model's context of {context}; shorten the question or lower --max-new-tokens.",
            )

    def _select(
        self, entry, budget, full_budget, rows, texts, options, timer
    ) -> tuple[Selection, PruningPlan | None]:
        """Kept visual tokens per question (one row each) and the in-LLM plan, as GroundingPredictor._select."""
        features = self._images.features
        device = features.hidden.device
        num_layers = self.num_llm_layers
        if entry.stage == "llm":
            plan = (
                entry.fn(budget, num_layers, self.num_patches, **options)
                if budget < self.num_patches
                else None
            )
            return keep_all(len(rows), self.num_patches, device), plan
        if budget >= self.num_patches and full_budget == "identity":
            return keep_all(len(rows), self.num_patches, device), None
        grouped = [[text] for text in texts] if "similarity" in entry.needs else ()
        with timer("selection"):
            scores = self.scorer.score(grouped, entry.needs, features, rows=torch.tensor(rows, device=device))
            return run_selection(entry, scores, budget, full_budget, options), None


def load_llava(path_or_id: str | os.PathLike, *, dtype: torch.dtype, device: torch.device):
    """(model, processor) of a LlavaForConditionalGeneration checkpoint, loaded by transformers itself."""
    import json

    from transformers import AutoProcessor, LlavaForConditionalGeneration

    directory = local_checkpoint_dir(path_or_id)
    config_path = os.path.join(directory, "config.json")
    try:
        with open(config_path, encoding="utf-8") as handle:
            config = json.load(handle)
    except (OSError, ValueError) as error:
        raise LiteLVLMError(
            f"could not read {config_path!r} ({reason_of(error)}); pass a LLaVA checkpoint directory such as "
            f"{EXAMPLE_CHECKPOINT}."
        ) from None
    architectures = config.get("architectures") if isinstance(config, dict) else None
    if not isinstance(architectures, list) or ARCHITECTURE not in architectures:
        raise LiteLVLMError(
            f"{config_path!r} names architectures {architectures!r}, not {ARCHITECTURE}; pass a transformers LLaVA "
            f"checkpoint such as {EXAMPLE_CHECKPOINT} (GLaMM and LISA load with GroundingPredictor)."
        )
    try:
        model = LlavaForConditionalGeneration.from_pretrained(directory, dtype=dtype)
        processor = AutoProcessor.from_pretrained(directory)
    except Exception as error:  # noqa: BLE001 - whatever transformers raises, the advice is the same
        raise LiteLVLMError(
            f"could not load the LLaVA checkpoint in {directory!r} ({reason_of(error)}); re-download it."
        ) from None
    check_llava_config(model.config, repr(config_path))
    return model.to(device).eval(), processor
