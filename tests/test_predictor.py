"""The predictor's data path and public API, whatever the host: work done once, one clear error per misuse."""

import pytest
import torch

import litelvlm.scoring
from conftest import device_tolerance, random_image
from litelvlm.errors import LiteLVLMError
from litelvlm.hosts.model import load_grounding_model
from litelvlm.hosts.registry import detect_host
from litelvlm.hosts.sam import default_sam_attention


class Counter:
    """Counts calls of a function it wraps."""

    def __init__(self, function):
        self.function, self.calls = function, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.function(*args, **kwargs)


@pytest.fixture
def counted(monkeypatch, predictor):
    """Call counters of CLIP's derived image scores: context, CLS attention, patch projection, vision layers."""
    counters = {
        name: Counter(getattr(litelvlm.scoring, name)) for name in ("context_contribution", "cls_attention")
    }
    for name, counter in counters.items():
        monkeypatch.setattr(litelvlm.scoring, name, counter)
    clip = predictor.scorer.model
    projection, first_layer = Counter(None), Counter(None)
    hooks = [
        clip.visual_projection.register_forward_hook(
            lambda *_: setattr(projection, "calls", projection.calls + 1)
        ),
        clip.vision_model.encoder.layers[0].register_forward_hook(
            lambda *_: setattr(first_layer, "calls", first_layer.calls + 1)
        ),
    ]
    counters.update(projection=projection, vision_pass=first_layer)
    yield counters
    for hook in hooks:
        hook.remove()


def calls(counters):
    return {name: counter.calls for name, counter in counters.items()}


def test_clip_scores_are_computed_once_per_set_of_images(predictor, counted):
    predictor.set_image([random_image(31, 200, 150), random_image(32, 160, 220)])
    assert calls(counted) == {
        "context_contribution": 0,
        "cls_attention": 0,
        "projection": 0,
        "vision_pass": 1,
    }
    # 5 expressions on image 0 (two conversations) and one on image 1: one computation for both images.
    texts = [["a", "b", "c", "d", "e"], ["f"]]
    first = predictor.predict_batch(texts, budget=40, method="litelvlm")
    assert calls(counted) == {
        "context_contribution": 1,
        "cls_attention": 0,
        "projection": 1,
        "vision_pass": 1,
    }
    again = predictor.predict_batch(texts, budget=40, method="litelvlm")
    predictor.predict_batch(texts, budget=40, method="visionzip")
    predictor.predict_batch(texts, budget=40, method="cls_attention")
    assert calls(counted) == {
        "context_contribution": 1,
        "cls_attention": 1,
        "projection": 1,
        "vision_pass": 1,
    }
    assert [r.indices for p in first for r in p.results] == [r.indices for p in again for r in p.results]
    predictor.set_image(random_image(33))
    predictor.predict(["a"], budget=40)
    assert calls(counted)["context_contribution"] == 2 and calls(counted)["vision_pass"] == 2


def test_scores_gathered_per_conversation_equal_scores_of_each_image_alone(predictor):
    pictures = [random_image(34, 180, 180), random_image(35, 240, 150)]
    predictor.set_image(pictures)
    rows = torch.tensor([1, 0, 1])
    gathered = predictor.scorer.score(
        [["x"], ["y"], ["z"]], "litelvlm", predictor._images.features, rows=rows
    )
    for row, (image, text) in enumerate(zip([1, 0, 1], ["x", "y", "z"])):
        alone = predictor.scorer.score([text], "litelvlm", predictor.scorer.set_image(pictures[image]))
        torch.testing.assert_close(gathered.context[row], alone.context[0], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(gathered.similarity[row], alone.similarity[0], rtol=1e-5, atol=1e-5)


def test_a_prompt_is_tokenised_once_per_conversation(predictor, monkeypatch):
    tokenizer = predictor.tokenizer
    counter = Counter(tokenizer.encode_with_image)
    monkeypatch.setattr(tokenizer, "encode_with_image", counter)
    predictor.set_image(random_image(36))
    predictor.predict(["a", "b", "c", "d"], budget=32, method="litelvlm")
    assert counter.calls == 2  # two conversations (3 + 1 expressions)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (
            lambda p: p.predict(["a"], method="random", order="paper"),
            "'random' takes no option 'order'; its options are: seed",
        ),
        (
            lambda p: p.predict(["a"], method="uniform", seed=3),
            "'uniform' takes no option 'seed'; its options are: none",
        ),
        (lambda p: p.predict(["a"], method="fastv", order="raster"), "'fastv' takes no option 'order'"),
        (lambda p: p.predict("a dog"), "list of expressions, got the string"),
        (lambda p: p.predict([["a"]]), "predict_batch"),
        (lambda p: p.predict_batch(["a", "b"]), "one list of expressions per set image"),
        (lambda p: p.predict_batch([["a"], ["b"]]), "2 image"),
        (lambda p: p.predict([]), "no expressions"),
        (lambda p: p.predict(["  "]), "empty"),
        (lambda p: p.predict(["a"], budget=0), "at least 1"),
        (lambda p: p.predict(["a"], budget=2.5), "whole number"),
        (lambda p: p.predict(["a"], full_budget="all"), "full_budget"),
        (lambda p: p.predict(["a"], text_source="captions"), "text_source"),
        (lambda p: p.predict(["a"], turns_per_conversation=4), "from 1 to 3 for GLaMM"),
        (lambda p: p.predict(["a", "b"], question_templates=[1]), "1 question templates for 2 expressions"),
        (lambda p: p.predict(["a"], answer_templates=[9]), "answer template 9 is out of range"),
        (lambda p: p.predict(["a"], method="nope"), "unknown method 'nope'"),
        (lambda p: p.predict(["a"], generate_answer=True, max_new_tokens=0), "max_new_tokens"),
    ],
)
def test_misuse_is_one_clear_error(predictor, call, message):
    predictor.set_image(random_image(37))
    with pytest.raises(LiteLVLMError, match=message.replace("(", r"\(").replace(")", r"\)")):
        call(predictor)


def test_predict_batch_skips_images_given_none(predictor):
    predictor.set_image([random_image(60), random_image(61, 288, 256)])
    both = predictor.predict_batch([["the cat"], ["a dog", "the tree"]], budget=32)
    only_second = predictor.predict_batch([None, ["a dog", "the tree"]], budget=32)
    assert only_second[0] is None
    for a, b in zip(both[1].results, only_second[1].results):
        assert a.indices == b.indices and (a.mask == b.mask).mean() > 0.999
    with pytest.raises(LiteLVLMError, match="every image is skipped"):
        predictor.predict_batch([None, None])
    with pytest.raises(LiteLVLMError, match="or None to skip it"):
        predictor.predict_batch([[], ["a dog"]])


@pytest.mark.device
def test_predict_on_the_device_matches_the_cpu(device_predictor, predictor, device):
    """The tiny GLaMM loaded on the test device: SAM's encoder runs the device's default forward, and the image
    embedding, the kept tokens and the masks are the CPU's. (On a CPU the device run is the reference.)"""
    assert device_predictor.device.type == device.type
    assert device_predictor.model.sam.fused_encoder == (default_sam_attention(device) == "fused")
    picture = random_image(38, 240, 180)

    def run(model):
        model.set_image(picture)
        result = model.predict(["the man in red", "white car"], budget=64, method="litelvlm")
        return model._images.sam_embeddings, result

    embeddings, result = run(device_predictor)
    assert embeddings.device.type == device.type
    expected_embeddings, expected = (embeddings, result) if device_predictor is predictor else run(predictor)
    torch.testing.assert_close(
        embeddings.cpu(), expected_embeddings, **device_tolerance(device, 1.3e-6, 1e-5)
    )
    assert [(r.indices, r.kinds) for r in result.results] == [(r.indices, r.kinds) for r in expected.results]
    assert (result.masks == expected.masks).mean() > 0.999


def test_the_loader_takes_the_sam_encoder_forward(tiny_glamm_dir):
    """Default: the faster forward on the device (`default_sam_attention`); `sam_attention` overrides it."""
    host, config = detect_host(tiny_glamm_dir)
    with pytest.raises(LiteLVLMError, match="sam_attention must be one of fused, sdpa, eager, not 'flash'"):
        load_grounding_model(tiny_glamm_dir, host, config, sam_attention="flash")
    model = load_grounding_model(tiny_glamm_dir, host, config, dtype=torch.float32, sam_attention="eager")
    assert not model.sam.fused_encoder
    assert model.sam.config.vision_config._attn_implementation == "eager"
