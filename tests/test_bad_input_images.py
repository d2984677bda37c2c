"""Bad images and malformed data files: each ends in one `LiteLVLMError` sentence naming the bad value (file, line,
size, type) and the fix; on the command line, exit code 2 and one line (the harness in tests/bad_input.py)."""

import json
import pickle

import numpy as np
import pytest
from PIL import Image

from bad_input import assert_one_sentence, run_cli, snapshot
from litelvlm.data import load_jsonl, load_refcoco, write_jsonl
from litelvlm.errors import LiteLVLMError
from litelvlm.images import MAX_ASPECT_RATIO, load_image
from litelvlm.testing.refcoco import make_tiny_refcoco
from test_images import oriented_file


def raises(call, *names) -> str:
    """`call()` raises one `LiteLVLMError` sentence holding every name (case-insensitive); returns it."""
    with pytest.raises(LiteLVLMError) as info:
        call()
    message = str(info.value)
    assert "\n" not in message and message.endswith("."), message
    for name in names:
        assert name.lower() in message.lower(), f"{name!r} not in {message!r}"
    return message


# ---- load_image: what it is given ------------------------------------------------------------------------

ARRAY_FIX = "H x W x 3 uint8 RGB"


@pytest.mark.parametrize(
    ("source", "names"),
    [
        ([[0, 1], [2, 3]], ("got list", "numpy array")),
        (None, ("got NoneType", "image path")),
        (42, ("got int", "PIL image")),
        (b"\x89PNG", ("got bytes", "image path")),
        (np.zeros((4, 5, 4), np.uint8), ("(4, 5, 4)", "uint8", ARRAY_FIX)),
        (np.zeros((4, 5, 1), np.uint8), ("(4, 5, 1)", ARRAY_FIX)),
        (np.zeros((4, 5, 3), np.float32), ("(4, 5, 3)", "float32", ARRAY_FIX)),
        (np.zeros((4, 5), bool), ("dtype bool", "H x W uint8 gray")),
        (np.zeros(12, np.uint8), ("(12,)", ARRAY_FIX)),
        (np.zeros((2, 4, 5, 3), np.uint8), ("(2, 4, 5, 3)", ARRAY_FIX)),
    ],
    ids=["list", "none", "int", "bytes", "rgba-array", "one-channel", "float", "bool", "1d", "batch"],
)
def test_load_image_refuses_what_is_not_an_image(source, names):
    raises(lambda: load_image(source), *names)


# ---- load_image: sizes ----------------------------------------------------------------------------------


def png(tmp_path, width, height, name="x.png"):
    Image.new("L", (width, height), 128).save(tmp_path / name)
    return tmp_path / name


@pytest.mark.parametrize(
    ("make", "names"),
    [
        (lambda d: png(d, 1, 10_000), ("x.png", "1 x 10000", "10000:1", "crop or pad")),
        (lambda d: png(d, 10_000, 1), ("10000 x 1", "10000:1", f"{MAX_ASPECT_RATIO}:1")),
        (lambda d: png(d, 101, 1), ("101 x 1", "101:1", "crop or pad")),
        (lambda d: png(d, 3, 500), ("3 x 500", "166.7:1")),
        # A turned phone photo: the ratio is the same either way.
        (
            lambda d: oriented_file(d / "t.jpg", np.zeros((2, 300, 3), np.uint8), 6),
            ("t.jpg", "300 x 2", "150:1"),
        ),
        (lambda d: Image.new("RGB", (0, 0)), ("PIL image", "empty", "0 x 0", "pixels in it")),
        (lambda d: Image.new("RGB", (0, 7)), ("0 x 7", "empty")),
        (lambda d: np.zeros((0, 5, 3), np.uint8), ("(0, 5, 3)", "empty", "5 x 0")),
        (lambda d: np.zeros((1, 500, 3), np.uint8), ("(1, 500, 3)", "500 x 1", "crop or pad")),
        (lambda d: Image.new("RGB", (200, 1)), ("PIL image", "200 x 1", "200:1")),
    ],
    ids=[
        "tall",
        "wide",
        "just-over",
        "fractional",
        "exif-turned",
        "pil-0x0",
        "pil-0-wide",
        "array-empty",
        "array-strip",
        "pil-strip",
    ],  # fmt: skip
)
def test_degenerate_images_are_refused(tmp_path, make, names):
    source = make(tmp_path)
    raises(lambda: load_image(source), *names)


def test_the_aspect_ratio_limit_itself_is_accepted(tmp_path):
    assert load_image(png(tmp_path, MAX_ASPECT_RATIO, 1)).size == (MAX_ASPECT_RATIO, 1)
    assert load_image(np.zeros((MAX_ASPECT_RATIO, 1), np.uint8)).size == (1, MAX_ASPECT_RATIO)


# ---- the CLI: `select` on bad images ----------------------------------------------------------------------


def truncated_jpeg(directory):
    Image.fromarray(np.full((120, 160, 3), 90, np.uint8)).save(directory / "full.jpg")
    data = (directory / "full.jpg").read_bytes()
    (directory / "cut.jpg").write_bytes(data[: len(data) // 2])
    return directory / "cut.jpg"


def text_file(directory, name="notes.jpg", data=b"not an image at all"):
    (directory / name).write_bytes(data)
    return directory / name


@pytest.mark.parametrize(
    ("make", "names"),
    [
        (lambda d: d / "missing.jpg", ("missing.jpg", "does not exist", "check the path")),
        (lambda d: d, ("is a directory", "pass an image file")),
        (text_file, ("notes.jpg", "not an image PIL can read", "JPEG or PNG")),
        (lambda d: text_file(d, "empty.png", b""), ("empty.png", "not an image")),
        (truncated_jpeg, ("cut.jpg", "truncated or corrupt", "re-download")),
        (lambda d: png(d, 1, 10_000), ("x.png", "1 x 10000", "crop or pad")),
        (lambda d: png(d, 0x3FFF, 1), ("16383 x 1", "16383:1", "crop or pad")),
    ],
    ids=["missing", "directory", "text", "empty-file", "truncated", "strip", "wide-strip"],
)
def test_select_on_a_bad_image_is_one_line_and_exit_2(tmp_path, tiny_clip_dir, capsys, make, names):
    image = make(tmp_path)
    before = snapshot(tmp_path)
    code, out, err = run_cli(
        capsys, "select", "--clip", tiny_clip_dir, "--image", image, "--text", "x", "--budget", "4",
        "--json", tmp_path / "kept.json",
    )  # fmt: skip
    assert_one_sentence(code, err, *names)
    assert out == "" and snapshot(tmp_path) == before  # nothing written


# ---- RefCOCO's official files, malformed ----------------------------------------------------------------


@pytest.fixture
def refer(tmp_path):
    """A tiny RefCOCO; returns (root, refs, instances, write) where write(refs, instances) saves the files."""
    root = make_tiny_refcoco(tmp_path, "refcoco")
    refs = pickle.loads((root / "refcoco" / "refs(unc).p").read_bytes())
    instances = json.loads((root / "refcoco" / "instances.json").read_text())

    def write(new_refs=refs, new_instances=instances):
        (root / "refcoco" / "refs(unc).p").write_bytes(pickle.dumps(new_refs, protocol=2))
        (root / "refcoco" / "instances.json").write_text(json.dumps(new_instances))

    return root, refs, instances, write


def first_val(refs):
    return next(index for index, ref in enumerate(refs) if ref["split"] == "val")


def without(mapping, key):
    return {k: v for k, v in mapping.items() if k != key}


@pytest.mark.parametrize(
    ("change", "names"),
    [
        (lambda r, i: without(r[i], "sentences"), ("has no 'sentences'", "refs(unc).p", "re-download")),
        (lambda r, i: without(r[i], "ann_id"), ("has no 'ann_id'", "re-download the refs file")),
        (lambda r, i: without(r[i], "ref_id"), ("ref_id ?", "has no 'ref_id'")),
        (lambda r, i: {**r[i], "sentences": []}, ("sentences []", "non-empty list")),
        (lambda r, i: {**r[i], "sentences": ["a man"]}, ("['a man']", "{'sent': text}")),
        (lambda r, i: {**r[i], "sentences": [{"raw": "a man"}]}, ("'raw'", "{'sent': text}")),
        (lambda r, i: {**r[i], "image_id": "12"}, ("image_id '12'", "not an integer")),
        (lambda r, i: without(r[i], "split"), ("not a REFER ref with a 'split'",)),
        (lambda r, i: "a ref", ("'a ref'", "not a REFER ref")),
    ],
    ids=[
        "no-sentences",
        "no-ann-id",
        "no-ref-id",
        "empty-sentences",
        "sentence-strings",
        "no-sent",
        "string-id",
        "no-split",
        "not-a-dict",
    ],  # fmt: skip
)
def test_malformed_refs_name_the_entry(refer, change, names):
    root, refs, _, write = refer
    index = first_val(refs)
    write([*refs[:index], change(refs, index), *refs[index + 1 :]])
    raises(lambda: load_refcoco(root, "refcoco", "val"), f"index {index}", *names)


def test_refs_that_are_not_a_list(refer):
    root, refs, _, write = refer
    write({"refs": refs})
    raises(lambda: load_refcoco(root, "refcoco", "val"), "refs(unc).p", "not hold a list", "re-download")


@pytest.mark.parametrize(
    ("change", "names"),
    [
        (lambda inst: without(inst, "annotations"), ("no 'annotations' list", "instances.json shipped")),
        (lambda inst: [], ("no 'images' list",)),
        (
            lambda inst: {**inst, "images": [without(im, "width") for im in inst["images"]]},
            ("has width None", "positive integer"),
        ),
        (
            lambda inst: {**inst, "images": [{**im, "height": "480"} for im in inst["images"]]},
            ("height '480'", "positive integer"),
        ),
    ],
    ids=["no-annotations", "not-a-dict", "no-width", "string-height"],
)
def test_malformed_instances_name_the_record(refer, change, names):
    root, refs, instances, write = refer
    write(refs, change(instances))
    raises(lambda: load_refcoco(root, "refcoco", "val"), "instances.json", *names)


@pytest.mark.parametrize("data", [b'{"images": [', b'{"images": "\xff\xfe"}'], ids=["truncated", "not-utf8"])
def test_instances_that_are_not_json(refer, data):
    root, *_ = refer
    (root / "refcoco" / "instances.json").write_bytes(data)
    raises(lambda: load_refcoco(root, "refcoco", "val"), "instances.json", "not valid JSON", "re-download")


def test_annotation_without_segmentation_is_refused_not_scored_as_empty(refer):
    # Before: read as an empty ground truth, so every prediction for it silently scored IoU 0.
    root, refs, instances, write = refer
    ann_id = refs[first_val(refs)]["ann_id"]
    annotations = [without(a, "segmentation") if a["id"] == ann_id else a for a in instances["annotations"]]
    write(refs, {**instances, "annotations": annotations})
    raises(lambda: load_refcoco(root, "refcoco", "val"), f"annotation {ann_id}", "no 'segmentation'")


def test_resized_images_are_refused_not_scored_against_misplaced_masks(refer):
    # Before: masks decoded at the annotations' size were compared with predictions at the file's size.
    root, *_ = refer
    data = load_refcoco(root, "refcoco", "val")
    entry = data[0]
    Image.new("RGB", (entry.stored_width // 2, entry.stored_height // 2)).save(entry.path)
    data = load_refcoco(root, "refcoco", "val")  # loading reads no header: still fast
    names = (
        entry.path.name,
        f"{entry.stored_width // 2} x {entry.stored_height // 2}",
        f"for {entry.stored_width} x {entry.stored_height}",
        "unresized",
    )
    raises(lambda: data.mask(data[0].referents[0]), *names)
    raises(lambda: data[0].width, *names)


def test_analyze_on_malformed_refs_is_one_line_and_exit_2(refer, tiny_clip_dir, capsys, tmp_path):
    root, refs, _, write = refer
    index = first_val(refs)
    write([*refs[:index], without(refs[index], "sentences"), *refs[index + 1 :]])
    code, _, err = run_cli(
        capsys, "analyze", "--clip", tiny_clip_dir, "--data-root", root, "--dataset", "refcoco",
        "--split", "val", "--out", tmp_path / "analysis", "--no-progress",
    )  # fmt: skip
    assert_one_sentence(code, err, f"index {index}", "has no 'sentences'", "re-download")


# ---- JSONL, malformed -------------------------------------------------------------------------------------


@pytest.fixture
def folder(tmp_path):
    """imgs/a.jpg (40 x 30), masks/a.png (its mask), a text file posing as a PNG and a 1 x 200 strip."""
    (tmp_path / "imgs").mkdir()
    (tmp_path / "masks").mkdir()
    Image.new("RGB", (40, 30), (10, 20, 30)).save(tmp_path / "imgs" / "a.jpg")
    Image.new("L", (40, 30)).save(tmp_path / "masks" / "a.png")
    (tmp_path / "masks" / "notes.png").write_text("a mask, honest")
    (tmp_path / "imgs" / "notes.jpg").write_text("a picture, honest")
    Image.new("RGB", (1, 200)).save(tmp_path / "imgs" / "strip.png")
    return tmp_path


GOOD = '{"image": "imgs/a.jpg", "expression": "x", "mask": "masks/a.png"}'


@pytest.mark.parametrize(
    ("lines", "names"),
    [
        (
            [GOOD.encode(), b'{"image": "imgs/a.jpg", "expression": "caf\xe9", "mask": "masks/a.png"}'],
            ("line 2 of", "refs.jsonl", "not UTF-8", "0xe9", "save the file as UTF-8"),
        ),
        ([b"\xff\xfe" + GOOD.encode()], ("line 1 of", "not UTF-8", "0xff")),
        ([GOOD.encode(), b"{not json"], ("line 2 of", "not valid JSON", "fix that line")),
        ([b'["imgs/a.jpg", "x"]'], ("line 1 of", "not a JSON object")),
        ([b'{"image": "imgs/a.jpg", "expression": "x"}'], ("line 1 of", "has no 'mask'")),
        ([b'{"image": 5, "expression": "x", "mask": "masks/a.png"}'], ("line 1 of", "'image' 5", "path")),
        (
            [b'{"image": "imgs/a.jpg", "expressions": "x", "mask": "masks/a.png"}'],
            ("line 1 of", "expressions 'x'", "non-empty list"),
        ),
        (
            [b'{"image": "imgs/a.jpg", "expression": "x", "mask": "masks/notes.png"}'],
            ("line 1 of", "mask", "notes.png", "not an image PIL can read", "save the mask as a PNG"),
        ),
        ([b'{"image": "imgs/a.jpg", "expression": "x", "mask": 7}'], ("line 1 of", "has mask 7", "COCO RLE")),
        (
            [b'{"image": "imgs/a.jpg", "expression": "x", "mask": {"size": "30x40", "counts": ""}}'],
            ("line 1 of", "'30x40'", "[height, width]"),
        ),
        (
            [b'{"image": "imgs/a.jpg", "expression": "x", "mask": {"size": [40, 30], "counts": ""}}'],
            ("line 1 of", "[40, 30]", "[30, 40]", "encode the mask"),
        ),
        (
            [b'{"image": "imgs/notes.jpg", "expression": "x", "mask": "masks/a.png"}'],
            ("line 1 of", "notes.jpg", "not an image PIL can read"),
        ),
        (
            [b'{"image": "imgs/strip.png", "expression": "x", "mask": "masks/a.png"}'],
            ("line 1 of", "strip.png", "1 x 200", "crop or pad"),
        ),
        (
            [b'{"image": "imgs/b.jpg", "expression": "x", "mask": "masks/a.png"}'],
            ("line 1 of", "'imgs/b.jpg'", "does not exist", "--images"),
        ),
    ],
    ids=[
        "not-utf8",
        "not-utf8-first-line",
        "not-json",
        "not-object",
        "no-mask",
        "image-number",
        "expressions",
        "mask-not-image",
        "mask-number",
        "rle-size-text",
        "rle-size-wrong",
        "image-not-image",
        "image-strip",
        "image-missing",
    ],  # fmt: skip
)
def test_malformed_jsonl_names_the_line_and_the_fix(folder, lines, names):
    (folder / "refs.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    raises(lambda: load_jsonl(folder / "refs.jsonl"), *names)


def test_a_mask_turned_neither_way_names_both_sizes(folder):
    oriented_file(folder / "imgs" / "turned.jpg", np.zeros((30, 40, 3), np.uint8), 6)
    (folder / "refs.jsonl").write_text(
        '{"image": "imgs/turned.jpg", "expression": "x", "mask": "masks/bad.png"}\n'
    )
    Image.new("L", (20, 20)).save(folder / "masks" / "bad.png")
    raises(
        lambda: load_jsonl(folder / "refs.jsonl"),
        "line 1 of", "20 x 20", "40 x 30 as stored", "30 x 40 as displayed", "orientation 6", "save the mask",
    )  # fmt: skip


def test_a_mask_file_corrupted_after_loading(folder):
    noise = np.random.default_rng(0).integers(0, 2, (30, 40), dtype=np.uint8) * 255
    Image.fromarray(noise).save(folder / "masks" / "a.png")
    (folder / "refs.jsonl").write_text(GOOD + "\n")
    data = load_jsonl(folder / "refs.jsonl")
    header = (folder / "masks" / "a.png").read_bytes()[:80]
    (folder / "masks" / "a.png").write_bytes(header)  # size still readable, pixels gone
    raises(lambda: data.mask(data[0].referents[0]), "mask", "a.png", "truncated or corrupt")


def test_jsonl_images_folder_that_does_not_exist(folder):
    (folder / "refs.jsonl").write_text(GOOD + "\n")
    raises(lambda: load_jsonl(folder / "refs.jsonl", images=folder / "nowhere"), "nowhere", "does not exist")


def test_jsonl_image_in_neither_folder_names_both(folder):
    # Before: `--images` was ignored with `--jsonl`; now it is searched first, then the JSONL file's folder.
    (folder / "pictures").mkdir()
    (folder / "refs.jsonl").write_text(GOOD.replace("imgs/a.jpg", "imgs/b.jpg") + "\n")
    raises(
        lambda: load_jsonl(folder / "refs.jsonl", images=folder / "pictures"),
        "line 1 of", "'imgs/b.jpg'", str(folder / "pictures"), f"folder {str(folder)!r}", "fix the path",
    )  # fmt: skip


@pytest.mark.parametrize(
    ("line", "names"),
    [
        (
            b'{"image": "imgs/a.jpg", "expression": "caf\xe9", "mask": "masks/a.png"}',
            ("line 1 of", "not UTF-8"),
        ),
        (
            b'{"image": "imgs/a.jpg", "expression": "x", "mask": "masks/notes.png"}',
            ("notes.png", "save the mask"),
        ),
    ],
    ids=["not-utf8", "mask-not-image"],
)
def test_analyze_on_malformed_jsonl_is_one_line_and_exit_2(folder, tiny_clip_dir, capsys, line, names):
    (folder / "refs.jsonl").write_bytes(line + b"\n")
    before = snapshot(folder)
    code, out, err = run_cli(
        capsys, "analyze", "--clip", tiny_clip_dir, "--jsonl", folder / "refs.jsonl", "--out", folder / "out",
        "--no-progress",
    )  # fmt: skip
    assert_one_sentence(code, err, "refs.jsonl", *names)
    assert snapshot(folder) == before


def test_write_jsonl_round_trip_still_refuses_a_wrong_sized_mask(folder):
    path = write_jsonl(
        folder / "w.jsonl", [{"image": "imgs/a.jpg", "expression": "x", "mask": np.ones((3, 3))}]
    )
    raises(lambda: load_jsonl(path), "line 1 of", "[3, 3]", "[30, 40]", "encode the mask")


def test_eval_style_jsonl_with_images_reads_the_images_folder(folder, tiny_clip_dir, capsys):
    """Before: `--jsonl F --images DIR` ignored DIR silently. Now DIR is searched first (analyze shares eval's
    data options), and an image found in neither folder is one sentence naming both."""
    pictures = folder / "pictures" / "imgs"
    pictures.mkdir(parents=True)
    (folder / "imgs" / "a.jpg").rename(pictures / "a.jpg")
    (folder / "refs.jsonl").write_text(GOOD + "\n")
    common = ["analyze", "--clip", tiny_clip_dir, "--jsonl", folder / "refs.jsonl", "--no-progress",
              "--budgets", "64"]  # fmt: skip
    code, _, err = run_cli(capsys, *common, "--out", folder / "without")
    assert_one_sentence(code, err, "'imgs/a.jpg'", "does not exist", "--images")
    code, _, err = run_cli(capsys, *common, "--images", folder / "pictures", "--out", folder / "with")
    assert code == 0, err
    assert (folder / "with" / "analysis.json").is_file()
