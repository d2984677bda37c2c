"""The VQA JSONL format: image paths resolved as load_jsonl resolves them, and one clear error per bad line."""

import json

import pytest
from PIL import Image

from litelvlm.data.vqa import VqaSample, load_vqa_jsonl
from litelvlm.errors import LiteLVLMError


@pytest.fixture
def folder(tmp_path):
    (tmp_path / "imgs").mkdir()
    for name in ("a.png", "b.png"):
        Image.new("RGB", (4, 3), (10, 20, 30)).save(tmp_path / "imgs" / name)
    return tmp_path


def write(path, lines, prefix=b""):
    text = "\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines) + "\n"
    path.write_bytes(prefix + text.encode("utf-8"))
    return path


def test_load_in_file_order(folder):
    path = write(
        folder / "vqa.jsonl",
        [
            {"image": "imgs/a.png", "question": "What colour?", "answers": ["red", "Red", "dark red"]},
            "",
            "   ",
            {"image": "imgs/b.png", "question": "How many?", "answer": "2", "id": "q7", "extra": 1},
            {"image": "imgs/a.png", "question": "Is it día?", "answers": ["sí"], "id": 10},
        ],
        prefix=b"\xef\xbb\xbf",  # a byte-order mark on line 1
    )
    samples = load_vqa_jsonl(path)
    assert samples == [
        VqaSample(1, folder / "imgs" / "a.png", "What colour?", ("red", "Red", "dark red")),
        VqaSample("q7", folder / "imgs" / "b.png", "How many?", ("2",)),
        VqaSample(10, folder / "imgs" / "a.png", "Is it día?", ("sí",)),
    ]


def test_images_folder_then_jsonl_folder(folder, tmp_path_factory):
    other = tmp_path_factory.mktemp("other")
    Image.new("RGB", (2, 2)).save(other / "c.png")
    path = write(
        folder / "vqa.jsonl",
        [
            {"image": "c.png", "question": "q?", "answer": "x"},
            # Not under `images`: found in the JSONL's folder.
            {"image": "imgs/a.png", "question": "q?", "answer": "x"},
        ],
    )
    samples = load_vqa_jsonl(path, images=other)
    assert [s.image_path for s in samples] == [other / "c.png", folder / "imgs" / "a.png"]
    with pytest.raises(LiteLVLMError, match=r"line 1 of .*image 'c.png' .* does not exist.*--images"):
        load_vqa_jsonl(path)
    with pytest.raises(LiteLVLMError, match="images folder .* does not exist"):
        load_vqa_jsonl(path, images=folder / "missing")


@pytest.mark.parametrize(
    "line, message",
    [
        ("{not json", r"line 2 of .* is not valid JSON .*; fix that line"),
        ("[1, 2]", r"line 2 of .* is not a JSON object"),
        ({"question": "q?", "answer": "x"}, r"line 2 of .* has no 'image'; each line needs"),
        ({"image": "imgs/a.png", "answer": "x"}, r"line 2 of .* has no 'question'"),
        ({"image": "imgs/a.png", "question": " ", "answer": "x"}, r"'question' ' '; give the question"),
        ({"image": 3, "question": "q?", "answer": "x"}, r"'image' 3; give the image's path"),
        ({"image": "imgs/a.png", "question": "q?"}, r"line 2 of .* needs exactly one of 'answers'"),
        ({"image": "imgs/a.png", "question": "q?", "answer": "x", "answers": ["x"]}, r"exactly one of"),
        ({"image": "imgs/a.png", "question": "q?", "answers": []}, r"answers \[\]; give a non-empty list"),
        (
            {"image": "imgs/a.png", "question": "q?", "answers": "red"},
            r"answers 'red'; give a non-empty list",
        ),
        ({"image": "imgs/a.png", "question": "q?", "answers": ["x", 2]}, r"non-empty strings"),
        ({"image": "imgs/a.png", "question": "q?", "answer": ""}, r"answer ''; give the answer"),
        ({"image": "imgs/a.png", "question": "q?", "answer": "x", "id": 1.5}, r"has id 1.5; use an integer"),
        ({"image": "imgs/a.png", "question": "q?", "answer": "x", "id": "first"}, r"repeats id 'first'"),
        (
            {"image": "imgs/a.png", "question": "q?", "answer": "x", "id": 1},
            r"repeats id 1",
        ),  # line 1's default
        ({"image": "imgs/nope.png", "question": "q?", "answer": "x"}, r"line 2 of .*image 'imgs/nope.png'"),
    ],
)
def test_bad_line_names_file_line_and_fix(folder, line, message):
    first = {"image": "imgs/a.png", "question": "q?", "answer": "x"}
    if isinstance(line, dict) and line.get("id") == "first":
        first["id"] = "first"
    path = write(folder / "bad.jsonl", [first, line])
    with pytest.raises(LiteLVLMError, match=message) as error:
        load_vqa_jsonl(path)
    assert "bad.jsonl" in str(error.value) and str(error.value).endswith(".")


def test_bad_file(folder):
    with pytest.raises(LiteLVLMError, match="does not exist; pass a file"):
        load_vqa_jsonl(folder / "missing.jsonl")
    with pytest.raises(LiteLVLMError, match="has no records"):
        load_vqa_jsonl(write(folder / "empty.jsonl", ["", " "]))
    path = folder / "latin1.jsonl"
    path.write_bytes(b'{"image": "imgs/a.png", "question": "caf\xe9?", "answer": "x"}\n')
    with pytest.raises(LiteLVLMError, match="line 1 of .* is not UTF-8"):
        load_vqa_jsonl(path)
