"""`litelvlm eval --task rec|vqa` with the tiny transformers LLaVA: the model's answers are forced (random
weights never write a box), so the scoring path is checked against references computed here from the files:
the box mapped back from LLaVA-1.5's padded square, IoU with the annotated bbox, Acc@0.5; VQA accuracy; malformed
answers counted as misses; resume after a cut; the run's identity."""

import json
import pickle

import pytest
import torch

from conftest import random_image
from litelvlm.cli import main
from litelvlm.hosts.llava import LlavaPredictor
from litelvlm.testing import make_tiny_llava_hf, make_tiny_refcoco


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("answers")
    llava = make_tiny_llava_hf(root / "llava", clip_directory=root / "clip")
    data = make_tiny_refcoco(root / "refer", dataset="refcoco", num_images=6, seed=0)
    for index in range(3):
        random_image(20 + index, 160 + 40 * index, 120).save(root / f"v{index}.png")
    lines = []
    for index in range(3):
        lines.append(
            {
                "image": f"v{index}.png",
                "question": "What colour is it?",
                "answers": ["red"] * 6 + ["blue"] * 4,
            }
        )
        lines.append({"image": f"v{index}.png", "question": "How many dogs?", "answer": "2"})
    (root / "vqa.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    return root, llava, data


@pytest.fixture
def forced_answer(monkeypatch):
    """Make every LlavaPredictor.answer write `text` (then eos), whatever the logits say."""
    original = LlavaPredictor.answer

    def force(text):
        def answer(self, questions, **options):
            ids = self.tokenizer(text, add_special_tokens=False)["input_ids"] + [self.tokenizer.eos_token_id]
            options["decoding"] = lambda logits, step: torch.full(
                (logits.shape[0],), ids[min(step, len(ids) - 1)]
            )
            options["max_new_tokens"] = len(ids)
            return original(self, questions, **options)

        monkeypatch.setattr(LlavaPredictor, "answer", answer)

    return force


def eval_args(tiny, task, out, *extra):
    root, llava, data = tiny
    source = ["--data-root", str(data)] if task == "rec" else ["--jsonl", str(root / "vqa.jsonl")]
    return ["eval", "--task", task, "--model", str(llava), "--clip", str(root / "clip"), *source, "--out", str(out),
            "--methods", "litelvlm,fastv", "--budgets", "36,8", "--budget-mode", "final", "--dtype", "float32",
            "--no-progress", *extra]  # fmt: skip


def records(out):
    return [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]


def reference_iou(box, truth):
    width = max(0.0, min(box[2], truth[2]) - max(box[0], truth[0]))
    height = max(0.0, min(box[3], truth[3]) - max(box[1], truth[1]))
    inter = width * height
    union = (box[2] - box[0]) * (box[3] - box[1]) + (truth[2] - truth[0]) * (truth[3] - truth[1]) - inter
    return inter / union


def test_rec_maps_the_box_back_from_the_square_and_scores_it(tiny, forced_answer, tmp_path):
    root, _, data = tiny
    forced_answer("[0.10, 0.30, 0.55, 0.80] and also [0.2, 0.2, 0.3, 0.3]")
    assert main(eval_args(tiny, "rec", tmp_path / "rec")) == 0
    instances = json.loads((data / "refcoco" / "instances.json").read_text())
    bboxes = {a["id"]: a["bbox"] for a in instances["annotations"]}
    refs_by_id = {}
    for ref in pickle.loads((data / "refcoco" / "refs(unc).p").read_bytes()):
        refs_by_id[ref["ref_id"]] = ref
    found = records(tmp_path / "rec")
    assert found and {r["method"] for r in found} == {"litelvlm", "fastv"}
    hits = []
    for record in found:
        ref = refs_by_id[record["ref_id"]]
        image = next(i for i in instances["images"] if i["id"] == ref["image_id"])
        width, height = image["width"], image["height"]
        side = max(width, height)
        dx, dy = (side - width) // 2, (side - height) // 2  # expand2square centres the image
        box = [min(max(0.10 * side - dx, 0), width), min(max(0.30 * side - dy, 0), height),
               min(max(0.55 * side - dx, 0), width), min(max(0.80 * side - dy, 0), height)]  # fmt: skip
        x, y, w, h = bboxes[ref["ann_id"]]
        truth = [x, y, x + w, y + h]
        assert record["box"] == pytest.approx(box, abs=0.01) and record["gt_box"] == truth
        assert record["iou"] == pytest.approx(reference_iou(box, truth), abs=1e-6)
        assert record["boxes_found"] == 2 and record["box_flags"] == []
        hits.append(record["iou"] >= 0.5)
    results = json.loads((tmp_path / "rec" / "results.json").read_text())["results"]
    expected = sum(hits) / len(hits)
    assert all(row["acc@0.5"] == pytest.approx(expected) and row["misses"] == 0 for row in results)
    assert (tmp_path / "rec" / "budget_vs_acc0.5.png").is_file()


@pytest.mark.parametrize(
    "text, misses, flags",
    [
        ("I cannot tell.", True, []),
        ("[0.9, 0.8, 0.1, 1.7]", False, ["reordered", "clipped"]),
        ("[0.1, 0.2", True, []),
    ],
)
def test_rec_malformed_answers_are_counted_misses(tiny, forced_answer, tmp_path, text, misses, flags):
    forced_answer(text)
    assert main(eval_args(tiny, "rec", tmp_path / "rec", "--limit", "1")) == 0
    found = records(tmp_path / "rec")
    assert all((r["iou"] is None) == misses and r["box_flags"] == flags for r in found)
    results = json.loads((tmp_path / "rec" / "results.json").read_text())["results"]
    assert all(row["misses"] == (row["count"] if misses else 0) for row in results)


def test_vqa_accuracy_and_resume(tiny, forced_answer, tmp_path):
    forced_answer(
        "Red."
    )  # normalised to "red": 6 of 10 humans said it; "2" for the second question is missed
    out = tmp_path / "vqa"
    assert main(eval_args(tiny, "vqa", out)) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["task"] == "vqa"
    assert all(row["accuracy"] == pytest.approx(0.5) and row["count"] == 6 for row in results["results"])
    before = (out / "results.json").read_bytes()
    part = out / "parts" / "records.rank0.jsonl"
    lines = part.read_text().splitlines(keepends=True)
    part.write_text("".join(lines[: len(lines) // 2 + 1]))  # killed mid-unit
    (out / "results.json").unlink()
    assert main(eval_args(tiny, "vqa", out)) == 0
    assert (out / "results.json").read_bytes() == before
    assert main(eval_args(tiny, "vqa", out, "--max-new-tokens", "3")) == 2  # another run's identity


def test_task_misuse_is_one_sentence(tiny, tmp_path, capsys):
    root, llava, data = tiny
    assert (
        main(
            [
                "eval",
                "--task",
                "vqa",
                "--model",
                str(llava),
                "--data-root",
                str(data),
                "--out",
                str(tmp_path / "a"),
            ]
        )
        == 2
    )
    assert "pass it with --jsonl" in capsys.readouterr().err
    assert main(eval_args(tiny, "rec", tmp_path / "b", "--protocol", "lisa")) == 2
    assert "apply to --task segment" in capsys.readouterr().err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
