"""LLaVA-1.5 box grounding: answer parsing (fuzzed), expand2square geometry on real pixels, IoU against rasterised
boxes, and the REC summary."""

import math
import random

import numpy as np
import pytest
from PIL import Image

from litelvlm.errors import LiteLVLMError
from litelvlm.evaluation.boxes import (
    REC_PROMPT,
    box_from_square,
    box_iou,
    box_to_square,
    fill_from_mean,
    format_box,
    pad_to_square,
    parse_box,
    rec_summary,
    square_offset,
    xywh_to_xyxy,
)

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)


def test_prompt_is_llava_grounding_question():
    assert REC_PROMPT.format(expression="the man in red") == (
        "Please provide the bounding box coordinate of the region this sentence describes: the man in red"
    )


@pytest.mark.parametrize(
    "text, box",
    [
        ("[0.12, 0.34, 0.56, 0.78]", (0.12, 0.34, 0.56, 0.78)),
        ("[0.12, 0.34, 0.56, 0.78]</s>", (0.12, 0.34, 0.56, 0.78)),
        ("The box is (0.1,0.2,0.3,0.4). Done.", (0.1, 0.2, 0.3, 0.4)),
        ("[ 0.1 ,\n0.2 ,  0.3,\n 0.4 ]", (0.1, 0.2, 0.3, 0.4)),
        ("[0.1 0.2 0.3 0.4]", (0.1, 0.2, 0.3, 0.4)),
        ("0.1, 0.2, 0.3, 0.4", (0.1, 0.2, 0.3, 0.4)),
        ("[0, 0, 1, 1]", (0.0, 0.0, 1.0, 1.0)),
        ("[.5, 0.25, 1., 1]", (0.5, 0.25, 1.0, 1.0)),
        ("l'homme à gauche → [0.05, 0.10, 0.45, 0.90] 😀", (0.05, 0.1, 0.45, 0.9)),
        ("[0.1, 0.2, 0.3, 0.4)", (0.1, 0.2, 0.3, 0.4)),  # mismatched brackets are tolerated
    ],
)
def test_parse_reads_the_box(text, box):
    parsed = parse_box(text)
    assert parsed.box == pytest.approx(box)
    assert (parsed.count, parsed.reordered, parsed.clipped, parsed.reason) == (1, False, False, None)


@pytest.mark.parametrize(
    "text",
    ["", "   ", "I cannot see that.", "[0.1, 0.2, 0.3]", "[0.1, 0.2, 0.3, ]", "0.1 0.2 0.3 0.4", "[a, b, c, d]",
     "2 dogs and 3 cats, 4 birds", "[1.2.3, 4, 5, 6]", "[\u0661, 0.2, 0.3, 0.4]"],
)  # fmt: skip
def test_parse_without_box_says_why(text):
    parsed = parse_box(text)
    assert parsed.box is None and parsed.count == 0 and parsed.reason


def test_parse_takes_first_box_and_counts_them():
    parsed = parse_box("left: [0.1, 0.2, 0.3, 0.4], right: [0.5, 0.6, 0.7, 0.8]\n[0.0, 0.0, 0.5, 0.5]</s>")
    assert parsed.box == pytest.approx((0.1, 0.2, 0.3, 0.4)) and parsed.count == 3
    # Bracketed boxes win over bare numbers even when the bare ones come first.
    parsed = parse_box("0.9, 0.9, 1.0, 1.0 or [0.1, 0.2, 0.3, 0.4]")
    assert parsed.box == pytest.approx((0.1, 0.2, 0.3, 0.4)) and parsed.count == 1


def test_parse_reorders_reversed_coordinates():
    parsed = parse_box("[0.7, 0.2, 0.3, 0.9]")
    assert parsed.box == pytest.approx((0.3, 0.2, 0.7, 0.9))
    assert parsed.reordered and not parsed.clipped
    parsed = parse_box("[0.1, 0.9, 0.3, 0.2]")
    assert parsed.box == pytest.approx((0.1, 0.2, 0.3, 0.9)) and parsed.reordered


@pytest.mark.parametrize(
    "text, box",
    [
        ("[-0.1, 0.2, 1.3, 0.4]", (0.0, 0.2, 1.0, 0.4)),
        ("[120, 45, 300, 410]", (1.0, 1.0, 1.0, 1.0)),  # pixels are not rescaled: clipped and flagged
        ("[0.1, 0.2, 1e999, 0.4]", (0.1, 0.2, 1.0, 0.4)),
    ],
)
def test_parse_clips_out_of_range_values(text, box):
    parsed = parse_box(text)
    assert parsed.box == pytest.approx(box) and parsed.clipped and not parsed.reordered


def test_parse_refuses_non_strings():
    with pytest.raises(LiteLVLMError, match="string"):
        parse_box(None)


def test_parse_never_raises_on_random_text():
    rng = random.Random(0)
    alphabet = "0123456789" * 3 + ".,,  [[]]()-+eE\n\tab</s>é→😀\u0661\u00a0"
    for _ in range(3000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40)))
        parsed = parse_box(text)
        assert (parsed.box is None) == (parsed.count == 0) == (parsed.reason is not None)
        if parsed.box is not None:
            x0, y0, x1, y1 = parsed.box
            assert all(math.isfinite(v) and 0.0 <= v <= 1.0 for v in parsed.box)
            assert x0 <= x1 and y0 <= y1


def test_format_then_parse_round_trips():
    rng = random.Random(1)
    for _ in range(200):
        xs = sorted(round(rng.random(), 2) for _ in range(2))
        ys = sorted(round(rng.random(), 2) for _ in range(2))
        box = (xs[0], ys[0], xs[1], ys[1])
        text = format_box(box)
        assert text.startswith("[") and text.count(".") == 4
        assert parse_box("ASSISTANT: " + text + "</s>").box == pytest.approx(box)


def test_fill_is_llava_mean_colour():
    assert fill_from_mean(CLIP_MEAN) == (122, 116, 104)


def drawn(size, box, colour=(255, 0, 0)):
    """An RGB image of `size` (W, H), black with pixel columns x0..x1-1 and rows y0..y1-1 painted."""
    array = np.zeros((size[1], size[0], 3), np.uint8)
    x0, y0, x1, y1 = box
    array[y0:y1, x0:x1] = colour
    return Image.fromarray(array)


def painted_box(image, colour=(255, 0, 0)):
    """The continuous [x0, y0, x1, y1] box of the pixels of exactly `colour`."""
    ys, xs = np.nonzero((np.asarray(image) == colour).all(axis=-1))
    return (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)


@pytest.mark.parametrize(
    "size, offset",
    [((40, 25), (0, 7)), ((25, 40), (7, 0)), ((31, 30), (0, 0)), ((30, 31), (0, 0)), ((16, 16), (0, 0))],
)
def test_pad_to_square_is_expand2square(size, offset):
    image = drawn(size, (0, 0, 1, 1))
    fill = fill_from_mean(CLIP_MEAN)
    square, got = pad_to_square(image, fill)
    side = max(size)
    assert got == offset == square_offset(*size)
    assert square.size == (side, side) and square.mode == "RGB"
    pixels = np.asarray(square)
    inside = np.zeros((side, side), bool)
    inside[offset[1] : offset[1] + size[1], offset[0] : offset[0] + size[0]] = True
    assert (pixels[inside] == np.asarray(image).reshape(-1, 3)).all()
    assert (pixels[~inside] == fill).all()


@pytest.mark.parametrize("size", [(64, 37), (37, 64), (50, 50), (9, 100)])
def test_box_on_original_maps_back_to_itself(size):
    rng = random.Random(size[0] * 1000 + size[1])
    fill = fill_from_mean(CLIP_MEAN)
    for _ in range(20):
        x0, x1 = sorted(rng.sample(range(size[0] + 1), 2))
        y0, y1 = sorted(rng.sample(range(size[1] + 1), 2))
        square, offset = pad_to_square(drawn(size, (x0, y0, x1, y1)), fill)
        side = square.size[0]
        # What the model would answer: the painted box on the padded square, normalised by its side.
        normalised = tuple(value / side for value in painted_box(square))
        assert normalised == pytest.approx(box_to_square((x0, y0, x1, y1), size))
        assert box_from_square(normalised, size, offset) == pytest.approx((x0, y0, x1, y1))
        assert box_from_square(normalised, size) == pytest.approx((x0, y0, x1, y1))


def test_box_from_square_clips_to_the_image():
    # Landscape 200 x 100: the image spans y in [0.25, 0.75] of the square; the padding is cut off.
    assert box_from_square((0.0, 0.0, 1.0, 1.0), (200, 100)) == (0.0, 0.0, 200.0, 100.0)
    assert box_from_square((0.5, 0.1, 0.6, 0.2), (200, 100)) == (100.0, 0.0, 120.0, 0.0)
    assert box_from_square((0.1, 0.5, 0.2, 0.6), (100, 200)) == pytest.approx((0.0, 100.0, 0.0, 120.0))


def test_pad_refuses_non_rgb():
    with pytest.raises(LiteLVLMError, match="RGB"):
        pad_to_square(Image.new("L", (4, 3)), (0, 0, 0))


def raster_iou(a, b, grid=24):
    """IoU by counting pixels of integer boxes painted on a grid."""
    masks = []
    for x0, y0, x1, y1 in (a, b):
        mask = np.zeros((grid, grid), bool)
        mask[y0:y1, x0:x1] = True
        masks.append(mask)
    union = np.count_nonzero(masks[0] | masks[1])
    return np.count_nonzero(masks[0] & masks[1]) / union if union else 0.0


def test_iou_matches_rasterised_boxes():
    rng = random.Random(2)
    for _ in range(500):
        boxes = []
        for _ in range(2):
            x0, x1 = sorted(rng.randint(0, 24) for _ in range(2))
            y0, y1 = sorted(rng.randint(0, 24) for _ in range(2))
            boxes.append((x0, y0, x1, y1))
        assert box_iou(*boxes) == pytest.approx(raster_iou(*boxes), abs=1e-12)
        assert box_iou(*boxes) == pytest.approx(box_iou(*reversed(boxes)))


def test_iou_edge_cases():
    assert box_iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    assert box_iou((0, 0, 10, 10), (10, 0, 20, 10)) == 0.0  # touching edges
    assert box_iou((0, 0, 10, 10), (5, 5, 15, 15)) == pytest.approx(25 / 175)
    assert box_iou((3, 3, 3, 3), (3, 3, 3, 3)) == 0.0  # zero area
    assert box_iou((0.5, 0.5, 1.5, 2.5), (1.0, 0.5, 2.0, 2.5)) == pytest.approx(1 / 3)
    with pytest.raises(LiteLVLMError, match="x1 < x0"):
        box_iou((10, 0, 0, 10), (0, 0, 10, 10))
    with pytest.raises(LiteLVLMError, match="four finite numbers"):
        box_iou((0, 0, 10), (0, 0, 10, 10))
    with pytest.raises(LiteLVLMError, match="four finite numbers"):
        box_iou((0, 0, float("nan"), 10), (0, 0, 10, 10))


def test_xywh_to_xyxy():
    assert xywh_to_xyxy([10.5, 20, 30, 40.25]) == (10.5, 20.0, 40.5, 60.25)
    with pytest.raises(LiteLVLMError, match="negative"):
        xywh_to_xyxy([0, 0, -1, 5])


def test_rec_summary_counts_misses_as_zero():
    summary = rec_summary([0.9, 0.5, 0.49999, None, 0.0, np.float32(0.75)])
    assert summary["count"] == 6 and summary["misses"] == 1
    assert summary["acc@0.5"] == pytest.approx(3 / 6)
    assert summary["mean_iou"] == pytest.approx((0.9 + 0.5 + 0.49999 + 0.75) / 6)
    assert rec_summary([]) == {"acc@0.5": None, "mean_iou": None, "misses": 0, "count": 0}
    assert rec_summary([None, None])["acc@0.5"] == 0.0
    with pytest.raises(LiteLVLMError, match="IoU"):
        rec_summary([1.5])
