"""The tiny llava-hf checkpoint loads through transformers' own classes, offline, and behaves as llava-1.5-7b-hf."""

import json

import pytest
import torch

from conftest import random_image
from litelvlm.testing import make_tiny_llava_hf
from litelvlm.testing.llava_hf import HUB_KEY_PREFIXES, vision_tower

QUESTION = "What is shown in this image?"
LONG_PROMPT = (
    "USER: <image>\nWhat color is the large red car parked on the left side of the street? ASSISTANT:"
)


@pytest.fixture(scope="module")
def llava_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny-llava-hf")
    return make_tiny_llava_hf(root / "llava", seed=0, clip_directory=root / "clip"), root / "clip"


@pytest.fixture(scope="module")
def processor(llava_dirs):
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(llava_dirs[0])


@pytest.fixture(scope="module")
def model(llava_dirs):
    """In float32, so greedy choices do not hinge on float16 rounding."""
    from transformers import LlavaForConditionalGeneration

    return LlavaForConditionalGeneration.from_pretrained(llava_dirs[0], dtype=torch.float32).eval()


def test_config_and_files_have_llava_hf_fields(llava_dirs, processor):
    directory = llava_dirs[0]
    config = json.loads((directory / "config.json").read_text())
    tokenizer = processor.tokenizer
    assert config["architectures"] == ["LlavaForConditionalGeneration"] and config["model_type"] == "llava"
    assert (
        config["image_token_index"] == tokenizer.convert_tokens_to_ids("<image>") == processor.image_token_id
    )
    assert config["pad_token_id"] == tokenizer.pad_token_id == tokenizer.convert_tokens_to_ids("<pad>")
    assert (config["vision_feature_layer"], config["vision_feature_select_strategy"]) == (-2, "default")
    assert config["projector_hidden_act"] == "gelu" and config["image_seq_length"] == 36
    vision, text = config["vision_config"], config["text_config"]
    assert vision["model_type"] == "clip_vision_model" and (vision["image_size"], vision["patch_size"]) == (
        84,
        14,
    )
    assert vision["projection_dim"] > 0 and text["model_type"] == "llama"
    assert text["vocab_size"] % 64 == 0 and text["vocab_size"] >= len(tokenizer)
    assert (tokenizer.bos_token, tokenizer.eos_token, tokenizer.unk_token) == ("<s>", "</s>", "<unk>")
    assert tokenizer.padding_side == "left" and len(tokenizer) <= 1000
    assert (processor.patch_size, processor.num_additional_image_tokens) == (14, 1)
    assert processor.vision_feature_select_strategy == "default"
    index = json.loads((directory / "model.safetensors.index.json").read_text())
    hub_prefixes = tuple(hub for _, hub in HUB_KEY_PREFIXES)
    assert all(key.startswith(hub_prefixes) for key in index["weight_map"])
    assert "vision_tower.vision_model.encoder.layers.0.self_attn.q_proj.weight" in index["weight_map"]
    assert len(set(index["weight_map"].values())) > 1 and (directory / "tokenizer.model").exists()


def test_processor_expands_the_image_token(processor, model):
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    assert prompt == f"USER: <image>\n{QUESTION} ASSISTANT:"
    inputs = processor(images=random_image(0), text=prompt, return_tensors="pt")
    assert inputs["pixel_values"].shape == (1, 3, 84, 84)
    ids = inputs["input_ids"][0]
    image_positions = (ids == model.config.image_token_id).nonzero().flatten()
    assert len(image_positions) == 36 and (image_positions.diff() == 1).all()
    assert ids[0] == processor.tokenizer.bos_token_id
    # llava-hf's tokenizer.json prepends "▁" to the text after an added token: "USER:  \nWhat ..." decoded.
    assert processor.decode(ids, skip_special_tokens=True) == f"USER:  \n{QUESTION} ASSISTANT:"


def test_generate_single_and_left_padded_batch(processor, model):
    image = random_image(1)
    short = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]}],
        add_generation_prompt=True,
    )
    single = processor(images=image, text=short, return_tensors="pt")
    batch = processor(images=[image, image], text=[short, LONG_PROMPT], return_tensors="pt", padding=True)
    lengths = batch["attention_mask"].sum(dim=1)
    assert lengths[0] < lengths[1] and (batch["attention_mask"][0, : lengths[1] - lengths[0]] == 0).all()
    assert (batch["input_ids"][0, 0] == processor.tokenizer.pad_token_id).item()
    with torch.no_grad():
        one = model.generate(**single, max_new_tokens=5, do_sample=False)
        both = model.generate(**batch, max_new_tokens=5, do_sample=False)
    assert one.shape == (1, single["input_ids"].shape[1] + 5)
    assert both.shape == (2, batch["input_ids"].shape[1] + 5)
    # Left padding is masked: the short prompt continues the same way alone and in the batch.
    assert torch.equal(both[0, -5:], one[0, -5:])


def test_clip_checkpoint_shares_the_vision_tower(llava_dirs, model):
    from transformers import CLIPModel

    from litelvlm.scoring import ClipScorer

    clip = CLIPModel.from_pretrained(llava_dirs[1])
    tower = vision_tower(model).state_dict()
    vision = clip.vision_model.state_dict()
    assert tower.keys() == vision.keys()
    assert all(torch.equal(tower[key], vision[key]) for key in tower)
    assert clip.config.vision_config.image_size == model.config.vision_config.image_size

    scorer = ClipScorer.from_pretrained(llava_dirs[1])
    pixels = scorer.pixel_values(random_image(2))
    features = scorer.encode_image(pixels)
    assert features.patch_features.shape == (1, 36, 32)
    with torch.no_grad():  # the scorer's select-layer patches are what LLaVA projects into the LLM
        expected = model.model.get_image_features(pixel_values=pixels).pooler_output[0]
        projected = model.model.multi_modal_projector(features.patch_features)[0]
    torch.testing.assert_close(projected, expected)


def test_same_seed_writes_identical_files(llava_dirs, tmp_path):
    first = llava_dirs[0]
    again = make_tiny_llava_hf(tmp_path / "again", seed=0)
    names = sorted(path.name for path in first.glob("*.safetensors"))
    assert names == sorted(path.name for path in again.glob("*.safetensors")) and names
    for name in [*names, "tokenizer.json", "tokenizer.model", "config.json", "model.safetensors.index.json"]:
        assert (first / name).read_bytes() == (again / name).read_bytes(), name
