"""`litelvlm select` end to end, and its answers to bad input (one sentence, exit 2, no traceback)."""

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from litelvlm.cli import main
from litelvlm.prompts import question
from reference import litelvlm_reference


def select(capsys, clip_dir, image, *extra):
    """`litelvlm select --clip clip_dir --image image *extra` -> (exit code, stdout, stderr)."""
    return run_cli(capsys, "select", "--clip", str(clip_dir), "--image", str(image), *extra)


def run_cli(capsys, *argv):
    """(exit code, stdout, stderr); argparse's own refusals exit through SystemExit."""
    try:
        code = main(list(argv))
    except SystemExit as exit_:
        code = exit_.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_select_writes_json_and_overlay(tiny_clip_dir, image_file, tmp_path, capsys, scorer):
    out, overlay = tmp_path / "sel.json", tmp_path / "overlay.png"
    code, _, err = select(
        capsys,
        tiny_clip_dir,
        image_file,
        "--text",
        "the man in red",
        "--text",
        "white car",
        "--budget",
        "64",
        "--json",
        str(out),
        "--overlay",
        str(overlay),
    )
    assert code == 0, err
    payload = json.loads(out.read_text())
    assert {"method", "budget", "num_patches", "grid", "indices"} <= set(payload)
    assert payload["num_patches"] == 576 and payload["grid"] == [24, 24] and len(payload["indices"]) == 64
    assert payload["texts"] == [question("the man in red"), question("white car")]
    # the same indices as the library, computed independently from the scores
    scorer.set_image(Image.open(image_file))
    scores = scorer.score(payload["texts"])
    expected = litelvlm_reference(scores.similarity[0].tolist(), scores.context[0].tolist(), 64)
    assert payload["indices"] == expected
    assert set(payload["kinds"]) == {"low_similarity", "context"}
    picture = Image.open(overlay)
    assert picture.mode == "RGB" and min(picture.size) >= 240
    # kept patches are brighter than pruned ones on average
    assert np.asarray(picture).mean() < np.asarray(Image.open(image_file)).mean()


def test_select_prints_json_without_a_file(tiny_clip_dir, image_file, capsys):
    code, out, _ = select(
        capsys,
        tiny_clip_dir,
        image_file,
        "--text",
        "a dog",
        "--budget",
        "1000",
        "--method",
        "random",
    )
    assert code == 0
    payload = json.loads(out)
    assert payload["indices"] == list(range(576))  # budget above N keeps all, raster order


@pytest.mark.parametrize("method", ["uniform", "topk_similarity", "cls_attention", "visionzip", "divprune"])
def test_every_method_runs_from_the_cli(tiny_clip_dir, image_file, capsys, method):
    code, out, err = select(
        capsys,
        tiny_clip_dir,
        image_file,
        "--text",
        "a dog",
        "--budget",
        "32",
        "--method",
        method,
    )
    assert code == 0, err
    assert len(json.loads(out)["indices"]) == 32


BAD_INPUTS = {
    "zero budget": (["--budget", "0"], "at least 1"),
    "negative budget": (["--budget", "-5"], "at least 1"),
    "fractional budget": (["--budget", "2.5"], "whole number"),
    "unknown method": (["--method", "fastvv"], "choose one of: "),
    "empty text": (["--text", "  "], "empty"),
    "missing image": (["--image", "/nonexistent/x.jpg"], "does not exist"),
    "missing clip": (["--clip", "/nonexistent/clip"], "does not exist"),
    "json under a file": (["--json", "/dev/null/out.json"], "not a directory"),
    "bad share": (["--low-similarity-share", "2"], "[0, 1]"),
}


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_is_one_sentence_and_exit_2(tiny_clip_dir, image_file, capsys, case):
    extra, message = BAD_INPUTS[case]
    argv = {"--clip": str(tiny_clip_dir), "--image": str(image_file), "--text": "a dog", "--budget": "8"}
    for flag, value in zip(extra[::2], extra[1::2]):
        argv[flag] = value
    flat = [item for pair in argv.items() for item in pair]
    code, _, err = run_cli(capsys, "select", *flat)
    assert code == 2
    assert message in err and "Traceback" not in err
    assert len([line for line in err.splitlines() if "error" in line]) == 1


def test_not_a_clip_checkpoint_and_not_an_image(tmp_path, tiny_clip_dir, image_file, capsys):
    (tmp_path / "config.json").write_text('{"model_type": "bert"}')
    code, _, err = run_cli(
        capsys, "select", "--clip", str(tmp_path), "--image", str(image_file), "--text", "x", "--budget", "4"
    )
    assert code == 2 and "not a CLIP checkpoint" in err
    (tmp_path / "fake.jpg").write_bytes(b"hello")
    code, _, err = run_cli(
        capsys,
        "select",
        "--clip",
        str(tiny_clip_dir),
        "--image",
        str(tmp_path / "fake.jpg"),
        "--text",
        "x",
        "--budget",
        "4",
    )
    assert code == 2 and "not an image" in err


def test_no_text_is_refused(tiny_clip_dir, image_file, capsys):
    code, _, err = select(capsys, tiny_clip_dir, image_file, "--budget", "4")
    assert code == 2 and "--text" in err


def test_long_text_warns_once_on_one_line(tiny_clip_dir, image_file, capsys):
    code, _, err = select(
        capsys,
        tiny_clip_dir,
        image_file,
        "--text",
        "the man " * 60,
        "--text",
        "the dog " * 60,
        "--budget",
        "8",
        "--text-source",
        "expressions",
    )
    assert code == 0
    assert err.count("warning") == 1 and "truncated to 77" in err


def test_console_script_runs_as_a_module(tiny_clip_dir, image_file):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "litelvlm",
            "select",
            "--clip",
            str(tiny_clip_dir),
            "--image",
            str(image_file),
            "--text",
            "a dog",
            "--budget",
            "0",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2 and "at least 1" in result.stderr and "Traceback" not in result.stderr


def test_a_closed_pipe_ends_quietly(tiny_clip_dir, image_file):
    command = [sys.executable, "-m", "litelvlm", "select", "--clip", str(tiny_clip_dir), "--image", str(image_file),
               "--text", "a dog", "--budget", "8"]  # fmt: skip
    reader = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    reader.stdout.close()  # the consumer goes away before the JSON is printed
    stderr = reader.stderr.read().decode()
    reader.wait()
    assert "Traceback" not in stderr
