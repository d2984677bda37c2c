"""The paper's baselines (VisPruner, PruMerge/PruMerge+, TRIM, downsampling, pooling): their defining properties
on real tiny-CLIP scores, the options each exposes, the RoPE `positions` option of the host, and the CLI's
--option. Loop-based references of the algorithms are in test_paper_baselines_reference.py."""

import json

import pytest
import torch
from PIL import Image

from litelvlm.errors import LiteLVLMError
from litelvlm.selection import KIND_NAMES, select_tokens
from litelvlm.selection.downsample import cell_centres, token_grid
from litelvlm.selection.prumerge import iqr_outlier_count
from test_cli_select import run_cli

MERGED = KIND_NAMES.index("merged")
TEXTS = ["Please segment the man in red in this image.", "Please segment the white car in this image."]


@pytest.fixture(scope="module")
def clip_scores(scorer, images):
    """Every score field of two images on the tiny CLIP (24 x 24 patches), three texts each."""
    scorer.set_image(images[:2])
    return scorer.score([*TEXTS, "Please segment the tree in this image."], shared_texts=True)


def test_token_grids_of_the_paper_budgets():
    assert [token_grid(b) for b in (192, 128, 64)] == [(12, 16), (8, 16), (8, 8)]
    assert [token_grid(b, "square") for b in (192, 128, 64)] == [(14, 14), (11, 11), (8, 8)]
    assert token_grid(13) == (1, 13) and token_grid(576, patch_grid=(24, 24)) == (24, 24)
    with pytest.raises(LiteLVLMError, match="grid must be one of"):
        token_grid(64, "round")


def test_cell_centres_sit_in_their_cells():
    centres = cell_centres((24, 24), (8, 8))  # 3 x 3 cells: the centre patch of each
    assert centres.tolist()[:3] == [1 * 24 + 1, 1 * 24 + 4, 1 * 24 + 7]
    assert centres.tolist()[-1] == 22 * 24 + 22


def test_pool_averages_each_cell(clip_scores):
    selection = select_tokens("pool", clip_scores, 64)
    grid = clip_scores.features.view(2, 24, 24, -1)
    blocks = grid.view(2, 8, 3, 8, 3, -1).mean(dim=(2, 4)).reshape(2, 64, -1)
    torch.testing.assert_close(selection.features, blocks)
    assert bool((selection.kinds == MERGED).all())


def test_downsample_runs_fewer_tokens_through_clip(scorer, clip_scores):
    seen = []
    hook = scorer.vision.encoder.layers[0].register_forward_pre_hook(lambda m, a: seen.append(a[0].shape[1]))
    try:
        selection = select_tokens("downsample", clip_scores, 128)
    finally:
        hook.remove()
    assert seen == [1 + 8 * 16]  # one pass of CLS + 128 patches
    assert selection.features.shape == (2, 128, clip_scores.features.shape[-1])
    # the same images at the native grid give back the select-layer patches themselves
    native = clip_scores.encode_grid((24, 24))
    torch.testing.assert_close(native, clip_scores.features, atol=1e-4, rtol=1e-4)
    assert select_tokens("downsample", clip_scores, 196, grid="square").budget == 196


def test_vispruner_splits_the_budget_by_important_ratio(clip_scores):
    for ratio, budget in ((0.5, 64), (0.75, 64), (0.25, 33)):
        selection = select_tokens("vispruner", clip_scores, budget, important_ratio=ratio)
        dominant = (selection.kinds == KIND_NAMES.index("dominant")).sum(dim=1)
        assert dominant.tolist() == [int(budget * ratio)] * 2
        assert bool((selection.indices.diff(dim=1) > 0).all())  # raster order
    only_important = select_tokens("vispruner", clip_scores, 40, important_ratio=1.0)
    assert torch.equal(only_important.indices, select_tokens("cls_attention", clip_scores, 40).indices)
    with pytest.raises(LiteLVLMError, match="important_ratio"):
        select_tokens("vispruner", clip_scores, 40, important_ratio=1.5)


def mean_cosine(unit):
    return (unit @ unit.T).mean()


def test_vispruner_diverse_tokens_are_less_redundant_than_attention_ranking(clip_scores):
    """The diverse half exists to cover the image: its tokens are less similar to each other than the same
    number of next-ranked tokens by attention."""
    selection = select_tokens("vispruner", clip_scores, 64, important_ratio=0.5)
    unit = torch.nn.functional.normalize(clip_scores.features, dim=-1)
    order = clip_scores.cls_attention.argsort(dim=1, descending=True, stable=True)
    for row in range(2):
        diverse = selection.indices[row][selection.kinds[row] == KIND_NAMES.index("kept")]
        next_ranked = order[row, 32:64]
        assert mean_cosine(unit[row, diverse]) < mean_cosine(unit[row, next_ranked])


@pytest.mark.parametrize("method", ["prumerge", "prumerge_plus"])
def test_prumerge_extra_token_and_counts(clip_scores, method):
    attention, features = clip_scores.last_cls_attention, clip_scores.features
    counted = select_tokens(method, clip_scores, 64)
    extra = select_tokens(method, clip_scores, 64, count_extra=False)
    assert counted.budget == 64 and extra.budget == 65
    for selection in (counted, extra):
        kept = selection.indices[:, :-1]
        pruned = torch.ones_like(attention, dtype=torch.bool).scatter_(1, kept, False)
        expected = ((attention * pruned).unsqueeze(-1) * features).sum(dim=1)
        torch.testing.assert_close(selection.features[:, -1], expected)
        assert bool((selection.kinds[:, -1] == MERGED).all())
        # the extra token's index: the pruned patch with the largest attention
        assert selection.indices[:, -1].tolist() == attention.masked_fill(~pruned, -1).argmax(dim=1).tolist()
    raster = select_tokens(method, clip_scores, 64, order="raster")
    assert bool((raster.indices[:, :-1].diff(dim=1) > 0).all())
    assert torch.equal(raster.indices[:, :-1], counted.indices[:, :-1].sort(dim=1).values)


def test_prumerge_keeps_the_top_attention_tokens_in_descending_order(clip_scores):
    selection = select_tokens("prumerge", clip_scores, 20)
    attention = clip_scores.last_cls_attention
    kept = selection.indices[:, :-1]
    assert torch.equal(kept, attention.argsort(dim=1, descending=True, stable=True)[:, :19])


def test_prumerge_plus_outliers_then_grid(clip_scores):
    attention = clip_scores.last_cls_attention
    selection = select_tokens("prumerge_plus", clip_scores, 64)
    outliers = iqr_outlier_count(attention).clamp(min=1)
    for row in range(2):
        count = int(outliers[row])
        dominant = selection.indices[row][selection.kinds[row] == KIND_NAMES.index("dominant")]
        assert len(dominant) == min(count, 63)
        grid = selection.indices[row][selection.kinds[row] == KIND_NAMES.index("kept")]
        assert all(int(i) % (576 // 63) == 0 for i in grid) and bool((grid.diff() > 0).all())


def test_iqr_outlier_count_on_a_known_row():
    row = torch.tensor([[1.0, 2, 3, 4, 5, 6, 7, 100, 200]])
    # Q1 = 3, Q3 = 7, fence = 7 + 1.5 * 4 = 13: two outliers
    assert iqr_outlier_count(row).tolist() == [2]


def test_trim_direction_and_mean_token(scorer, images):
    scorer.set_image(images[0])
    scores = scorer.score([TEXTS[0]])
    similarity = scores.similarity[0, 0]
    code = select_tokens("trim", scores, 33)
    paper = select_tokens("trim", scores, 33, polarity="paper")
    lowest = similarity.argsort(stable=True)[:32].sort().values
    highest = similarity.argsort(descending=True, stable=True)[:32].sort().values
    assert code.indices[0, :-1].tolist() == lowest.tolist()
    assert paper.indices[0, :-1].tolist() == highest.tolist()
    rest = torch.ones(576, dtype=torch.bool)
    rest[lowest] = False
    torch.testing.assert_close(code.features[0, -1], scores.features[0, rest].mean(dim=0))
    torch.testing.assert_close(code.features[0, :-1], scores.features[0, lowest])
    # one text: the split rule is TRIM itself
    assert torch.equal(select_tokens("trim", scores, 33, text_mode="split").indices, code.indices)
    assert select_tokens("trim", scores, 33, count_extra=False).budget == 34


def test_trim_split_gives_every_text_its_share(clip_scores):
    selection = select_tokens("trim", clip_scores, 31, text_mode="split")
    for row in range(2):
        kept = set(selection.indices[row, :-1].tolist())
        for text in range(3):
            own = clip_scores.similarity[row, text].argsort(stable=True)[: 30 // 3].tolist()
            assert set(own) <= kept


# --- the host's RoPE positions ---------------------------------------------------------------------------


def _decoder_positions(predictor, expressions, **options):
    """position_ids the LLM received (one forward per call) and the prediction."""
    seen = []
    hook = predictor.model.llm.model.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs["position_ids"].clone()), with_kwargs=True
    )
    try:
        prediction = predictor.predict(expressions, **options)
    finally:
        hook.remove()
    return seen, prediction


def test_original_positions_reach_rope(predictor, images):
    predictor.set_image(images[0])
    expressions = ["the man in red"]
    ids = predictor.conversation_ids(expressions)
    start = ids.index(-200)
    seen, prediction = _decoder_positions(
        predictor, expressions, method="cls_attention", budget=40, positions="original"
    )
    (positions,) = seen
    kept = prediction.results[0].indices
    assert positions[0, :start].tolist() == list(range(start))
    assert positions[0, start : start + 40].tolist() == [start + i for i in kept]
    after = len(ids) - start - 1
    assert positions[0, start + 40 :].tolist() == list(range(start + 576, start + 576 + after))
    compact, _ = _decoder_positions(predictor, expressions, method="cls_attention", budget=40)
    assert compact[0][0].tolist() == list(range(len(ids) - 1 + 40))


def test_positions_agree_at_full_budget_and_differ_when_pruned(predictor, images):
    predictor.set_image(images[1])
    expressions = ["the man in red", "a white car"]
    full = [predictor.predict(expressions, positions=p).masks for p in ("compact", "original")]
    assert (full[0] == full[1]).all()
    states = {}
    hook = predictor.model.text_hidden_fcs.register_forward_hook(
        lambda m, a, o: states.__setitem__(len(states), a[0].clone())  # returns None: output unchanged
    )
    try:
        for positions in ("compact", "original"):
            predictor.predict(expressions, method="vispruner", budget=48, positions=positions)
    finally:
        hook.remove()
    states = {"compact": states[0], "original": states[1]}
    assert not torch.allclose(states["compact"], states["original"])
    with pytest.raises(LiteLVLMError, match="positions must be one of"):
        predictor.predict(expressions, positions="shifted")


def test_original_positions_in_generation_continue_after_the_image(predictor, images):
    predictor.set_image(images[0])
    seen, _ = _decoder_positions(
        predictor,
        ["the man in red"],
        method="random",
        budget=30,
        positions="original",
        generate_answer=True,
        max_new_tokens=3,
    )
    prefill, first_step = seen[0], seen[1]
    assert int(first_step[0, 0]) == int(prefill[0, -1]) + 1


# --- the CLI's --option ------------------------------------------------------------------------------------


def test_cli_option_reaches_the_method(tiny_clip_dir, image_file, tmp_path, capsys):
    out = tmp_path / "sel.json"
    argv = [
        "select",
        "--clip",
        str(tiny_clip_dir),
        "--image",
        str(image_file),
        "--text",
        "the cat",
        "--budget",
        "64",
    ]
    code, _, err = run_cli(
        capsys, *argv, "--method", "vispruner", "--option", "important_ratio=0.75",
        "--json", str(out),
    )  # fmt: skip
    assert code == 0, err
    assert json.loads(out.read_text())["kinds"].count("dominant") == 48
    code, _, err = run_cli(capsys, *argv, "--method", "trim", "--option", "important_ratio=0.75")
    assert code != 0 and "important_ratio" in err and "Traceback" not in err
    code, _, err = run_cli(capsys, *argv, "--method", "trim", "--option", "polarity")
    assert code != 0 and "NAME=VALUE" in err
    code, _, err = run_cli(capsys, *argv, "--method", "trim", "--option", "polarity=sideways")
    assert code != 0 and "sideways" in err and "Traceback" not in err
    assert Image.open(image_file).size  # the input is untouched
