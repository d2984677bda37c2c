"""`litelvlm answer` on the tiny transformers LLaVA, and the REC/VQA loop sharded over two ranks."""

import json

import pytest
import torch
from PIL import Image

from conftest import random_image
from litelvlm.cli import main
from litelvlm.hosts.llava import LlavaPredictor
from litelvlm.testing import make_tiny_llava_hf


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("answer")
    llava = make_tiny_llava_hf(root / "llava", clip_directory=root / "clip")
    random_image(5, 200, 150).save(root / "photo.png")
    return root, llava


def test_answer_writes_json_overlay_and_prints_answers(tiny, tmp_path, capsys):
    root, llava = tiny
    args = ["answer", "--model", str(llava), "--clip", str(root / "clip"), "--image", str(root / "photo.png"),
            "--question", "What is it?", "--question", "Where is the dog?", "--budget", "8", "--max-new-tokens", "5",
            "--dtype", "float32", "--json", str(tmp_path / "a.json"), "--overlay", str(tmp_path / "kept.png")]  # fmt: skip
    assert main(args) == 0
    out = capsys.readouterr().out.splitlines()
    payload = json.loads((tmp_path / "a.json").read_text())
    predictor = LlavaPredictor.from_pretrained(llava, clip=root / "clip", dtype=torch.float32, device="cpu")
    predictor.set_image(root / "photo.png")
    expected = predictor.answer(["What is it?", "Where is the dog?"], budget=8, max_new_tokens=5)
    assert [a["tokens"] for a in payload["answers"]] == [a.tokens for a in expected.answers]
    assert [a["indices"] for a in payload["answers"]] == [a.indices for a in expected.answers]
    assert payload["num_visual_tokens"] == 8 and payload["num_patches"] == 36
    assert out == [f"{a.question}\t{a.text}" for a in expected.answers]
    with Image.open(tmp_path / "kept.png") as overlay:
        assert overlay.width > 2 * overlay.height * 0.9  # one panel per question, side by side


def test_answer_bad_input_writes_nothing(tiny, tmp_path, capsys):
    root, llava = tiny
    base = ["answer", "--model", str(llava), "--clip", str(root / "clip"), "--question", "What?", "--dtype", "float32",
            "--json", str(tmp_path / "a.json")]  # fmt: skip
    assert main([*base, "--image", str(tmp_path / "missing.png")]) == 2
    assert "missing.png" in capsys.readouterr().err
    assert main([*base, "--image", str(root / "photo.png"), "--budget", "4", "--method", "fastv"]) == 2
    assert "fastv" in capsys.readouterr().err  # unreachable average budget, found before any file is written
    assert not (tmp_path / "a.json").exists()


def test_rec_loop_sharded_over_two_ranks_equals_one(tiny, tmp_path):
    from litelvlm.data import load_refcoco
    from litelvlm.evaluation.answer_loop import evaluate_answers, rec_images
    from litelvlm.testing import make_tiny_refcoco

    root, llava = tiny
    data = make_tiny_refcoco(tmp_path / "refer", dataset="refcoco", num_images=6, seed=0)
    dataset = load_refcoco(data, "refcoco", "val")
    predictor = LlavaPredictor.from_pretrained(llava, clip=root / "clip", dtype=torch.float32, device="cpu")
    config = {"task": "rec", "data": str(data), "dataset": "refcoco", "split": "val", "seed": 0, "limit": None,
              "methods": ["litelvlm", "uniform"], "budgets": [36, 8], "options": {"max_new_tokens": 4}}  # fmt: skip
    images = rec_images(dataset)
    single = evaluate_answers(
        predictor, "rec", images, config, tmp_path / "one", dataset=dataset, progress=False
    )
    assert evaluate_answers(predictor, "rec", images, config, tmp_path / "two", dataset=dataset, rank=1, world=2,
                            progress=False) is None  # fmt: skip
    merged = evaluate_answers(predictor, "rec", images, config, tmp_path / "two", dataset=dataset, rank=0, world=2,
                              progress=False)  # fmt: skip
    assert merged["results"] == single["results"]
    lines = lambda d: [{k: v for k, v in json.loads(line).items() if "timings" not in k}  # noqa: E731
                       for line in (d / "records.jsonl").read_text().splitlines()]  # fmt: skip
    assert lines(tmp_path / "two") == lines(tmp_path / "one")
