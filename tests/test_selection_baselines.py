"""Before-LLM baselines against plain references, and properties every method must have."""

import dataclasses
import itertools

import pytest
import torch

from conftest import device_tolerance
from litelvlm.selection import KIND_NAMES, TokenScores, list_methods, select_tokens
from litelvlm.selection.baselines import uniform_indices
from litelvlm.selection.visionzip import visionzip_split
from reference import MADE_TOKENS, divprune_reference, pooled_grid_encoder, visionzip_reference

N, GRID = 144, (12, 12)


def random_scores(batch=3, texts=2, seed=0, width=16):
    g = torch.Generator().manual_seed(seed)
    return TokenScores(
        batch,
        N,
        GRID,
        similarity=torch.randn(batch, texts, N, generator=g),
        context=torch.rand(batch, N, generator=g),
        cls_attention=torch.rand(batch, N, generator=g),
        features=(features := torch.randn(batch, N, width, generator=g)),
        keys=torch.randn(batch, N, 8, generator=g),
        last_cls_attention=torch.rand(batch, N, generator=g).softmax(dim=1),
        last_keys=torch.randn(batch, N, width, generator=g),
        encode_grid=pooled_grid_encoder(features, GRID),
    )


def one_sample(scores, row):
    pick = lambda t: None if t is None else t[row : row + 1]  # noqa: E731
    return TokenScores(
        1,
        scores.num_patches,
        scores.grid,
        pick(scores.similarity),
        pick(scores.text_mask),
        pick(scores.context),
        pick(scores.cls_attention),
        pick(scores.features),
        pick(scores.keys),
        pick(scores.last_cls_attention),
        pick(scores.last_keys),
        lambda coarse: scores.encode_grid(coarse)[row : row + 1],
    )


@pytest.mark.parametrize("method", list_methods("vision"))
@pytest.mark.parametrize("budget", [1, 7, 64, 143])
def test_shape_range_uniqueness(method, budget):
    selection = select_tokens(method, random_scores(), budget)
    assert selection.indices.shape == (3, budget) and selection.indices.dtype == torch.int64
    assert selection.kinds.shape == (3, budget)
    for row in selection.indices:
        assert len(set(row.tolist())) == budget or method in MADE_TOKENS
        assert int(row.min()) >= 0 and int(row.max()) < N
    if selection.features is not None:
        assert selection.features.shape == (3, budget, 16)


@pytest.mark.parametrize("method", list_methods("vision"))
def test_batch_equals_per_sample_loop(method):
    scores = random_scores()
    batched = select_tokens(method, scores, 37)
    for row in range(3):
        alone = select_tokens(method, one_sample(scores, row), 37)
        if method == "random":  # one generator per call: rows differ, but each is a valid draw
            continue
        assert torch.equal(batched.indices[row], alone.indices[0])
        if batched.features is not None:
            torch.testing.assert_close(batched.features[row], alone.features[0])


@pytest.mark.parametrize("method", list_methods("vision"))
def test_deterministic_and_full_budget_identity(method):
    scores = random_scores()
    assert torch.equal(select_tokens(method, scores, 20).indices, select_tokens(method, scores, 20).indices)
    full = select_tokens(method, scores, N)
    assert torch.equal(full.indices, torch.arange(N).expand(3, -1))
    assert full.features is None and set(full.kinds.flatten().tolist()) == {KIND_NAMES.index("kept")}


def on_device(scores, device):
    """`scores` with every tensor on `device` (the grid encoder's output too)."""
    move = lambda t: None if t is None else t.to(device)  # noqa: E731
    fields = ("similarity", "text_mask", "context", "cls_attention", "features", "keys")
    moved = {name: move(getattr(scores, name)) for name in (*fields, "last_cls_attention", "last_keys")}
    encode = scores.encode_grid
    return dataclasses.replace(scores, **moved, encode_grid=lambda coarse: encode(coarse).to(device))


@pytest.mark.device
def test_every_method_on_the_device_equals_the_cpu(device):
    """Each before-LLM method on scores on the test device: the CPU's indices, kinds and merged features."""
    scores = random_scores()
    moved = on_device(scores, device)
    for method, budget in itertools.product(list_methods("vision"), (7, 64)):
        expected = select_tokens(method, scores, budget)
        selection = select_tokens(method, moved, budget)
        assert selection.indices.device.type == device.type, method
        assert torch.equal(selection.indices.cpu(), expected.indices), (method, budget)
        assert torch.equal(selection.kinds.cpu(), expected.kinds), (method, budget)
        assert (selection.features is None) == (expected.features is None), method
        if expected.features is not None:
            torch.testing.assert_close(
                selection.features.cpu(), expected.features, **device_tolerance(device, 1.3e-6, 1e-5)
            )


def test_random_is_reproducible_under_a_seed():
    scores = random_scores()
    first = select_tokens("random", scores, 30, seed=5).indices
    assert torch.equal(first, select_tokens("random", scores, 30, seed=5).indices)
    assert not torch.equal(first, select_tokens("random", scores, 30, seed=6).indices)
    assert not torch.equal(first[0], first[1])  # samples in a batch draw different subsets


def test_uniform_spreads_over_the_grid():
    indices = uniform_indices((24, 24), 64)
    rows, cols = indices // 24, indices % 24
    assert sorted(set(rows.tolist())) == [1, 4, 7, 10, 13, 16, 19, 22]
    assert sorted(set(cols.tolist())) == [1, 4, 7, 10, 13, 16, 19, 22]
    for budget in range(1, 577):
        points = uniform_indices((24, 24), budget)
        assert points.numel() == budget == len(set(points.tolist()))
        assert torch.equal(points, points.sort().values)


def test_topk_similarity_and_litelvlm_pick_complementary_ends():
    scores = random_scores(texts=1)
    for budget in (1, 10, 72):
        top = select_tokens("topk_similarity", scores, budget).indices
        low = select_tokens("litelvlm", scores, budget, low_similarity_share=1.0).indices
        for row in range(3):
            ranking = scores.similarity[row, 0].argsort(descending=True)
            assert set(top[row].tolist()) == set(ranking[:budget].tolist())
            assert set(low[row].tolist()) == set(ranking[-budget:].tolist())
            assert not set(top[row].tolist()) & set(low[row].tolist())


def test_topk_similarity_uses_the_best_text_and_ignores_padding():
    scores = random_scores(texts=3)
    scores.text_mask = torch.tensor([[True, True, True], [True, False, False], [True, True, False]])
    selection = select_tokens("topk_similarity", scores, 20)
    for row, count in enumerate((3, 1, 2)):
        best = scores.similarity[row, :count].amax(dim=0)
        assert selection.indices[row].tolist() == sorted(best.argsort(descending=True)[:20].tolist())


def test_cls_attention_keeps_the_most_attended_patches():
    scores = random_scores()
    selection = select_tokens("cls_attention", scores, 25)
    for row in range(3):
        assert selection.indices[row].tolist() == sorted(
            scores.cls_attention[row].argsort(descending=True)[:25].tolist()
        )


@pytest.mark.parametrize("budget", [1, 2, 9, 50, 143])
def test_divprune_matches_the_published_loop(budget):
    scores = random_scores()
    selection = select_tokens("divprune", scores, budget)
    for row in range(3):
        assert selection.indices[row].tolist() == divprune_reference(scores.features[row], budget)


@pytest.mark.parametrize("budget", [1, 2, 9, 64, 128, 143])
def test_visionzip_matches_a_loop_reference(budget):
    scores = random_scores()
    selection = select_tokens("visionzip", scores, budget)
    dominant, contextual = visionzip_split(budget)
    for row in range(3):
        indices, features = visionzip_reference(
            scores.features[row], scores.keys[row], scores.cls_attention[row], dominant, contextual
        )
        assert selection.indices[row].tolist() == indices
        torch.testing.assert_close(selection.features[row], features)


def test_visionzip_published_splits():
    assert [visionzip_split(b) for b in (64, 128, 192)] == [(54, 10), (108, 20), (162, 30)]


def test_unknown_method_lists_the_known_ones():
    from litelvlm.errors import LiteLVLMError

    with pytest.raises(LiteLVLMError, match="litelvlm"):
        select_tokens("fastvv", random_scores(), 4)
