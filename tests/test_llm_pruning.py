"""In-LLM pruning (FastV, PyramidDrop, SparseVLM) on the tiny GLaMM: exactness with nothing dropped, kept tokens
against transformers' own eager attention, [SEG] rows after dropping, batching, generation, SDPA untouched."""

import pytest
import torch

from conftest import capture_seg_states, device_tolerance, matching_rows, random_image
from litelvlm.errors import LiteLVLMError
from litelvlm.hosts.conversation import build_turns, render_conversation
from litelvlm.hosts.glamm import GlammHost
from litelvlm.hosts.llm import final_hidden_states, splice_visual_tokens
from litelvlm.hosts.llm_pruning import apply_pruning, pruning, remove_pruning
from litelvlm.selection import PruneStep, PruningPlan, get_method, select_tokens
from litelvlm.selection.base import TokenScores

EXPRESSIONS = ["the man in red", "white car on the left"]
N = 576


@pytest.fixture(scope="module")
def picture():
    return random_image(21, 260, 200)


@pytest.fixture(scope="module")
def full(predictor, picture):
    predictor.set_image(picture)
    return predictor.predict(EXPRESSIONS, budget=N)


@torch.inference_mode()
def spliced(predictor, picture, expressions=EXPRESSIONS):
    predictor.set_image(picture)
    features = predictor._images.features.patch_features
    ids = predictor.tokenizer.encode_with_image(
        render_conversation(
            build_turns(expressions, [1] * len(expressions), [0] * len(expressions)), GlammHost.image_prefix
        )
    )
    visual = predictor.model.projector(features)
    return splice_visual_tokens(predictor.model.llm.model.embed_tokens, [ids], visual), ids


@pytest.mark.parametrize("method", ["fastv", "pdrop", "sparsevlm"])
def test_nothing_dropped_reproduces_the_unpruned_masks_exactly(predictor, picture, full, method):
    predictor.set_image(picture)
    ratio = {"fastv": {"ratio": 0.0}, "pdrop": {"ratio": 1.0}, "sparsevlm": {}}[method]
    result = predictor.predict(EXPRESSIONS, budget=N if method == "sparsevlm" else 64, method=method, **ratio)
    assert result.tokens_per_layer == [N] * 4
    assert (result.masks == full.masks).all()


@pytest.mark.device
def test_on_the_device_each_method_keeps_the_cpu_tokens(device_predictor, predictor, picture, device):
    """FastV and SparseVLM on the test device: the CPU run's tokens per layer, surviving patches,
    [SEG] rows (1e-4 off the CPU) and masks. (On a CPU the device run is the reference: it only has to run.)"""
    options = {"budget": 64, "budget_mode": "final"}

    def run(model):
        model.set_image(picture)
        return {
            method: capture_seg_states(model, EXPRESSIONS, method=method, **options)[:2]
            for method in ("fastv", "sparsevlm")  # (pdrop ranks by the same rule as fastv)
        }

    on_device = run(device_predictor)
    assert device_predictor.device.type == device.type
    reference = on_device if device_predictor is predictor else run(predictor)
    for method, (result, seg_rows) in on_device.items():
        expected, expected_rows = reference[method]
        assert result.tokens_per_layer == expected.tokens_per_layer, method
        assert result.tokens_per_layer[-1] < N, method
        assert [r.llm_kept for r in result.results] == [r.llm_kept for r in expected.results], method
        assert seg_rows.device.type == device.type
        torch.testing.assert_close(seg_rows.cpu(), expected_rows, **device_tolerance(device, 1.3e-6, 1e-5))
        assert (result.masks == expected.masks).mean() > 0.999, method


def test_the_mechanism_keeping_everything_is_the_identity(predictor, picture):
    batch, _ = spliced(predictor, picture)
    decoder = predictor.model.llm.model
    plain = final_hidden_states(decoder, batch)
    plan = PruningPlan("keep-all", (PruneStep(1, N), PruneStep(2, N, "text_raters", 0)))
    with pruning(decoder, plan, batch.image_spans, [batch.lengths[0] - 1]) as state:
        wrapped = final_hidden_states(decoder, batch)
    assert torch.equal(plain, wrapped) and state.positions.shape[1] == plain.shape[1]


@torch.inference_mode()
def eager_attention(layer, hidden, kwargs):
    """transformers' own eager attention probabilities [B, heads, L, L] for a decoder layer's input."""
    attention = layer.self_attn
    mask = kwargs.get("attention_mask")
    length = hidden.shape[1]
    if mask is None:
        mask = torch.full((length, length), float("-inf")).triu(1)[None, None]
    elif mask.dtype == torch.bool:
        mask = torch.zeros(mask.shape).masked_fill(~mask, float("-inf"))
    previous = attention.config._attn_implementation
    attention.config._attn_implementation = "eager"
    try:
        _, weights = attention(
            hidden_states=layer.input_layernorm(hidden),
            position_embeddings=kwargs["position_embeddings"],
            attention_mask=mask,
        )
    finally:
        attention.config._attn_implementation = previous
    return weights


@pytest.mark.parametrize("method,budget", [("fastv", 64), ("pdrop", 64), ("sparsevlm", 64)])
def test_kept_tokens_match_a_plain_reference_of_the_scoring_rule(predictor, picture, method, budget):
    batch, _ = spliced(predictor, picture)
    decoder = predictor.model.llm.model
    plan = get_method(method).fn(budget, len(decoder.layers), N, budget_mode="final")
    captured = {}
    hooks = [
        layer.register_forward_pre_hook(
            lambda module, args, kwargs, index=index: captured.__setitem__(index, (args[0], kwargs)),
            with_kwargs=True,
        )
        for index, layer in enumerate(decoder.layers)
    ]
    try:
        with pruning(decoder, plan, batch.image_spans, [batch.lengths[0] - 1]) as state:
            final_hidden_states(decoder, batch)
    finally:
        for hook in hooks:
            hook.remove()
    start, stop = batch.image_spans[0]
    alive = torch.arange(batch.embeds.shape[1])
    for step in plan.steps:
        hidden, kwargs = captured[step.layer - 1]
        weights = eager_attention(decoder.layers[step.layer - 1], hidden, kwargs).mean(dim=1)[0]  # [L, L]
        visual = (alive >= start) & (alive < stop)
        to_image = weights[:, visual]  # [L, V]
        if step.rule == "last_token":
            scores = to_image[-1]
        else:
            text = alive >= stop
            share = to_image[text].sum(dim=1)
            raters = share >= share.mean()
            scores = to_image[text][raters].mean(dim=0)
        ranked = alive[visual][scores.argsort(descending=True, stable=True)]
        plain = step.keep - step.recycle
        expected = set(ranked[:plain].tolist()) | set(ranked[plain : plain + step.recycle].tolist())
        assert set(state.kept[step.layer].tolist()[0]) == expected, f"{method} step at layer {step.layer}"
        kept = torch.tensor(sorted(expected))
        alive = torch.cat([alive[~visual & (alive < start)], kept, alive[alive >= stop]])


@pytest.mark.parametrize("method", ["fastv", "pdrop", "sparsevlm"])
def test_seg_rows_are_exact_after_dropping(predictor, picture, method):
    predictor.set_image(picture)
    result, seg_rows, hidden = capture_seg_states(
        predictor, EXPRESSIONS, budget=64, method=method, budget_mode="final"
    )
    ids = predictor.tokenizer.encode_with_image(
        render_conversation(build_turns(EXPRESSIONS, [1, 1], [0, 0]), GlammHost.image_prefix)
    )
    seg = [i for i, token in enumerate(ids) if token == predictor.tokenizer.seg_id]
    dropped = N - result.tokens_per_layer[-1]
    expected = [s + N - 2 - dropped for s in seg]
    assert hidden.shape[0] == len(ids) - 1 + N - dropped
    assert matching_rows(seg_rows, hidden) == expected


@pytest.mark.parametrize("method", ["fastv", "sparsevlm"])
def test_batch_of_three_equals_three_runs(predictor, method):
    pictures = [random_image(seed, 180 + 30 * seed, 160) for seed in (4, 5, 6)]
    texts = [["a dog"], ["white car", "the sky"], ["left bike"]]
    predictor.set_image(pictures)
    batched = predictor.predict_batch(texts, budget=64, method=method, budget_mode="final")
    for picture, group, result in zip(pictures, texts, batched):
        predictor.set_image(picture)
        alone = predictor.predict(group, budget=64, method=method, budget_mode="final")
        assert [r.llm_kept for r in result.results] == [r.llm_kept for r in alone.results]
        assert (result.masks == alone.masks).mean() > 0.999


@pytest.mark.parametrize("method", ["fastv", "pdrop", "sparsevlm"])
def test_generation_uses_the_pruned_cache_and_agrees_with_teacher_forcing(predictor, picture, method):
    tokenizer = predictor.tokenizer
    prompt_tf = tokenizer.encode_with_image(
        render_conversation(build_turns(["a dog"], [1], [0]), GlammHost.image_prefix)
    )
    prompt_gen = tokenizer.encode_with_image(
        render_conversation(build_turns(["a dog"], [1], None), GlammHost.image_prefix)
    )
    answer = prompt_tf[len(prompt_gen) :]
    force = lambda logits, step: torch.full((logits.shape[0],), answer[step])  # noqa: E731
    predictor.set_image(picture)
    options = {"budget": 64, "method": method, "budget_mode": "final"}
    generated = predictor.predict(["a dog"], generate_answer=True, decoding=force, **options)
    forced = predictor.predict(["a dog"], **options)
    assert generated.results[0].answer == "It is [SEG]."
    assert generated.results[0].llm_kept == forced.results[0].llm_kept
    assert (generated.masks == forced.masks).mean() > 0.999


def test_sdpa_stays_on_and_no_attention_maps_are_requested(predictor, picture, monkeypatch):
    calls = []
    original = torch.nn.functional.scaled_dot_product_attention

    def spy(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
    predictor.set_image(picture)
    predictor.predict(EXPRESSIONS, budget=64, method="pdrop", budget_mode="final")
    assert predictor.model.llm.config._attn_implementation == "sdpa"
    assert len(calls) >= len(predictor.model.llm.model.layers)


def test_apply_is_idempotent_and_remove_restores(predictor, picture):
    decoder = predictor.model.llm.model
    originals = list(decoder.layers)
    batch, _ = spliced(predictor, picture)
    plan = PruningPlan("x", (PruneStep(2, 10),))
    from litelvlm.hosts.llm_pruning import PruningState

    apply_pruning(decoder, PruningState(plan, batch.image_spans, [0]))
    apply_pruning(decoder, PruningState(plan, batch.image_spans, [0]))
    assert all(type(layer).__name__ == "_PruningLayer" for layer in decoder.layers)
    assert all(layer.inner is original for layer, original in zip(decoder.layers, originals))
    remove_pruning(decoder)
    remove_pruning(decoder)
    assert list(decoder.layers) == originals


def test_plans_meet_their_budgets():
    for name in ("fastv", "pdrop", "sparsevlm"):
        for budget in (192, 128, 64):
            plan = get_method(name).fn(budget, 32, N)
            assert abs(plan.average_tokens(32, N) - budget) <= 0.05 * budget, (name, budget)
            final = get_method(name).fn(budget, 32, N, budget_mode="final")
            assert abs(final.tokens_per_layer(32, N)[-1] - budget) <= 1
    assert [(s.layer, s.keep) for s in get_method("sparsevlm").fn(192, 32, N).steps] == [
        (2, 300),
        (6, 200),
        (15, 110),
    ]
    with pytest.raises(LiteLVLMError, match="cannot average"):
        get_method("fastv").fn(30, 32, N)
    with pytest.raises(LiteLVLMError, match="budget_mode"):
        get_method("pdrop").fn(64, 32, N, budget_mode="mean")
    for name in ("fastv", "pdrop", "sparsevlm"):  # one layer: no earlier attention to rank by (was a KeyError)
        with pytest.raises(LiteLVLMError, match=r"at least 2 decoder layers .*, got 1;"):
            get_method(name).fn(64, 1, N, budget_mode="final")


def test_in_llm_methods_refuse_the_pure_selector():
    scores = TokenScores(1, N, (24, 24), context=torch.rand(1, N))
    with pytest.raises(LiteLVLMError, match="inside the LLM"):
        select_tokens("fastv", scores, 64)
