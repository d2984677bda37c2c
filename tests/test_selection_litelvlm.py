"""LiteLVLM selection against a plain reference of DESIGN.md section 1, on real (tiny) CLIP scores."""

import dataclasses
import itertools

import pytest
import torch

from litelvlm.errors import LiteLVLMError
from litelvlm.selection import CONTEXT, LOW_SIMILARITY, TokenScores, select_tokens
from reference import litelvlm_reference

TEXTS = [
    "Please segment the man in red in this image.",
    "Please segment white car in this image.",
    "Please segment dog on the left in this image.",
]


@pytest.fixture(scope="module")
def clip_scores(scorer, images):
    scorer.set_image(images[0])
    return {count: scorer.score(TEXTS[:count], needs={"similarity", "context"}) for count in (1, 2, 3)}


@pytest.mark.parametrize("num_texts", [1, 2, 3])
@pytest.mark.parametrize("order", ["paper", "raster"])
def test_every_budget_matches_reference(clip_scores, num_texts, order):
    scores = clip_scores[num_texts]
    similarity = scores.similarity[0].tolist()
    context = scores.context[0].tolist()
    for budget in range(1, scores.num_patches + 1):
        selection = select_tokens("litelvlm", scores, budget, order=order)
        expected = litelvlm_reference(similarity, context, budget, order)
        assert selection.indices[0].tolist() == expected, f"budget {budget}"


@pytest.mark.parametrize("share", [0.0, 0.25, 0.5, 0.9])
def test_low_similarity_share_matches_reference(clip_scores, share):
    scores = clip_scores[2]
    for budget in (1, 7, 64, 200, 575):
        selection = select_tokens("litelvlm", scores, budget, low_similarity_share=share)
        expected = litelvlm_reference(
            scores.similarity[0].tolist(), scores.context[0].tolist(), budget, "paper", share
        )
        assert selection.indices[0].tolist() == expected


@pytest.mark.device
@pytest.mark.parametrize("order", ["paper", "raster"])
def test_selection_on_the_device_matches_the_reference(clip_scores, device, order):
    """Scores on the test device: the same indices as the plain reference, kinds as on the CPU, on the device."""
    for num_texts, scores in clip_scores.items():
        moved = dataclasses.replace(
            scores, similarity=scores.similarity.to(device), context=scores.context.to(device)
        )
        similarity, context = scores.similarity[0].tolist(), scores.context[0].tolist()
        for budget, share in itertools.product((1, 2, 7, 64, 128, 192, 575, 576), (1.0, 0.5)):
            selection = select_tokens("litelvlm", moved, budget, order=order, low_similarity_share=share)
            case = (num_texts, budget, share)
            assert selection.indices.device.type == device.type, case
            expected = litelvlm_reference(similarity, context, budget, order, share)
            assert selection.indices[0].tolist() == expected, case
            on_cpu = select_tokens("litelvlm", scores, budget, order=order, low_similarity_share=share)
            assert torch.equal(selection.kinds.cpu(), on_cpu.kinds), case


def test_kinds_and_split_sizes(clip_scores):
    scores = clip_scores[3]
    selection = select_tokens("litelvlm", scores, 64)
    kinds = selection.kinds[0]
    low = int((kinds == LOW_SIMILARITY).sum())
    assert 64 // 3 <= low <= 3 * (64 // 3)
    # paper order: all context tokens first, then the low-similarity ones in index order
    assert bool((kinds[: 64 - low] == CONTEXT).all()) and bool((kinds[64 - low :] == LOW_SIMILARITY).all())
    low_part = selection.indices[0, 64 - low :]
    assert torch.equal(low_part, low_part.sort().values)


def test_one_text_keeps_only_low_similarity_tokens(clip_scores):
    scores = clip_scores[1]
    selection = select_tokens("litelvlm", scores, 64)
    assert bool((selection.kinds == LOW_SIMILARITY).all())
    lowest = scores.similarity[0, 0].argsort()[:64].sort().values
    assert torch.equal(selection.indices[0], lowest)


def test_budget_below_text_count_keeps_only_context(clip_scores):
    scores = clip_scores[3]
    selection = select_tokens("litelvlm", scores, 2)
    assert bool((selection.kinds == CONTEXT).all())
    assert selection.indices[0].tolist() == scores.context[0].argsort(descending=True)[:2].tolist()


@pytest.mark.parametrize("budget", [576, 577, 10_000])
def test_full_budget_is_identity_in_raster_order(clip_scores, budget):
    selection = select_tokens("litelvlm", clip_scores[2], budget, order="paper")
    assert selection.indices[0].tolist() == list(range(576))


@pytest.mark.parametrize("budget", [0, -1, 2.5, "64", True, None])
def test_bad_budgets_are_refused(clip_scores, budget):
    with pytest.raises(LiteLVLMError, match="budget"):
        select_tokens("litelvlm", clip_scores[1], budget)


def test_no_text_is_refused(clip_scores):
    scores = clip_scores[1]
    empty = TokenScores(
        1,
        576,
        (24, 24),
        similarity=scores.similarity,
        context=scores.context,
        text_mask=torch.zeros(1, 1, dtype=torch.bool),
    )
    with pytest.raises(LiteLVLMError, match="at least one text"):
        select_tokens("litelvlm", empty, 64)


def test_bad_options_are_refused(clip_scores):
    with pytest.raises(LiteLVLMError, match="order"):
        select_tokens("litelvlm", clip_scores[1], 64, order="sorted")
    with pytest.raises(LiteLVLMError, match="low_similarity_share"):
        select_tokens("litelvlm", clip_scores[1], 64, low_similarity_share=1.5)


def test_missing_scores_are_named():
    scores = TokenScores(1, 16, (4, 4), context=torch.rand(1, 16))
    with pytest.raises(LiteLVLMError, match="similarity"):
        select_tokens("litelvlm", scores, 4)


def test_padded_texts_equal_unpadded_per_sample():
    """Images with different numbers of texts in one batch (text_mask) = each image alone."""
    generator = torch.Generator().manual_seed(0)
    similarity = torch.randn(2, 3, 100, generator=generator)
    context = torch.rand(2, 100, generator=generator)
    text_mask = torch.tensor([[True, True, True], [True, False, False]])
    batched = TokenScores(2, 100, (10, 10), similarity=similarity, context=context, text_mask=text_mask)
    for budget in (1, 5, 30, 99):
        result = select_tokens("litelvlm", batched, budget)
        for row, count in enumerate((3, 1)):
            alone = TokenScores(
                1, 100, (10, 10), similarity=similarity[row : row + 1, :count], context=context[row : row + 1]
            )
            assert torch.equal(result.indices[row], select_tokens("litelvlm", alone, budget).indices[0])
