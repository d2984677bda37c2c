"""Evaluation sweeps on the tiny GLaMM and tiny RefCOCO: outputs, determinism, resuming after SIGKILL,
two processes, protocols, and the CLIP-only token diagnostics."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from litelvlm.cli import main
from litelvlm.data import load_refcoco
from litelvlm.evaluation.diagnostics import low_similarity_auc, referent_patches
from litelvlm.evaluation.protocols import LISA_ANSWER, LISA_QUESTION, plan_image
from litelvlm.evaluation.records import RecordLog
from litelvlm.images import ClipPreprocess
from litelvlm.testing import make_tiny_refcoco

SWEEP = ["--methods", "litelvlm,random", "--budgets", "576,64,16", "--dtype", "float32", "--no-progress"]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return make_tiny_refcoco(tmp_path_factory.mktemp("refer"), dataset="refcoco", num_images=6, seed=0)


def eval_args(model, data_root, out, *extra):
    return ["eval", "--model", str(model), "--data-root", str(data_root), "--dataset", "refcoco", "--split", "val",
            "--out", str(out), *SWEEP, *extra]  # fmt: skip


@pytest.fixture(scope="module")
def first_run(tiny_glamm_dir, data_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "first"
    assert main(eval_args(tiny_glamm_dir, data_root, out)) == 0
    return out


def read_records(directory):
    return [json.loads(line) for line in (directory / "records.jsonl").read_text().splitlines()]


def without_timings(records):
    return [{k: v for k, v in record.items() if "timings" not in k} for record in records]


def test_sweep_writes_records_results_table_and_plot(first_run):
    for name in ("records.jsonl", "results.json", "results.md", "budget_vs_ciou.png", "run.json"):
        assert (first_run / name).is_file(), name
    results = json.loads((first_run / "results.json").read_text())["results"]
    assert [(r["method"], r["budget"]) for r in results] == [
        (m, b) for m in ("litelvlm", "random") for b in (576, 64, 16)
    ]
    records = read_records(first_run)
    for row in results:
        mine = [r for r in records if r["method"] == row["method"] and r["budget"] == row["budget"]]
        inter = sum(r["intersection"] for r in mine)
        union = sum(r["union"] for r in mine)
        ious = [1.0 if r["union"] == 0 else r["intersection"] / (r["union"] + 1e-5) for r in mine]
        assert row["count"] == len(mine) > 0
        assert row["ciou"] == pytest.approx(inter / (union + 1e-10), abs=1e-12)
        assert row["giou"] == pytest.approx(sum(ious) / len(ious), abs=1e-12)
        assert row["precision"]["0.5"] == pytest.approx(np.mean([i >= 0.5 for i in ious]))
    assert "| litelvlm |" in (first_run / "results.md").read_text()
    record = records[0]
    assert {"image_id", "ref_id", "sentence", "method", "budget", "intersection", "union", "mask_area",
            "kept_hash", "timings"} <= set(record)  # fmt: skip


def test_same_seed_gives_identical_files_and_another_seed_other_expressions(
    tiny_glamm_dir, data_root, first_run, tmp_path
):
    assert main(eval_args(tiny_glamm_dir, data_root, tmp_path / "again")) == 0
    for name in ("results.json", "results.md"):
        assert (tmp_path / "again" / name).read_bytes() == (first_run / name).read_bytes()
    assert without_timings(read_records(tmp_path / "again")) == without_timings(read_records(first_run))
    assert main(eval_args(tiny_glamm_dir, data_root, tmp_path / "seed1", "--seed", "1")) == 0
    sampled = lambda d: [(r["image_id"], r["sentence"], r["question_template"]) for r in read_records(d)]  # noqa: E731
    assert sampled(tmp_path / "seed1") != sampled(first_run)


def test_sigkill_then_resume_gives_identical_results(tiny_glamm_dir, data_root, first_run, tmp_path):
    out = tmp_path / "killed"
    command = [sys.executable, "-m", "litelvlm", *eval_args(tiny_glamm_dir, data_root, out)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    part = out / "parts" / "records.rank0.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and (not part.exists() or part.stat().st_size == 0):
        time.sleep(0.02)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert not (out / "results.json").exists(), "the run finished before it could be killed"
    assert main(eval_args(tiny_glamm_dir, data_root, out)) == 0
    assert (out / "results.json").read_bytes() == (first_run / "results.json").read_bytes()
    assert without_timings(read_records(out)) == without_timings(read_records(first_run))


def test_two_processes_equal_one(tiny_glamm_dir, data_root, first_run, tmp_path):
    out = tmp_path / "two"
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    command = [torchrun, "--nproc_per_node", "2", "--master_port", "29517", "-m", "litelvlm",
               *eval_args(tiny_glamm_dir, data_root, out, "--device", "cpu")]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    assert sorted(p.name for p in (out / "parts").iterdir()) == ["records.rank0.jsonl", "records.rank1.jsonl"]
    assert (out / "results.json").read_bytes() == (first_run / "results.json").read_bytes()


def test_resuming_with_other_arguments_is_refused(tiny_glamm_dir, data_root, first_run, capsys):
    args = eval_args(tiny_glamm_dir, data_root, first_run)
    args[args.index("576,64,16")] = "576,32"
    assert main(args) == 2
    assert "different budgets" in capsys.readouterr().err


def test_record_log_drops_partial_writes(tmp_path):
    log = RecordLog(tmp_path)
    log.append_unit("a", [{"x": 1}, {"x": 2}])
    log.append_unit("b", [{"x": 3}, {"x": 4}])
    with open(log.path, "ab") as file:  # a unit killed half-way: one of its two lines, then half a line
        file.write(b'{"x": 5, "unit": "c", "unit_size": 2}\n{"x": 6, "un')
    assert RecordLog(tmp_path).completed_units() == {"a", "b"}
    assert [r["x"] for r in RecordLog(tmp_path).all_records()] == [1, 2, 3, 4]
    assert log.path.read_bytes().endswith(b'"unit": "b", "unit_size": 2}\n')


def test_glamm_protocol_samples_three_deterministically_and_lisa_takes_all(data_root):
    dataset = load_refcoco(data_root, "refcoco", "val")
    for image in dataset.images:
        pool = [(r.ref_id, s) for r in image.referents for s in r.sentences]
        plan = plan_image(image, "glamm", seed=0)
        assert plan == plan_image(image, "glamm", seed=0) and plan.turns_per_conversation == 3
        picked = [(q.referent.ref_id, q.sentence) for q in plan.queries]
        assert (
            len(picked) == min(3, len(pool)) and len(set(picked)) == len(picked) and set(picked) <= set(pool)
        )
        lisa = plan_image(image, "lisa", seed=0)
        assert [(q.referent.ref_id, q.sentence) for q in lisa.queries] == pool
        assert {(q.question_template, q.answer_template) for q in lisa.queries} == {
            (LISA_QUESTION, LISA_ANSWER)
        }
    big = max(dataset.images, key=lambda image: len(image.sentences))
    assert len(big.sentences) > 3
    assert {tuple(q.sentence for q in plan_image(big, "glamm", s).queries) for s in range(8)}.__len__() > 1


def test_analyze_reports_recall_and_similarity(tiny_clip_dir, data_root, tmp_path, capsys):
    code = main(["analyze", "--clip", str(tiny_clip_dir), "--data-root", str(data_root), "--split", "val",
                 "--methods", "litelvlm,topk_similarity", "--budgets", "576,64", "--out", str(tmp_path),
                 "--no-progress"])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    result = json.loads((tmp_path / "analysis.json").read_text())
    full = [row for row in result["selection"] if row["budget"] == 576]
    assert all(row["referent_recall"] == 1.0 for row in full)
    assert all(0 <= row["referent_recall"] <= 1 for row in result["selection"])
    assert 0 <= result["similarity"]["auc_low_similarity_inside"] <= 1
    assert (tmp_path / "analysis.png").is_file() and (tmp_path / "analysis.md").is_file()


def test_referent_patches_and_auc_against_naive_versions():
    preprocess = ClipPreprocess(336, 336, 336)
    mask = np.zeros((200, 300), np.uint8)
    mask[50:150, 120:200] = 1
    geometry = preprocess.geometry(300, 200)  # resized 504 x 336, crop from x = 84
    region = referent_patches(mask, geometry, (24, 24)).reshape(24, 24)
    scale = 336 / 200
    for row in range(24):
        for col in range(24):
            # patch centre in original pixels
            x = (col * 14 + 7 + geometry.crop_left) / scale
            y = (row * 14 + 7 + geometry.crop_top) / scale
            inside = 120 <= x < 200 and 50 <= y < 150
            edge = min(abs(x - 120), abs(x - 200), abs(y - 50), abs(y - 150)) < 14 / scale
            if not edge:
                assert region[row, col] == inside
    rng = np.random.default_rng(0)
    similarity = rng.normal(size=100)
    inside = rng.random(100) < 0.3
    naive = np.mean(
        [float(a < b) + 0.5 * float(a == b) for a in similarity[inside] for b in similarity[~inside]]
    )
    assert low_similarity_auc(similarity, inside) == pytest.approx(naive)
    assert low_similarity_auc(np.array([1.0, 1.0, 2.0]), np.array([True, False, False])) == pytest.approx(
        0.75
    )


def test_in_llm_methods_sweep_next_to_before_llm_ones(tiny_glamm_dir, data_root, tmp_path):
    args = eval_args(tiny_glamm_dir, data_root, tmp_path / "mixed", "--budget-mode", "final")
    args[args.index("litelvlm,random")] = "litelvlm,fastv,sparsevlm"
    args[args.index("576,64,16")] = "576,64"
    assert main(args) == 0
    rows = {
        (r["method"], r["budget"]): r
        for r in json.loads((tmp_path / "mixed" / "results.json").read_text())["results"]
    }
    assert rows[("litelvlm", 64)]["average_visual_tokens"] == 64
    assert rows[("fastv", 64)]["average_visual_tokens"] == (2 * 576 + 2 * 64) / 4
    assert rows[("sparsevlm", 576)]["average_visual_tokens"] == 576
    assert all(row["count"] > 0 for row in rows.values())


def test_images_in_one_batch_equal_one_at_a_time_and_resume(tiny_glamm_dir, data_root, first_run, tmp_path):
    """--images-per-batch 4: 6 images in groups of 4 and 2 (random still seeded per image) give the records of
    one image at a time up to float rounding; a run killed mid-group resumes to the same results."""
    out = tmp_path / "grouped"
    assert main(eval_args(tiny_glamm_dir, data_root, out, "--images-per-batch", "4")) == 0
    grouped, single = read_records(out), read_records(first_run)
    key = lambda r: (r["image_id"], r["sentence"], r["method"], r["budget"], r["kept_hash"])  # noqa: E731
    assert [key(r) for r in grouped] == [key(r) for r in single]
    for a, b in zip(grouped, single):
        assert abs(a["intersection"] - b["intersection"]) <= 2 and abs(a["union"] - b["union"]) <= 2
    assert json.loads((out / "run.json").read_text())["options"]["images_per_batch"] == 4
    results = (out / "results.json").read_bytes()
    part = out / "parts" / "records.rank0.jsonl"
    lines = part.read_text().splitlines(keepends=True)
    part.write_text("".join(lines[: len(lines) // 2 - 1]))  # a partial unit in the middle of the first group
    for name in ("results.json", "records.jsonl"):
        (out / name).unlink()
    assert main(eval_args(tiny_glamm_dir, data_root, out, "--images-per-batch", "4")) == 0
    assert (out / "results.json").read_bytes() == results
