"""A tiny RefCOCO/+/g in the official REFER formats (instances.json, refs(unc|umd).p, COCO_train2014_*.jpg).

Images are coloured shapes on a plain background, one object per cell of a 2 x 2 grid, and each object's
segmentation is rasterised by pycocotools itself, so the masks match the visible objects. Segmentations mix
rectangle polygons, a cross made of 2 overlapping rectangle polygons (its ground truth holds 2s), uncompressed
RLE (disks) and compressed RLE (ellipses). The first 2 images of every evaluation split come first, in turn;
images beyond those are in "train".
"""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import numpy as np
from PIL import Image

from ..data.masks import decode_segmentation, encode_mask
from ..data.refcoco import COCO_FILE_NAME, IMAGE_DIRS, REFCOCO_SPLITS, REFS_FILES
from ..errors import LiteLVLMError

LAYOUTS = {"glamm": IMAGE_DIRS[0], "lisa": IMAGE_DIRS[1]}
COLOURS = {
    "red": (220, 30, 30),
    "green": (30, 170, 40),
    "blue": (40, 60, 220),
    "yellow": (235, 215, 30),
    "purple": (140, 40, 170),
    "orange": (245, 140, 20),
}
CATEGORIES = [
    {"id": 1, "name": "person", "supercategory": "person"},
    {"id": 3, "name": "car", "supercategory": "vehicle"},
    {"id": 18, "name": "dog", "supercategory": "animal"},
    {"id": 44, "name": "bottle", "supercategory": "kitchen"},
]
SHAPES = ("rectangle", "cross", "disk", "ellipse")  # cycled over all referents
CELLS = ("left top", "right top", "left bottom", "right bottom")
BACKGROUND = (200, 200, 190)


def make_tiny_refcoco(
    directory: str | os.PathLike,
    dataset: str = "refcoco",
    num_images: int = 6,
    seed: int = 0,
    layout: str = "glamm",
) -> Path:
    """Write a tiny `dataset` under `directory` (the data root) and return `directory`.

    Writes `directory/<dataset>/instances.json`, `directory/<dataset>/refs(unc).p` (refs(umd).p for refcocog,
    pickle protocol 2) and JPEG images 96-200 px under `directory/coco_2014/train2014` (layout="glamm") or
    `directory/images/mscoco/images/train2014` (layout="lisa"). Deterministic for a seed; images have 1-4
    referents with 1-3 sentences each; every evaluation split gets 2 images (more images go to "train").
    """
    if dataset not in REFCOCO_SPLITS:
        raise LiteLVLMError(f"unknown dataset {dataset!r}; choose one of {', '.join(REFCOCO_SPLITS)}.")
    if layout not in LAYOUTS:
        raise LiteLVLMError(f"unknown layout {layout!r}; choose one of {', '.join(LAYOUTS)}.")
    splits = REFCOCO_SPLITS[dataset]
    if num_images < 2 * len(splits):
        raise LiteLVLMError(f"num_images={num_images} is too small; {dataset} needs >= {2 * len(splits)}.")
    root = Path(directory)
    image_dir = root / LAYOUTS[layout]
    image_dir.mkdir(parents=True, exist_ok=True)
    (root / dataset).mkdir(parents=True, exist_ok=True)

    dataset_index = list(REFCOCO_SPLITS).index(dataset)
    rng = np.random.default_rng([seed, dataset_index])
    # Disjoint id ranges per dataset, so the three can share one image folder without clashes.
    image_ids = 1 + dataset_index * 190_000 + rng.choice(190_000 - 1, size=num_images, replace=False)
    images, annotations, refs = [], [], []
    shape_counter = 0
    for index, image_id in enumerate(int(i) for i in image_ids):
        split = splits[index // 2] if index < 2 * len(splits) else "train"
        width, height = (int(v) for v in rng.integers(96, 201, size=2))
        # Image 0 has a single one-sentence referent (< 3 expressions); image 1 has 3 referents (>= 3).
        num_referents = 1 if index == 0 else 3 if index == 1 else int(rng.integers(1, 5))
        picture = np.empty((height, width, 3), dtype=np.uint8)
        picture[:] = BACKGROUND
        colours = rng.permutation(list(COLOURS))[:num_referents]
        cells = rng.permutation(len(CELLS))[:num_referents]
        for colour, cell in zip(colours, cells):
            shape = SHAPES[shape_counter % len(SHAPES)]
            shape_counter += 1
            segmentation = _segmentation(shape, _cell_box(int(cell), width, height), width, height, rng)
            mask = decode_segmentation(segmentation, height, width)
            picture[mask > 0] = COLOURS[colour]
            ann_id = 1000 * (dataset_index + 1) + len(annotations) * 7 + 3
            category = CATEGORIES[0] if split == "testA" else CATEGORIES[1 + int(rng.integers(3))]
            ys, xs = np.nonzero(mask)
            annotations.append(
                {
                    "id": ann_id,
                    "image_id": image_id,
                    "category_id": category["id"],
                    "segmentation": segmentation,
                    "area": float(np.count_nonzero(mask)),
                    "bbox": [
                        float(xs.min()),
                        float(ys.min()),
                        float(xs.max() - xs.min() + 1),
                        float(ys.max() - ys.min() + 1),
                    ],
                    "iscrowd": 0,
                }
            )
            num_sentences = 1 if index == 0 else int(rng.integers(1, 4))
            refs.append(
                _ref(
                    len(refs),
                    ann_id,
                    image_id,
                    split,
                    category,
                    str(colour),
                    shape,
                    CELLS[cell],
                    num_sentences,
                    refs,
                )
            )
        Image.fromarray(picture).save(image_dir / COCO_FILE_NAME.format(image_id), quality=95)
        images.append(
            {
                "id": image_id,
                "file_name": COCO_FILE_NAME.format(image_id),
                "height": height,
                "width": width,
                "license": 1,
                "coco_url": "",
                "flickr_url": "",
                "date_captured": "2013-11-14 00:00:00",
            }
        )
    order = rng.permutation(len(refs))  # refs file order differs from ref id and image id order
    instances = {
        "info": {"description": f"tiny {dataset} for tests"},
        "images": [images[i] for i in rng.permutation(len(images))],
        "annotations": annotations,
        "categories": CATEGORIES,
    }
    (root / dataset / "instances.json").write_text(json.dumps(instances))
    with open(root / dataset / REFS_FILES[dataset], "wb") as file:
        pickle.dump([refs[i] for i in order], file, protocol=2)
    return root


def _cell_box(cell: int, width: int, height: int) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1) of a grid cell shrunk by a margin, so objects of one image never touch."""
    column, row = cell % 2, cell // 2
    half_w, half_h = width // 2, height // 2
    margin_x, margin_y = max(4, half_w // 8), max(4, half_h // 8)
    return (
        column * half_w + margin_x,
        row * half_h + margin_y,
        (column + 1) * half_w - margin_x,
        (row + 1) * half_h - margin_y,
    )


def _segmentation(shape: str, box: tuple[int, int, int, int], width: int, height: int, rng) -> object:
    x0, y0, x1, y1 = box
    if shape == "rectangle":
        a, b = int(rng.integers(x0, (x0 + x1) // 2)), int(rng.integers(y0, (y0 + y1) // 2))
        return [[float(v) for v in (a, b, x1, b, x1, y1, a, y1)]]
    if shape == "cross":  # two overlapping rectangles: the overlap decodes to 2
        cx, cy = (x0 + x1) // 2, (y0 + y1) // 2
        tx, ty = max(3, (x1 - x0) // 6), max(3, (y1 - y0) // 6)
        horizontal = (x0, cy - ty, x1, cy + ty)
        vertical = (cx - tx, y0, cx + tx, y1)
        return [[float(v) for v in (a, b, c, b, c, d, a, d)] for a, b, c, d in (horizontal, vertical)]
    ys, xs = np.mgrid[0:height, 0:width]
    cx, cy = (x0 + x1 - 1) / 2, (y0 + y1 - 1) / 2
    rx, ry = (x1 - x0) / 2, (y1 - y0) / 2
    if shape == "disk":
        rx = ry = min(rx, ry)
    else:
        ry = ry * 0.6
    mask = ((xs - cx) / rx) ** 2 + ((ys - cy) / ry) ** 2 <= 1
    if shape == "disk":  # uncompressed RLE: run lengths over the column-major flattening, starting with 0s
        flat = mask.flatten(order="F").astype(np.int8)
        boundaries = np.concatenate([[0], np.flatnonzero(np.diff(flat)) + 1, [flat.size]])
        counts = np.diff(boundaries).tolist()
        return {"size": [height, width], "counts": ([0] if flat[0] else []) + counts}
    return encode_mask(mask)  # compressed RLE, counts as str (as json.dump writes it)


def _ref(number, ann_id, image_id, split, category, colour, shape, cell, num_sentences, refs) -> dict:
    """A ref dict with the real REFER fields; sentence ids are unique across the file."""
    first_sent_id = sum(len(ref["sent_ids"]) for ref in refs)
    noun = {"rectangle": "box", "cross": "cross", "disk": "circle", "ellipse": "oval"}[shape]
    texts = [f"{colour} {noun}", f"the {colour} {noun} at {cell}", f"{cell} {noun}"][:num_sentences]
    sentences = [
        {"tokens": text.split(), "raw": text.capitalize(), "sent_id": first_sent_id + k, "sent": text}
        for k, text in enumerate(texts)
    ]
    return {
        "sent_ids": [sentence["sent_id"] for sentence in sentences],
        "file_name": f"COCO_train2014_{image_id:012d}_{ann_id}.jpg",
        "ann_id": ann_id,
        "ref_id": 50 + 3 * number,
        "image_id": image_id,
        "split": split,
        "sentences": sentences,
        "category_id": category["id"],
    }
