"""The transformers-native LLaVA host (`LlavaPredictor`) and `litelvlm.prune` on a tiny random
LlavaForConditionalGeneration saved by transformers itself: full budget = plain `model.generate`; pruned = a
reference that builds `inputs_embeds` by hand from the kept indices; batch = singles; the context manager equals
the host and leaves the model exactly as it was."""

import pytest
import torch

import litelvlm
from conftest import random_image
from litelvlm.errors import LiteLVLMError
from litelvlm.hosts.llava import LlavaPredictor
from litelvlm.testing import make_tiny_llava_hf

QUESTIONS = ["What is this?", "Where is the big dog on the left?"]
NEW_TOKENS = 6


@pytest.fixture(scope="module")
def llava(tmp_path_factory):
    root = tmp_path_factory.mktemp("llava")
    directory = make_tiny_llava_hf(root / "llava", clip_directory=root / "clip")
    return LlavaPredictor.from_pretrained(directory, clip=root / "clip", dtype=torch.float32, device="cpu")


@pytest.fixture(scope="module")
def pictures():
    return [random_image(1), random_image(2, 200, 280)]


def prompt(llava, question):
    conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    return llava.processor.apply_chat_template(conversation, add_generation_prompt=True)


def processor_inputs(llava, pictures, questions):
    return llava.processor(images=pictures, text=[prompt(llava, q) for q in questions], return_tensors="pt",
                           padding=True)  # fmt: skip


def new_tokens(generated, inputs, eos):
    """Per row, the generated ids after the prompt, up to and including eos (generate pads finished rows)."""
    rows = []
    for row in generated[:, inputs["input_ids"].shape[1] :].tolist():
        rows.append(row[: row.index(eos) + 1] if eos in row else row)
    return rows


def test_full_budget_equals_plain_generate(llava, pictures):
    inputs = processor_inputs(llava, pictures, QUESTIONS)
    plain = llava.model.generate(**inputs, max_new_tokens=NEW_TOKENS, do_sample=False)
    llava.set_image(pictures)
    ours = llava.answer(QUESTIONS, max_new_tokens=NEW_TOKENS)
    assert [a.tokens for a in ours.answers] == new_tokens(plain, inputs, llava.tokenizer.eos_token_id)
    assert ours.num_visual_tokens == llava.num_patches == 36
    assert [a.indices for a in ours.answers] == [list(range(36))] * 2


def test_prompt_ids_match_the_processor(llava, pictures):
    ids = llava.processor(images=pictures[:1], text=[prompt(llava, QUESTIONS[1])], return_tensors="pt")
    expanded = []
    for token in llava.prompt_ids(QUESTIONS[1]):
        expanded += [llava.image_token_id] * 36 if token == -200 else [token]
    assert ids["input_ids"][0].tolist() == expanded


def hand_built_generation(llava, picture, question, kept):
    """Reference: embeddings of the processor's ids with the image tokens replaced by LLaVA's own projected
    features of the kept patches (tower select layer, CLS dropped, gathered, projected), through
    model.generate(inputs_embeds=...)."""
    model = llava.model
    inputs = llava.processor(images=[picture], text=[prompt(llava, question)], return_tensors="pt")
    ids = inputs["input_ids"][0]
    where = (ids == llava.image_token_id).nonzero()[:, 0]
    start, stop = int(where[0]), int(where[-1]) + 1
    hidden = model.model.vision_tower(inputs["pixel_values"], output_hidden_states=True).hidden_states
    patches = hidden[model.config.vision_feature_layer][0, 1:]
    visual = model.model.multi_modal_projector(patches[kept])
    embed = model.get_input_embeddings()
    embeds = torch.cat([embed(ids[:start]), visual, embed(ids[stop:])])[None]
    out = model.generate(inputs_embeds=embeds, attention_mask=torch.ones(embeds.shape[:2], dtype=torch.long),
                         max_new_tokens=NEW_TOKENS, do_sample=False)  # fmt: skip
    row = out[0].tolist()
    eos = llava.tokenizer.eos_token_id
    return row[: row.index(eos) + 1] if eos in row else row


@pytest.mark.parametrize("method", ["litelvlm", "uniform", "cls_attention"])
def test_pruned_equals_hand_built_inputs_embeds(llava, pictures, method):
    llava.set_image(pictures)
    ours = llava.answer(QUESTIONS, method=method, budget=8, max_new_tokens=NEW_TOKENS)
    for answer, picture, question in zip(ours.answers, pictures, QUESTIONS):
        assert len(answer.indices) == 8
        assert answer.tokens == hand_built_generation(llava, picture, question, answer.indices)


def test_batch_equals_singles(llava, pictures):
    llava.set_image(pictures)
    batch = llava.answer(QUESTIONS, method="litelvlm", budget=12, max_new_tokens=NEW_TOKENS)
    for index, (picture, question) in enumerate(zip(pictures, QUESTIONS)):
        llava.set_image(picture)
        single = llava.answer([question], method="litelvlm", budget=12, max_new_tokens=NEW_TOKENS)
        assert single.answers[0].tokens == batch.answers[index].tokens
        assert single.answers[0].indices == batch.answers[index].indices


@pytest.mark.parametrize("method", ["fastv", "pdrop"])
def test_in_llm_methods_generate_with_the_pruned_cache(llava, pictures, method):
    llava.set_image(pictures)
    full = llava.answer(QUESTIONS, method=method, max_new_tokens=NEW_TOKENS)
    plain = llava.answer(QUESTIONS, max_new_tokens=NEW_TOKENS)
    assert [a.tokens for a in full.answers] == [
        a.tokens for a in plain.answers
    ]  # full budget: nothing dropped
    pruned = llava.answer(QUESTIONS, method=method, budget=8, budget_mode="final", max_new_tokens=NEW_TOKENS)
    assert all(len(a.llm_kept) == 8 and len(a.tokens) >= 1 for a in pruned.answers)
    for index, picture in enumerate(pictures):
        llava.set_image(picture)
        single = llava.answer([QUESTIONS[index]], method=method, budget=8, budget_mode="final",
                              max_new_tokens=NEW_TOKENS)  # fmt: skip
        assert single.answers[0].tokens == pruned.answers[index].tokens


@pytest.mark.parametrize("method", ["litelvlm", "visionzip", "random"])
@pytest.mark.parametrize("positions", ["compact", "original"])
def test_prune_context_manager_equals_the_host(llava, pictures, method, positions):
    model = llava.model
    inputs = processor_inputs(llava, pictures, QUESTIONS)
    with litelvlm.prune(model, llava.processor, method=method, budget=8, clip=llava.scorer,
                        positions=positions) as state:  # fmt: skip
        generated = model.generate(**inputs, max_new_tokens=NEW_TOKENS, do_sample=False)
    llava.set_image(pictures)
    ours = llava.answer(QUESTIONS, method=method, budget=8, positions=positions, max_new_tokens=NEW_TOKENS)
    assert new_tokens(generated, inputs, llava.tokenizer.eos_token_id) == [a.tokens for a in ours.answers]
    assert state.last_kept.tolist() == [a.indices for a in ours.answers]


@pytest.mark.parametrize("method", ["fastv", "pdrop", "sparsevlm"])
def test_prune_context_manager_runs_in_llm_methods_like_the_host(llava, pictures, method):
    """In-LLM methods inside the block: transformers' own left-padded prefill with the decoder layers wrapped;
    the same tokens and the same surviving patches as the host's right-padded run."""
    model = llava.model
    layers = model.model.language_model.layers
    inputs = processor_inputs(llava, pictures, QUESTIONS)
    with litelvlm.prune(model, llava.processor, method=method, budget=8, budget_mode="final") as state:
        generated = model.generate(**inputs, max_new_tokens=NEW_TOKENS, do_sample=False)
        pruned = state.llm_state
    assert model.model.language_model.layers is layers  # the original ModuleList object is back
    llava.set_image(pictures)
    ours = llava.answer(QUESTIONS, method=method, budget=8, budget_mode="final", max_new_tokens=NEW_TOKENS)
    assert new_tokens(generated, inputs, llava.tokenizer.eos_token_id) == [a.tokens for a in ours.answers]
    deepest = pruned.kept[max(pruned.kept)]
    for row, (start, _) in enumerate(pruned.image_spans):
        assert (deepest[row] - start).tolist() == ours.answers[row].llm_kept


def test_prune_restores_the_model_exactly_and_is_idempotent(llava, pictures):
    model = llava.model
    inputs = processor_inputs(llava, pictures, QUESTIONS)
    with torch.inference_mode():
        before = model(**inputs).logits
    hooks = lambda: (len(model._forward_pre_hooks), len(model.model.vision_tower._forward_pre_hooks))  # noqa: E731
    empty = hooks()
    with litelvlm.prune(model, llava.processor, method="uniform", budget=8, clip=llava.scorer):
        with torch.inference_mode():
            pruned = model(**inputs).logits  # a plain forward is pruned too: 36 image tokens became 8
        assert pruned.shape[1] == before.shape[1] - 28
        with litelvlm.prune(model, llava.processor, method="litelvlm", budget=4, clip=llava.scorer) as inner:
            assert hooks() == (empty[0] + 1, empty[1] + 1) and inner.settings.budget == 4
        assert model._litelvlm_prune.settings.budget == 8  # the outer block's settings are back
    assert hooks() == empty and not hasattr(model, "_litelvlm_prune")
    with torch.inference_mode():
        assert torch.equal(model(**inputs).logits, before)


def test_bad_input_is_one_sentence(llava, pictures, tiny_glamm_dir):
    llava.set_image(pictures)
    with pytest.raises(LiteLVLMError, match=r"got the string 'What\?'; pass \['What\?'\]"):
        llava.answer("What?")
    with pytest.raises(LiteLVLMError, match="images must give"):
        llava.answer(["a", "b"], images=[0, 5])
    with pytest.raises(LiteLVLMError, match="not LlavaForConditionalGeneration"):
        LlavaPredictor.from_pretrained(tiny_glamm_dir, clip=tiny_glamm_dir, device="cpu")


def test_a_llava_checkpoint_given_to_segmentation_says_where_it_belongs(llava, tmp_path, capsys):
    from litelvlm.cli import main

    directory = llava.model.name_or_path
    random_image(9).save(tmp_path / "x.png")
    code = main(["segment", "--model", directory, "--image", str(tmp_path / "x.png"), "--text", "a dog", "--out",
                 str(tmp_path / "m.png")])  # fmt: skip
    assert code == 2 and "litelvlm answer" in capsys.readouterr().err


def test_prune_without_cache_and_with_beams(llava, pictures):
    """use_cache=False re-runs the prompt at every step: the prompt's selection is kept, so the tokens equal the
    cached run's. Beam search repeats each prompt's row: it equals beam search over hand-built inputs_embeds."""
    model = llava.model
    inputs = processor_inputs(llava, pictures, QUESTIONS)
    with litelvlm.prune(model, llava.processor, method="litelvlm", budget=8, clip=llava.scorer) as state:
        cached = model.generate(**inputs, max_new_tokens=NEW_TOKENS, do_sample=False)
        uncached = model.generate(**inputs, max_new_tokens=NEW_TOKENS, do_sample=False, use_cache=False)
        one = processor_inputs(llava, pictures[:1], QUESTIONS[:1])
        beams = model.generate(**one, max_new_tokens=NEW_TOKENS, num_beams=2, num_return_sequences=2,
                               do_sample=False)  # fmt: skip
        kept = state.last_kept[0].tolist()
    assert torch.equal(cached, uncached)
    assert state.last_kept.shape[0] == 2 and torch.equal(state.last_kept[0], state.last_kept[1])
    ids = one["input_ids"][0]
    where = (ids == llava.image_token_id).nonzero()[:, 0]
    start, stop = int(where[0]), int(where[-1]) + 1
    hidden = model.model.vision_tower(one["pixel_values"], output_hidden_states=True).hidden_states
    visual = model.model.multi_modal_projector(hidden[model.config.vision_feature_layer][0, 1:][kept])
    embed = model.get_input_embeddings()
    embeds = torch.cat([embed(ids[:start]), visual, embed(ids[stop:])])[None]
    reference = model.generate(inputs_embeds=embeds, attention_mask=torch.ones(embeds.shape[:2], dtype=torch.long),
                               max_new_tokens=NEW_TOKENS, num_beams=2, num_return_sequences=2, do_sample=False)  # fmt: skip
    assert beams[:, ids.shape[0] :].tolist() == reference.tolist()


def test_prune_refuses_other_models(llava):
    with (
        pytest.raises(
            LiteLVLMError, match="takes a transformers LlavaForConditionalGeneration, got a Linear"
        ),
        litelvlm.prune(torch.nn.Linear(2, 2), llava.processor, method="litelvlm", budget=8),
    ):
        pass
