"""The LISA host on tiny random checkpoints in LISA v1's official layouts (7B-v1 and 13B-llama2-v1)."""

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import capture_seg_states, matching_rows, random_image
from litelvlm.errors import LiteLVLMError
from litelvlm.hosts import GroundingPredictor, detect_host, get_host
from litelvlm.hosts.conversation import SYSTEM
from litelvlm.hosts.llm import IMAGE_TOKEN_INDEX
from litelvlm.hosts.model import checkpoint_key_targets
from litelvlm.selection import list_methods
from litelvlm.testing import make_tiny_lisa, make_tiny_refcoco
from reference import lisa_reference_logits
from test_cli_select import run_cli

LISA = get_host("lisa")
EXPRESSIONS = ["the cat on the left", "White car ", "a small dog"]


@pytest.fixture(scope="module")
def picture():
    return random_image(21, 280, 210)


@pytest.fixture(scope="module")
def lisa13_dir(tmp_path_factory, tiny_lisa_dir):
    return make_tiny_lisa(
        tmp_path_factory.mktemp("tiny-lisa13"), seed=1, variant="13b", clip_dir=tiny_lisa_dir / "clip"
    )


def agree(mask, logits, margin=1e-3):
    """Masks equal wherever the reference logit is not within `margin` of the threshold."""
    confident = (logits.abs() > margin).numpy()
    return bool((mask[confident] == (logits > 0).numpy()[confident]).all())


# ------------------------------------------------------------------------------------------------- checkpoint
def test_the_host_and_its_layout_are_read_from_the_checkpoint(tiny_lisa_dir, lisa13_dir, lisa_predictor):
    for directory in (tiny_lisa_dir, lisa13_dir):
        host, config = detect_host(directory)
        assert host is LISA and config["architectures"] == ["LISAForCausalLM"]
    assert (
        lisa_predictor.host is LISA
        and lisa_predictor.num_patches == 256
        and lisa_predictor.scorer.grid == (16, 16)
    )
    assert isinstance(lisa_predictor.model.projector, torch.nn.Linear)
    tokenizer = lisa_predictor.tokenizer
    assert (tokenizer.im_start_id, tokenizer.im_end_id, tokenizer.seg_id, tokenizer.vocab_size) == (
        401,
        402,
        403,
        404,
    )


def test_every_checkpoint_tensor_lands_in_the_model_and_sam_comes_from_visual_model(
    tiny_lisa_dir, lisa_predictor
):
    ours = lisa_predictor.model.state_dict()
    dtypes, skipped, sam_keys = set(), [], 0
    for shard in sorted(tiny_lisa_dir.glob("pytorch_model-*.bin")):
        for key, value in torch.load(shard, weights_only=True).items():
            targets = checkpoint_key_targets(LISA, key)
            if targets is None:
                skipped.append(key)
                continue
            sam_keys += key.startswith("model.visual_model.")
            assert all(not target.startswith("sam.") for target in targets) or key.startswith(
                "model.visual_model."
            )
            dtypes.add((key.split(".")[1], value.dtype))
            for target in targets:
                torch.testing.assert_close(ours[target], value.float(), msg=key)
    assert skipped and all(key.endswith("rotary_emb.inv_freq") for key in skipped)
    assert sam_keys > 50
    # Mixed dtypes in the shards, as in the real files: the LLM in bf16, SAM and the [SEG] projection in fp32.
    assert {
        ("layers", torch.bfloat16),
        ("visual_model", torch.float32),
        ("text_hidden_fcs", torch.float32),
    } <= dtypes


# ------------------------------------------------------------------------------------------------- prompt
def expected_eval_ids(tokenizer, expression):
    """LISA's validation prompt with the transformers-4.31 rule written out: whitespace next to the added tokens
    stripped, each text piece SentencePiece-encoded on its own, one BOS."""
    sp = tokenizer.sp
    text = expression.strip().lower()
    return (
        [1]
        + sp.encode(SYSTEM + " USER:")
        + [tokenizer.im_start_id, IMAGE_TOKEN_INDEX, tokenizer.im_end_id]
        + sp.encode(f"What is {text} in this image? Please output segmentation mask. ASSISTANT:")
        + [tokenizer.seg_id]
        + sp.encode(".")
        + [2]
    )


def test_evaluation_prompt_ids_by_hand(lisa_predictor):
    tokenizer = lisa_predictor.tokenizer
    ids = lisa_predictor.conversation_ids(["The Cat "])
    assert ids == expected_eval_ids(tokenizer, "the cat")
    # LISA's validation set writes "<im_end>\n What": the same ids under the whitespace rule.
    literal = (f"{SYSTEM} USER: <im_start><image><im_end>\n What is the cat in this image? Please output "
               "segmentation mask. ASSISTANT: [SEG].</s>")  # fmt: skip
    assert tokenizer.encode_with_image(literal) == ids
    # The state SAM reads is the ":" of "ASSISTANT:", never a stray "▁" (the 4.34+ tokenization's).
    seg = ids.index(tokenizer.seg_id)
    assert tokenizer.id_to_token(ids[seg - 1]) == ":" and tokenizer.id_to_token(ids[seg + 1]) == "▁."


def test_13b_layout_tokenizes_with_seg_first(lisa13_dir):
    predictor = GroundingPredictor.from_pretrained(lisa13_dir, dtype=torch.float32, device="cpu")
    tokenizer = predictor.tokenizer
    assert tokenizer.sp_vocab_size == 400 and (
        tokenizer.seg_id,
        tokenizer.im_start_id,
        tokenizer.im_end_id,
    ) == (
        400,
        401,
        402,
    )
    assert predictor.conversation_ids(["a dog"]) == expected_eval_ids(tokenizer, "a dog")
    assert predictor.model.config.llama["rms_norm_eps"] == 1e-5
    image = random_image(5, 200, 260)
    predictor.set_image(image)
    result = predictor.predict(["a dog"])
    assert agree(result.masks[0], lisa_reference_logits(predictor, image, "a dog")[0])


# ------------------------------------------------------------------------------------------------- pipeline
def test_full_budget_equals_lisa_reference(lisa_predictor, picture):
    lisa_predictor.set_image(picture)
    result = lisa_predictor.predict(EXPRESSIONS)
    assert result.num_visual_tokens == 256 and result.masks.shape == (3, 210, 280) and not result.permuted
    assert [r.conversation for r in result.results] == [0, 1, 2]  # LISA: one sentence per conversation
    for expression, mask in zip(EXPRESSIONS, result.masks):
        assert agree(mask, lisa_reference_logits(lisa_predictor, picture, expression)[0])
    assert 0 < result.masks.mean() < 1


def test_seg_state_comes_from_the_token_before_seg_in_the_spliced_sequence(lisa_predictor, picture):
    """Fails if [SEG]'s own state, or LISA's constant 255 offset, were used at budget 32."""
    lisa_predictor.set_image(picture)
    _, seg_rows, hidden = capture_seg_states(lisa_predictor, EXPRESSIONS[:1], budget=32)
    ids = lisa_predictor.conversation_ids(EXPRESSIONS[:1])
    seg = ids.index(lisa_predictor.tokenizer.seg_id)
    found = matching_rows(seg_rows, hidden)
    assert found == [
        seg + 32 - 1 - 1
    ]  # [SEG] sits at seg + K - 1 after splicing K tokens; take the one before
    assert found[0] != seg + 32 - 1 and found[0] + 1 != 255 + seg


def test_batch_of_three_images_equals_three_runs(lisa_predictor):
    pictures = [random_image(seed, 180 + 50 * seed, 160) for seed in (1, 2, 3)]
    texts = [["the man in red"], ["white car", "a dog"], ["a tree", "the left bike", "sky"]]
    lisa_predictor.set_image(pictures)
    batched = lisa_predictor.predict_batch(texts, budget=48)
    for picture, group, result in zip(pictures, texts, batched):
        lisa_predictor.set_image(picture)
        alone = lisa_predictor.predict(group, budget=48)
        assert [r.indices for r in result.results] == [r.indices for r in alone.results]
        same = np.mean([(a == b).mean() for a, b in zip(result.masks, alone.masks)])
        assert same > 0.999 and result.masks.shape == alone.masks.shape


def test_generation_agrees_with_teacher_forcing_on_the_same_answer(lisa_predictor, picture):
    tokenizer = lisa_predictor.tokenizer
    forced_ids = lisa_predictor.conversation_ids(["a dog"])
    answer = forced_ids[forced_ids.index(tokenizer.seg_id) :]  # "[SEG]", ".", "</s>"

    def force(logits, step):
        return torch.full((logits.shape[0],), answer[step], dtype=torch.long)

    lisa_predictor.set_image(picture)
    generated = lisa_predictor.predict(["a dog"], budget=40, generate_answer=True, decoding=force)
    forced = lisa_predictor.predict(["a dog"], budget=40)
    assert generated.results[0].answer == "[SEG]." and forced.results[0].answer == "[SEG]."
    assert (generated.masks == forced.masks).mean() > 0.999


@pytest.mark.parametrize("method", list_methods())
def test_every_method_at_256_patches(lisa_predictor, picture, method):
    lisa_predictor.set_image(picture)
    options = {"budget_mode": "final"} if method in list_methods("llm") else {}
    pruned = lisa_predictor.predict(["a dog", "the red car"], budget=64, method=method, **options)
    assert pruned.masks.shape == (2, 210, 280)
    if method in list_methods("llm"):
        assert pruned.tokens_per_layer[-1] == 64 and len(pruned.results[0].llm_kept) == 64
    else:
        indices = pruned.results[0].indices
        assert len(indices) == 64 and len(set(indices)) == 64 and all(0 <= i < 256 for i in indices)
    full = lisa_predictor.predict(["a dog"], budget=300, method=method, **options)
    assert full.results[0].indices == list(range(256)) and full.average_visual_tokens == 256


# ------------------------------------------------------------------------------------------------- command line
def test_segment_command_on_lisa(tiny_lisa_dir, image_file, tmp_path, capsys):
    code, _, err = run_cli(capsys, "segment", "--model", str(tiny_lisa_dir), "--image", str(image_file),
                           "--text", "the cat", "--budget", "32", "--out", str(tmp_path / "m.png"),
                           "--json", str(tmp_path / "m.json"), "--overlay", str(tmp_path / "o.png"))  # fmt: skip
    assert code == 0, err
    assert Image.open(tmp_path / "m.png").size == Image.open(image_file).size
    payload = json.loads((tmp_path / "m.json").read_text())
    assert (payload["host"], payload["num_patches"], payload["num_visual_tokens"]) == ("lisa", 256, 32)
    assert payload["expressions"][0]["answer"] == "[SEG]." and (tmp_path / "o.png").is_file()


@pytest.fixture(scope="module")
def refer_root(tmp_path_factory):
    return make_tiny_refcoco(tmp_path_factory.mktemp("refer-lisa"), dataset="refcoco", num_images=6, seed=2)


def test_eval_on_lisa_uses_lisas_protocol(tiny_lisa_dir, refer_root, tmp_path, capsys):
    out = tmp_path / "run"
    code, _, err = run_cli(capsys, "eval", "--model", str(tiny_lisa_dir), "--data-root", str(refer_root),
                           "--split", "val", "--methods", "litelvlm", "--budgets", "256,32", "--dtype", "float32",
                           "--no-progress", "--out", str(out))  # fmt: skip
    assert code == 0, err
    run = json.loads((out / "run.json").read_text())
    assert run["protocol"] == "lisa"
    records = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    sentences = sum(len(r.sentences) for i in __import__("litelvlm.data", fromlist=["load_refcoco"]).load_refcoco(
        refer_root, "refcoco", "val").images for r in i.referents)  # fmt: skip
    assert len(records) == 2 * sentences  # every sentence, at each budget
    assert {(r["question_template"], r["answer_template"]) for r in records} == {(3, 4)}
    assert all(r["conversation"] == r["query"] for r in records)  # one conversation per sentence
    results = json.loads((out / "results.json").read_text())["results"]
    assert [r["budget"] for r in results] == [256, 32] and all(0 <= r["ciou"] <= 1 for r in results)


def test_glamm_protocol_on_lisa_is_refused(tiny_lisa_dir, refer_root, tmp_path, capsys):
    code, _, err = run_cli(capsys, "eval", "--model", str(tiny_lisa_dir), "--data-root", str(refer_root),
                           "--protocol", "glamm", "--out", str(tmp_path / "run"))  # fmt: skip
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert "'glamm'" in err and "LISA" in err and "--protocol lisa" in err
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------------------------------------- bad input
def copy_of(source, tmp_path, edit=lambda directory: None):
    target = tmp_path / "copy"
    shutil.copytree(source, target)
    edit(target)
    return target


def _architectures(name):
    def edit(directory):
        config = json.loads((directory / "config.json").read_text())
        config["architectures"] = [name]
        (directory / "config.json").write_text(json.dumps(config))

    return edit


def test_a_checkpoint_of_neither_host_names_what_was_found(tiny_lisa_dir, tmp_path):
    broken = copy_of(tiny_lisa_dir, tmp_path, _architectures("LlamaForCausalLM"))
    with pytest.raises(
        LiteLVLMError, match=r"not a GLaMM checkpoint, nor a LISA one .*'LlamaForCausalLM'.*'llava'"
    ):
        GroundingPredictor.from_pretrained(broken, device="cpu")


def test_lisa_v0_layout_is_refused(tiny_lisa_dir, tmp_path):
    broken = copy_of(
        tiny_lisa_dir, tmp_path, lambda d: (d / "pytorch_model-text_hidden_fcs.bin").write_bytes(b"")
    )
    with pytest.raises(LiteLVLMError, match="LISA v0 checkpoint.*not support.*use a v1 checkpoint"):
        GroundingPredictor.from_pretrained(broken, device="cpu")


def test_missing_clip_offline_and_a_336px_clip(tiny_lisa_dir, tiny_clip_dir):
    with pytest.raises(LiteLVLMError, match="pass its local directory"):
        GroundingPredictor.from_pretrained(tiny_lisa_dir, clip="openai/clip-vit-large-patch14", device="cpu")
    with pytest.raises(LiteLVLMError, match=r"224 px.*336 px \(576 patches\).*clip="):
        GroundingPredictor.from_pretrained(tiny_lisa_dir, clip=tiny_clip_dir, device="cpu")


def test_lisa_conversations_hold_one_expression(lisa_predictor, picture):
    lisa_predictor.set_image(picture)
    with pytest.raises(LiteLVLMError, match="from 1 to 1 for LISA"):
        lisa_predictor.predict(["a", "b"], turns_per_conversation=2)


def test_analyze_with_lisas_224px_clip(tiny_lisa_dir, refer_root, tmp_path, capsys):
    code, out, err = run_cli(capsys, "analyze", "--clip", str(tiny_lisa_dir / "clip"), "--data-root",
                             str(refer_root), "--methods", "litelvlm,uniform,visionzip", "--budgets", "16,64,300",
                             "--protocol", "lisa", "--no-progress", "--out", str(tmp_path / "a"))  # fmt: skip
    assert code == 0, err
    result = json.loads((tmp_path / "a" / "analysis.json").read_text())
    rows = {(r["method"], r["budget"]): r for r in result["selection"]}
    assert all(rows[(m, 300)]["count"] > 0 for m in ("litelvlm", "uniform", "visionzip"))
    assert all(rows[(m, 300)]["referent_recall"] == 1.0 for m in ("litelvlm", "uniform", "visionzip"))
    assert all(rows[(m, 16)]["referent_recall"] < 1.0 for m in ("litelvlm", "uniform", "visionzip"))
    assert all(r["referent_precision"] is None or 0 <= r["referent_precision"] <= 1 for r in rows.values())
    assert (tmp_path / "a" / "analysis.png").stat().st_size > 0
