"""RefCOCO, RefCOCO+ and RefCOCOg (UMD) from their official REFER files, split as GLaMM/LISA evaluate them.

Expected layout under the data root (GLaMM's `Refer_Segm/` or LISA's `refer_seg/`)::

    DATA/refcoco/instances.json    DATA/refcoco/refs(unc).p
    DATA/refcoco+/instances.json   DATA/refcoco+/refs(unc).p
    DATA/refcocog/instances.json   DATA/refcocog/refs(umd).p
    DATA/coco_2014/train2014/COCO_train2014_000000000009.jpg            (GLaMM)
    or DATA/images/mscoco/images/train2014/COCO_train2014_...jpg         (LISA / REFER)

The refs file is a pickle (the official format): only load files you trust.
"""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import numpy as np

from ..errors import LiteLVLMError, shown
from ..images import orient_mask
from .masks import decode_segmentation
from .types import ImageEntry, Referent, ReferringDataset

REFCOCO_SPLITS: dict[str, tuple[str, ...]] = {
    "refcoco": ("val", "testA", "testB"),
    "refcoco+": ("val", "testA", "testB"),
    "refcocog": ("val", "test"),
}
REFS_FILES = {"refcoco": "refs(unc).p", "refcoco+": "refs(unc).p", "refcocog": "refs(umd).p"}
# Image folders tried in order when `images` is not given, relative to the data root.
IMAGE_DIRS = ("coco_2014/train2014", "images/mscoco/images/train2014")
# GLaMM's README puts coco_2014/ beside Refer_Segm/, so the data root's parent is tried last.
PARENT_IMAGE_DIR = "../coco_2014/train2014"
COCO_FILE_NAME = "COCO_train2014_{:012d}.jpg"
# What the evaluation reads of each ref of the split (REFER's refs also carry sent_ids, file_name, ...).
REF_KEYS = ("ref_id", "image_id", "ann_id", "split", "sentences")


def _layout(root: Path, dataset: str) -> str:
    return (
        f"the expected layout is {root}/{dataset}/instances.json and {root}/{dataset}/{REFS_FILES[dataset]}, "
        f"with COCO train2014 images in {root}/{IMAGE_DIRS[0]} (GLaMM) or {root}/{IMAGE_DIRS[1]} (LISA), "
        "or pass --images (images= in Python) to point at the train2014 folder"
    )


def split_matches(split: str, ref_split: str) -> bool:
    """Whether a ref whose `split` field is `ref_split` belongs to the requested `split` (REFER's `getRefIds`).

    testA/testB match refs whose split contains "A"/"B"; test matches any split containing "test"; val is exact.
    """
    if split in ("testA", "testB"):
        return split[-1] in ref_split
    if split == "test":
        return "test" in ref_split
    return ref_split == split


class RefCocoDataset(ReferringDataset):
    """One split of RefCOCO/+/g; masks are decoded from the referent's COCO annotation on demand.

    COCO's polygons and RLEs are drawn on the stored pixels; `mask` turns them by the image's EXIF orientation
    (read from the file header on first use), so they match the displayed image the predictor segments.
    """

    def __init__(
        self,
        name: str,
        split: str,
        images: list[ImageEntry],
        segmentations: dict[int, object],
        boxes: dict[int, object] | None = None,
    ):
        super().__init__(name, split, images)
        self._segmentations = segmentations  # ann_id -> COCO segmentation, only the split's referents
        self._boxes = boxes or {}  # ann_id -> COCO bbox [x, y, w, h] (stored frame), where the file has one
        self._entries = {entry.image_id: entry for entry in images}

    def box(self, referent: Referent) -> tuple[float, float, float, float]:
        """The annotation's COCO bbox as [x0, y0, x1, y1] (what REC evaluations score against); the mask's tight
        box when the file has none or the image is displayed turned (its EXIF orientation)."""
        bbox = self._boxes.get(referent.ann_id)
        entry = self._entries.get(referent.image_id)
        valid = isinstance(bbox, list) and len(bbox) == 4 and all(isinstance(v, (int, float)) for v in bbox)
        if valid and entry is not None and entry.orientation == 1 and bbox[2] > 0 and bbox[3] > 0:
            x, y, width, height = (float(v) for v in bbox)
            return (x, y, x + width, y + height)
        return super().box(referent)

    def mask(self, referent: Referent) -> np.ndarray:
        """uint8 [H, W] ground truth, as displayed (values > 1 where polygons overlap; see `decode_segmentation`)."""
        if referent.ann_id not in self._segmentations or referent.image_id not in self._entries:
            raise LiteLVLMError(
                f"referent {referent.ref_id!r} (annotation {referent.ann_id!r}) is not in {self.name} "
                f"{self.split}; pass a referent taken from this dataset."
            )
        entry = self._entries[referent.image_id]
        stored = decode_segmentation(
            self._segmentations[referent.ann_id], entry.stored_height, entry.stored_width
        )
        return orient_mask(stored, entry.orientation)


def load_refcoco(
    data_root: str | os.PathLike,
    dataset: str,
    split: str,
    images: str | os.PathLike | None = None,
) -> RefCocoDataset:
    """Load one split of RefCOCO ("refcoco"), RefCOCO+ ("refcoco+") or RefCOCOg UMD ("refcocog").

    Images are the distinct images having refs in the split, sorted by image id (REFER returns them in set
    order, which is not stable across Python builds); each image's referents and sentences keep the refs
    file's order. Every image file is checked up front, so a missing one fails before any model runs.
    """
    if dataset not in REFCOCO_SPLITS:
        raise LiteLVLMError(f"unknown dataset {dataset!r}; choose one of {', '.join(REFCOCO_SPLITS)}.")
    if split not in REFCOCO_SPLITS[dataset]:
        raise LiteLVLMError(
            f"{dataset} has no evaluation split {split!r}; choose one of {', '.join(REFCOCO_SPLITS[dataset])}."
        )
    root = Path(data_root).expanduser()
    for path, what in (
        (root, "data root"),
        (root / dataset, "dataset folder"),
        (root / dataset / REFS_FILES[dataset], "refs file"),
        (root / dataset / "instances.json", "instances file"),
    ):
        if not path.exists():
            raise LiteLVLMError(f"{what} {str(path)!r} does not exist; {_layout(root, dataset)}.")

    refs = _split_refs(root / dataset / REFS_FILES[dataset], split)
    coco_images, annotations, boxes = _read_instances(root / dataset / "instances.json", refs)
    image_dir = _image_dir(root, dataset, images)

    by_image: dict[int, list[Referent]] = {}
    segmentations: dict[int, object] = {}
    for ref in refs:
        ann_id = ref["ann_id"]
        if ann_id not in annotations:
            raise LiteLVLMError(
                f"ref {ref['ref_id']} of {dataset} points to annotation {ann_id}, which "
                f"{str(root / dataset / 'instances.json')!r} lacks; use the instances.json shipped with those refs."
            )
        segmentations[ann_id] = annotations[ann_id]
        referent = Referent(
            ref_id=ref["ref_id"],
            image_id=ref["image_id"],
            sentences=tuple(sentence["sent"] for sentence in ref["sentences"]),
            ann_id=ann_id,
            category_id=ref.get("category_id"),
        )
        by_image.setdefault(ref["image_id"], []).append(referent)

    entries = []
    for image_id in sorted(by_image):
        if image_id not in coco_images:
            raise LiteLVLMError(
                f"image {image_id} of {dataset} {split} is missing from "
                f"{str(root / dataset / 'instances.json')!r}; use the instances.json shipped with the refs."
            )
        record = coco_images[image_id]
        entries.append(
            ImageEntry(
                image_id=image_id,
                path=_image_path(image_dir, image_id, record.get("file_name"), root, dataset),
                stored_width=int(record["width"]),
                stored_height=int(record["height"]),
                referents=tuple(by_image[image_id]),
            )
        )
    return RefCocoDataset(
        dataset, split, entries, segmentations, {ann_id: boxes[ann_id] for ann_id in segmentations}
    )


def _split_refs(path: Path, split: str) -> list[dict]:
    """The refs of one split, each checked for the keys the evaluation reads."""
    refs = _read_refs(path)
    chosen = []
    for index, ref in enumerate(refs):
        where = f"the ref at index {index} of refs file {str(path)!r}"
        if not isinstance(ref, dict) or not isinstance(ref.get("split"), str):
            raise LiteLVLMError(
                f"{where} is {shown(ref)}, not a REFER ref with a 'split'; re-download the refs file."
            )
        if split_matches(split, ref["split"]):
            _check_ref(ref, where)
            chosen.append(ref)
    return chosen


def _read_refs(path: Path) -> list:
    try:
        with open(path, "rb") as file:
            refs = pickle.load(file)
    except (
        pickle.UnpicklingError,
        EOFError,
        AttributeError,
        ImportError,
        IndexError,
        UnicodeDecodeError,
    ) as error:
        raise LiteLVLMError(
            f"refs file {str(path)!r} is not a readable REFER pickle ({error}); re-download it."
        ) from None
    if not isinstance(refs, list):
        raise LiteLVLMError(f"refs file {str(path)!r} does not hold a list of refs; re-download it.")
    return refs


def _check_ref(ref: dict, where: str) -> None:
    """A split's ref needs integer ids and at least one {"sent": text} sentence."""
    for key in REF_KEYS:
        if key not in ref:
            raise LiteLVLMError(
                f"{where} (ref_id {ref.get('ref_id', '?')}) has no {key!r}; re-download the refs file "
                f"(every ref needs {', '.join(REF_KEYS)})."
            )
    for key in ("ref_id", "image_id", "ann_id"):
        if not _is_integer(ref[key]):
            raise LiteLVLMError(
                f"{where} has {key} {shown(ref[key])}, not an integer; re-download the refs file."
            )
    sentences = ref["sentences"]
    if (
        not isinstance(sentences, list)
        or not sentences
        or not all(
            isinstance(sentence, dict) and isinstance(sentence.get("sent"), str) for sentence in sentences
        )
    ):
        raise LiteLVLMError(
            f"{where} (ref_id {ref['ref_id']}) has sentences {shown(sentences)}, not a non-empty list of "
            "{'sent': text} entries; re-download the refs file."
        )


def _read_instances(
    path: Path, refs: list[dict]
) -> tuple[dict[int, dict], dict[int, object], dict[int, object]]:
    """Image records, segmentations and bboxes of the split's refs only (the file holds every COCO annotation)."""
    try:
        with open(path, encoding="utf-8") as file:
            instances = json.load(file)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise LiteLVLMError(
            f"instances file {str(path)!r} is not valid JSON ({error}); re-download it."
        ) from None
    for key in ("images", "annotations"):
        if not isinstance(instances, dict) or not isinstance(instances.get(key), list):
            raise LiteLVLMError(
                f"instances file {str(path)!r} has no {key!r} list; use the COCO instances.json shipped with "
                "the refs."
            )
    image_ids = {ref["image_id"] for ref in refs}
    ann_ids = {ref["ann_id"] for ref in refs}
    images = {
        record["id"]: record
        for record in instances["images"]
        if isinstance(record, dict) and record.get("id") in image_ids
    }
    annotations = {
        record["id"]: record
        for record in instances["annotations"]
        if isinstance(record, dict) and record.get("id") in ann_ids
    }
    for image_id, record in images.items():
        for key in ("width", "height"):
            if not _is_integer(record.get(key)) or record[key] < 1:
                raise LiteLVLMError(
                    f"image {image_id} in instances file {str(path)!r} has {key} {shown(record.get(key))}, not a "
                    "positive integer; use the COCO instances.json shipped with the refs."
                )
    for ann_id, record in annotations.items():
        if "segmentation" not in record:
            # An absent segmentation would silently score as an empty ground truth.
            raise LiteLVLMError(
                f"annotation {ann_id} in instances file {str(path)!r} has no 'segmentation'; use the COCO "
                "instances.json shipped with the refs."
            )
    return (
        images,
        {ann_id: record["segmentation"] for ann_id, record in annotations.items()},
        {ann_id: record.get("bbox") for ann_id, record in annotations.items()},
    )


def _is_integer(value: object) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _image_dir(root: Path, dataset: str, images: str | os.PathLike | None) -> Path:
    if images is not None:
        image_dir = Path(images).expanduser()
        if not image_dir.is_dir():
            raise LiteLVLMError(
                f"images folder {str(image_dir)!r} does not exist; pass the folder holding COCO_train2014_*.jpg."
            )
        return image_dir
    for relative in (*IMAGE_DIRS, PARENT_IMAGE_DIR):
        if (root / relative).is_dir():
            return root / relative
    raise LiteLVLMError(
        f"no COCO train2014 image folder found under {str(root)!r}; {_layout(root, dataset)}."
    )


def _image_path(image_dir: Path, image_id: int, file_name: str | None, root: Path, dataset: str) -> Path:
    # os.path checks only: cheap enough for the ~1,500 images of a split, and fail before any model runs.
    path = image_dir / COCO_FILE_NAME.format(int(image_id))
    if os.path.isfile(path):
        return path
    if file_name and os.path.isfile(image_dir / file_name):
        return image_dir / file_name
    raise LiteLVLMError(f"image {str(path)!r} does not exist; {_layout(root, dataset)}.")
