"""The GLaMM host on a tiny random checkpoint in the official layout."""

import json
import shutil

import numpy as np
import pytest
import torch

from conftest import capture_seg_states, matching_rows, random_image
from litelvlm.errors import LiteLVLMError
from litelvlm.hosts import GroundingPredictor, get_host
from litelvlm.hosts.conversation import build_turns, render_conversation
from litelvlm.hosts.model import checkpoint_key_targets, load_grounding_model
from reference import glamm_reference_logits

GLAMM = get_host("glamm")
EXPRESSIONS = ["the man in red", "white car on the left", "a small dog"]


@pytest.fixture(scope="session")
def picture():
    return random_image(11, 300, 220)


def agree(mask, logits, margin=1e-3):
    """Masks equal wherever the reference logit is not within `margin` of the threshold."""
    confident = (logits.abs() > margin).numpy()
    return bool((mask[confident] == (logits > 0).numpy()[confident]).all())


def test_every_checkpoint_tensor_lands_in_the_model(tiny_glamm_dir, predictor):
    ours = predictor.model.state_dict()
    for shard in sorted(tiny_glamm_dir.glob("pytorch_model-*.bin")):
        for key, value in torch.load(shard, weights_only=True).items():
            targets = checkpoint_key_targets(GLAMM, key)
            if targets is None:
                assert key.startswith("model.region_encoder.")
                continue
            for target in targets:
                torch.testing.assert_close(ours[target], value.float(), msg=key)


def test_full_budget_equals_glamm_reference(predictor, picture):
    predictor.set_image(picture)
    result = predictor.predict(
        EXPRESSIONS, budget=576, question_templates=[0, 5, 10], answer_templates=[0, 2, 3]
    )
    reference = glamm_reference_logits(predictor, picture, EXPRESSIONS, [0, 5, 10], [0, 2, 3])
    assert result.masks.shape == (3, 220, 300) and result.num_visual_tokens == 576 and not result.permuted
    for mask, logits in zip(result.masks, reference):
        assert agree(mask, logits)
    assert 0 < result.masks.mean() < 1


def test_paper_order_at_full_budget_is_a_reported_permutation(predictor, picture):
    predictor.set_image(picture)
    result = predictor.predict(EXPRESSIONS[:2], budget=576, full_budget="method", order="paper")
    assert result.permuted and result.num_visual_tokens == 576
    indices = result.results[0].indices
    assert sorted(indices) == list(range(576)) and indices != list(range(576))


def test_seg_state_comes_from_the_token_before_seg_in_the_spliced_sequence(predictor, picture):
    """Fails if the [SEG] token's own state, or GLaMM's constant 575 offset, were used at budget 64."""
    predictor.set_image(picture)
    _, seg_rows, hidden = capture_seg_states(predictor, EXPRESSIONS[:2], budget=64, answer_templates=[2, 4])
    ids = predictor.tokenizer.encode_with_image(
        render_conversation(build_turns(EXPRESSIONS[:2], [1, 1], [2, 4]), GLAMM.image_prefix)
    )
    seg_original = [i for i, token in enumerate(ids) if token == predictor.tokenizer.seg_id]
    expected = [
        s + 64 - 1 - 1 for s in seg_original
    ]  # spliced index of [SEG] is s + K - 1; take the one before
    found = matching_rows(seg_rows, hidden)
    assert found == expected
    assert all(f + 1 != 575 + s for f, s in zip(found, seg_original))  # not GLaMM's K=576 constant


def test_batch_of_three_images_equals_three_runs(predictor):
    pictures = [random_image(seed, 200 + 40 * seed, 180) for seed in (1, 2, 3)]
    texts = [["the man in red"], ["white car", "a dog", "the sky"], ["a tree", "the left bike"]]
    predictor.set_image(pictures)
    batched = predictor.predict_batch(texts, budget=64)
    for picture, group, result in zip(pictures, texts, batched):
        predictor.set_image(picture)
        alone = predictor.predict(group, budget=64)
        assert [r.indices for r in result.results] == [r.indices for r in alone.results]
        same = np.mean([(a == b).mean() for a, b in zip(result.masks, alone.masks)])
        assert same > 0.999 and result.masks.shape == alone.masks.shape


def test_generation_agrees_with_teacher_forcing_on_the_same_answer(predictor, picture):
    tokenizer = predictor.tokenizer
    prompt_tf = tokenizer.encode_with_image(
        render_conversation(build_turns(["a dog"], [1], [0]), GLAMM.image_prefix)
    )
    prompt_gen = tokenizer.encode_with_image(
        render_conversation(build_turns(["a dog"], [1], None), GLAMM.image_prefix)
    )
    assert prompt_tf[: len(prompt_gen)] == prompt_gen
    answer = prompt_tf[len(prompt_gen) :]
    assert answer[-1] == tokenizer.eos_id and tokenizer.seg_id in answer

    def force(logits, step):
        return torch.full((logits.shape[0],), answer[step], dtype=torch.long)

    predictor.set_image(picture)
    generated = predictor.predict(["a dog"], budget=32, generate_answer=True, decoding=force)
    forced = predictor.predict(["a dog"], budget=32, answer_templates=[0])
    assert generated.results[0].answer == "It is [SEG]."
    assert (generated.masks == forced.masks).mean() > 0.999


def test_free_generation_reports_missing_seg(predictor, picture):
    predictor.set_image(picture)
    never_seg = lambda logits, step: torch.full((logits.shape[0],), 2 if step == 3 else 100)  # noqa: E731
    result = predictor.predict(["a dog"], budget=16, generate_answer=True, decoding=never_seg)
    assert not result.results[0].seg_found and result.results[0].mask is None
    greedy = predictor.predict(["a dog", "a cat"], budget=16, generate_answer=True, max_new_tokens=6)
    assert len(greedy.results) == 2 and all(isinstance(r.answer, str) for r in greedy.results)


def test_more_than_three_expressions_are_split_into_conversations(predictor, picture):
    predictor.set_image(picture)
    result = predictor.predict([f"object {i}" for i in range(5)], budget=32)
    assert [r.conversation for r in result.results] == [0, 0, 0, 1, 1]
    lisa_style = predictor.predict([f"object {i}" for i in range(3)], budget=32, turns_per_conversation=1)
    assert [r.conversation for r in lisa_style.results] == [0, 1, 2]


@pytest.mark.parametrize(
    "method", ["random", "uniform", "topk_similarity", "cls_attention", "visionzip", "divprune"]
)
def test_every_method_segments(predictor, picture, method):
    predictor.set_image(picture)
    result = predictor.predict(["a dog"], budget=48, method=method)
    assert result.masks.shape == (1, 220, 300) and len(result.results[0].indices) == 48


def test_bf16_default_runs(tiny_glamm_dir, picture):
    bf16 = GroundingPredictor.from_pretrained(tiny_glamm_dir, device="cpu")
    assert bf16.model.dtype == torch.bfloat16 and bf16.model.sam.dtype == torch.bfloat16
    bf16.set_image(picture)
    assert bf16.predict(["a dog"], budget=64).masks.shape == (1, 220, 300)


# ---------------------------------------------------------------------------------------------- loading errors
def broken_copy(source, tmp_path, edit):
    target = tmp_path / "broken"
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("clip"))
    edit(target)
    return target


def edit_shard(key_edit):
    def edit(directory):
        index = json.loads((directory / "pytorch_model.bin.index.json").read_text())
        shard_path = directory / "pytorch_model-00002-of-00002.bin"
        state = torch.load(shard_path, weights_only=True)
        key_edit(state)
        torch.save(state, shard_path)
        index["weight_map"] = {k: v for k, v in index["weight_map"].items() if v != shard_path.name}
        index["weight_map"].update({k: shard_path.name for k in state})
        (directory / "pytorch_model.bin.index.json").write_text(json.dumps(index))

    return edit


def _drop_sam_key(state):
    state.pop(next(k for k in state if k.startswith("model.grounding_encoder.")))


def _reshape_fcs(state):
    state["model.text_hidden_fcs.0.2.bias"] = torch.zeros(7)


LOADING_CASES = {
    "missing key": (edit_shard(_drop_sam_key), "lacks 1 weight"),
    "extra key": (
        edit_shard(lambda s: s.__setitem__("model.surprise.weight", torch.zeros(2))),
        "model.surprise",
    ),
    "wrong shape": (edit_shard(_reshape_fcs), "text_hidden_fcs.0.2.bias"),
    "missing tokenizer": (lambda d: (d / "tokenizer.model").unlink(), "tokenizer.model"),
    "missing shard": (lambda d: (d / "pytorch_model-00001-of-00002.bin").unlink(), "missing"),
    "not glamm": (
        lambda d: (d / "config.json").write_text('{"model_type": "llama"}'),
        "not a GLaMM checkpoint",
    ),
}


@pytest.mark.parametrize("case", LOADING_CASES)
def test_loading_errors_are_clear(tiny_glamm_dir, tmp_path, case):
    edit, message = LOADING_CASES[case]
    broken = broken_copy(tiny_glamm_dir, tmp_path, edit)
    with pytest.raises(LiteLVLMError, match=message):
        GroundingPredictor.from_pretrained(broken, clip=tiny_glamm_dir / "clip", device="cpu")


def test_safetensors_checkpoint_loads_the_same(tiny_glamm_dir, tmp_path, predictor):
    from safetensors.torch import save_file

    converted = broken_copy(tiny_glamm_dir, tmp_path, lambda d: None)
    state = {}
    for shard in sorted(converted.glob("pytorch_model-*.bin")):
        state.update(torch.load(shard, weights_only=True))
        shard.unlink()
    (converted / "pytorch_model.bin.index.json").unlink()
    save_file({k: v.contiguous() for k, v in state.items()}, converted / "model.safetensors")
    config = json.loads((converted / "config.json").read_text())
    model = load_grounding_model(converted, GLAMM, config, dtype=torch.float32)
    for key, value in predictor.model.state_dict().items():
        torch.testing.assert_close(model.state_dict()[key], value)


def test_missing_model_dir_and_offline_clip(tmp_path, tiny_glamm_dir):
    with pytest.raises(LiteLVLMError, match="does not exist"):
        GroundingPredictor.from_pretrained(tmp_path / "nope")
    with pytest.raises(LiteLVLMError, match="pass its local directory"):
        GroundingPredictor.from_pretrained(tiny_glamm_dir, clip="nobody-here/clip-offline-xyz", device="cpu")
