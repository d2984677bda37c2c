"""Box grounding (referring expression comprehension, REC) as LLaVA-1.5 does it: prompt, box format, IoU, accuracy.

LLaVA-1.5 learnt grounding (RefCOCO/+/g and Visual Genome) from the question `REC_PROMPT` and answers such as
"[0.12, 0.34, 0.56, 0.78]": [x0, y0, x1, y1] normalised to [0, 1], two decimals, relative to the image *after*
LLaVA-1.5's `expand2square` padding (the image pasted centred on a square canvas of side max(W, H), filled with
the image processor's mean colour). So a predicted box maps back to the original image as
x_pixels = x * side - offset_x (and likewise for y), clipped to the image.

Boxes here are [x0, y0, x1, y1] in continuous coordinates: pixel (i, j) covers [i, i + 1) x [j, j + 1), so a box
over pixel columns 3..6 is x0 = 3, x1 = 7 and its area is (x1 - x0) * (y1 - y0). COCO's [x, y, w, h] boxes are in
the same coordinates (`xywh_to_xyxy`).
"""

from __future__ import annotations

import math
import numbers
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from PIL import Image

from ..errors import LiteLVLMError, shown

# The question LLaVA-1.5's grounding data used (its RefCOCO/VG conversations); format with expression=...
REC_PROMPT = "Please provide the bounding box coordinate of the region this sentence describes: {expression}"
IOU_THRESHOLD = 0.5

Box = tuple[float, float, float, float]

# A decimal number: "0.12", "1", "1.", ".5", "-0.1", "1e-3". ASCII digits only ([0-9], not \d), so float() takes
# whatever matched.
_NUMBER = r"[-+]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][-+]?[0-9]+)?"
# Inside brackets numbers may be separated by commas or by whitespace alone; outside them commas are required,
# so a sentence with a few numbers in it ("2 dogs and 3 cats") is not read as a box.
_LOOSE = r"(?:\s*,\s*|\s+)"  # a comma and/or whitespace
_COMMA = r"\s*,\s*"
_BRACKETED = re.compile(
    rf"[\[(]\s*({_NUMBER}){_LOOSE}({_NUMBER}){_LOOSE}({_NUMBER}){_LOOSE}({_NUMBER})\s*[\])]"
)
_BARE = re.compile(
    rf"(?<![0-9.])({_NUMBER}){_COMMA}({_NUMBER}){_COMMA}({_NUMBER}){_COMMA}({_NUMBER})(?![0-9])"
)
NO_BOX = "no box: the text has no four numbers in brackets, nor four comma-separated numbers"


@dataclass(frozen=True)
class BoxParse:
    """What `parse_box` read from a model's answer.

    box: the first complete box, (x0, y0, x1, y1) normalised to [0, 1] with x0 <= x1 and y0 <= y1; None when the
    text holds no box (then `reason` says why).
    count: how many complete boxes the text holds (bracketed ones when there are any, else bare ones).
    reordered: the first box had x1 < x0 or y1 < y0 and its coordinates were swapped.
    clipped: some coordinate of the first box was outside [0, 1] and was clipped into it.
    """

    box: Box | None
    count: int
    reordered: bool = False
    clipped: bool = False
    reason: str | None = None


def parse_box(text: str) -> BoxParse:
    """Read the first box of a model's answer; never raises on a string.

    Accepted: four numbers in square brackets or parentheses, separated by commas and/or whitespace (newlines
    included), anywhere in the text ("The box is [0.1, 0.2, 0.3, 0.4].</s>"); when the text has no bracketed box,
    four comma-separated numbers without brackets ("0.1, 0.2, 0.3, 0.4"). Numbers are taken as already
    normalised: values outside [0, 1] (pixels, or a 0..1000 scale) are clipped and flagged, never rescaled.
    """
    if not isinstance(text, str):
        raise LiteLVLMError(f"parse_box got {shown(text)}; pass the model's answer as a string.")
    matches = list(_BRACKETED.finditer(text)) or list(_BARE.finditer(text))
    if not matches:
        return BoxParse(box=None, count=0, reason=NO_BOX)
    x0, y0, x1, y1 = (float(value) for value in matches[0].groups())
    reordered = x1 < x0 or y1 < y0
    x0, x1 = min(x0, x1), max(x0, x1)
    y0, y1 = min(y0, y1), max(y0, y1)
    raw = (x0, y0, x1, y1)
    box = tuple(min(1.0, max(0.0, value)) for value in raw)  # inf (from "1e999") clips too
    return BoxParse(box=box, count=len(matches), reordered=reordered, clipped=box != raw)


def format_box(box: Sequence[float]) -> str:
    """A normalised box written as LLaVA-1.5's answers write it: "[0.12, 0.34, 0.56, 0.78]" (two decimals)."""
    return "[" + ", ".join(f"{value:.2f}" for value in _box(box, "box")) + "]"


def fill_from_mean(image_mean: Sequence[float]) -> tuple[int, ...]:
    """The padding colour LLaVA-1.5 uses: `tuple(int(x * 255) for x in image_processor.image_mean)`.

    int() truncates: CLIP's mean (0.4815, 0.4578, 0.4082) gives (122, 116, 104)."""
    return tuple(int(value * 255) for value in image_mean)


def square_offset(width: int, height: int) -> tuple[int, int]:
    """(offset_x, offset_y) of the image's top-left corner on `expand2square`'s canvas of side max(W, H)."""
    _size((width, height))
    if width > height:
        return 0, (width - height) // 2
    return (height - width) // 2, 0


def pad_to_square(image: Image.Image, fill: tuple[int, int, int]) -> tuple[Image.Image, tuple[int, int]]:
    """LLaVA-1.5's `expand2square`: RGB [W, H] -> (RGB [S, S] with S = max(W, H), (offset_x, offset_y)).

    Landscape (W > H) pastes at (0, (W - H) // 2), portrait at ((H - W) // 2, 0); the rest is `fill`. A square
    image is returned as it is, with offset (0, 0).
    """
    if not isinstance(image, Image.Image) or image.mode != "RGB":
        raise LiteLVLMError(
            f"pad_to_square got {getattr(image, 'mode', type(image).__name__)!r}; pass an RGB PIL image "
            "(image.convert('RGB'))."
        )
    width, height = image.size
    offset = square_offset(width, height)
    if width == height:
        return image, offset
    canvas = Image.new("RGB", (max(width, height),) * 2, tuple(fill))
    canvas.paste(image, offset)
    return canvas, offset


def box_from_square(
    box_normalised: Sequence[float], original_size: tuple[int, int], offset: tuple[int, int] | None = None
) -> Box:
    """A box normalised to the padded square -> [x0, y0, x1, y1] in the original image's pixels.

    original_size: (W, H) of the image before padding. offset: where it sits on the square (default: the
    `expand2square` offset, `square_offset(W, H)`). x = x_n * max(W, H) - offset_x, clipped to [0, W] (y to
    [0, H]): a box reaching into the padding is cut at the image's edge.
    """
    width, height = _size(original_size)
    offset_x, offset_y = square_offset(width, height) if offset is None else offset
    side = max(width, height)
    x0, y0, x1, y1 = _box(box_normalised, "box_normalised")
    return (
        _clip(x0 * side - offset_x, width),
        _clip(y0 * side - offset_y, height),
        _clip(x1 * side - offset_x, width),
        _clip(y1 * side - offset_y, height),
    )


def box_to_square(
    box: Sequence[float], original_size: tuple[int, int], offset: tuple[int, int] | None = None
) -> Box:
    """The inverse of `box_from_square` for boxes inside the image: pixels -> normalised to the padded square
    ((x + offset_x) / max(W, H)); what LLaVA-1.5's training answers hold for a ground-truth box."""
    width, height = _size(original_size)
    offset_x, offset_y = square_offset(width, height) if offset is None else offset
    side = max(width, height)
    x0, y0, x1, y1 = _box(box, "box")
    return ((x0 + offset_x) / side, (y0 + offset_y) / side, (x1 + offset_x) / side, (y1 + offset_y) / side)


def xywh_to_xyxy(box: Sequence[float]) -> Box:
    """COCO [x, y, width, height] -> [x0, y0, x1, y1] (same coordinates)."""
    x, y, width, height = _box(box, "COCO box", ordered=False)
    if width < 0 or height < 0:
        raise LiteLVLMError(
            f"COCO box {shown(list(box))} has a negative width or height; pass [x, y, width, height]."
        )
    return (x, y, x + width, y + height)


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """IoU of two [x0, y0, x1, y1] boxes in pixels (continuous coordinates, area (x1 - x0) * (y1 - y0)).

    Zero-area boxes are allowed: their IoU with anything is 0 (also with an identical zero-area box: no area)."""
    ax0, ay0, ax1, ay1 = _box(a, "box a")
    bx0, by0, bx1, by1 = _box(b, "box b")
    intersection = max(0.0, min(ax1, bx1) - max(ax0, bx0)) * max(0.0, min(ay1, by1) - max(ay0, by0))
    union = (ax1 - ax0) * (ay1 - ay0) + (bx1 - bx0) * (by1 - by0) - intersection
    return intersection / union if union > 0 else 0.0


def rec_summary(ious: Iterable[float | None]) -> dict:
    """Aggregate per-expression IoUs (None: the answer held no box) into the reported REC metrics.

    acc@0.5: share of expressions with IoU >= 0.5 (the standard REC accuracy); mean_iou: mean IoU; a miss counts
    as IoU 0 in both. misses: how many were None; count: how many in all. With none, count is 0 and the rates
    are None.
    """
    ious = list(ious)
    for iou in ious:
        if iou is not None and (
            isinstance(iou, bool) or not isinstance(iou, numbers.Real) or not 0.0 <= iou <= 1.0
        ):
            raise LiteLVLMError(f"rec_summary got IoU {shown(iou)}; pass IoUs in [0, 1], or None for a miss.")
    values = [0.0 if iou is None else float(iou) for iou in ious]
    if not values:
        return {"acc@0.5": None, "mean_iou": None, "misses": 0, "count": 0}
    return {
        "acc@0.5": sum(value >= IOU_THRESHOLD for value in values) / len(values),
        "mean_iou": sum(values) / len(values),
        "misses": sum(iou is None for iou in ious),
        "count": len(values),
    }


def _box(box: Sequence[float], name: str, ordered: bool = True) -> Box:
    """Four finite floats; with `ordered`, x0 <= x1 and y0 <= y1."""
    try:
        values = tuple(float(value) for value in box)
    except (TypeError, ValueError):
        values = ()
    if len(values) != 4 or not all(math.isfinite(value) for value in values):
        raise LiteLVLMError(f"{name} {shown(box)} is not four finite numbers; pass [x0, y0, x1, y1].")
    if ordered and (values[2] < values[0] or values[3] < values[1]):
        raise LiteLVLMError(
            f"{name} {shown(values)} has x1 < x0 or y1 < y0; pass [x0, y0, x1, y1] (xywh_to_xyxy converts "
            "COCO's [x, y, width, height])."
        )
    return values


def _size(size: tuple[int, int]) -> tuple[int, int]:
    if (
        not isinstance(size, (tuple, list))
        or len(size) != 2
        or not all(isinstance(side, int) and not isinstance(side, bool) and side > 0 for side in size)
    ):
        raise LiteLVLMError(f"image size {shown(size)} is not (width, height) in pixels; pass image.size.")
    return size[0], size[1]


def _clip(value: float, limit: int) -> float:
    return min(float(limit), max(0.0, value))
