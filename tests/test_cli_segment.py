"""`litelvlm segment` end to end on the tiny GLaMM, and its answers to bad input."""

import json

import numpy as np
import pytest
from PIL import Image

from test_cli_select import run_cli


def segment(capsys, model_dir, image, tmp_path, *extra):
    return run_cli(capsys, "segment", "--model", str(model_dir), "--image", str(image),
                   "--out", str(tmp_path / "mask.png"), "--dtype", "float32", *extra)  # fmt: skip


def test_segment_writes_masks_overlay_and_json(tiny_glamm_dir, image_file, tmp_path, capsys):
    code, out, err = segment(capsys, tiny_glamm_dir, image_file, tmp_path, "--text", "the man in red",
                             "--text", "white car", "--budget", "64", "--overlay", str(tmp_path / "o.png"),
                             "--json", str(tmp_path / "r.json"))  # fmt: skip
    assert code == 0, err
    size = Image.open(image_file).size
    for index in range(2):
        mask = Image.open(tmp_path / f"mask_{index}.png")
        assert mask.size == size and set(np.unique(np.asarray(mask))) <= {0, 255}
    payload = json.loads((tmp_path / "r.json").read_text())
    assert payload["num_visual_tokens"] == 64 and len(payload["conversations"][0]["indices"]) == 64
    assert [e["mask_area"] for e in payload["expressions"]] == [
        int((np.asarray(Image.open(tmp_path / f"mask_{i}.png")) > 0).sum()) for i in range(2)
    ]
    assert {"clip_vision", "sam_encoder", "selection", "llm", "sam_decoder", "total"} <= set(
        payload["timings"]
    )
    assert Image.open(tmp_path / "o.png").size[0] >= size[0]
    assert json.loads(out)["masks"] == 2


def test_one_expression_keeps_the_given_name(tiny_glamm_dir, image_file, tmp_path, capsys):
    code, _, err = segment(
        capsys, tiny_glamm_dir, image_file, tmp_path, "--text", "a dog", "--budget", "1000"
    )
    assert code == 0, err
    assert (tmp_path / "mask.png").exists() and not (tmp_path / "mask_0.png").exists()


def test_generate_mode_runs(tiny_glamm_dir, image_file, tmp_path, capsys):
    code, out, err = segment(capsys, tiny_glamm_dir, image_file, tmp_path, "--text", "a dog", "--generate",
                             "--max-new-tokens", "4", "--json", str(tmp_path / "r.json"))  # fmt: skip
    record = json.loads((tmp_path / "r.json").read_text())["expressions"][0]
    assert record["seg_found"] == (record["mask_file"] is not None)
    if record["seg_found"]:
        assert code == 0, err
    else:  # the run worked, but wrote no mask: said on stdout per expression, and in the exit code
        assert "generated no [SEG]" in out
        assert code == 1 and "no expression produced a mask" in err


BAD = {
    "missing model": (["--model", "/nonexistent/glamm", "--text", "x"], "does not exist"),
    "whitespace expression": (["--text", "   "], "empty"),
    "not png": (["--text", "x", "--out", "/tmp/mask.jpg"], ".png"),
    "bad budget": (["--text", "x", "--budget", "0"], "at least 1"),
    "out under a file": (["--text", "x", "--out", "/dev/null/d/m.png"], "not a directory"),
    "no text": ([], "--text"),
}


@pytest.mark.parametrize("case", BAD)
def test_bad_input(tiny_glamm_dir, image_file, tmp_path, capsys, case):
    extra, message = BAD[case]
    argv = {"--model": str(tiny_glamm_dir), "--image": str(image_file), "--out": str(tmp_path / "m.png")}
    texts = []
    for flag, value in zip(extra[::2], extra[1::2]):
        if flag == "--text":
            texts += [flag, value]
        else:
            argv[flag] = value
    code, _, err = run_cli(capsys, "segment", *[x for pair in argv.items() for x in pair], *texts)
    assert code == 2 and message in err and "Traceback" not in err


def test_not_a_glamm_checkpoint(tmp_path, image_file, capsys):
    (tmp_path / "config.json").write_text('{"model_type": "llama", "hidden_size": 8}')
    code, _, err = run_cli(capsys, "segment", "--model", str(tmp_path), "--image", str(image_file), "--text", "x",
                           "--out", str(tmp_path / "m.png"))  # fmt: skip
    assert code == 2 and "not a GLaMM checkpoint" in err
