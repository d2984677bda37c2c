"""Token diagnostics on CLIP alone (no LLM): do the kept tokens cover the referred object, and is CLIP's
similarity really *lower* inside the referent? This is the paper's core observation, measured on any data set.

For each expression the ground-truth mask is mapped onto CLIP's patch grid (through the same resize and centre
crop as the image); a patch belongs to the referent when at least half of it is foreground. Expressions whose
referent covers no patch (too small, or outside the crop) are counted but left out of the rates.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
from PIL import Image
from tqdm import tqdm

from ..images import CropGeometry
from ..prompts import clip_texts
from ..selection import get_method, select_tokens
from .protocols import plan_image

REFERENT_COVERAGE = 0.5


def referent_patches(mask: np.ndarray, geometry: CropGeometry, grid: tuple[int, int]) -> np.ndarray:
    """Share of each patch covered by the mask [H, W] -> bool [rows * cols] (coverage >= 0.5)."""
    resized = Image.fromarray((mask == 1).astype(np.uint8) * 255).resize(
        (geometry.resized_width, geometry.resized_height), Image.Resampling.BILINEAR
    )
    canvas = np.zeros((geometry.crop_height, geometry.crop_width), np.float32)
    array = np.asarray(resized, np.float32) / 255.0
    top, left = geometry.crop_top, geometry.crop_left
    src_y, dst_y, src_x, dst_x = max(top, 0), max(-top, 0), max(left, 0), max(-left, 0)
    h = min(geometry.crop_height - dst_y, array.shape[0] - src_y)
    w = min(geometry.crop_width - dst_x, array.shape[1] - src_x)
    canvas[dst_y : dst_y + h, dst_x : dst_x + w] = array[src_y : src_y + h, src_x : src_x + w]
    rows, cols = grid
    cells = canvas[: rows * (geometry.crop_height // rows), : cols * (geometry.crop_width // cols)]
    coverage = cells.reshape(rows, cells.shape[0] // rows, cols, cells.shape[1] // cols).mean(axis=(1, 3))
    return coverage.reshape(-1) >= REFERENT_COVERAGE


def low_similarity_auc(similarity: np.ndarray, inside: np.ndarray) -> float:
    """P(similarity of a referent patch < similarity of a background patch), ties counting half
    (the Mann-Whitney AUC of "low similarity => inside the referent")."""
    values_in, values_out = similarity[inside], similarity[~inside]
    ranks = _average_ranks(np.concatenate([values_in, values_out]))
    rank_sum = ranks[: len(values_in)].sum()
    greater = rank_sum - len(values_in) * (len(values_in) + 1) / 2  # pairs where inside > outside
    return float(1.0 - greater / (len(values_in) * len(values_out)))


def _average_ranks(values: np.ndarray) -> np.ndarray:
    order = np.argsort(values, kind="stable")
    ranks = np.empty(len(values), np.float64)
    ranks[order] = np.arange(1, len(values) + 1)
    unique, inverse = np.unique(values, return_inverse=True)
    sums = np.bincount(inverse, weights=ranks)
    counts = np.bincount(inverse)
    return (sums / counts)[inverse]


def analysis_options(method: str, seed: int) -> dict:
    """The options a method runs with in the analysis: raster order (recall does not depend on order)."""
    return get_method(method).supported(order="raster", seed=seed)


def analyze(scorer, dataset, config: dict, progress: bool = True) -> dict:
    """Referent recall/precision per method and budget, and similarity statistics, over a data set."""
    methods, budgets = config["methods"], config["budgets"]
    images = dataset.images[: config["limit"]] if config.get("limit") else list(dataset.images)
    recall, precision = defaultdict(list), defaultdict(list)
    inside_means, outside_means, aucs = [], [], []
    invisible = 0
    for image in tqdm(images, unit="img", disable=not progress, desc="analyze"):
        picture = dataset.load_image(image) if hasattr(dataset, "load_image") else image.path
        features = scorer.set_image(picture)
        geometry = scorer.preprocess.geometry(image.width, image.height)
        plan = plan_image(image, config["protocol"], config["seed"])
        groups = [
            plan.queries[i : i + plan.turns_per_conversation]
            for i in range(0, len(plan.queries), plan.turns_per_conversation)
        ]
        for group in groups:
            texts = clip_texts([q.sentence for q in group], config.get("text_source", "questions"),
                               [q.question_template for q in group])  # fmt: skip
            regions = [referent_patches(dataset.mask(q.referent), geometry, scorer.grid) for q in group]
            scores = scorer.score(texts, features=features)
            for text_index, region in enumerate(regions):
                if not region.any() or region.all():
                    invisible += 1
                    continue
                similarity = scores.similarity[0, text_index].cpu().numpy()
                inside_means.append(float(similarity[region].mean()))
                outside_means.append(float(similarity[~region].mean()))
                aucs.append(low_similarity_auc(similarity, region))
            for method in methods:
                for budget in budgets:
                    options = analysis_options(method, config["seed"])
                    kept = select_tokens(method, scores, budget, **options).indices[0].cpu().numpy()
                    kept_mask = np.zeros(scores.num_patches, bool)
                    kept_mask[kept] = True
                    for region in regions:
                        if region.any() and not region.all():
                            hits = int((kept_mask & region).sum())
                            recall[(method, budget)].append(hits / int(region.sum()))
                            precision[(method, budget)].append(hits / len(kept))
    rows = [
        {
            "method": method,
            "budget": budget,
            "referent_recall": _mean(recall[(method, budget)]),
            "referent_precision": _mean(precision[(method, budget)]),
            "count": len(recall[(method, budget)]),
        }
        for method in methods
        for budget in budgets
    ]
    similarity = {
        "mean_inside": _mean(inside_means),
        "mean_outside": _mean(outside_means),
        "share_lower_inside": _mean([float(i < o) for i, o in zip(inside_means, outside_means)]),
        "auc_low_similarity_inside": _mean(aucs),
        "expressions": len(aucs),
        "not_visible_to_clip": invisible,
    }
    return {"selection": rows, "similarity": similarity, "aucs": aucs, "config": config}


def _mean(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None


def plot_analysis(result: dict) -> bytes:
    """PNG. Left: referent recall against budget per method. Right: the per-expression AUC histogram."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..io import figure_png

    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4), dpi=110)
    methods = list(dict.fromkeys(row["method"] for row in result["selection"]))
    for method in methods:
        points = sorted((r["budget"], 100 * r["referent_recall"]) for r in result["selection"]
                        if r["method"] == method and r["referent_recall"] is not None)  # fmt: skip
        if points:
            left.plot(*zip(*points), marker="o", label=method)
    left.set_xscale("log", base=2)
    left.set_xlabel("visual tokens kept")
    left.set_ylabel("referent recall (%)")
    left.grid(alpha=0.3)
    left.legend(fontsize=8)
    right.hist(result["aucs"], bins=20, range=(0, 1), color="tab:orange")
    right.axvline(0.5, color="black", lw=1, ls="--")
    stats = result["similarity"]
    auc = stats["auc_low_similarity_inside"]
    right.set_title(
        f"AUC(low similarity => referent) = {auc:.3f}" if auc is not None else "no visible referents"
    )
    right.set_xlabel("per-expression AUC")
    right.set_ylabel("expressions")
    figure.tight_layout()
    return figure_png(figure)


def markdown(result: dict) -> str:
    stats = result["similarity"]
    lines = [
        "# Token diagnostics (CLIP only)",
        "",
        f"Expressions with a referent visible to CLIP: {stats['expressions']} "
        f"(not visible: {stats['not_visible_to_clip']}).",
        "",
        "| statistic | value |",
        "|---|---|",
        f"| mean similarity inside the referent | {_fmt(stats['mean_inside'])} |",
        f"| mean similarity outside | {_fmt(stats['mean_outside'])} |",
        f"| share of expressions with lower similarity inside | {_fmt(stats['share_lower_inside'])} |",
        f"| AUC of low similarity => inside the referent | {_fmt(stats['auc_low_similarity_inside'])} |",
        "",
        "| method | budget | referent recall | referent precision |",
        "|---|---|---|---|",
    ]
    for row in result["selection"]:
        lines.append(f"| {row['method']} | {row['budget']} | {_fmt(row['referent_recall'])} | "
                     f"{_fmt(row['referent_precision'])} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def _fmt(value) -> str:
    return "—" if value is None else f"{value:.4f}"
