"""What the demo page computes, without any web framework: check an upload, run one method at one budget on
one image's expressions, and compare two runs. The page (app.py) only wires these to widgets.

The image's text-independent work (CLIP's vision pass, SAM's image embedding) is done once per distinct image
and model: the predictor caches it and `DemoEngine` only calls `set_image` when the image changes, so moving the
budget slider re-runs the per-expression work alone. One engine serves every visitor; the page's queue lets one
request at a time use the model, so no locking is needed here beyond that queue.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import LiteLVLMError
from ..images import check_image_size, load_image

MAX_UPLOAD_MB = 20.0  # default upload limit (file size)
MAX_MEGAPIXELS = 40.0  # default upload limit (decoded size)
MAX_EXPRESSIONS = 3
MAX_EXPRESSION_CHARS = 200  # a referring expression is a phrase; longer text is a paste mistake
FULL_RUNS_KEPT = 32  # full-budget reference runs remembered (speed-up and IoU to full)


@dataclass
class RunResult:
    """One method at one budget on one image's expressions, ready to show.

    overlay: the image with the kept tokens (by kind, pruned ones dimmed) and the masks; masks_image: the masks
    alone over the image; masks: bool [H, W] per expression (None where generation wrote no [SEG]).
    """

    overlay: Image.Image
    masks_image: Image.Image
    masks: list[np.ndarray | None]
    answers: list[str]
    kept: int  # visual tokens entering the LLM
    total: int
    average_per_layer: float | None  # in-LLM methods: visual tokens per decoder layer, averaged (else None)
    seconds: dict[str, float]  # per stage of this request (the image's stages only when not cached)
    image_cached: bool
    predict_seconds: float  # wall time of the per-expression work (`predict`, image cached)
    full_seconds: float | None  # the same for the full-token run of the same inputs
    iou_to_full: list[float | None] = field(default_factory=list)

    @property
    def speedup(self) -> float | None:
        """Per-expression speed-up over the full-token run (the image's work is cached for both)."""
        if self.full_seconds is None or self.predict_seconds <= 0:
            return None
        return self.full_seconds / self.predict_seconds


def mask_iou(a: np.ndarray | None, b: np.ndarray | None) -> float | None:
    """IoU of two boolean masks (1.0 when both are empty; None when either is missing)."""
    if a is None or b is None:
        return None
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def check_upload(path: str | os.PathLike | None, max_mb: float, max_megapixels: float) -> Image.Image:
    """The uploaded file as RGB, or one sentence saying what is wrong with it."""
    if path is None:
        raise LiteLVLMError("no image yet; upload one or pick an example.")
    path = Path(path)
    size_mb = path.stat().st_size / 2**20
    if size_mb > max_mb:
        raise LiteLVLMError(
            f"the upload {path.name!r} is {size_mb:.1f} MB, above this server's {max_mb:g} MB limit; "
            "upload a smaller image."
        )
    try:
        with Image.open(path) as header:  # dimensions without decoding the pixels
            width, height = header.width, header.height
    except Exception:  # noqa: BLE001 - whatever PIL says, the answer is the same sentence
        raise LiteLVLMError(
            f"the upload {path.name!r} is not an image this server can read; upload a JPEG or PNG."
        ) from None
    check_image_size(width, height, f"the upload {path.name!r}")  # named as the visitor knows it
    megapixels = width * height / 1e6
    if megapixels > max_megapixels:
        raise LiteLVLMError(
            f"the upload {path.name!r} has {megapixels:.1f} megapixels, above this server's "
            f"{max_megapixels:g} limit; downscale it."
        )
    image = load_image(path)
    if min(image.size) < 2:
        raise LiteLVLMError(
            f"the upload {path.name!r} is {image.width} x {image.height} pixels; upload a real image."
        )
    return image


def parse_expressions(text: str | None) -> list[str]:
    """One to three referring expressions, one per line."""
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    if not lines:
        raise LiteLVLMError("no referring expression; type one, such as 'the red circle'.")
    if len(lines) > MAX_EXPRESSIONS:
        raise LiteLVLMError(
            f"{len(lines)} expressions given; the demo takes at most {MAX_EXPRESSIONS}, one per line."
        )
    for line in lines:
        if len(line) > MAX_EXPRESSION_CHARS:
            raise LiteLVLMError(
                f"the expression {line[:40]!r}... has {len(line)} characters; keep each under "
                f"{MAX_EXPRESSION_CHARS}."
            )
    return lines


class DemoEngine:
    """The models the page serves (name -> GroundingPredictor) and the per-image cache bookkeeping."""

    def __init__(
        self, predictors: dict, max_mb: float = MAX_UPLOAD_MB, max_megapixels: float = MAX_MEGAPIXELS
    ):
        if not predictors:
            raise LiteLVLMError("the demo needs at least one model.")
        self.predictors = dict(predictors)
        self.max_mb, self.max_megapixels = max_mb, max_megapixels
        self._current: dict[str, str] = {}  # model name -> key of the image set on its predictor
        self._full: OrderedDict[tuple, tuple[float, list]] = OrderedDict()

    def predictor(self, model: str):
        if model not in self.predictors:
            raise LiteLVLMError(f"unknown model {model!r}; choose one of {', '.join(self.predictors)}.")
        return self.predictors[model]

    def num_patches(self, model: str) -> int:
        return self.predictor(model).num_patches

    def _set_image(self, model: str, image: Image.Image) -> tuple[str, bool]:
        """Set the image on the model's predictor unless it is already set; (image key, was cached)."""
        key = hashlib.sha1(image.tobytes() + repr(image.size).encode()).hexdigest()
        if self._current.get(model) == key:
            return key, True
        self.predictor(model).set_image(image)
        self._current[model] = key
        return key, False

    def run(
        self,
        model: str,
        image: Image.Image,
        expressions: list[str],
        method: str,
        budget: int,
        *,
        generate: bool = False,
        compare_to_full: bool = True,
    ) -> RunResult:
        """`method` at `budget` on the expressions; the full-token run of the same inputs once (remembered) for
        the speed-up and the IoU to the unpruned masks."""
        from ..selection import get_method
        from ..viz import overlay, prediction_overlay

        predictor = self.predictor(model)
        key, cached = self._set_image(model, image)
        seconds = {} if cached else dict(predictor.image_timings)
        start = time.perf_counter()
        prediction = predictor.predict(expressions, budget=budget, method=method, generate_answer=generate)
        elapsed = time.perf_counter() - start
        seconds.update(prediction.timings)
        seconds["other"] = max(0.0, elapsed - sum(prediction.timings.values()))
        masks = [result.mask for result in prediction.results]
        full_seconds, full_masks = None, [None] * len(masks)
        if compare_to_full:
            full_seconds, full_masks = self._full_run(model, key, expressions, generate)
        total = predictor.num_patches
        title = f"{method} @ {prediction.num_visual_tokens}/{total} tokens"
        found = [(r.mask, r.expression) for r in prediction.results if r.mask is not None]
        return RunResult(
            overlay=prediction_overlay(image, prediction, predictor, title),
            masks_image=overlay(
                image, masks=[m for m, _ in found], mask_labels=[e for _, e in found], title="masks"
            ),
            masks=masks,
            answers=[result.answer for result in prediction.results],
            kept=prediction.num_visual_tokens,
            total=total,
            average_per_layer=prediction.average_visual_tokens if get_method(method).stage == "llm" else None,
            seconds=seconds,
            image_cached=cached,
            predict_seconds=elapsed,
            full_seconds=full_seconds,
            iou_to_full=[mask_iou(a, b) for a, b in zip(masks, full_masks)],
        )

    def _full_run(self, model: str, key: str, expressions: list[str], generate: bool) -> tuple[float, list]:
        """(per-expression seconds, masks) of the unpruned run; the image must be set already."""
        memo = (model, key, tuple(expressions), generate)
        if memo not in self._full:
            predictor = self.predictor(model)
            start = time.perf_counter()
            prediction = predictor.predict(  # at the patch count every method is the unpruned model
                expressions, budget=predictor.num_patches, method="uniform", generate_answer=generate
            )
            self._full[memo] = (time.perf_counter() - start, [r.mask for r in prediction.results])
            while len(self._full) > FULL_RUNS_KEPT:
                self._full.popitem(last=False)
        self._full.move_to_end(memo)
        return self._full[memo]
