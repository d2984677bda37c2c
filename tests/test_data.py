"""RefCOCO/+/g in the official files (built by make_tiny_refcoco) and the JSONL format."""

import json
import pickle
import shutil

import numpy as np
import pytest
from PIL import Image

from litelvlm.data import (
    REFCOCO_SPLITS,
    Referent,
    decode_segmentation,
    encode_mask,
    load_jsonl,
    load_refcoco,
    write_jsonl,
)
from litelvlm.errors import LiteLVLMError
from litelvlm.testing.refcoco import BACKGROUND, make_tiny_refcoco
from test_images import displayed_reference, oriented_file, patterned

IMAGE_DIRS = {"glamm": "coco_2014/train2014", "lisa": "images/mscoco/images/train2014"}
REFS = {"refcoco": "refs(unc).p", "refcoco+": "refs(unc).p", "refcocog": "refs(umd).p"}


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("refer")
    for dataset in REFCOCO_SPLITS:
        make_tiny_refcoco(root, dataset, num_images=8 if dataset == "refcoco" else 6)
    return root


def read_files(root, dataset):
    with open(root / dataset / REFS[dataset], "rb") as file:
        refs = pickle.load(file)
    instances = json.loads((root / dataset / "instances.json").read_text())
    return refs, instances


def in_split(split, ref_split):
    return (
        split[-1] in ref_split
        if split in ("testA", "testB")
        else ("test" in ref_split if split == "test" else ref_split == split)
    )


@pytest.mark.parametrize("layout", ["glamm", "lisa"])
@pytest.mark.parametrize("dataset", list(REFCOCO_SPLITS))
def test_load_every_split_in_file_order(tmp_path, dataset, layout):
    root = make_tiny_refcoco(tmp_path, dataset, layout=layout)
    refs, instances = read_files(root, dataset)
    sizes = {image["id"]: (image["width"], image["height"]) for image in instances["images"]}
    seen = set()
    for split in REFCOCO_SPLITS[dataset]:
        data = load_refcoco(root, dataset, split)
        assert (data.name, data.split) == (dataset, split)
        assert len(data) >= 2 and len(data) == len(list(data))
        ids = [entry.image_id for entry in data]
        assert ids == sorted(ids) and not seen & set(ids)
        seen |= set(ids)
        for entry in data:
            assert entry.path == root / IMAGE_DIRS[layout] / f"COCO_train2014_{entry.image_id:012d}.jpg"
            assert (entry.width, entry.height) == sizes[entry.image_id] == data.load_image(entry).size
            expected = [
                ref for ref in refs if ref["image_id"] == entry.image_id and in_split(split, ref["split"])
            ]
            assert [r.ref_id for r in entry.referents] == [ref["ref_id"] for ref in expected]
            for referent, ref in zip(entry.referents, expected):
                assert referent.sentences == tuple(s["sent"] for s in ref["sentences"])
                assert (referent.ann_id, referent.category_id) == (ref["ann_id"], ref["category_id"])
    assert seen == {ref["image_id"] for ref in refs if ref["split"] != "train"}
    counts = [
        len(entry.sentences)
        for split in REFCOCO_SPLITS[dataset]
        for entry in load_refcoco(root, dataset, split)
    ]
    assert min(counts) < 3 <= max(counts)  # exercises both branches of the 3-expression sampling


def test_train_refs_are_in_no_evaluation_split(data_root):
    refs, _ = read_files(data_root, "refcoco")
    train = {ref["image_id"] for ref in refs if ref["split"] == "train"}
    assert len(train) == 2
    for split in REFCOCO_SPLITS["refcoco"]:
        assert not train & {entry.image_id for entry in load_refcoco(data_root, "refcoco", split)}


def rectangle(polygon):
    xs, ys = polygon[0::2], polygon[1::2]
    return min(xs), min(ys), max(xs), max(ys)


def area(box):
    return max(0, box[2] - box[0]) * max(0, box[3] - box[1])


@pytest.mark.parametrize("dataset", list(REFCOCO_SPLITS))
def test_masks_match_the_drawn_shapes(data_root, dataset):
    _, instances = read_files(data_root, dataset)
    annotations = {ann["id"]: ann for ann in instances["annotations"]}
    kinds = set()
    for split in REFCOCO_SPLITS[dataset]:
        data = load_refcoco(data_root, dataset, split)
        for entry in data:
            picture = np.asarray(data.load_image(entry), dtype=np.float64)
            objects = np.zeros((entry.height, entry.width), dtype=bool)
            for referent in entry.referents:
                mask = data.mask(referent)
                assert mask.shape == (entry.height, entry.width) and mask.dtype == np.uint8
                segmentation = annotations[referent.ann_id]["segmentation"]
                if isinstance(segmentation, list) and len(segmentation) == 1:  # one rectangle polygon
                    kinds.add("polygon")
                    assert (mask == 1).sum() == area(rectangle(segmentation[0])) and mask.max() == 1
                elif isinstance(segmentation, list):  # a cross of two rectangles: the overlap holds 2
                    kinds.add("overlap")
                    a, b = (rectangle(p) for p in segmentation)
                    overlap = area((max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])))
                    assert overlap > 0 and (mask == 2).sum() == overlap and mask.max() == 2
                    assert (mask == 1).sum() + 2 * (mask == 2).sum() == area(a) + area(b)
                elif isinstance(segmentation["counts"], list):  # uncompressed RLE: odd runs are the 1s
                    kinds.add("uncompressed")
                    assert mask.sum() == sum(segmentation["counts"][1::2]) and mask.max() == 1
                else:
                    kinds.add("compressed")
                    assert isinstance(segmentation["counts"], str)
                    assert mask.sum() == annotations[referent.ann_id]["area"] and mask.max() == 1
                # The mask covers a visible, uniformly coloured object on the background.
                inside = picture[mask > 0]
                assert np.abs(inside.mean(axis=0) - BACKGROUND).max() > 40
                assert inside.std(axis=0).max() < 25
                objects |= mask > 0
            # Away from the objects' edges (JPEG ringing) the picture is background.
            far = ~np.pad(objects, 2)[:-4, 2:-2] & ~np.pad(objects, 2)[4:, 2:-2]
            far &= ~np.pad(objects, 2)[2:-2, :-4] & ~np.pad(objects, 2)[2:-2, 4:] & ~objects
            deviation = np.abs(picture[far] - BACKGROUND).max(axis=1)
            assert deviation.mean() < 3 and np.percentile(deviation, 95) < 12
    assert kinds == {"polygon", "overlap", "uncompressed", "compressed"}


def test_make_tiny_refcoco_is_deterministic(tmp_path):
    first = make_tiny_refcoco(tmp_path / "a", "refcocog", seed=3)
    second = make_tiny_refcoco(tmp_path / "b", "refcocog", seed=3)
    assert read_files(first, "refcocog") == read_files(second, "refcocog")
    assert read_files(first, "refcocog") != read_files(
        make_tiny_refcoco(tmp_path / "c", "refcocog", seed=4), "refcocog"
    )


def test_decode_segmentation_flavours():
    assert not decode_segmentation([], 4, 5).any() and decode_segmentation([], 4, 5).shape == (4, 5)
    mask = np.zeros((4, 5), np.uint8)
    mask[1:3, 2:5] = 1
    rle = encode_mask(mask)
    as_bytes = {"size": rle["size"], "counts": rle["counts"].encode()}
    uncompressed = {"size": [4, 5], "counts": [9, 2, 2, 2, 2, 2, 1]}  # column-major runs of the same mask
    for segmentation in (rle, as_bytes, uncompressed, [rle], [rle, uncompressed]):
        expected = mask * (2 if isinstance(segmentation, list) and len(segmentation) == 2 else 1)
        assert np.array_equal(decode_segmentation(segmentation, 4, 5), expected)
    with pytest.raises(LiteLVLMError, match=r"\[4, 5\]"):
        decode_segmentation(rle, 5, 4)


def test_missing_paths_name_the_path_and_layout(tmp_path, data_root):
    with pytest.raises(LiteLVLMError, match="data root .*nowhere.* expected layout"):
        load_refcoco(tmp_path / "nowhere", "refcoco", "val")
    with pytest.raises(LiteLVLMError, match=r"dataset folder .*refcocog'.*refs\(umd\)\.p"):
        load_refcoco(tmp_path, "refcocog", "val")
    root = make_tiny_refcoco(tmp_path / "data", "refcoco+")
    (root / "refcoco+" / "refs(unc).p").unlink()
    with pytest.raises(LiteLVLMError, match=r"refs file .*refcoco\+/refs\(unc\)\.p"):
        load_refcoco(root, "refcoco+", "val")
    root = make_tiny_refcoco(tmp_path / "data2", "refcoco")
    (root / "refcoco" / "instances.json").unlink()
    with pytest.raises(LiteLVLMError, match="instances file .*instances.json"):
        load_refcoco(root, "refcoco", "val")


def test_bad_split_and_dataset_list_valid_ones(data_root):
    with pytest.raises(
        LiteLVLMError, match="refcocog has no evaluation split 'testA'; choose one of val, test"
    ):
        load_refcoco(data_root, "refcocog", "testA")
    with pytest.raises(LiteLVLMError, match="choose one of val, testA, testB"):
        load_refcoco(data_root, "refcoco", "train")
    with pytest.raises(LiteLVLMError, match="unknown dataset 'refclef'"):
        load_refcoco(data_root, "refclef", "val")


def test_missing_images(tmp_path):
    root = make_tiny_refcoco(tmp_path / "data", "refcoco")
    data = load_refcoco(root, "refcoco", "testB")
    first, second = data[0].path, data[1].path
    second.unlink()
    first.unlink()
    with pytest.raises(
        LiteLVLMError, match=f"image '{first}' does not exist; the expected layout.*coco_2014"
    ):
        load_refcoco(root, "refcoco", "testB")
    load_refcoco(root, "refcoco", "val")  # other splits are unaffected
    shutil.rmtree(root / "coco_2014")
    with pytest.raises(LiteLVLMError, match="no COCO train2014 image folder found"):
        load_refcoco(root, "refcoco", "val")


def test_images_override_and_file_name_fallback(tmp_path):
    root = make_tiny_refcoco(tmp_path / "data", "refcocog")
    elsewhere = tmp_path / "my_images"
    shutil.move(root / "coco_2014" / "train2014", elsewhere)
    with pytest.raises(LiteLVLMError, match="images folder .*missing.* does not exist"):
        load_refcoco(root, "refcocog", "val", images=tmp_path / "missing")
    data = load_refcoco(root, "refcocog", "val", images=elsewhere)
    assert all(entry.path.parent == elsewhere for entry in data)
    # An image stored under instances.json's file_name instead of the COCO name is found there.
    instances = json.loads((root / "refcocog" / "instances.json").read_text())
    record = next(image for image in instances["images"] if image["id"] == data[0].image_id)
    record["file_name"] = "renamed.jpg"
    (root / "refcocog" / "instances.json").write_text(json.dumps(instances))
    data[0].path.rename(elsewhere / "renamed.jpg")
    assert load_refcoco(root, "refcocog", "val", images=elsewhere)[0].path == elsewhere / "renamed.jpg"


def test_sibling_coco_folder_of_glamm_readme(tmp_path):
    make_tiny_refcoco(tmp_path, "refcoco")  # images in tmp/coco_2014, data in tmp/Refer_Segm
    shutil.move(tmp_path / "refcoco", tmp_path / "Refer_Segm" / "refcoco")
    assert len(load_refcoco(tmp_path / "Refer_Segm", "refcoco", "val")) == 2


def test_mask_of_a_foreign_referent(data_root):
    data = load_refcoco(data_root, "refcoco", "val")
    with pytest.raises(LiteLVLMError, match="not in refcoco val"):
        data.mask(Referent(ref_id=1, image_id=1, sentences=("x",), ann_id=-1))


# ---- JSONL ---------------------------------------------------------------------------------------------


@pytest.fixture
def jsonl_dir(tmp_path):
    (tmp_path / "imgs").mkdir()
    (tmp_path / "masks").mkdir()
    Image.new("RGB", (40, 30), (10, 20, 30)).save(tmp_path / "imgs" / "a.jpg")
    Image.new("RGB", (24, 16), (50, 60, 70)).save(tmp_path / "imgs" / "b.png")
    first = np.zeros((30, 40), np.uint8)
    first[5:10, 3:20] = 255
    Image.fromarray(first).save(tmp_path / "masks" / "a_0.png")
    second = np.zeros((16, 24), bool)
    second[2:9, 4:6] = True
    return tmp_path, first != 0, second


def test_load_jsonl_png_and_rle_grouped_by_image(jsonl_dir):
    directory, first, second = jsonl_dir
    path = write_jsonl(
        directory / "data" / "refs.jsonl",
        [
            {
                "image": "../imgs/a.jpg",
                "expressions": ["the man in red", "left guy"],
                "mask": "../masks/a_0.png",
            },
            {"image": "../imgs/b.png", "expression": "white car", "mask": second, "id": "car"},
            {"image": "../imgs/a.jpg", "expression": "sky", "mask": {"size": [30, 40], "counts": [1200]}},
        ],
    )
    path.write_text(path.read_text() + "\n")  # blank lines are skipped
    data = load_jsonl(path)
    assert (data.name, len(data)) == ("refs", 2)
    a, b = data
    assert (a.image_id, a.path, a.width, a.height) == ("../imgs/a.jpg", path.parent / "../imgs/a.jpg", 40, 30)
    assert [r.ref_id for r in a.referents] == [1, 3] and [r.ref_id for r in b.referents] == ["car"]
    assert a.referents[0].sentences == ("the man in red", "left guy") and b.referents[0].sentences == (
        "white car",
    )
    assert a.sentences == ["the man in red", "left guy", "sky"]
    assert np.array_equal(data.mask(a.referents[0]), first.astype(np.uint8))
    assert not data.mask(a.referents[1]).any()
    assert np.array_equal(data.mask(b.referents[0]), second.astype(np.uint8))
    assert data.load_image(b).size == (24, 16)


def test_jsonl_image_id_groups_lines(jsonl_dir):
    directory, _, _ = jsonl_dir
    rle = {"size": [30, 40], "counts": [1200]}
    path = write_jsonl(
        directory / "refs.jsonl",
        [
            {"image": "imgs/a.jpg", "image_id": 7, "expression": "x", "mask": rle},
            {"image": "./imgs/a.jpg", "image_id": 7, "expression": "y", "mask": rle},
        ],
    )
    (entry,) = load_jsonl(path)
    assert entry.image_id == 7 and entry.sentences == ["x", "y"]


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        (
            ['{"image": "imgs/a.jpg", "expression": "x", "mask": "masks/a_0.png"}', "{not json"],
            "line 2 of .* is not valid JSON",
        ),
        (['{"expression": "x", "mask": "masks/a_0.png"}'], "line 1 of .* has no 'image'"),
        (
            ['{"image": "imgs/a.jpg", "mask": "masks/a_0.png"}'],
            "line 1 .* needs exactly one of 'expressions'",
        ),
        (['{"image": "imgs/a.jpg", "expressions": [], "mask": "masks/a_0.png"}'], "line 1 .* non-empty list"),
        (
            ['{"image": "imgs/zz.jpg", "expression": "x", "mask": "masks/a_0.png"}'],
            "line 1 .* image 'imgs/zz.jpg'.* does not exist",
        ),
        (
            ["", '{"image": "imgs/a.jpg", "expression": "x", "mask": "masks/none.png"}'],
            "line 2 .* mask 'masks/none.png'.* does not exist",
        ),
        (
            ['{"image": "imgs/b.png", "expression": "x", "mask": "masks/a_0.png"}'],
            "line 1 .* mask 'masks/a_0.png' is 40 x 30 but the image is 24 x 16",
        ),
        (
            ['{"image": "imgs/b.png", "expression": "x", "mask": {"size": [30, 40], "counts": "abc"}}'],
            r"line 1 .* RLE mask size \[30, 40\]",
        ),
        (
            ['{"image": "imgs/a.jpg", "expression": "x", "mask": "masks/a_0.png", "id": 4}'] * 2,
            "line 2 .* repeats id 4",
        ),
        ([], "has no records"),
    ],
)
def test_jsonl_errors_name_the_line(jsonl_dir, lines, message):
    directory, _, _ = jsonl_dir
    path = directory / "refs.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(LiteLVLMError, match=message):
        load_jsonl(path)


def test_jsonl_missing_file(tmp_path):
    with pytest.raises(LiteLVLMError, match="JSONL file .*nope.jsonl' does not exist"):
        load_jsonl(tmp_path / "nope.jsonl")


# ---- EXIF orientation: annotations are on the stored pixels, predictions on the displayed image -------------


def test_refcoco_masks_and_sizes_follow_the_exif_orientation(tmp_path):
    root = make_tiny_refcoco(tmp_path, "refcoco")
    plain = load_refcoco(root, "refcoco", "val")
    size = plain[1].width, plain[1].height  # image 1 has 3 referents
    masks = [plain.mask(referent) for referent in plain[1].referents]
    first_mask = plain.mask(plain[0].referents[0])
    with Image.open(plain[1].path) as image:
        stored = np.asarray(image)
    oriented_file(plain[1].path, stored, 6, quality=95)  # the same pixels, now displayed turned
    data = load_refcoco(root, "refcoco", "val")
    assert all("orientation" not in entry.__dict__ for entry in data)  # no header read while loading
    entry = data[1]
    assert (entry.stored_width, entry.stored_height) == size
    assert (entry.width, entry.height) == size[::-1] == data.load_image(entry).size
    picture = np.asarray(data.load_image(entry), dtype=np.float64)
    for before, referent in zip(masks, entry.referents):
        mask = data.mask(referent)
        assert np.array_equal(mask, displayed_reference(before, 6))
        inside = picture[mask > 0]  # the displayed object lies under the turned mask
        assert np.abs(inside.mean(axis=0) - BACKGROUND).max() > 40 and inside.std(axis=0).max() < 25
    assert np.array_equal(data.mask(data[0].referents[0]), first_mask) and data[0].orientation == 1


@pytest.mark.parametrize("orientation", [3, 6])
def test_jsonl_masks_in_the_stored_or_the_displayed_frame(tmp_path, orientation):
    stored = patterned(30, 40)
    oriented_file(tmp_path / "photo.jpg", stored, orientation, quality=95)
    mask = np.zeros((30, 40), np.uint8)
    mask[2:9, 5:30] = 1
    displayed = displayed_reference(mask, orientation)
    Image.fromarray(mask * 255).save(tmp_path / "stored.png")
    Image.fromarray(displayed * 255).save(tmp_path / "displayed.png")
    records = [
        {"image": "photo.jpg", "expression": "stored file", "mask": "stored.png"},
        {"image": "photo.jpg", "expression": "stored rle", "mask": mask},
        {"image": "photo.jpg", "expression": "displayed file", "mask": "displayed.png"},
        {"image": "photo.jpg", "expression": "displayed rle", "mask": displayed},
    ]
    data = load_jsonl(write_jsonl(tmp_path / "refs.jsonl", records))
    (entry,) = data
    assert (entry.width, entry.height) == data.load_image(entry).size == displayed.shape[::-1]
    stored_frame, displayed_frame = entry.referents[:2], entry.referents[2:]
    for referent in stored_frame:
        assert np.array_equal(data.mask(referent), displayed), referent.sentences
    for referent in displayed_frame:
        # At 90 degrees (6) the size tells the frames apart: taken as-is. At 180 degrees (3) both frames have one
        # size and the stored frame wins (the documented rule), so a displayed-frame mask is turned once more.
        expected = displayed if orientation == 6 else displayed_reference(displayed, 3)
        assert np.array_equal(data.mask(referent), expected), referent.sentences


def test_jsonl_images_folder_comes_first_then_the_jsonl_folder(jsonl_dir):
    directory, _, _ = jsonl_dir
    pictures = directory / "pictures"
    (pictures / "imgs").mkdir(parents=True)
    Image.new("RGB", (40, 30), (1, 2, 3)).save(pictures / "only_here.png")
    Image.new("RGB", (24, 16), (9, 9, 9)).save(pictures / "imgs" / "b.png")  # also beside the JSONL file
    rle = {"size": [30, 40], "counts": [1200]}
    path = write_jsonl(
        directory / "refs.jsonl",
        [
            {"image": "only_here.png", "expression": "x", "mask": rle},
            {"image": "imgs/b.png", "expression": "y", "mask": {"size": [16, 24], "counts": [384]}},
            {"image": "imgs/a.jpg", "expression": "z", "mask": rle},  # only beside the JSONL file
        ],
    )
    data = load_jsonl(path, images=pictures)
    assert [entry.path for entry in data] == [
        pictures / "only_here.png",
        pictures / "imgs" / "b.png",
        directory / "imgs" / "a.jpg",
    ]
    assert np.asarray(data.load_image(data[1]))[0, 0].tolist() == [9, 9, 9]


def test_jsonl_with_a_byte_order_mark(jsonl_dir):
    directory, _, _ = jsonl_dir
    line = '{"image": "imgs/a.jpg", "expression": "x", "mask": "masks/a_0.png"}\n'
    (directory / "bom.jsonl").write_bytes(b"\xef\xbb\xbf" + line.encode())
    assert load_jsonl(directory / "bom.jsonl")[0].sentences == ["x"]


def test_token_diagnostics_see_a_tagged_photo_as_its_displayed_copy(tmp_path, scorer):
    """`analyze` (CLIP crop geometry from entry.width/height, referent patches from dataset.mask) gives the same
    numbers for a photo stored sideways with its tag as for the same picture stored upright."""
    from litelvlm.evaluation.diagnostics import analyze

    upright = patterned(96, 128, seed=5)
    mask = np.zeros((96, 128), np.uint8)
    mask[10:60, 20:70] = 1
    stored = displayed_reference(upright, 8)  # orientation 6 turns this back upright (8 and 6 are inverses)
    stored_mask = displayed_reference(mask, 8)
    assert np.array_equal(displayed_reference(stored, 6), upright)
    Image.fromarray(upright).save(tmp_path / "upright.png")
    oriented_file(tmp_path / "sideways.png", stored, 6)
    results = []
    for image, truth in (("upright.png", mask), ("sideways.png", stored_mask)):
        record = {
            "image": image,
            "image_id": "photo",
            "expressions": ["the square", "top left"],
            "mask": truth,
        }
        data = load_jsonl(write_jsonl(tmp_path / f"{image}.jsonl", [record]))
        config = {
            "methods": ["litelvlm", "cls_attention"],
            "budgets": [16, 64],
            "protocol": "glamm",
            "seed": 0,
        }
        results.append(analyze(scorer, data, config, progress=False))
    assert results[0]["selection"] == results[1]["selection"]
    assert (
        results[0]["similarity"] == results[1]["similarity"] and results[0]["similarity"]["expressions"] == 2
    )
