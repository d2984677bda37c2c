"""GLaMM conversation rendering and its reference (transformers 4.28-era) tokenization, on a tiny tokenizer."""

import json

import pytest

from litelvlm.errors import LiteLVLMError
from litelvlm.hosts.conversation import Turn, build_turns, render_conversation
from litelvlm.hosts.glamm import GlammHost
from litelvlm.hosts.llm import IMAGE_TOKEN_INDEX
from litelvlm.hosts.tokenizer import LegacyLlamaTokenizer
from litelvlm.prompts import ANSWER_LIST
from litelvlm.synthetic.llama_tokenizer import write_tiny_llama_tokenizer

FILES = ("tokenizer.model", "added_tokens.json", "tokenizer_config.json", "special_tokens_map.json")

# Spec section 5, the rendered example with 2 expressions (the system prompt written out in full).
SPEC_EXAMPLE = (
    "A chat between a curious human and an artificial intelligence assistant. The assistant gives helpful, "
    "detailed, and polite answers to the human's questions. USER: The <im_start><image><im_end> provides an "
    "overview of the picture.\nCan you segment the man on left in this image? ASSISTANT: Sure, [SEG].</s>"
    "USER: Please segment white car in this image. ASSISTANT: It is [SEG].</s>"
)
SYSTEM_TEXT = SPEC_EXAMPLE.split(" USER: ")[0]


def glamm_tokenizer(directory, **options):
    return LegacyLlamaTokenizer.from_pretrained(
        directory, required_tokens=GlammHost.added_tokens, host_name="GLaMM", **options
    )


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("tiny-llama")
    added = write_tiny_llama_tokenizer(directory)
    assert added == {
        "<im_start>": 400,
        "<im_end>": 401,
        "<bbox>": 402,
        "<point>": 403,
        "[SEG]": 404,
        "<p>": 405,
        "</p>": 406,
    }
    return directory


@pytest.fixture(scope="module")
def tok(tiny_dir):
    return glamm_tokenizer(tiny_dir)


def test_spec_example_renders_verbatim():
    turns = build_turns(["Man on left ", "white car"], [0, 1], [1, 0])
    assert turns == [
        Turn("Can you segment the man on left in this image?", "Sure, [SEG]."),
        Turn("Please segment white car in this image.", "It is [SEG]."),
    ]
    assert render_conversation(turns, GlammHost.image_prefix) == SPEC_EXAMPLE


def test_render_without_image_and_generation_prompt():
    turns = build_turns(["dog"], [1], None)
    assert turns == [Turn("Please segment dog in this image.", None)]
    assert render_conversation(turns) == (SYSTEM_TEXT + " USER: Please segment dog in this image. ASSISTANT:")
    two = [
        Turn("Please segment cat in this image.", "[SEG]."),
        Turn("Please segment dog in this image.", None),
    ]
    prompt = render_conversation(two, GlammHost.image_prefix)
    assert prompt.endswith("ASSISTANT: [SEG].</s>USER: Please segment dog in this image. ASSISTANT:")
    assert prompt.count("<im_start><image><im_end>") == 1


def test_tokenizer_ids(tok):
    assert (tok.bos_id, tok.eos_id, tok.pad_id) == (1, 2, 0)
    assert (tok.im_start_id, tok.im_end_id, tok.seg_id, tok.vocab_size) == (400, 401, 404, 407)
    assert tok.model_max_length == 1536


def test_reference_tokenization_by_hand(tok):
    sp = tok.sp
    ids = tok.encode_with_image(SPEC_EXAMPLE)
    # Whitespace next to <im_start>, <im_end> and [SEG] is stripped; every text piece gets its own dummy '▁';
    # "</s>" is split out as eos and not stripped; -200 replaces "<image>" between <im_start> and <im_end>.
    expected = (
        [1]
        + sp.encode(SYSTEM_TEXT + " USER: The")
        + [400, IMAGE_TOKEN_INDEX, 401]
        + sp.encode(
            "provides an overview of the picture.\nCan you segment the man on left in this image? ASSISTANT: Sure,"
        )
        + [404]
        + sp.encode(".")
        + [2]
        + sp.encode("USER: Please segment white car in this image. ASSISTANT: It is")
        + [404]
        + sp.encode(".")
        + [2]
    )
    assert ids == expected
    assert ids.count(1) == 1 and ids[0] == 1
    assert ids.count(IMAGE_TOKEN_INDEX) == 1
    p = ids.index(IMAGE_TOKEN_INDEX)
    assert (ids[p - 1], ids[p + 1]) == (400, 401)
    lone = sp.piece_to_id("▁")
    seg_positions = [i for i, index in enumerate(ids) if index == 404]
    assert len(seg_positions) == 2 and all(s > p for s in seg_positions)
    # The tokens whose hidden states feed SAM: "," of "Sure," and "▁is" of "It is", never a stray '▁'.
    assert [tok.id_to_token(ids[s - 1]) for s in seg_positions] == [",", "▁is"]
    assert all(ids[s - 1] != lone for s in seg_positions)
    assert [tok.id_to_token(ids[s + 1]) for s in seg_positions] == ["▁.", "▁."]
    eos_first = ids.index(2)
    assert tok.id_to_token(ids[eos_first + 1]).startswith("▁")  # "USER" after </s> has its dummy prefix
    assert tok.id_to_token(ids[p + 2]).startswith("▁")  # and so does "provides" after <im_end>
    # "\n" is byte-encoded as in LLaMA.
    assert sp.piece_to_id("<0x0A>") in ids
    # Splitting on "<image>" first gives the ids of encoding the whole string with <image> as a no-split token.
    whole = tok.encode(SPEC_EXAMPLE.replace("<image>", "<bbox>"))
    assert [IMAGE_TOKEN_INDEX if index == 402 else index for index in whole] == ids


def test_plain_encode_and_stripping(tok):
    sp = tok.sp
    assert tok.encode("It is [SEG].") == [1, *sp.encode("It is"), 404, *sp.encode(".")]
    assert tok.encode("It is  [SEG]  .") == tok.encode("It is[SEG].")
    # </s> keeps the whitespace around it (AddedToken with lstrip = rstrip = False).
    assert tok.encode("a </s> b") == [1, *sp.encode("a "), 2, *sp.encode(" b")]
    assert tok.encode("<p>man</p> [SEG]") == [1, 405, *sp.encode("man"), 406, 404]
    assert tok.encode("") == [1]


def test_generation_prompt_ids(tok):
    prompt = render_conversation(build_turns(["white car"], [1], None), GlammHost.image_prefix)
    assert prompt.endswith(" ASSISTANT:")
    ids = tok.encode_with_image(prompt)
    tail = tok.sp.encode("ASSISTANT:")
    assert ids[-len(tail) :] == tail
    assert ids.count(IMAGE_TOKEN_INDEX) == 1 and 404 not in ids


def test_decode_round_trip(tok):
    for answer in ANSWER_LIST:
        generated = tok.encode(answer)[1:] + [tok.eos_id, *tok.sp.encode("junk after eos")]
        assert tok.decode(generated) == answer
    text = "<p> A white car </p> [SEG] next to <p> a man </p> [SEG]."
    assert tok.decode(tok.encode(text)) == text
    with pytest.raises(LiteLVLMError, match="407"):
        tok.decode([407])


def test_modern_mode_differs_as_the_spec_predicts(tiny_dir, tok):
    try:
        modern = glamm_tokenizer(tiny_dir, mode="modern")
    except LiteLVLMError as error:  # e.g. protobuf missing for the SentencePiece conversion
        pytest.skip(str(error))
    text = "ASSISTANT: It is [SEG].</s>USER: Hi"
    reference, new = tok.encode(text), modern.encode(text)
    assert reference != new
    seg = new.index(404)
    assert modern.id_to_token(new[seg - 1]) == "▁"  # the stray '▁' (29871 in LLaMA) before [SEG]
    assert modern.id_to_token(new[seg + 1]) == "."  # no dummy prefix after the added token
    assert tok.id_to_token(reference[reference.index(404) - 1]) == "▁is"


def test_tiny_tokenizer_is_deterministic(tmp_path, tiny_dir):
    write_tiny_llama_tokenizer(tmp_path)
    for name in FILES:
        assert (tmp_path / name).read_bytes() == (tiny_dir / name).read_bytes(), name
    config = json.loads((tiny_dir / "tokenizer_config.json").read_text())
    assert config["legacy"] is False and config["model_max_length"] == 1536 and config["pad_token"] is None
    other = tmp_path / "seed1"
    write_tiny_llama_tokenizer(other, seed=1)
    assert (other / "tokenizer.model").read_bytes() != (tiny_dir / "tokenizer.model").read_bytes()


def _copy(src, dst, skip=()):
    dst.mkdir()
    for name in FILES:
        if name not in skip:
            (dst / name).write_bytes((src / name).read_bytes())
    return dst


def test_errors_missing_files(tmp_path, tiny_dir):
    with pytest.raises(LiteLVLMError, match="tokenizer.model is missing"):
        glamm_tokenizer(_copy(tiny_dir, tmp_path / "a", skip=("tokenizer.model",)))
    with pytest.raises(LiteLVLMError, match="added_tokens.json is missing"):
        glamm_tokenizer(_copy(tiny_dir, tmp_path / "b", skip=("added_tokens.json",)))
    # The optional json files may be absent.
    bare = _copy(tiny_dir, tmp_path / "c", skip=("tokenizer_config.json", "special_tokens_map.json"))
    assert glamm_tokenizer(bare).encode("x [SEG]")[-1] == 404


def test_errors_bad_added_tokens(tmp_path, tiny_dir):
    directory = _copy(tiny_dir, tmp_path / "d")
    added = json.loads((tiny_dir / "added_tokens.json").read_text())
    del added["[SEG]"]
    (directory / "added_tokens.json").write_text(json.dumps(added))
    with pytest.raises(LiteLVLMError, match=r"lacks \[SEG\]"):
        glamm_tokenizer(directory)
    added = {
        token: index + 1 for token, index in json.loads((tiny_dir / "added_tokens.json").read_text()).items()
    }
    (directory / "added_tokens.json").write_text(json.dumps(added))
    with pytest.raises(LiteLVLMError, match="not consecutive from the SentencePiece vocab size 400"):
        glamm_tokenizer(directory)
    with pytest.raises(LiteLVLMError, match="mode"):
        glamm_tokenizer(tiny_dir, mode="fast")


def test_errors_turns():
    with pytest.raises(LiteLVLMError, match="only the last turn"):
        render_conversation([Turn("q1", None), Turn("q2", "[SEG].")])
    with pytest.raises(LiteLVLMError, match="at least one"):
        render_conversation([])
    with pytest.raises(LiteLVLMError, match="question template 16"):
        build_turns(["dog"], [16], [0])
    with pytest.raises(LiteLVLMError, match="answer template 5"):
        build_turns(["dog"], [0], [5])
    with pytest.raises(LiteLVLMError, match="2 question templates for 1"):
        build_turns(["dog"], [0, 1], None)
