"""A plain JSONL format for users' own referring-segmentation data: one referent per line.

    {"image": "imgs/a.jpg", "expressions": ["the man in red", "left guy"], "mask": "masks/a_0.png"}
    {"image": "imgs/a.jpg", "expression": "white car", "mask": {"size": [H, W], "counts": "..."}}

Optional keys: "id" (the referent id; default: the 1-based line number) and "image_id" (default: the "image"
string as written). Relative paths are relative to the JSONL file's folder. A mask is a PNG (nonzero = object)
or a COCO RLE dict (compressed "counts" string, or uncompressed list), at the image's size.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..errors import LiteLVLMError
from .masks import decode_segmentation, encode_mask, read_mask_image
from .types import ImageEntry, Referent, ReferringDataset


class JsonlDataset(ReferringDataset):
    """Referents read from a JSONL file, grouped by image in order of first appearance."""

    def __init__(self, name: str, images: list[ImageEntry], masks: dict[int | str, Path | dict]):
        super().__init__(name, "all", images)
        self._masks = masks  # ref_id -> PNG path or RLE dict
        self._sizes = {entry.image_id: (entry.height, entry.width) for entry in images}

    def mask(self, referent: Referent) -> np.ndarray:
        """uint8 [H, W] with 1 = object (a PNG's nonzero pixels, or the decoded RLE)."""
        if referent.ref_id not in self._masks or referent.image_id not in self._sizes:
            raise LiteLVLMError(
                f"referent {referent.ref_id!r} is not in {self.name}; pass one from this dataset."
            )
        height, width = self._sizes[referent.image_id]
        source = self._masks[referent.ref_id]
        if isinstance(source, dict):
            return decode_segmentation(source, height, width)
        mask = read_mask_image(source)
        if mask.shape != (height, width):
            raise LiteLVLMError(
                f"mask {str(source)!r} is {mask.shape[1]} x {mask.shape[0]} but its image is {width} x {height}; "
                "save the mask at the image's size."
            )
        return mask


def load_jsonl(path: str | os.PathLike) -> JsonlDataset:
    """Read a JSONL referring-segmentation file; every image and mask file is checked up front."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise LiteLVLMError(
            f"JSONL file {str(path)!r} does not exist; pass a file with one referent per line."
        )
    base = path.parent
    referents: dict[int | str, list[Referent]] = {}  # image_id -> referents, insertion = first appearance
    image_info: dict[int | str, tuple[Path, int, int]] = {}  # image_id -> (path, width, height)
    sizes: dict[Path, tuple[int, int]] = {}  # each image's header read once
    masks: dict[int | str, Path | dict] = {}
    with open(path, encoding="utf-8") as file:
        for number, line in enumerate(file, start=1):
            if not line.strip():
                continue
            where = f"line {number} of {str(path)!r}"
            record = _parse(line, where)
            image_path = _resolve(base, record["image"], "image", where)
            if image_path not in sizes:
                sizes[image_path] = _image_size(image_path, where)
            width, height = sizes[image_path]
            image_id = _identifier(record, "image_id", record["image"], where)
            if image_id in image_info and image_info[image_id][0] != image_path:
                raise LiteLVLMError(
                    f"{where} gives image_id {image_id!r} to {str(image_path)!r}, but an earlier line gave it to "
                    f"{str(image_info[image_id][0])!r}; use one image_id per image."
                )
            image_info[image_id] = (image_path, width, height)
            ref_id = _identifier(record, "id", number, where)
            if ref_id in masks:
                raise LiteLVLMError(f"{where} repeats id {ref_id!r}; give every line a unique id.")
            masks[ref_id] = _mask_source(base, record["mask"], width, height, where)
            referent = Referent(ref_id=ref_id, image_id=image_id, sentences=_expressions(record, where))
            referents.setdefault(image_id, []).append(referent)
    if not referents:
        raise LiteLVLMError(f"JSONL file {str(path)!r} has no records; write one JSON object per line.")
    images = [
        ImageEntry(
            image_id, image_info[image_id][0], image_info[image_id][1], image_info[image_id][2], tuple(refs)
        )
        for image_id, refs in referents.items()
    ]
    return JsonlDataset(path.stem, images, masks)


def write_jsonl(path: str | os.PathLike, records: Iterable[Mapping[str, Any]]) -> Path:
    """Write records as JSONL; a numpy "mask" becomes COCO RLE and Path values become strings."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as file:
        for record in records:
            row = {}
            for key, value in record.items():
                if isinstance(value, np.ndarray):
                    value = encode_mask(value)
                elif isinstance(value, Path):
                    value = str(value)
                row[key] = value
            file.write(json.dumps(row) + "\n")
    return path


def _parse(line: str, where: str) -> dict:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as error:
        raise LiteLVLMError(
            f"{where} is not valid JSON ({error.msg} at column {error.colno}); fix that line."
        ) from None
    if not isinstance(record, dict):
        raise LiteLVLMError(f"{where} is not a JSON object; write one {{...}} object per line.")
    for key in ("image", "mask"):
        if key not in record:
            raise LiteLVLMError(
                f"{where} has no {key!r}; each line needs 'image', 'expressions' (or 'expression') and 'mask'."
            )
    if not isinstance(record["image"], str):
        raise LiteLVLMError(f"{where} has a non-string 'image' {record['image']!r}; give the image's path.")
    return record


def _identifier(record: dict, key: str, default: int | str, where: str) -> int | str:
    value = record.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise LiteLVLMError(f"{where} has {key} {value!r}; use an integer or a string.")
    return value


def _expressions(record: dict, where: str) -> tuple[str, ...]:
    if ("expressions" in record) == ("expression" in record):
        raise LiteLVLMError(
            f"{where} needs exactly one of 'expressions' (a list of strings) or 'expression'."
        )
    value = record["expressions"] if "expressions" in record else [record["expression"]]
    if (
        not isinstance(value, list)
        or not value
        or not all(isinstance(text, str) and text.strip() for text in value)
    ):
        raise LiteLVLMError(f"{where} has expressions {value!r}; give a non-empty list of non-empty strings.")
    return tuple(value)


def _resolve(base: Path, relative: str, what: str, where: str) -> Path:
    path = base / Path(relative).expanduser()
    if not path.is_file():
        raise LiteLVLMError(
            f"{where}: {what} {relative!r} ({str(path)!r}) does not exist; paths are relative to the JSONL file's folder."
        )
    return path


def _image_size(path: Path, where: str) -> tuple[int, int]:
    """(width, height) from the file header, without decoding the pixels."""
    try:
        with Image.open(path) as image:
            return image.size
    except (UnidentifiedImageError, OSError) as error:
        raise LiteLVLMError(f"{where}: {str(path)!r} is not an image PIL can read ({error}).") from None


def _mask_source(base: Path, mask: Any, width: int, height: int, where: str) -> Path | dict:
    """Check the mask exists and has the image's size; return what `JsonlDataset.mask` decodes later."""
    if isinstance(mask, str):
        mask_path = _resolve(base, mask, "mask", where)
        mask_size = _image_size(mask_path, where)
        if mask_size != (width, height):
            raise LiteLVLMError(
                f"{where}: mask {mask!r} is {mask_size[0]} x {mask_size[1]} but the image is {width} x {height}; "
                "save the mask at the image's size."
            )
        return mask_path
    if isinstance(mask, dict) and "size" in mask and "counts" in mask:
        if list(mask["size"]) != [height, width]:
            raise LiteLVLMError(
                f"{where}: RLE mask size {list(mask['size'])} is not the image's [height, width] = "
                f"[{height}, {width}]; encode the mask at the image's size."
            )
        return mask
    raise LiteLVLMError(
        f"{where} has mask {str(mask)[:60]!r}; give a PNG path or a COCO RLE dict with 'size' and 'counts'."
    )
