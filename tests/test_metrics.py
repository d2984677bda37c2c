"""Metrics against naive references: LISA/GLaMM's torch.histc `intersectionAndUnionGPU` and per-pixel loops."""

import numpy as np
import pytest
import torch

from litelvlm.errors import LiteLVLMError
from litelvlm.evaluation.metrics import (
    PRECISION_THRESHOLDS,
    intersection_union,
    pair_iou,
    summarize,
)


def histc_reference(prediction, ground_truth, num_classes=2, ignore_index=255):
    """The reference code's intersectionAndUnionGPU (float tensors: CPU histc has no integer kernel)."""
    output = torch.as_tensor(prediction).float().reshape(-1).clone()
    target = torch.as_tensor(ground_truth).float().reshape(-1)
    output[target == ignore_index] = ignore_index
    intersection = output[output == target]
    area_intersection = torch.histc(intersection, bins=num_classes, min=0, max=num_classes - 1)
    area_output = torch.histc(output, bins=num_classes, min=0, max=num_classes - 1)
    area_target = torch.histc(target, bins=num_classes, min=0, max=num_classes - 1)
    area_union = area_output + area_target - area_intersection
    return int(area_intersection[1]), int(area_union[1])


def loop_reference(prediction, ground_truth):
    """Per-pixel loop: foreground intersection and union with histc's dropping of out-of-range values."""
    intersection = prediction_area = target_area = 0
    for p, g in zip(np.asarray(prediction).ravel().tolist(), np.asarray(ground_truth).ravel().tolist()):
        if g == 255:
            continue
        prediction_area += p == 1
        target_area += g == 1
        intersection += p == 1 and g == 1
    return intersection, prediction_area + target_area - intersection


def random_pair(rng, height=23, width=31, values=(0, 1, 2)):
    prediction = rng.random((height, width)) < rng.random()
    ground_truth = rng.choice(values, size=(height, width)).astype(np.uint8)
    return prediction, ground_truth


@pytest.mark.parametrize("seed", range(20))
def test_intersection_union_matches_histc_reference(seed):
    rng = np.random.default_rng(seed)
    values = (0, 1, 2) if seed % 2 else (0, 1, 2, 3, 255)
    prediction, ground_truth = random_pair(rng, values=values)
    result = intersection_union(prediction, ground_truth)
    assert result == histc_reference(prediction, ground_truth) == loop_reference(prediction, ground_truth)
    assert all(type(v) is int for v in result)


def test_ground_truth_two_counts_in_prediction_area_only():
    prediction = np.array([[1, 1, 0, 1]], dtype=bool)
    ground_truth = np.array([[1, 2, 2, 0]], dtype=np.uint8)
    # I = 1 (first pixel); U = |pred| 3 + |gt == 1| 1 - 1: the predicted 2-pixel stays in the union.
    assert intersection_union(prediction, ground_truth) == (1, 3) == histc_reference(prediction, ground_truth)


def test_ignore_label_counts_nowhere():
    prediction = np.array([[1, 1, 0]], dtype=np.uint8)
    ground_truth = np.array([[1, 255, 255]], dtype=np.uint8)
    assert intersection_union(prediction, ground_truth) == (1, 1) == histc_reference(prediction, ground_truth)


def test_empty_and_full_pairs():
    empty = np.zeros((5, 7), dtype=bool)
    full = np.ones((5, 7), dtype=bool)
    assert intersection_union(empty, empty.astype(np.uint8)) == (0, 0)
    assert intersection_union(full, full.astype(np.uint8)) == (35, 35)
    assert intersection_union(full, empty.astype(np.uint8)) == (0, 35)
    assert intersection_union(empty, full.astype(np.uint8)) == (0, 35)
    assert pair_iou(0, 0) == 1.0  # empty vs empty scores 1
    assert pair_iou(35, 35) == pytest.approx(35 / (35 + 1e-5))
    assert pair_iou(0, 35) == 0.0


def test_prediction_dtypes_and_errors():
    ground_truth = np.array([[1, 0], [1, 1]], dtype=np.uint8)
    as_bool = np.array([[True, False], [False, True]])
    for prediction in (as_bool, as_bool.astype(np.int32), as_bool.astype(np.float32)):
        assert intersection_union(prediction, ground_truth) == (2, 3)
    with pytest.raises(LiteLVLMError, match="values other than 0 and 1"):
        intersection_union(np.array([[0.3, -2.0], [1.0, 0.0]]), ground_truth)
    with pytest.raises(LiteLVLMError, match=r"\(2, 3\)"):
        intersection_union(np.zeros((2, 3), bool), ground_truth)


def test_summarize_matches_brute_force():
    rng = np.random.default_rng(0)
    pairs, ious, total_i, total_u = [], [], 0, 0
    for _ in range(200):
        prediction, ground_truth = random_pair(rng, 9, 11)
        i, u = histc_reference(prediction, ground_truth)
        pairs.append(intersection_union(prediction, ground_truth))
        total_i, total_u = total_i + i, total_u + u
        ious.append(i / (u + 1e-5) + (1.0 if u == 0 else 0.0))
    pairs += [(0, 0), (12, 12)]
    ious += [1.0, 12 / (12 + 1e-5)]
    total_i, total_u = total_i + 12, total_u + 12
    summary = summarize(iter(pairs))
    assert summary["count"] == len(pairs)
    assert summary["ciou"] == pytest.approx(total_i / (total_u + 1e-10), rel=1e-12)
    assert summary["giou"] == pytest.approx(sum(ious) / len(ious), rel=1e-12)
    for threshold in PRECISION_THRESHOLDS:
        exact = [1.0 if u == 0 else i / u for i, u in pairs]
        expected = sum(iou >= threshold - 1e-12 for iou in exact) / len(pairs)
        assert summary["precision"][str(threshold)] == pytest.approx(expected)


def test_precision_boundaries_use_greater_or_equal():
    # IoU exactly at each threshold passes it; one pixel less fails it.
    at = [(5, 10), (6, 10), (7, 10), (8, 10), (9, 10)]
    below = [(499, 1000), (599, 1000), (699, 1000), (799, 1000), (899, 1000)]
    summary = summarize(at)
    assert summary["precision"] == {"0.5": 1.0, "0.6": 0.8, "0.7": 0.6, "0.8": 0.4, "0.9": 0.2}
    summary = summarize(below)
    assert summary["precision"] == {"0.5": 0.8, "0.6": 0.6, "0.7": 0.4, "0.8": 0.2, "0.9": 0.0}
    assert summarize([(0, 0)])["precision"]["0.9"] == 1.0  # empty vs empty is a hit
    assert summarize([(3, 10)], thresholds=(0.3,))["precision"] == {"0.3": 1.0}


def test_summarize_empty_input():
    summary = summarize([])
    assert summary == {
        "ciou": None,
        "giou": None,
        "precision": {str(t): None for t in PRECISION_THRESHOLDS},
        "count": 0,
    }
