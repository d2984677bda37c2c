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

from ..errors import LiteLVLMError
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
    """One split of RefCOCO/+/g; masks are decoded from the referent's COCO annotation on demand."""

    def __init__(self, name: str, split: str, images: list[ImageEntry], segmentations: dict[int, object]):
        super().__init__(name, split, images)
        self._segmentations = segmentations  # ann_id -> COCO segmentation, only the split's referents
        self._sizes = {entry.image_id: (entry.height, entry.width) for entry in images}

    def mask(self, referent: Referent) -> np.ndarray:
        """uint8 [H, W] ground truth (values > 1 where polygons overlap; see `decode_segmentation`)."""
        if referent.ann_id not in self._segmentations or referent.image_id not in self._sizes:
            raise LiteLVLMError(
                f"referent {referent.ref_id!r} (annotation {referent.ann_id!r}) is not in {self.name} "
                f"{self.split}; pass a referent taken from this dataset."
            )
        height, width = self._sizes[referent.image_id]
        return decode_segmentation(self._segmentations[referent.ann_id], height, width)


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

    refs = [
        ref for ref in _read_refs(root / dataset / REFS_FILES[dataset]) if split_matches(split, ref["split"])
    ]
    coco_images, annotations = _read_instances(root / dataset / "instances.json", refs)
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
                width=int(record["width"]),
                height=int(record["height"]),
                referents=tuple(by_image[image_id]),
            )
        )
    return RefCocoDataset(dataset, split, entries, segmentations)


def _read_refs(path: Path) -> list[dict]:
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
    if not isinstance(refs, list) or (refs and not isinstance(refs[0], dict)):
        raise LiteLVLMError(f"refs file {str(path)!r} does not hold a list of refs; re-download it.")
    return refs


def _read_instances(path: Path, refs: list[dict]) -> tuple[dict[int, dict], dict[int, object]]:
    """Image records and segmentations of the split's refs only (the file holds every COCO annotation)."""
    try:
        with open(path, encoding="utf-8") as file:
            instances = json.load(file)
    except json.JSONDecodeError as error:
        raise LiteLVLMError(
            f"instances file {str(path)!r} is not valid JSON ({error}); re-download it."
        ) from None
    image_ids = {ref["image_id"] for ref in refs}
    ann_ids = {ref["ann_id"] for ref in refs}
    images = {record["id"]: record for record in instances.get("images", []) if record["id"] in image_ids}
    annotations = {
        record["id"]: record.get("segmentation", [])
        for record in instances.get("annotations", [])
        if record["id"] in ann_ids
    }
    return images, annotations


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
