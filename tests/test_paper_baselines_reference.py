"""VisPruner, PruMerge, PruMerge+, TRIM, downsampling and pooling against plain loop references.

The references below were written from the baselines spec (sections 1-4) alone, without reading the
project's implementation of these methods. They are plain Python loops over lists, per sample, in float64; the
only array operations are a float64 cosine (Gram) matrix computed once per sample, row maxima of its blocks
(VisPruner's rounds) and a stable argsort of its rows (PruMerge's neighbours), to keep the suite fast.

Float32 against float64. A ranking can flip when two scores differ by less than float32 rounding.
  * PruMerge's neighbour sets and TRIM's top-k are one cut each. The reference reports the (relative) gap at
    every cut it makes. A mismatch with a gap below NEAR_TIE is a near-tie: inconclusive, counted and warned
    about. Any other mismatch fails.
  * VisPruner reorders its list after every round, so one flip changes all later rounds. A row passes if it
    equals the float64 reference, or the same reference replayed on the float32 cosine matrix (`x / ||x||`
    then a matmul, in torch). The second case is warned about. A row that equals neither is inconclusive only
    if the reference, on cosines jittered by 1e-6, reproduces it. Otherwise the row fails. VisPruner also runs
    on ±1 features (D = 64), whose cosines are exact in float32. There only the float64 reference counts, and
    the tie rules get exercised.

Interface: the reference calls PruMerge's kept-list order (the official code's) "official"; the method's option
value for it is "paper" (shared with litelvlm's --order). `encode_grid` takes one (rows, cols) tuple.

Ambiguities in the spec, and the reading taken here:
  * Ties (§0): "lower patch index (or the lower list position), using stable sorts". Top-k by a score ties to
    the lower patch index. VisPruner's ranking of A by m (§1.2 step 5.4) ties to the lower position in the
    current list. PruMerge's neighbour top-32 (§2.4.3) ties to the lower position in rest(i). Only the ±1
    VisPruner case has exact ties.
  * PruMerge+'s IQR count (§2.3) is batch-flattened in the official code. Here it is per image (the project's
    batch = per-sample-loop rule), in numpy float32 with np.percentile (linear), upper fence only.
  * PruMerge+ when k <= n (§2.7.3): all kept tokens are top-by-a, so their kind is "dominant" (the brief gives
    kinds only for the k > n case).
  * count_extra with budget 1: k = 0, so the selection is the synthetic token alone (PruMerge, TRIM).
  * TRIM "split" (§3.6): each text's own ranking is by its softmax p_t (the same order as by ∓s_t). The union
    comes first, then the "mean" ranking tops it up. Kind "kept" for every kept row.
  * Downsample/pool cell centre (§4): patch floor((i + 1/2) * rows / g_h), floor((j + 1/2) * cols / g_w). A centre
    on a patch boundary goes to the lower-right patch (as `uniform_indices` does).
  * The exact grid rule gives g_w > cols for a prime budget larger than the grid width (e.g. 191 on 24 x 24:
    1 x 191). Then cell centres repeat patch indices. The spec does not cover this, so those budgets are not
    tested here.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from litelvlm.selection import KIND_NAMES, TokenScores, select_tokens

KEPT, DOMINANT, MERGED = (KIND_NAMES.index(name) for name in ("kept", "dominant", "merged"))
GRIDS = {"24x24": (24, 24), "16x16": (16, 16)}
BUDGETS = {"24x24": (1, 7, 33, 64, 128, 192), "16x16": (1, 7, 33, 64, 128)}
NEAR_TIE = 1e-5  # float32 rankings may legitimately differ from float64 ones below this gap
ATOL = 1e-5
TEXTS = [["a red car on the left"], ["the small dog", "a man holding an umbrella"], ["sky", "tree", "road"]]


# ---------------------------------------------------------------------------------------------- references
def as_list(values) -> list[float]:
    return [float(v) for v in values.detach().cpu().double().tolist()]


def as_rows(values) -> np.ndarray:
    return values.detach().cpu().double().numpy()


def descending(values, items=None) -> list[int]:
    """Items (default: all positions) by value, highest first; ties to the lower item (stable)."""
    items = range(len(values)) if items is None else items
    return sorted(items, key=lambda i: (-values[i], i))


def unit_gram(rows: np.ndarray, eps: float | None) -> np.ndarray:
    """Cosine matrix of the rows in float64: x / ||x|| (or / max(||x||, eps)), then all dot products."""
    units = []
    for row in rows:
        norm = math.sqrt(float(np.dot(row, row)))
        units.append(row / (norm if eps is None else max(norm, eps)))
    units = np.stack(units)
    return units @ units.T


def vispruner_reference(attention, features, budget, important_ratio=0.5, cosine=None):
    """Spec §1.2 for one image. Returns (kept indices in raster order, kinds). `cosine` overrides the float64
    cosine matrix (to replay the method on float32 or jittered cosines)."""
    s = as_list(attention)
    if cosine is None:
        cosine = unit_gram(as_rows(features), eps=None)  # step 4: no eps
    t_imp = math.floor(budget * important_ratio)  # step 2
    t_div = budget - t_imp
    order = descending(s)  # step 3
    important, rest = order[:t_imp], order[t_imp:]
    while t_div > 0 and len(rest) > t_div:  # step 5
        r = min(8, len(rest) - t_div)
        group_a, group_b = rest[0::2], rest[1::2]
        m = cosine[np.ix_(group_a, group_b)].max(axis=1).tolist()  # 5.3: each A's best cosine to any B member
        ranked = descending(m)  # 5.4, ties to the lower list position
        rest = [group_a[p] for p in ranked[r:]] + group_b  # 5.5
    if t_div == 0:  # step 6: only I when T_div = 0
        rest = []
    assert len(important) + len(rest) == budget and not set(important) & set(rest)
    kept = sorted(important + rest)  # steps 6-7
    important = set(important)
    kinds = [DOMINANT if i in important else KEPT for i in kept]
    return kept, kinds


def float32_cosines(features) -> np.ndarray:
    """The cosine matrix as float32 torch computes it (x / ||x||, then a matmul), widened to float64."""
    units = features.float() / features.float().norm(dim=-1, keepdim=True)
    return as_rows(units @ units.T)


def vispruner_alternatives(attention, features, budget, important_ratio=0.5, draws=4):
    """Outcomes of the same reference on float64 cosines jittered by +-1e-6 (float32 rounding level). More than
    one outcome means that the float64 result hinges on near-ties that float32 cannot resolve."""
    exact = unit_gram(as_rows(features), eps=None)
    rng = np.random.default_rng(0)
    outcomes = set()
    for _ in range(draws):
        jittered = exact + rng.uniform(-1e-6, 1e-6, exact.shape)
        outcomes.add(tuple(vispruner_reference(attention, None, budget, important_ratio, jittered)[0]))
    return outcomes


def iqr_count(attention) -> int:
    """Spec §2.3: numpy float32, 25/75 percentiles (linear), count above Q3 + 1.5 IQR."""
    values = np.asarray(as_list(attention), dtype=np.float32)
    q1, q3 = np.percentile(values, 25), np.percentile(values, 75)
    return int((values > q3 + 1.5 * (q3 - q1)).sum())


def prumerge_kept(attention, budget, count_extra=True):
    """Spec §2.7 prumerge@T: top-k by a, descending, stable. Returns (kept list, kinds)."""
    k = budget - 1 if count_extra else budget
    kept = descending(as_list(attention))[:k]
    return kept, [KEPT] * len(kept)


def prumerge_plus_kept(attention, budget, count_extra=True):
    """Spec §2.7 prumerge_plus@T (the EffiVLM rule). Returns (kept list, kinds)."""
    a = as_list(attention)
    n_patches = len(a)
    k = budget - 1 if count_extra else budget
    n = max(1, iqr_count(attention))
    by_a = descending(a)
    if k > n:
        top = by_a[:n]
        step = max(1, n_patches // k)
        grid = [j for j in range(0, n_patches, step) if j not in top][: k - n]
        assert len(grid) == k - n
        return top + grid, [DOMINANT] * n + [KEPT] * (k - n)
    return by_a[:k], [DOMINANT] * k


def prumerge_merge(kept, attention, keys, features, neighbours=32):
    """Spec §2.4: merged rows y_i in kept-list order, the extra token e, e's index, and per-row neighbour gaps."""
    a = as_list(attention)
    h = as_rows(features)
    n = len(a)
    cosine = unit_gram(as_rows(keys), eps=1e-12)
    kept_set = set(kept)
    pruned = [j for j in range(n) if j not in kept_set]
    count = min(neighbours, n - 1)
    rows, gaps = [], []
    for i in kept:
        rest = [j for j in kept if j != i] + pruned
        c = cosine[i, rest]
        ranked = np.argsort(-c, kind="stable")  # descending; ties to the lower position in rest(i)
        gaps.append(c[ranked[count - 1]] - c[ranked[count]] if count < len(rest) else math.inf)
        y = h[i].copy()
        for position in ranked[:count]:
            j = rest[position]
            y = y + a[j] * h[j]
        rows.append(y)
    extra = np.zeros(h.shape[1])
    for j in pruned:
        extra = extra + a[j] * h[j]
    extra_index = descending(a, pruned)[0]
    return rows, extra, extra_index, gaps


def prumerge_reference(method, attention, keys, features, budget, count_extra=True, order="official"):
    """(indices, kinds, feature rows, per-row neighbour gaps) for one image, spec §2.4 + §2.7."""
    rule = prumerge_kept if method == "prumerge" else prumerge_plus_kept
    kept, kinds = rule(attention, budget, count_extra)
    rows, extra, extra_index, gaps = prumerge_merge(kept, attention, keys, features)
    entries = list(zip(kept, kinds, rows, gaps))
    if order == "raster":
        entries.sort(key=lambda entry: entry[0])
    entries.append((extra_index, MERGED, extra, math.inf))
    indices, kinds, rows, gaps = (list(column) for column in zip(*entries))
    return indices, kinds, rows, gaps


def relative_gap(higher, lower) -> float:
    return (higher - lower) / higher if higher > 0 else 0.0


def softmax(values) -> list[float]:
    top = max(values)
    exps = [math.exp(v - top) for v in values]
    total = math.fsum(exps)
    return [e / total for e in exps]


def trim_reference(
    similarity, text_mask, features, budget, polarity="code", text_mode="mean", count_extra=True
):
    """Spec §3 for one image: (indices, kinds, feature rows, smallest relative gap at the ranking cut-offs)."""
    sign = -1.0 if polarity == "code" else 1.0
    texts = [t for t in range(similarity.shape[0]) if text_mask is None or bool(text_mask[t])]
    probs = [softmax([sign * s for s in as_list(similarity[t])]) for t in texts]
    n = len(probs[0])
    mean = [math.fsum(p[j] for p in probs) / len(probs) for j in range(n)]
    k = budget - 1 if count_extra else budget
    ranking = descending(mean)
    cut_gaps = []
    if text_mode == "mean":
        chosen = set(ranking[:k])
        if 0 < k < n:
            cut_gaps.append(relative_gap(mean[ranking[k - 1]], mean[ranking[k]]))
    else:
        per = k // len(probs)
        chosen = set()
        for p in probs:  # each text's own top floor(k / #texts)
            own = descending(p)
            chosen.update(own[:per])
            if 0 < per < n:
                cut_gaps.append(relative_gap(p[own[per - 1]], p[own[per]]))
        top_up = [j for j in ranking if j not in chosen]  # then the "mean" ranking fills up to k
        missing = k - len(chosen)
        chosen.update(top_up[:missing])
        if 0 < missing < len(top_up):
            cut_gaps.append(relative_gap(mean[top_up[missing - 1]], mean[top_up[missing]]))
    kept = sorted(chosen)
    assert len(kept) == k
    h = as_rows(features)
    rest = [j for j in range(n) if j not in chosen]
    mean_token = np.zeros(h.shape[1])
    for j in rest:
        mean_token = mean_token + h[j]
    if rest:
        mean_token = mean_token / len(rest)
    indices = kept + [rest[0] if rest else 0]
    kinds = [KEPT] * k + [MERGED]
    rows = [h[j] for j in kept] + [mean_token]
    return indices, kinds, rows, min(cut_gaps, default=math.inf)


def grid_shape(budget, num_patches, rule="exact"):
    """Spec §4.2: exact = (largest divisor of T <= sqrt(T), T / it); square = round(sqrt(N) * sqrt(T / N))."""
    if rule == "exact":
        rows = max(d for d in range(1, budget + 1) if budget % d == 0 and d * d <= budget)
        return rows, budget // rows
    side = round(math.sqrt(num_patches) * math.sqrt(budget / num_patches))
    return side, side


def cell_centres(grid, cells):
    """The patch under the centre of each cell of a g_h x g_w grid laid over the patch grid, raster order."""
    rows, cols = grid
    g_h, g_w = cells
    return [
        ((2 * i + 1) * rows // (2 * g_h)) * cols + (2 * j + 1) * cols // (2 * g_w)
        for i in range(g_h)
        for j in range(g_w)
    ]


def pool_reference(features, grid, cells):
    """adaptive_avg_pool2d of the patch grid (spec §4.2 variant P): bins [floor(R i / g), ceil(R (i+1) / g))."""
    h = as_rows(features)
    rows, cols = grid
    g_h, g_w = cells
    out = []
    for i in range(g_h):
        r0, r1 = rows * i // g_h, -(-rows * (i + 1) // g_h)
        for j in range(g_w):
            c0, c1 = cols * j // g_w, -(-cols * (j + 1) // g_w)
            total = np.zeros(h.shape[1])
            for r in range(r0, r1):
                for c in range(c0, c1):
                    total = total + h[r * cols + c]
            out.append(total / ((r1 - r0) * (c1 - c0)))
    return out


# ---------------------------------------------------------------------------------------------- inputs
class FakeGridEncoder:
    """A deterministic stand-in for `encode_grid`: random rows seeded by (seed, rows, cols); records calls."""

    def __init__(self, batch, width, seed):
        self.batch, self.width, self.seed = batch, width, seed
        self.calls = []

    def __call__(self, rows, cols=None):
        if cols is None:  # called with one (rows, cols) tuple
            rows, cols = rows
        self.calls.append((rows, cols))
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + rows * 1009 + cols)
        return torch.randn(self.batch, rows * cols, self.width, generator=g)


def random_scores(grid, batch=3, texts=2, seed=0, width=16, key_width=24, attention_scale=2.0, sim_scale=3.0):
    rows, cols = grid
    n = rows * cols
    g = torch.Generator().manual_seed(seed)
    return TokenScores(
        batch,
        n,
        grid,
        similarity=torch.randn(batch, texts, n, generator=g) * sim_scale,
        context=torch.rand(batch, n, generator=g),
        cls_attention=torch.randn(batch, n + 1, generator=g).softmax(-1)[:, 1:],
        features=torch.randn(batch, n, width, generator=g),
        keys=torch.randn(batch, n, 8, generator=g),
        last_cls_attention=(torch.randn(batch, n + 1, generator=g) * attention_scale).softmax(-1)[:, 1:],
        last_keys=torch.randn(batch, n, key_width, generator=g),
        encode_grid=FakeGridEncoder(batch, width, seed),
    )


def sign_features(scores, seed, width=64):
    """±1 features: every row has norm 8, so cosines are exact in float32 and float64 alike (many exact ties)."""
    g = torch.Generator().manual_seed(1000 + seed)
    signs = torch.randint(0, 2, (scores.batch_size, scores.num_patches, width), generator=g) * 2 - 1
    return dataclasses.replace(scores, features=signs.float())


def one_sample(scores, row):
    changes = {"batch_size": 1}
    for field in dataclasses.fields(scores):
        value = getattr(scores, field.name)
        if isinstance(value, torch.Tensor):
            changes[field.name] = value[row : row + 1]
    if scores.encode_grid is not None:
        full = scores.encode_grid
        changes["encode_grid"] = lambda *cells: full(*cells)[row : row + 1]
    return dataclasses.replace(scores, **changes)


# ---------------------------------------------------------------------------------------------- comparison
class NearTies:
    """Counts inconclusive mismatches (float32 vs float64 near-ties); warns at the end of a test and fails when
    more than a quarter of the comparisons were inconclusive."""

    def __init__(self):
        self.cases = []
        self.float32 = []  # equal to the reference replayed on float32 cosines (not inconclusive)

    def add(self, label, detail):
        self.cases.append(f"{label} ({detail})")

    def report(self, checked):
        if self.float32:
            warnings.warn(
                f"{len(self.float32)} of {checked} comparisons differ from the float64 reference but equal it "
                f"replayed on float32 cosines: {'; '.join(self.float32[:3])}",
                stacklevel=2,
            )
        if self.cases:
            shown = "; ".join(self.cases[:5])
            warnings.warn(f"{len(self.cases)} of {checked} comparisons inconclusive: {shown}", stacklevel=2)
        assert len(self.cases) <= max(1, checked // 4), f"too many near-tie mismatches: {self.cases[:10]}"


def first_difference(got, expected):
    for position, (a, b) in enumerate(zip(got, expected)):
        if a != b:
            return f"position {position}: got {a}, expected {b} (lengths {len(got)} / {len(expected)})"
    return f"lengths {len(got)} / {len(expected)}"


def encode_grid(scores, cells):
    """`scores.encode_grid` at (rows, cols)."""
    return scores.encode_grid(cells)


ORDER_OPTION = {"official": "paper", "raster": "raster"}  # the reference's order name -> the method's value


def features_of(selection, scores, row):
    if selection.features is not None:
        return selection.features[row]
    return scores.features[row][selection.indices[row].to(scores.features.device)]


def assert_rows(got, expected_rows, label, loose=None):
    """Rows equal within ATOL + 1e-5 relative. `loose` maps row positions to near-tie gaps: a mismatch there is
    recorded as inconclusive in `loose['near']` instead of failing."""
    expected = torch.from_numpy(np.stack(expected_rows))
    got = got.detach().cpu().double()
    assert got.shape == expected.shape, (
        f"{label}: feature shape {tuple(got.shape)} != {tuple(expected.shape)}"
    )
    for position in range(expected.shape[0]):
        error = float((got[position] - expected[position]).abs().max())
        bound = ATOL + 1e-5 * float(expected[position].abs().max())
        if error <= bound:
            continue
        if loose and position in loose["gaps"]:
            loose["near"].add(f"{label} feature row {position}", f"gap {loose['gaps'][position]:.1e}")
            continue
        raise AssertionError(f"{label}: feature row {position} differs by {error:.3e} (bound {bound:.1e})")


def check_selection(selection, scores, row, indices, kinds, rows, label, gap=math.inf, near=None, loose=None):
    """Indices (exact order), kinds and feature rows of one sample; an index mismatch with gap < NEAR_TIE is a
    near-tie."""
    got = selection.indices[row].tolist()
    if got != indices:
        if gap < NEAR_TIE and near is not None:
            near.add(label, f"gap {gap:.1e}")
            return
        raise AssertionError(f"{label}: indices differ at {first_difference(got, indices)}; gap {gap:.2e}")
    got_kinds = selection.kinds[row].tolist()
    assert got_kinds == kinds, f"{label}: kinds differ at {first_difference(got_kinds, kinds)}"
    if rows is not None:
        assert_rows(features_of(selection, scores, row), rows, label, loose)


def check_vispruner(selection, scores, row, budget, ratio, label, near=None):
    """VisPruner row against the reference; with `near`, a mismatch that the reference replayed on float32-level
    perturbed cosines reproduces is a near-tie."""
    attention, features = scores.cls_attention[row], scores.features[row]
    indices, kinds = vispruner_reference(attention, features, budget, ratio)
    got = selection.indices[row].tolist()
    if got != indices and near is not None:
        replayed, replayed_kinds = vispruner_reference(
            attention, None, budget, ratio, float32_cosines(features)
        )
        if got == replayed:
            near.float32.append(label)
            indices, kinds = replayed, replayed_kinds
        else:
            outcomes = vispruner_alternatives(attention, features, budget, ratio)
            if tuple(got) in outcomes:
                near.add(label, f"{len(outcomes)} outcomes under float32-level perturbation")
                return
            raise AssertionError(
                f"{label}: indices differ at {first_difference(got, indices)}; neither the float32 replay nor "
                f"the {len(outcomes)} jittered outcome(s) give the implementation's "
                f"({len(set(got) ^ set(indices)) // 2} tokens swapped)"
            )
    rows = [as_rows(features)[i] for i in indices]
    check_selection(selection, scores, row, indices, kinds, rows, label)


# ---------------------------------------------------------------------------------------------- VisPruner
@pytest.mark.parametrize("ratio", [0.5, 0.25, 0.75, 1.0])
@pytest.mark.parametrize("grid_name", list(GRIDS))
def test_vispruner_matches_reference_on_exact_cosines(grid_name, ratio):
    """±1 features: float32 cosines are exact, so the kept sets must be identical (ties included)."""
    grid = GRIDS[grid_name]
    for seed in range(3) if ratio == 0.5 else range(1):  # the default ratio on 3 draws, the others on one
        scores = sign_features(random_scores(grid, seed=seed), seed)
        for budget in BUDGETS[grid_name]:
            selection = select_tokens("vispruner", scores, budget, important_ratio=ratio)
            assert selection.indices.shape == (3, budget)
            for row in range(3):
                label = f"vispruner exact {grid_name} rho={ratio} seed={seed} T={budget} row={row}"
                check_vispruner(selection, scores, row, budget, ratio, label)


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("grid_name", list(GRIDS))
def test_vispruner_matches_reference_on_random_features(grid_name, seed):
    scores = random_scores(GRIDS[grid_name], seed=seed)
    near, checked = NearTies(), 0
    for budget in BUDGETS[grid_name]:
        selection = select_tokens("vispruner", scores, budget)
        for row in range(3):
            label = f"vispruner {grid_name} seed={seed} T={budget} row={row}"
            check_vispruner(selection, scores, row, budget, 0.5, label, near)
            checked += 1
    near.report(checked)


def test_vispruner_constant_attention_ties_to_the_lowest_indices():
    scores = sign_features(random_scores(GRIDS["24x24"], seed=4), 4)
    scores.cls_attention = torch.full_like(scores.cls_attention, 1.0 / 577)
    for budget in (1, 7, 64, 128):
        selection = select_tokens("vispruner", scores, budget)
        for row in range(3):
            indices, kinds = vispruner_reference(scores.cls_attention[row], scores.features[row], budget)
            assert [i for i, kind in zip(indices, kinds) if kind == DOMINANT] == list(range(budget // 2))
            check_vispruner(selection, scores, row, budget, 0.5, f"vispruner ties T={budget} row={row}")


# ---------------------------------------------------------------------------------------------- PruMerge(+)
PRUMERGE_OPTIONS = [
    pytest.param(True, "official", range(2), id="extra-official"),
    pytest.param(True, "raster", range(1), id="extra-raster"),
    pytest.param(False, "official", range(1), id="noextra-official"),
    pytest.param(False, "raster", range(1), id="noextra-raster"),
]


def check_prumerge(method, scores, budget, count_extra, order, label, near):
    """All rows of one PruMerge(+) selection against the reference; returns the number of rows compared."""
    name = ORDER_OPTION[order]
    selection = select_tokens(method, scores, budget, count_extra=count_extra, order=name)
    rows_expected = budget if count_extra else budget + 1
    assert selection.indices.shape == (scores.batch_size, rows_expected), label
    assert selection.features is not None, f"{label}: merged features missing"
    for row in range(scores.batch_size):
        indices, kinds, rows, gaps = prumerge_reference(
            method,
            scores.last_cls_attention[row],
            scores.last_keys[row],
            scores.features[row],
            budget,
            count_extra,
            order,
        )
        loose = {"near": near, "gaps": {p: gap for p, gap in enumerate(gaps) if gap < NEAR_TIE}}
        check_selection(selection, scores, row, indices, kinds, rows, f"{label} row={row}", loose=loose)
    return scores.batch_size * rows_expected


@pytest.mark.parametrize(("count_extra", "order", "seeds"), PRUMERGE_OPTIONS)
@pytest.mark.parametrize("grid_name", list(GRIDS))
@pytest.mark.parametrize("method", ["prumerge", "prumerge_plus"])
def test_prumerge_matches_reference(method, grid_name, count_extra, order, seeds):
    grid = GRIDS[grid_name]
    near, checked = NearTies(), 0
    for seed in seeds:
        for scale in (2.0, 0.5):  # many / few IQR outliers (PruMerge+: k > n and k <= n both occur)
            scores = random_scores(grid, seed=seed, attention_scale=scale)
            for budget in BUDGETS[grid_name]:
                label = (
                    f"{method} {grid_name} extra={count_extra} {order} seed={seed} scale={scale} T={budget}"
                )
                checked += check_prumerge(method, scores, budget, count_extra, order, label, near)
    near.report(checked)


@pytest.mark.parametrize("method", ["prumerge", "prumerge_plus"])
def test_prumerge_budget_next_to_full(method):
    grid = GRIDS["16x16"]
    scores = random_scores(grid, seed=5)
    near = NearTies()
    for budget, count_extra in ((255, True), (255, False)):
        check_prumerge(method, scores, budget, count_extra, "official", f"{method} T={budget}", near)
    near.report(6 * 256)


@pytest.mark.parametrize("method", ["prumerge", "prumerge_plus"])
def test_prumerge_constant_attention_ties_to_the_lowest_indices(method):
    """All a equal: top-k is 0..k-1 (stable), no IQR outlier (n = max(1, 0) = 1), e's index the lowest non-kept."""
    scores = random_scores(GRIDS["24x24"], seed=6)
    scores.last_cls_attention = torch.full_like(scores.last_cls_attention, 1.0 / 577)
    near, checked = NearTies(), 0
    for budget in (1, 2, 7, 64):
        checked += check_prumerge(
            method, scores, budget, True, "official", f"{method} constant T={budget}", near
        )
        if method == "prumerge":
            selection = select_tokens(method, scores, budget)
            assert selection.indices[:, :-1].tolist() == [list(range(budget - 1))] * 3
            assert selection.indices[:, -1].tolist() == [budget - 1] * 3
    near.report(checked)


def test_prumerge_plus_grid_examples_from_the_spec():
    """Spec §2.7: grid steps 3 / 4 / 9 for k = 191 / 127 / 63 on 576 patches."""
    assert [max(1, 576 // k) for k in (191, 127, 63)] == [3, 4, 9]
    scores = random_scores(GRIDS["24x24"], seed=7, attention_scale=0.5)
    for budget, step in ((192, 3), (128, 4), (64, 9)):
        selection = select_tokens("prumerge_plus", scores, budget)
        for row in range(3):
            kinds = selection.kinds[row].tolist()
            grid_points = [i for i, kind in zip(selection.indices[row].tolist(), kinds) if kind == KEPT]
            assert grid_points and grid_points == sorted(grid_points)
            assert all(i % step == 0 for i in grid_points)


# ---------------------------------------------------------------------------------------------- TRIM
@pytest.mark.parametrize("count_extra", [True, False])
@pytest.mark.parametrize("text_mode", ["mean", "split"])
@pytest.mark.parametrize("polarity", ["code", "paper"])
@pytest.mark.parametrize("grid_name", list(GRIDS))
def test_trim_matches_reference(grid_name, polarity, text_mode, count_extra):
    grid = GRIDS[grid_name]
    near, checked = NearTies(), 0
    for seed, texts in ((0, 1), (1, 2), (2, 3)):
        scores = random_scores(grid, seed=seed, texts=texts)
        if texts == 3:  # row 0 uses 3 texts, row 1 one, row 2 two
            scores.text_mask = torch.tensor([[True, True, True], [True, False, False], [True, True, False]])
        for budget in BUDGETS[grid_name]:
            selection = select_tokens(
                "trim", scores, budget, polarity=polarity, text_mode=text_mode, count_extra=count_extra
            )
            assert selection.features is not None
            for row in range(3):
                mask = None if scores.text_mask is None else scores.text_mask[row]
                indices, kinds, rows, gap = trim_reference(
                    scores.similarity[row],
                    mask,
                    scores.features[row],
                    budget,
                    polarity,
                    text_mode,
                    count_extra,
                )
                label = f"trim {grid_name} {polarity} {text_mode} extra={count_extra} texts={texts} T={budget} row={row}"
                check_selection(selection, scores, row, indices, kinds, rows, label, gap, near)
                checked += 1
    near.report(checked)


@pytest.mark.parametrize("scale", [3.0, 30.0, 100.0])
def test_trim_single_text_is_bottom_k_raw_similarity(scale):
    """Spec §3.5: with one text and a fixed k, TRIM is the k lowest raw similarities + the mean token, whatever
    the scale of s (a float32 softmax that underflows to 0 must not turn the ranking into index order)."""
    scores = random_scores(GRIDS["24x24"], seed=8, texts=1, sim_scale=scale)
    for budget in (7, 64, 128, 192):
        selection = select_tokens("trim", scores, budget)
        for row in range(3):
            s = as_list(scores.similarity[row, 0])
            lowest = sorted(sorted(range(len(s)), key=lambda j: (s[j], j))[: budget - 1])
            got = selection.indices[row, :-1].tolist()
            assert got == lowest, f"scale {scale} T={budget} row={row}: {first_difference(got, lowest)}"
            highest = sorted(sorted(range(len(s)), key=lambda j: (-s[j], j))[: budget - 1])
            paper = select_tokens("trim", scores, budget, polarity="paper").indices[row, :-1].tolist()
            assert paper == highest, f"paper, scale {scale} T={budget}: {first_difference(paper, highest)}"


# ---------------------------------------------------------------------------------------------- downsample/pool
def test_grid_rule_examples_from_the_spec():
    assert [grid_shape(t, 576) for t in (192, 128, 64)] == [(12, 16), (8, 16), (8, 8)]
    assert [grid_shape(t, 576, "square") for t in (192, 128, 64)] == [(14, 14), (11, 11), (8, 8)]


@pytest.mark.parametrize("rule", ["exact", "square"])
@pytest.mark.parametrize("grid_name", list(GRIDS))
def test_downsample_and_pool_match_reference(grid_name, rule):
    grid = GRIDS[grid_name]
    n = grid[0] * grid[1]
    for seed in range(2):
        scores = random_scores(grid, seed=seed)
        for budget in BUDGETS[grid_name]:
            cells = grid_shape(budget, n, rule)
            indices = cell_centres(grid, cells)
            count = cells[0] * cells[1]
            encoder = scores.encode_grid
            encoder.calls.clear()
            down = select_tokens("downsample", scores, budget, grid=rule)
            label = f"downsample {grid_name} {rule} seed={seed} T={budget} cells={cells}"
            assert encoder.calls and set(encoder.calls) == {cells}, (
                f"{label}: encode_grid calls {encoder.calls}"
            )
            expected = encoder(*cells)
            pool = select_tokens("pool", scores, budget, grid=rule)
            for row in range(3):
                rows = [r.numpy() for r in expected[row].double()]
                check_selection(down, scores, row, indices, [MERGED] * count, rows, label)
                pooled = pool_reference(scores.features[row], grid, cells)
                check_selection(
                    pool, scores, row, indices, [MERGED] * count, pooled, label.replace("down", "pool")
                )


def test_pool_equals_torch_adaptive_avg_pool():
    """The loop reference against torch's own adaptive_avg_pool2d (checks the reference's bins)."""
    scores = random_scores(GRIDS["24x24"], seed=3)
    for cells in ((12, 16), (8, 16), (7, 9), (3, 11), (1, 7), (14, 14)):
        image = scores.features[0].T.reshape(1, -1, 24, 24).double()
        torch_rows = F.adaptive_avg_pool2d(image, cells).flatten(2)[0].T
        assert_rows(torch_rows, pool_reference(scores.features[0], (24, 24), cells), f"pool {cells}")


# ---------------------------------------------------------------------------------------------- properties
METHOD_CASES = [
    pytest.param("vispruner", {}, id="vispruner"),
    pytest.param("vispruner", {"important_ratio": 0.75}, id="vispruner-0.75"),
    pytest.param("prumerge", {}, id="prumerge"),
    pytest.param("prumerge", {"count_extra": False, "order": "raster"}, id="prumerge-noextra-raster"),
    pytest.param("prumerge", {"count_extra": False}, id="prumerge-noextra"),
    pytest.param("prumerge_plus", {}, id="prumerge_plus"),
    pytest.param(
        "prumerge_plus", {"count_extra": False, "order": "raster"}, id="prumerge_plus-noextra-raster"
    ),
    pytest.param("trim", {}, id="trim"),
    pytest.param("trim", {"polarity": "paper", "text_mode": "split"}, id="trim-paper-split"),
    pytest.param("downsample", {}, id="downsample"),
    pytest.param("downsample", {"grid": "square"}, id="downsample-square"),
    pytest.param("pool", {}, id="pool"),
    pytest.param("pool", {"grid": "square"}, id="pool-square"),
]


@pytest.mark.parametrize(("method", "options"), METHOD_CASES)
def test_batch_equals_per_sample_loop(method, options):
    scores = random_scores(GRIDS["24x24"], seed=9, texts=3)
    scores.text_mask = torch.tensor([[True, True, True], [True, False, False], [True, True, False]])
    for budget in (1, 33, 128):
        batched = select_tokens(method, scores, budget, **options)
        for row in range(3):
            alone = select_tokens(method, one_sample(scores, row), budget, **options)
            assert torch.equal(batched.indices[row], alone.indices[0]), f"{method} T={budget} row={row}"
            assert torch.equal(batched.kinds[row], alone.kinds[0])
            assert (batched.features is None) == (alone.features is None)
            if batched.features is not None:
                torch.testing.assert_close(batched.features[row], alone.features[0])


@pytest.mark.parametrize(("method", "options"), METHOD_CASES)
def test_deterministic_and_full_budget_identity(method, options):
    for grid_name, grid in GRIDS.items():
        scores = random_scores(grid, seed=10)
        n = grid[0] * grid[1]
        first = select_tokens(method, scores, 63, **options)
        second = select_tokens(method, scores, 63, **options)
        assert torch.equal(first.indices, second.indices) and torch.equal(first.kinds, second.kinds)
        if first.features is not None:
            assert torch.equal(first.features, second.features)
        for budget in (n, n + 5):
            full = select_tokens(method, scores, budget, **options)
            assert torch.equal(full.indices, torch.arange(n).expand(3, -1)), (
                f"{method} {grid_name} T={budget}"
            )
            assert full.features is None and set(full.kinds.flatten().tolist()) == {KEPT}


# ---------------------------------------------------------------------------------------------- tiny CLIP
@pytest.fixture(scope="module")
def tiny_clip_224_dir(tmp_path_factory):
    from litelvlm.testing import make_tiny_clip

    return make_tiny_clip(tmp_path_factory.mktemp("tiny-clip-224"), seed=1, image_size=224)


@pytest.fixture(scope="module", params=["24x24", "16x16"])
def clip_case(request, tiny_clip_dir, tiny_clip_224_dir, images):
    """(grid name, checkpoint directory, ClipScorer with the three images set)."""
    from litelvlm.scoring import ClipScorer

    directory = tiny_clip_dir if request.param == "24x24" else tiny_clip_224_dir
    scorer = ClipScorer.from_pretrained(directory)
    scorer.set_image(images)
    assert scorer.grid == GRIDS[request.param]
    return request.param, directory, scorer


def reference_forward(directory, pixels):
    """transformers' own forward (eager attention) with hooks on the last layer's q_proj / k_proj."""
    from transformers import CLIPModel

    model = CLIPModel.from_pretrained(directory, attn_implementation="eager").eval()
    captured = {}
    attention = model.vision_model.encoder.layers[-1].self_attn
    hooks = [
        getattr(attention, name).register_forward_hook(
            lambda _m, _i, out, name=name: captured.__setitem__(name, out.detach())
        )
        for name in ("q_proj", "k_proj")
    ]
    try:
        with torch.no_grad():
            out = model.vision_model(pixel_values=pixels, output_hidden_states=True, output_attentions=True)
    finally:
        for hook in hooks:
            hook.remove()
    return out, captured["q_proj"], captured["k_proj"]


def test_new_score_fields_match_the_hooked_forward(clip_case, images):
    """Spec §2.2: a = softmax over 1+N keys of q_CLS . k / sqrt(D), last layer, patch columns; K = raw k_proj."""
    _, directory, scorer = clip_case
    scores = scorer.score(needs={"last_cls_attention", "last_keys", "features", "cls_attention"})
    out, q, k = reference_forward(directory, scorer.pixel_values(images))
    q, k = q.double(), k.double()
    width = q.shape[-1]
    for row in range(len(images)):
        logits = [float(torch.dot(q[row, 0], k[row, j])) / math.sqrt(width) for j in range(k.shape[1])]
        expected = softmax(logits)[1:]
        got = as_list(scores.last_cls_attention[row])
        error = max(abs(a - b) for a, b in zip(got, expected))
        assert error < 1e-6 * max(expected) + 1e-9, f"last_cls_attention row {row}: max error {error:.2e}"
    torch.testing.assert_close(scores.last_keys.double(), k[:, 1:], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(scores.features, out.hidden_states[-2][:, 1:], atol=1e-5, rtol=1e-5)
    vispruner_attention = out.attentions[-2][:, :, 0, 1:].mean(1)  # spec §1.2: select layer, head mean
    torch.testing.assert_close(scores.cls_attention, vispruner_attention, atol=1e-6, rtol=1e-5)


def clip_scores(scorer, method):
    texts = TEXTS if method == "trim" else ()
    return scorer.score(texts, needs=method, shared_texts=True)


def test_vispruner_on_tiny_clip(clip_case):
    grid_name, _, scorer = clip_case
    scores = clip_scores(scorer, "vispruner")
    near, checked = NearTies(), 0
    for ratio in (0.5, 0.75):
        for budget in BUDGETS[grid_name]:
            selection = select_tokens("vispruner", scores, budget, important_ratio=ratio)
            for row in range(3):
                label = f"vispruner clip {grid_name} rho={ratio} T={budget} row={row}"
                check_vispruner(selection, scores, row, budget, ratio, label, near)
                checked += 1
    near.report(checked)


@pytest.mark.parametrize("method", ["prumerge", "prumerge_plus"])
def test_prumerge_on_tiny_clip(clip_case, method):
    grid_name, _, scorer = clip_case
    scores = clip_scores(scorer, method)
    near, checked = NearTies(), 0
    for count_extra, order in ((True, "official"), (False, "raster")):
        for budget in BUDGETS[grid_name]:
            label = f"{method} clip {grid_name} extra={count_extra} {order} T={budget}"
            checked += check_prumerge(method, scores, budget, count_extra, order, label, near)
    near.report(checked)


def test_trim_on_tiny_clip(clip_case):
    grid_name, _, scorer = clip_case
    scores = clip_scores(scorer, "trim")
    assert scores.text_mask is not None  # 1, 2 and 3 texts
    near, checked = NearTies(), 0
    for polarity in ("code", "paper"):
        for text_mode in ("mean", "split"):
            for budget in BUDGETS[grid_name]:
                selection = select_tokens("trim", scores, budget, polarity=polarity, text_mode=text_mode)
                for row in range(3):
                    indices, kinds, rows, gap = trim_reference(
                        scores.similarity[row],
                        scores.text_mask[row],
                        scores.features[row],
                        budget,
                        polarity,
                        text_mode,
                    )
                    label = f"trim clip {grid_name} {polarity} {text_mode} T={budget} row={row}"
                    check_selection(selection, scores, row, indices, kinds, rows, label, gap, near)
                    checked += 1
    near.report(checked)


@functools.cache
def clip_vision_model(directory):
    from transformers import CLIPVisionModel

    return CLIPVisionModel.from_pretrained(directory).eval()


def independent_grid_features(directory, pixels, cells):
    """Spec §4.2 variant R: the preprocessed pixels resized (bicubic, antialias) to 14 g_h x 14 g_w, then
    transformers' CLIPVisionModel with interpolated position embeddings; hidden_states[-2] without CLS."""
    model = clip_vision_model(str(directory))
    patch = model.config.patch_size
    size = (patch * cells[0], patch * cells[1])
    resized = F.interpolate(pixels, size=size, mode="bicubic", align_corners=False, antialias=True)
    with torch.no_grad():
        out = model(pixel_values=resized, interpolate_pos_encoding=True, output_hidden_states=True)
    return out.hidden_states[-2][:, 1:]


def test_encode_grid_matches_clip_vision_model_forward(clip_case, images):
    grid_name, directory, scorer = clip_case
    scores = clip_scores(scorer, "downsample")
    pixels = scorer.pixel_values(images)
    for cells in ((8, 8), (8, 16), (7, 9), (3, 11), (1, 7), (1, 1), (12, 16), (14, 14)):
        if cells[0] > GRIDS[grid_name][0] or cells[1] > GRIDS[grid_name][1]:
            continue
        got = encode_grid(scores, cells)
        expected = independent_grid_features(directory, pixels, cells)
        assert got.shape == expected.shape, (
            f"{grid_name} {cells}: {tuple(got.shape)} != {tuple(expected.shape)}"
        )
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5, msg=lambda m, c=cells: f"{c}: {m}")
    native = encode_grid(scores, GRIDS[grid_name])  # no resize: the select-layer features themselves
    torch.testing.assert_close(native, scorer.features.patch_features, atol=1e-5, rtol=1e-5)


def test_downsample_and_pool_on_tiny_clip(clip_case, images):
    grid_name, directory, scorer = clip_case
    grid = GRIDS[grid_name]
    n = grid[0] * grid[1]
    scores = clip_scores(scorer, "downsample")
    pool_scores = clip_scores(scorer, "pool")
    pixels = scorer.pixel_values(images)
    for rule in ("exact", "square"):
        for budget in (7, 33, 64, 128):
            cells = grid_shape(budget, n, rule)
            count = cells[0] * cells[1]
            indices = cell_centres(grid, cells)
            label = f"downsample clip {grid_name} {rule} T={budget}"
            down = select_tokens("downsample", scores, budget, grid=rule)
            expected = independent_grid_features(directory, pixels, cells)
            pool = select_tokens("pool", pool_scores, budget, grid=rule)
            for row in range(3):
                rows = [r.numpy() for r in expected[row].double()]
                check_selection(down, scores, row, indices, [MERGED] * count, rows, label)
                pooled = pool_reference(pool_scores.features[row], grid, cells)
                check_selection(pool, pool_scores, row, indices, [MERGED] * count, pooled, label + " pool")
