"""The CLIP scorer against transformers' own forward pass with hooks (the authors' way of getting q/k/v)."""

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from conftest import device_tolerance
from litelvlm.errors import LiteLVLMError
from litelvlm.scoring import ClipScorer
from reference import clip_reference_scores

TEXTS = ["Please segment the man in red in this image.", "the white car"]


def test_scores_match_hooked_reference(scorer, images):
    pixels = scorer.pixel_values(images[:2])
    features = scorer.encode_image(pixels)
    scores = scorer.score(TEXTS, features=features, shared_texts=True)
    tokens = scorer.tokenizer(TEXTS, padding=True, return_tensors="pt")
    hidden, context, similarity = clip_reference_scores(
        scorer.model, pixels, tokens["input_ids"], tokens["attention_mask"]
    )
    torch.testing.assert_close(features.hidden, hidden)
    torch.testing.assert_close(scores.features, hidden[:, 1:])
    torch.testing.assert_close(scores.context, context, rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(scores.similarity, similarity, rtol=1e-4, atol=1e-4)
    assert scores.similarity.shape == (2, 2, 576) and scores.text_mask is None


@pytest.mark.device
def test_scores_on_the_device_match_the_cpu_reference(tiny_clip_dir, scorer, images, device):
    """The scorer loaded on the test device: every score field equals the hooked reference run on the CPU."""
    on_device = scorer if device.type == "cpu" else ClipScorer.from_pretrained(tiny_clip_dir, device=device)
    assert on_device.device.type == device.type
    pixels = scorer.pixel_values(images[:2])
    scores = on_device.score(TEXTS, features=on_device.encode_image(pixels), shared_texts=True)
    assert scores.similarity.device.type == device.type
    tokens = scorer.tokenizer(TEXTS, padding=True, return_tensors="pt")
    hidden, context, similarity = clip_reference_scores(
        scorer.model, pixels, tokens["input_ids"], tokens["attention_mask"]
    )
    torch.testing.assert_close(scores.features.cpu(), hidden[:, 1:], **device_tolerance(device, 1.3e-6, 1e-5))
    torch.testing.assert_close(scores.context.cpu(), context, **device_tolerance(device, 1e-4, 1e-7))
    torch.testing.assert_close(scores.similarity.cpu(), similarity, **device_tolerance(device, 1e-4, 1e-4))
    reference = scorer.score(needs={"cls_attention", "keys"}, features=scorer.encode_image(pixels))
    for name in ("cls_attention", "keys"):
        torch.testing.assert_close(
            getattr(scores, name).cpu(), getattr(reference, name), **device_tolerance(device, 1e-5, 1e-6)
        )


def test_text_embeds_equal_clip_text_features(scorer):
    tokens = scorer.tokenizer(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        pooled = scorer.model.text_model(**tokens).pooler_output
        expected = scorer.model.text_projection(pooled)
    torch.testing.assert_close(scorer.encode_text(TEXTS), expected)


def test_cls_attention_matches_eager_attention_probabilities(tiny_clip_dir, images):
    from transformers import CLIPModel

    eager = CLIPModel.from_pretrained(tiny_clip_dir, attn_implementation="eager").eval()
    scorer = ClipScorer(eager)
    pixels = scorer.pixel_values(images[:2])
    with torch.no_grad():
        out = eager.vision_model(pixel_values=pixels, output_attentions=True)
    layers = eager.config.vision_config.num_hidden_layers
    expected = out.attentions[layers - 2][:, :, 0, 1:].mean(dim=1)  # the layer producing hidden_states[-2]
    scores = scorer.score(needs={"cls_attention", "keys"}, features=scorer.encode_image(pixels))
    torch.testing.assert_close(scores.cls_attention, expected, rtol=1e-4, atol=1e-6)
    assert scores.keys.shape == (2, 576, 32 // 4)


def test_batch_equals_one_image_at_a_time(scorer, images):
    texts = [["the man in red"], ["a dog", "the left cat"], ["sky", "tree", "road"]]
    scorer.set_image(images)
    batched = scorer.score(texts)
    assert batched.similarity.shape == (3, 3, 576)
    assert batched.text_mask.tolist() == [[True, False, False], [True, True, False], [True, True, True]]
    for row, image in enumerate(images):
        scorer.set_image(image)
        alone = scorer.score(texts[row])
        count = len(texts[row])
        torch.testing.assert_close(batched.similarity[row, :count], alone.similarity[0], rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(batched.context[row], alone.context[0], rtol=1e-4, atol=1e-7)
        torch.testing.assert_close(batched.features[row], alone.features[0], rtol=1e-4, atol=1e-5)


def test_set_image_caches_the_vision_pass(scorer, images):
    scorer.set_image(images[0])
    first = scorer.score(["a dog"])
    calls = []
    handle = scorer.vision.embeddings.register_forward_pre_hook(lambda *args: calls.append(1))
    try:
        second = scorer.score(["a cat", "a dog"])
    finally:
        handle.remove()
    assert not calls
    torch.testing.assert_close(second.similarity[:, 1], first.similarity[:, 0])
    assert second.context is first.context  # derived scores are cached per image too


@pytest.mark.parametrize("select_layer", [-1, -3, 1])
def test_other_select_layers(tiny_clip_dir, images, select_layer):
    scorer = ClipScorer.from_pretrained(tiny_clip_dir, select_layer=select_layer)
    pixels = scorer.pixel_values(images[0])
    with torch.no_grad():
        states = scorer.model.vision_model(pixel_values=pixels, output_hidden_states=True).hidden_states
    features = scorer.encode_image(pixels)
    torch.testing.assert_close(features.hidden, states[select_layer])
    torch.testing.assert_close(features.last_input, states[-2])


def test_bad_select_layer(tiny_clip_dir):
    with pytest.raises(LiteLVLMError, match="select_layer"):
        ClipScorer.from_pretrained(tiny_clip_dir, select_layer=-9)


def test_preprocessing_matches_transformers_clip_processor(scorer, images):
    transformers = pytest.importorskip("transformers")
    processor_class = getattr(transformers, "CLIPImageProcessorPil", None) or transformers.CLIPImageProcessor
    processor = processor_class(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336})
    for image in [*images, images[0].resize((500, 200)), images[0].resize((7, 9))]:
        expected = processor(images=image, return_tensors="pt")["pixel_values"]
        ours = scorer.preprocess([image])
        torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-5)


def test_crop_geometry_maps_patches_back_to_the_image(scorer):
    geometry = scorer.preprocess.geometry(640, 480)  # resized to 448 x 336, crop starts at x = 56
    assert (geometry.resized_width, geometry.resized_height, geometry.crop_left, geometry.crop_top) == (
        448,
        336,
        56,
        0,
    )
    x0, y0, x1, y1 = geometry.crop_box_in_image(0, 0, 336, 336)
    assert (round(x0), round(y0), round(x1), round(y1)) == (80, 0, 560, 480)


def test_empty_text_and_missing_image(scorer):
    scorer.set_image(Image.new("RGB", (8, 8)))
    with pytest.raises(LiteLVLMError, match="empty"):
        scorer.score(["  "])
    with pytest.raises(LiteLVLMError, match="no text"):
        scorer.score([])
    fresh = ClipScorer(scorer.model, scorer.tokenizer)
    with pytest.raises(LiteLVLMError, match="set_image"):
        fresh.score(["a dog"])


def test_long_text_is_truncated_with_one_warning(tiny_clip_dir):
    scorer = ClipScorer.from_pretrained(tiny_clip_dir)
    long_text = "the man " * 60
    with pytest.warns(UserWarning, match="truncated to 77"):
        embeds = scorer.encode_text([long_text])
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = scorer.encode_text([long_text + "again"])
    assert embeds.shape == again.shape == (1, 16)
    assert not torch.allclose(F.normalize(embeds), torch.zeros_like(embeds))


def test_bf16_scorer_runs(tiny_clip_dir, images):
    scorer = ClipScorer.from_pretrained(tiny_clip_dir, dtype=torch.bfloat16)
    scorer.set_image(images[0])
    scores = scorer.score(["a dog"])
    assert scores.similarity.dtype == torch.float32 and torch.isfinite(scores.similarity).all()
    assert scores.context.dtype == torch.float32


def test_loading_errors(tmp_path):
    with pytest.raises(LiteLVLMError, match="does not exist"):
        ClipScorer.from_pretrained(tmp_path / "nope")
    with pytest.raises(LiteLVLMError, match="no config.json"):
        ClipScorer.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text('{"model_type": "llama"}')
    with pytest.raises(LiteLVLMError, match="not a CLIP checkpoint"):
        ClipScorer.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(LiteLVLMError, match="not valid JSON"):
        ClipScorer.from_pretrained(tmp_path)


def test_clip_tokenizer_is_the_real_one(scorer):
    assert len(scorer.tokenizer) == 49408
    ids = scorer.tokenizer("Please segment the man in red.")["input_ids"]
    assert ids == [49406, 1474, 15615, 518, 786, 530, 736, 269, 49407]
