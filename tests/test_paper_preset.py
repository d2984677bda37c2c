"""`litelvlm eval --preset paper` and `litelvlm report` on the tiny GLaMM and a tiny RefCOCO, RefCOCO+ and
RefCOCOg (all 8 splits, one image each): the sub-runs, the paper table against the shipped published numbers,
the full budget predicted once per image, rebuilding every report from the records, resuming, and bad input."""

import json
import re
import shutil
from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest

import litelvlm.evaluation
from litelvlm.cli import main
from litelvlm.evaluation import paper
from litelvlm.hosts import GroundingPredictor
from litelvlm.testing import make_tiny_refcoco

SPLITS = ["refcoco_val", "refcoco_testA", "refcoco_testB", "refcoco+_val", "refcoco+_testA", "refcoco+_testB",
          "refcocog_val", "refcocog_test"]  # fmt: skip
METHODS = ["trim", "fastv", "prumerge", "visionzip", "vispruner", "litelvlm"]
NAMES = ["TRIM", "FastV", "LLaVA-PruMerge", "VisionZip", "VisPruner", "LiteLVLM"]
PAPER_ORDER = [("full", 576)] + [(m, b) for b in (192, 128, 64) for m in METHODS]
TABLE_FILES = ("paper_table.md", "paper_table.json", "paper_budget_vs_ciou.png")
RUN_FILES = ("records.jsonl", "results.json", "results.md", "budget_vs_ciou.png")
PUBLISHED = Path(litelvlm.evaluation.__file__).parent / "published" / "litelvlm_paper_glamm.json"
# The preset run takes about a minute on 2 CPU cores (8 splits x 19 predictions); its tests are marked slow.
CELL = re.compile(r"^-?\d+\.\d / \d+\.\d \([+-]\d+\.\d\)$")


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("refer")
    for dataset in ("refcoco", "refcoco+", "refcocog"):
        make_tiny_refcoco(root, dataset=dataset, seed=0)
    return root


def preset_args(model, data_root, out, *extra):
    # budget_mode final: in the tiny model's 4 decoder layers, FastV's 2 unpruned ones alone average 288 tokens.
    return ["eval", "--model", str(model), "--data-root", str(data_root), "--preset", "paper", "--limit", "1",
            "--dtype", "float32", "--budget-mode", "final", "--no-progress", "--out", str(out), *extra]  # fmt: skip


def count_calls(patch: pytest.MonkeyPatch) -> Counter:
    """Count model loads and predictions (by budget) of the predictor the CLI builds (the evaluation loop
    predicts through `predict_batch`, one call per group of images)."""
    calls = Counter()
    predict, load = GroundingPredictor.predict_batch, GroundingPredictor.from_pretrained

    def counted_predict(self, *args, **kwargs):
        calls[kwargs["budget"]] += 1
        return predict(self, *args, **kwargs)

    def counted_load(cls, *args, **kwargs):
        calls["load"] += 1
        return load(*args, **kwargs)

    patch.setattr(GroundingPredictor, "predict_batch", counted_predict)
    patch.setattr(GroundingPredictor, "from_pretrained", classmethod(counted_load))
    return calls


@pytest.fixture(scope="module")
def preset_run(tiny_glamm_dir, data_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("paper") / "run"
    with pytest.MonkeyPatch.context() as patch:
        calls = count_calls(patch)
        assert main(preset_args(tiny_glamm_dir, data_root, out)) == 0
    return out, calls


def read_table(directory):
    return json.loads((directory / "paper_table.json").read_text())


def read_records(directory):
    return [json.loads(line) for line in (directory / "records.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_preset_runs_every_split_as_an_ordinary_sub_run_with_one_model_load(preset_run):
    out, calls = preset_run
    preset = json.loads((out / "preset.json").read_text())
    assert (preset["runs"], preset["methods"], preset["budgets"]) == (SPLITS, METHODS, [576, 192, 128, 64])
    for key in SPLITS:
        run = json.loads((out / key / "run.json").read_text())
        dataset, split = key.split("_")
        assert (run["dataset"], run["split"], run["methods"], run["budgets"]) == (
            dataset, split, METHODS, [576, 192, 128, 64]
        )  # fmt: skip
        assert run["num_images"] == 1 and run["protocol"] == "glamm"
        for name in RUN_FILES:
            assert (out / key / name).is_file(), (key, name)
    assert calls["load"] == 1
    # The full budget is the unpruned model for every method: predicted once per image, recorded per method.
    assert calls[576] == len(SPLITS)
    assert all(calls[budget] == len(SPLITS) * len(METHODS) for budget in (192, 128, 64))
    for key in SPLITS:
        full = [r for r in read_records(out / key) if r["budget"] == 576]
        assert [r["method"] for r in full][:: len(full) // len(METHODS)] == METHODS
        by_method = {m: [(r["intersection"], r["union"], r["kept_hash"]) for r in full if r["method"] == m]
                     for m in METHODS}  # fmt: skip
        assert all(value == by_method["litelvlm"] for value in by_method.values())


@pytest.mark.slow
def test_table_has_every_cell_in_the_paper_order_and_the_shipped_published_numbers(preset_run):
    out, _ = preset_run
    table = read_table(out)
    rows = table["rows"]
    assert [(r["method"], r["budget"]) for r in rows] == PAPER_ORDER
    assert [r["name"] for r in rows] == ["full (576)"] + NAMES * 3
    assert table["splits"] == SPLITS
    shipped = json.loads(PUBLISHED.read_text())
    assert shipped["source"].startswith("LiteLVLM paper (CLIP Tricks You, ICML 2026)")
    assert table["published"]["source"] == shipped["source"] and table["published"]["host"] == "GLaMM"
    published = {(r["method"], r["budget"]): r["ciou"] for r in shipped["rows"]}
    assert len(published) == len(PAPER_ORDER) == 19
    for row in rows:
        assert {k: row["published"][k] for k in SPLITS} == published[(row["method"], row["budget"])]
        for field in ("ours", "published", "difference"):
            assert all(row[field][k] is not None for k in [*SPLITS, "average"]), (row["name"], field)
        values = published[(row["method"], row["budget"])].values()
        assert row["published"]["average"] == pytest.approx(sum(values) / 8)
    assert rows[18]["published"]["refcoco_val"] == 66.3 == published[("litelvlm", 64)]["refcoco_val"]
    assert rows[0]["published"]["refcocog_test"] == 74.9


@pytest.mark.slow
def test_our_numbers_are_the_records_cumulative_iou_and_the_columns_follow(preset_run):
    out, _ = preset_run
    rows = read_table(out)["rows"]
    for key in SPLITS:
        records = read_records(out / key)
        for row in rows:
            method = "trim" if row["method"] == "full" else row["method"]
            mine = [r for r in records if r["method"] == method and r["budget"] == row["budget"]]
            ciou = 100 * sum(r["intersection"] for r in mine) / (sum(r["union"] for r in mine) + 1e-10)
            assert row["ours"][key] == pytest.approx(ciou, abs=1e-9)
    full = rows[0]
    for row in rows:
        assert row["ours"]["average"] == pytest.approx(sum(row["ours"][k] for k in SPLITS) / 8)
        for k in [*SPLITS, "average"]:
            assert row["difference"][k] == pytest.approx(row["ours"][k] - row["published"][k])
        relative = row["relative_to_full"]
        assert relative["ours"] == pytest.approx(100 * row["ours"]["average"] / full["ours"]["average"])
        assert relative["published"] == pytest.approx(
            100 * row["published"]["average"] / full["published"]["average"]
        )
    assert full["relative_to_full"]["ours"] == pytest.approx(100)


@pytest.mark.slow
def test_markdown_table_shows_ours_published_and_difference_in_every_cell(preset_run):
    out, _ = preset_run
    text = (out / "paper_table.md").read_text()
    lines = [line for line in text.splitlines() if line.startswith("| ")]
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    assert header == ["budget", "method", "RefCOCO val", "RefCOCO testA", "RefCOCO testB", "RefCOCO+ val",
                      "RefCOCO+ testA", "RefCOCO+ testB", "RefCOCOg val", "RefCOCOg test", "average",
                      "relative to full"]  # fmt: skip
    body = lines[1:]
    assert len(body) == 19
    table = read_table(out)
    for line, row in zip(body, table["rows"]):
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        assert cells[:2] == [str(row["budget"]), row["name"]]
        assert all(CELL.match(cell) for cell in cells[2:]), line
        ours, published = row["ours"]["refcoco_val"], row["published"]["refcoco_val"]
        assert cells[2].startswith(f"{ours:.1f} / {published:.1f} (")
    assert "—" not in "\n".join(body)
    assert (out / "paper_budget_vs_ciou.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_report_rebuilds_every_file_byte_for_byte_from_the_part_files(preset_run, tmp_path, capsys):
    out, _ = preset_run
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    for name in TABLE_FILES:
        (copy / name).unlink()
    for key in SPLITS:
        for name in RUN_FILES:
            (copy / key / name).unlink()
    assert main(["report", str(copy)]) == 0, capsys.readouterr().err
    for name in TABLE_FILES:
        assert (copy / name).read_bytes() == (out / name).read_bytes(), name
    for key in SPLITS:
        for name in RUN_FILES:
            assert (copy / key / name).read_bytes() == (out / key / name).read_bytes(), (key, name)


@pytest.mark.slow
def test_report_rebuilds_a_plain_run_from_records_jsonl_alone(preset_run, tmp_path, capsys):
    out, _ = preset_run
    copy = tmp_path / "plain"
    shutil.copytree(out / "refcocog_test", copy)
    shutil.rmtree(copy / "parts")
    for name in RUN_FILES[1:]:
        (copy / name).unlink()
    assert main(["report", str(copy)]) == 0, capsys.readouterr().err
    for name in RUN_FILES:
        assert (copy / name).read_bytes() == (out / "refcocog_test" / name).read_bytes(), name


@pytest.mark.slow
def test_resuming_after_the_table_is_deleted_rewrites_it_without_predicting(
    preset_run, tiny_glamm_dir, data_root, tmp_path, monkeypatch
):
    out, _ = preset_run
    copy = tmp_path / "resumed"
    shutil.copytree(out, copy)
    for name in TABLE_FILES:
        (copy / name).unlink()
    calls = count_calls(monkeypatch)
    assert main(preset_args(tiny_glamm_dir, data_root, copy)) == 0
    assert set(calls) == {"load"}
    for name in TABLE_FILES:
        assert (copy / name).read_bytes() == (out / name).read_bytes(), name


@pytest.mark.slow
def test_resuming_a_preset_run_with_other_arguments_is_refused(preset_run, tiny_glamm_dir, data_root, capsys):
    out, _ = preset_run
    assert main(preset_args(tiny_glamm_dir, data_root, out, "--seed", "1")) == 2
    assert "preset run with a different seed" in capsys.readouterr().err


def one_error_line(capsys, command: str) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("\n") == 1, err
    assert err.startswith(f"litelvlm {command}: error: ")
    return err


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--dataset", "refcocog"], "drop --dataset."),
        (["--split", "testA"], "drop --split."),
        (["--methods", "litelvlm,random"], "drop --methods."),
        (["--budgets", "576,64", "--dataset", "refcoco"], "drop --dataset and --budgets."),
    ],
)
def test_preset_with_flags_it_sets_itself_is_one_sentence(
    tiny_glamm_dir, data_root, tmp_path, capsys, extra, message
):
    args = preset_args(tiny_glamm_dir, data_root, tmp_path / "out")
    args[args.index("--limit") : args.index("--limit") + 2] = []
    assert main([*args, *extra]) == 2
    assert one_error_line(capsys, "eval").rstrip().endswith(message)
    assert not (tmp_path / "out").exists()


def test_preset_with_jsonl_is_one_sentence(tiny_glamm_dir, tmp_path, capsys):
    args = ["eval", "--model", str(tiny_glamm_dir), "--jsonl", str(tmp_path / "x.jsonl"), "--preset", "paper",
            "--out", str(tmp_path / "out")]  # fmt: skip
    assert main(args) == 2
    assert "drop --jsonl." in one_error_line(capsys, "eval")


def test_preset_method_missing_from_the_registry_is_one_sentence(
    tiny_glamm_dir, data_root, tmp_path, capsys, monkeypatch
):
    monkeypatch.setitem(paper.PRESETS, "paper", replace(paper.PRESETS["paper"], methods=("litelvlm", "nope")))
    assert main(preset_args(tiny_glamm_dir, data_root, tmp_path / "out")) == 2
    assert "runs method 'nope', which this installation of litelvlm does not register" in one_error_line(
        capsys, "eval"
    )


@pytest.mark.slow
def test_report_on_what_is_not_a_finished_run_is_one_sentence(preset_run, tmp_path, capsys):
    out, _ = preset_run
    assert main(["report", str(tmp_path / "absent")]) == 2
    assert "does not exist" in one_error_line(capsys, "report")
    (tmp_path / "empty").mkdir()
    assert main(["report", str(tmp_path / "empty")]) == 2
    assert "has neither run.json nor preset.json" in one_error_line(capsys, "report")

    bare = tmp_path / "bare"
    shutil.copytree(out / "refcoco_val", bare)
    shutil.rmtree(bare / "parts")
    (bare / "records.jsonl").unlink()
    assert main(["report", str(bare)]) == 2
    assert "has no records" in one_error_line(capsys, "report")

    short = tmp_path / "short"
    shutil.copytree(out / "refcoco_val", short)
    shutil.rmtree(short / "parts")
    lines = (short / "records.jsonl").read_text().splitlines(keepends=True)
    (short / "records.jsonl").write_text("".join(r for r in lines if json.loads(r)["method"] != "fastv"))
    assert main(["report", str(short)]) == 2
    assert "4 image x method x budget units have no records yet; finish the run" in one_error_line(
        capsys, "report"
    )

    partial = tmp_path / "partial"
    shutil.copytree(out, partial)
    shutil.rmtree(partial / "refcocog_test")
    assert main(["report", str(partial)]) == 2
    assert "has no sub-run 'refcocog_test' yet" in one_error_line(capsys, "report")
