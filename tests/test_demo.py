"""The demo's computation (litelvlm.demo.engine) on the tiny GLaMM: upload checks, expression parsing, the
per-image cache (the slider re-runs only the per-expression work), the full-token reference, and the method list."""

import numpy as np
import pytest
from PIL import Image

from litelvlm.cli import main
from litelvlm.demo import DemoEngine, check_upload, parse_expressions
from litelvlm.demo.app import describe, method_choices
from litelvlm.demo.engine import mask_iou
from litelvlm.demo.examples import SCENES, draw_scene, write_examples
from litelvlm.errors import LiteLVLMError
from litelvlm.selection import list_methods


@pytest.fixture
def scene_file(tmp_path):
    path = tmp_path / "scene.png"
    draw_scene("shapes").save(path)
    return path


@pytest.fixture
def engine(predictor):
    return DemoEngine({"glamm": predictor})


def count_calls(monkeypatch, obj, name):
    calls = []
    original = getattr(obj, name)

    def counted(*args, **kwargs):
        calls.append(kwargs)
        return original(*args, **kwargs)

    monkeypatch.setattr(obj, name, counted)
    return calls


def test_upload_checks_name_the_file_and_the_fix(tmp_path, scene_file):
    text = tmp_path / "notes.txt"
    text.write_text("not an image")
    with pytest.raises(LiteLVLMError, match=r"'notes.txt' is not an image .*upload a JPEG or PNG"):
        check_upload(text, 20, 40)
    with pytest.raises(LiteLVLMError, match=r"above this server's 0.0001 MB limit; upload a smaller image"):
        check_upload(scene_file, 0.0001, 40)
    with pytest.raises(LiteLVLMError, match=r"0.3 megapixels, above this server's 0.1 limit; downscale it"):
        check_upload(scene_file, 20, 0.1)
    truncated = tmp_path / "cut.png"
    truncated.write_bytes(scene_file.read_bytes()[:200])
    with pytest.raises(LiteLVLMError, match="cut.png"):
        check_upload(truncated, 20, 40)
    with pytest.raises(LiteLVLMError, match="no image yet"):
        check_upload(None, 20, 40)
    assert check_upload(scene_file, 20, 40).size == (640, 480)


@pytest.mark.parametrize(
    ("text", "message"),
    [("", "no referring expression"), ("  \n \n", "no referring expression"),
     ("a\nb\nc\nd", "4 expressions given; the demo takes at most 3"), ("x" * 201, "has 201 characters")],
)  # fmt: skip
def test_bad_expressions_are_one_sentence(text, message):
    with pytest.raises(LiteLVLMError, match=message):
        parse_expressions(text)


def test_expressions_are_lines():
    assert parse_expressions(" the red circle \n\nthe blue square\n") == ["the red circle", "the blue square"]


def test_budget_change_reruns_only_the_per_expression_work(engine, predictor, monkeypatch):
    image = draw_scene("shapes")
    set_image = count_calls(monkeypatch, predictor, "set_image")
    predict = count_calls(monkeypatch, predictor, "predict")
    first = engine.run("glamm", image, ["the red circle", "the blue square"], "litelvlm", 64)
    assert (len(set_image), len(predict)) == (1, 2)  # the image once; the pruned run and the full reference
    assert not first.image_cached and {"clip_vision", "sam_encoder"} <= set(first.seconds)
    second = engine.run("glamm", image.copy(), ["the red circle", "the blue square"], "litelvlm", 32)
    assert (len(set_image), len(predict)) == (1, 3)  # same pixels: cached image, remembered full run
    assert second.image_cached and not {"clip_vision", "sam_encoder"} & set(second.seconds)
    assert (first.kept, second.kept, second.total) == (64, 32, predictor.num_patches)
    assert predict[-1]["budget"] == 32 and predict[-1]["method"] == "litelvlm"
    engine.run("glamm", draw_scene("fruit"), ["the orange"], "litelvlm", 32)
    assert len(set_image) == 2  # another image is set again


def test_result_images_masks_and_full_reference(engine, predictor):
    image = draw_scene("tall")
    result = engine.run("glamm", image, ["the white box"], "random", 48)
    assert result.masks[0].shape == (image.height, image.width) and result.masks[0].dtype == bool
    assert result.overlay.size == result.masks_image.size
    assert result.speedup is not None and result.full_seconds > 0
    full = engine.run("glamm", image, ["the white box"], "random", predictor.num_patches)
    assert full.kept == predictor.num_patches and full.iou_to_full == [1.0]
    assert result.iou_to_full[0] == pytest.approx(mask_iou(result.masks[0], full.masks[0]))
    text = describe(result, generate=False)
    assert f"**48 / {predictor.num_patches}** visual tokens kept" in text and "| LLM |" in text


def test_unknown_model_is_one_sentence(engine):
    with pytest.raises(LiteLVLMError, match="unknown model 'lisa'; choose one of glamm"):
        engine.run("lisa", draw_scene("shapes"), ["x"], "litelvlm", 8)


def test_mask_iou():
    a = np.zeros((4, 4), bool)
    b = a.copy()
    assert mask_iou(a, b) == 1.0 and mask_iou(a, None) is None
    a[:2] = True
    b[1:3] = True
    assert mask_iou(a, b) == pytest.approx(4 / 12)


def test_every_method_is_offered_once_before_llm_first():
    values = [value for _, value in method_choices()]
    assert sorted(values) == sorted(list_methods()) and values[0] == "litelvlm"
    stages = [label.split(" · ")[0] for label, _ in method_choices()]
    assert stages == sorted(stages)  # "before LLM" < "in LLM": one block each
    assert {v for (label, v) in method_choices() if label.startswith("in LLM")} == set(list_methods("llm"))


def test_examples_are_drawn_not_downloaded(tmp_path):
    rows = write_examples(tmp_path)
    assert len(rows) == len(SCENES)
    for path, expressions in rows:
        assert Image.open(path).size == SCENES[path.stem][0] and expressions.strip()
    assert np.array_equal(np.asarray(draw_scene("shapes")), np.asarray(Image.open(tmp_path / "shapes.png")))


@pytest.mark.parametrize(
    ("extra", "message"),
    [(["--port", "0"], "--port must be between 1 and 65535, got 0."),
     (["--max-upload-mb", "-1"], "--max-upload-mb must be positive, got -1.0.")],
)  # fmt: skip
def test_demo_cli_bad_arguments(extra, message, capsys):
    assert main(["demo", "--tiny", *extra]) == 2
    assert capsys.readouterr().err.strip() == f"litelvlm demo: error: {message}"


def test_in_llm_method_reports_tokens_per_layer(engine, predictor):
    result = engine.run(
        "glamm", draw_scene("shapes"), ["the red circle"], "fastv", 400, compare_to_full=False
    )
    assert result.kept == predictor.num_patches and result.full_seconds is None and result.speedup is None
    assert 0 < result.average_per_layer < predictor.num_patches
    assert "visual tokens enter the LLM" in describe(result, generate=False)
    before = engine.run(
        "glamm", draw_scene("shapes"), ["the red circle"], "litelvlm", 64, compare_to_full=False
    )
    assert before.average_per_layer is None
