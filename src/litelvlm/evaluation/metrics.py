"""Referring-segmentation metrics exactly as GLaMM/LISA compute them (docs/evaluation.md): cIoU, gIoU, precision@X.

The reference counts pixels with `intersectionAndUnionGPU(pred, gt, K=2, ignore_index=255)`, i.e.
`torch.histc(bins=2, min=0, max=1)` of the prediction, of the ground truth and of their agreement. `histc` drops
values outside [0, 1] silently, so a ground-truth pixel of value 2 (two polygons of one object overlapping,
see `litelvlm.data.decode_segmentation`) is in neither the target area nor the intersection, while the
prediction at that pixel still counts in the prediction area (and so in the union). Ground truth 255 is the
ignore label: the reference overwrites the prediction there with 255, so those pixels count nowhere.
Only the foreground class (c = 1) is reported.
"""

from __future__ import annotations

from collections.abc import Iterable
from fractions import Fraction

import numpy as np

from ..errors import LiteLVLMError

IGNORE_LABEL = 255
PRECISION_THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.9)


def intersection_union(prediction: np.ndarray, ground_truth: np.ndarray) -> tuple[int, int]:
    """Foreground (I, U) pixel counts of one prediction against one ground truth.

    prediction: bool or 0/1 [H, W] (threshold logits first: `logits > 0`).
    ground_truth: integer [H, W], 1 = object; other nonzero values are handled as the reference's histogram does
    (module docstring): 2..254 count in neither target nor intersection, 255 is ignored entirely.
    Returns python ints (intersection, union).
    """
    prediction = np.asarray(prediction)
    ground_truth = np.asarray(ground_truth)
    if prediction.shape != ground_truth.shape or prediction.ndim != 2:
        raise LiteLVLMError(
            f"prediction {prediction.shape} and ground truth {ground_truth.shape} must be 2-D masks of one size; "
            "resize the prediction to the image's original size."
        )
    if prediction.dtype != bool:
        if not np.isin(prediction, (0, 1)).all():
            raise LiteLVLMError(
                f"prediction of dtype {prediction.dtype} has values other than 0 and 1; pass a boolean mask "
                "(e.g. logits > 0)."
            )
        prediction = prediction.astype(bool)
    target = ground_truth == 1
    counted = ground_truth != IGNORE_LABEL  # the reference sets pred to 255 there, out of histc's range
    intersection = int(np.count_nonzero(prediction & target))
    prediction_area = int(np.count_nonzero(prediction & counted))
    target_area = int(np.count_nonzero(target))
    return intersection, prediction_area + target_area - intersection


def pair_iou(intersection: float, union: float) -> float:
    """The reference's per-pair IoU: I / (U + 1e-5), plus 1 when U == 0 (an empty prediction of an empty
    ground truth scores 1)."""
    return intersection / (union + 1e-5) + (1.0 if union == 0 else 0.0)


def passes(intersection: int, union: int, threshold: float) -> bool:
    """Whether the pair's exact IoU I/U is >= threshold (U == 0 counts as IoU 1).

    Compared in exact rational arithmetic, so a pair exactly at a threshold (7/10 at 0.7) passes; the 1e-5 of
    `pair_iou` would make it fail."""
    if union == 0:
        return True
    limit = Fraction(str(threshold))  # "0.7" -> 7/10 exactly, not the binary float
    return intersection * limit.denominator >= limit.numerator * union


def summarize(pairs: Iterable[tuple[int, int]], thresholds: Iterable[float] = PRECISION_THRESHOLDS) -> dict:
    """Aggregate (I, U) pairs into the reported metrics, all as fractions in [0, 1].

    ciou: sum I / (sum U + 1e-10) (cumulative IoU, the headline number).
    giou: mean of `pair_iou` over pairs (the reference divides the sum by count + 1e-5; that 1e-5 is dropped).
    precision: {"0.5": share of pairs with IoU >= 0.5, ...}: ">=" as in LAVT/ReLA, on the exact I/U.
    count: number of pairs. With no pairs, count is 0 and every rate is None.
    """
    pairs = [(int(i), int(u)) for i, u in pairs]
    thresholds = tuple(thresholds)
    if not pairs:
        return {"ciou": None, "giou": None, "precision": {str(t): None for t in thresholds}, "count": 0}
    total_intersection = sum(i for i, _ in pairs)
    total_union = sum(u for _, u in pairs)
    return {
        "ciou": total_intersection / (total_union + 1e-10),
        "giou": sum(pair_iou(i, u) for i, u in pairs) / len(pairs),
        "precision": {str(t): sum(passes(i, u, t) for i, u in pairs) / len(pairs) for t in thresholds},
        "count": len(pairs),
    }
