"""share_prefix: the leading tokens every conversation of a batch holds identically run once. The results must
equal the unshared run (fp32 to 1e-5) for every kind of method, both RoPE layouts and both hosts; what is shared
must be what is identical (through the image for text-independent methods, up to it otherwise, nothing for
in-LLM methods)."""

import numpy as np
import pytest
import torch

from conftest import capture_seg_states, random_image

EXPRESSIONS = ["the man in red", "a white car on the left", "the dog", "the second tree from the right"]


def run(predictor, shared, **options):
    """(prediction, [SEG] states [n, H], shared prefix length) of four one-turn conversations about the set
    image; `predictor.mask_logits` [n, 256, 256] holds SAM's low-resolution logits of the run."""
    logits = []
    hook = predictor.model.sam.mask_decoder.register_forward_hook(lambda m, i, o: logits.append(o[0][0, :, 0]))
    try:
        prediction, seg, _ = capture_seg_states(
            predictor, EXPRESSIONS, turns_per_conversation=1, share_prefix=shared, **options
        )
    finally:
        hook.remove()
    predictor.mask_logits = torch.cat(logits)
    return prediction, seg.clone(), predictor.last_shared_prefix


def assert_same_masks(plain, shared, plain_logits, shared_logits):
    """SAM's logits agree to float rounding, so the masks may differ only at pixels whose logit lies within
    rounding of 0 (at most 1 in 10,000)."""
    torch.testing.assert_close(shared_logits, plain_logits, atol=1e-4, rtol=1e-4)
    for a, b in zip(plain.results, shared.results):
        assert (a.mask != b.mask).mean() <= 1e-4 and a.indices == b.indices


def image_start(predictor) -> int:
    """Where the visual tokens begin in the host's conversations (the shared text before the image)."""
    ids = predictor.conversation_ids(["x"])
    return ids.index(-200)


@pytest.mark.parametrize(
    "method, positions, through_image",
    [
        ("cls_attention", "compact", True),  # text-independent: identical through the image
        ("uniform", "original", True),
        ("visionzip", "compact", True),
        ("downsample", "compact", True),
        ("litelvlm", "compact", False),  # text-guided: each conversation keeps its own tokens
        ("litelvlm", "original", False),
        ("trim", "compact", False),
        ("random", "compact", False),  # each conversation (row) draws its own subset
    ],
)
def test_shared_equals_unshared(predictor, method, positions, through_image):
    predictor.set_image(random_image(41))
    plain, plain_seg, none = run(predictor, False, budget=64, method=method, positions=positions)
    plain_logits = predictor.mask_logits
    shared, shared_seg, prefix = run(predictor, True, budget=64, method=method, positions=positions)
    assert none == 0
    start = image_start(predictor)
    assert (prefix >= start + 64) if through_image else (0 < prefix <= start), (prefix, start)
    torch.testing.assert_close(shared_seg, plain_seg, atol=1e-5, rtol=1e-5)
    assert_same_masks(plain, shared, plain_logits, predictor.mask_logits)


@pytest.mark.parametrize("method", ["fastv", "sparsevlm"])
def test_in_llm_methods_share_nothing(predictor, method):
    predictor.set_image(random_image(42))
    plain, plain_seg, _ = run(predictor, False, budget=64, method=method, budget_mode="final")
    shared, shared_seg, prefix = run(predictor, True, budget=64, method=method, budget_mode="final")
    assert prefix == 0  # their drop layers rank by each conversation's own last token: nothing is identical
    assert torch.equal(shared_seg, plain_seg)


def test_several_images_share_the_text_before_the_image(predictor):
    predictor.set_image([random_image(43), random_image(44, 352, 224)])
    groups = [EXPRESSIONS[:2], EXPRESSIONS[2:]]
    plain = predictor.predict_batch(groups, budget=64, method="random", turns_per_conversation=1)
    shared = predictor.predict_batch(
        groups, budget=64, method="random", turns_per_conversation=1, share_prefix=True
    )
    assert 0 < predictor.last_shared_prefix <= image_start(predictor)  # the two images' tokens differ
    for p, s in zip(plain, shared):
        assert all(np.array_equal(a.mask, b.mask) for a, b in zip(p.results, s.results))


def test_lisa_shares_through_the_image(lisa_predictor):
    lisa_predictor.set_image(random_image(45))
    plain, plain_seg, _ = run(lisa_predictor, False, budget=32, method="uniform")
    shared, shared_seg, prefix = run(lisa_predictor, True, budget=32, method="uniform")
    assert prefix > image_start(lisa_predictor) + 32
    torch.testing.assert_close(shared_seg, plain_seg, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("method", ["cls_attention", "litelvlm"])
def test_generation_shares_the_prefill(predictor, method):
    """Generating, the shared prefix's cache serves every conversation: each step's logits equal the unshared
    run's; a forced answer holding [SEG] gives the same masks."""
    tokenizer = predictor.tokenizer
    answer = tokenizer.encode("It is [SEG].") + [tokenizer.eos_id]

    def recorder(logged):
        def force(logits, step):
            logged.append(logits.clone())
            return torch.full((logits.shape[0],), answer[min(step, len(answer) - 1)], dtype=torch.long)

        return force

    predictor.set_image(random_image(47))
    logits = {}
    predictions = {}
    for shared in (False, True):
        logits[shared] = []
        predictions[shared] = predictor.predict(EXPRESSIONS, budget=48, method=method, generate_answer=True,
                                                decoding=recorder(logits[shared]), share_prefix=shared)  # fmt: skip
        prefix = predictor.last_shared_prefix
        assert (prefix > 0) == shared
    start = image_start(predictor)
    kept = torch.tensor([result.indices for result in predictions[True].results])
    common = int((kept == kept[:1]).all(dim=0).long().cumprod(dim=0).sum())  # leading kept tokens all share
    assert prefix == start + common if common < 48 else prefix >= start + 48  # shared: exactly what is equal
    assert common == 48 if method == "cls_attention" else common < 48
    assert len(logits[True]) == len(logits[False]) == len(answer)
    for plain, shared in zip(logits[False], logits[True]):
        torch.testing.assert_close(shared, plain, atol=1e-5, rtol=1e-5)
    for a, b in zip(predictions[False].results, predictions[True].results):
        assert a.answer == b.answer and b.seg_found and np.array_equal(a.mask, b.mask)


def test_teacher_forcing_stops_at_the_last_seg(predictor):
    """Shared, the LLM runs only up to the position that predicts the last [SEG]: the tokens after it (the
    answer's end) cannot change any [SEG] state."""
    predictor.set_image(random_image(48))
    _, _, hidden = capture_seg_states(predictor, EXPRESSIONS[:2], turns_per_conversation=1, share_prefix=True,
                                      budget=32, method="uniform")  # fmt: skip
    seg_id, ends = predictor.tokenizer.seg_id, []
    for expression in EXPRESSIONS[:2]:  # spliced: the image placeholder became 32 tokens
        ids = predictor.conversation_ids([expression])
        ends.append((max(j for j, token in enumerate(ids) if token == seg_id) - 1 + 31, len(ids) - 1 + 32))
    last_seg, longest = max(ends)
    assert hidden.shape[0] == last_seg + 1 - predictor.last_shared_prefix  # the unshared rest stops there
    assert last_seg + 1 < longest


def test_share_prefix_must_be_a_bool(predictor):
    from litelvlm.errors import LiteLVLMError

    predictor.set_image(random_image(46))
    with pytest.raises(LiteLVLMError, match="share_prefix must be True or False"):
        predictor.predict(["a"], share_prefix="yes")


def test_eval_with_share_prefix_records_the_same_masks(tiny_glamm_dir, tmp_path):
    import json

    from litelvlm.cli import main
    from litelvlm.testing import make_tiny_refcoco

    data = make_tiny_refcoco(tmp_path / "refer", dataset="refcoco", num_images=6, seed=0)
    records = {}
    for shared in (False, True):
        out = tmp_path / f"run-{shared}"
        args = ["eval", "--model", str(tiny_glamm_dir), "--data-root", str(data), "--out", str(out), "--protocol",
                "lisa", "--methods", "uniform,litelvlm", "--budgets", "64", "--limit", "2", "--dtype", "float32",
                "--no-progress"] + (["--share-prefix"] if shared else [])  # fmt: skip
        assert main(args) == 0
        lines = (out / "records.jsonl").read_text().splitlines()
        records[shared] = [
            (r["sentence"], r["method"], r["intersection"], r["union"]) for r in map(json.loads, lines)
        ]
        options = json.loads((out / "run.json").read_text())["options"]
        assert options.get("share_prefix", False) == shared  # part of the run's identity only when on
    assert records[True] == records[False] and len(records[True]) > 2
