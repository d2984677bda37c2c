"""A plain JSONL format for users' own referring-segmentation data: one referent per line.

    {"image": "imgs/a.jpg", "expressions": ["the man in red", "left guy"], "mask": "masks/a_0.png"}
    {"image": "imgs/a.jpg", "expression": "white car", "mask": {"size": [H, W], "counts": "..."}}

Optional keys: "id" (the referent id; default: the 1-based line number) and "image_id" (default: the "image"
string as written). Relative image paths are relative to the `images` folder when one is given, else to the
JSONL file's folder; relative mask paths are relative to the JSONL file's folder. A mask is a PNG (nonzero =
object) or a COCO RLE dict (compressed "counts" string, or uncompressed list).

Masks are in the image's stored pixel frame, as COCO's are: for an image with an EXIF orientation they are
turned as the image is displayed. A mask whose size is the displayed size and not the stored one (a 90-degree
orientation) is taken as already displayed.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import LiteLVLMError, shown
from ..images import ImageHeader, check_image_size, orient_mask, read_image_header
from .masks import MASK_FIX, decode_segmentation, encode_mask, read_mask_image
from .types import ImageEntry, Referent, ReferringDataset


@dataclass(frozen=True)
class MaskSource:
    """Where a referent's mask comes from: a mask file or an RLE dict, in the stored or the displayed frame."""

    source: Path | dict
    displayed: bool  # True: already in the displayed frame (its size is the displayed, not the stored size)


class JsonlDataset(ReferringDataset):
    """Referents read from a JSONL file, grouped by image in order of first appearance."""

    def __init__(self, name: str, images: list[ImageEntry], masks: dict[int | str, MaskSource]):
        super().__init__(name, "all", images)
        self._masks = masks
        self._entries = {entry.image_id: entry for entry in images}

    def mask(self, referent: Referent) -> np.ndarray:
        """uint8 [H, W] with 1 = object (a PNG's nonzero pixels, or the decoded RLE), as the image is displayed."""
        if referent.ref_id not in self._masks or referent.image_id not in self._entries:
            raise LiteLVLMError(
                f"referent {referent.ref_id!r} is not in {self.name}; pass one from this dataset."
            )
        entry = self._entries[referent.image_id]
        source = self._masks[referent.ref_id]
        width, height = (
            (entry.width, entry.height) if source.displayed else (entry.stored_width, entry.stored_height)
        )
        if isinstance(source.source, dict):
            mask = decode_segmentation(source.source, height, width)
        else:
            mask = read_mask_image(source.source)
            if mask.shape != (height, width):  # the file changed since `load_jsonl` checked it
                raise LiteLVLMError(
                    f"mask {str(source.source)!r} is {mask.shape[1]} x {mask.shape[0]} but its image is "
                    f"{width} x {height}; save the mask at the image's size."
                )
        return mask if source.displayed else orient_mask(mask, entry.orientation)


def load_jsonl(path: str | os.PathLike, images: str | os.PathLike | None = None) -> JsonlDataset:
    """Read a JSONL referring-segmentation file; every image and mask file is checked up front.

    `images`: the folder relative image paths are relative to (default: the JSONL file's folder, which is also
    tried when an image is not under `images`).
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise LiteLVLMError(
            f"JSONL file {str(path)!r} does not exist; pass a file with one referent per line."
        )
    image_root = _image_root(images)
    referents: dict[int | str, list[Referent]] = {}  # image_id -> referents, insertion = first appearance
    image_info: dict[int | str, tuple[Path, ImageHeader]] = {}  # image_id -> (path, header)
    headers: dict[Path, ImageHeader] = {}  # each image's header read once
    masks: dict[int | str, MaskSource] = {}
    for number, line in _lines(path):
        where = f"line {number} of {str(path)!r}"
        record = _parse(line, where)
        image_path = _image_path(path.parent, image_root, record["image"], where)
        if image_path not in headers:
            headers[image_path] = _header(image_path, where)
        header = headers[image_path]
        image_id = _identifier(record, "image_id", record["image"], where)
        if image_id in image_info and image_info[image_id][0] != image_path:
            raise LiteLVLMError(
                f"{where} gives image_id {image_id!r} to {str(image_path)!r}, but an earlier line gave it to "
                f"{str(image_info[image_id][0])!r}; use one image_id per image."
            )
        image_info[image_id] = (image_path, header)
        ref_id = _identifier(record, "id", number, where)
        if ref_id in masks:
            raise LiteLVLMError(f"{where} repeats id {ref_id!r}; give every line a unique id.")
        masks[ref_id] = _mask_source(path.parent, record["mask"], header, where)
        referent = Referent(ref_id=ref_id, image_id=image_id, sentences=_expressions(record, where))
        referents.setdefault(image_id, []).append(referent)
    if not referents:
        raise LiteLVLMError(f"JSONL file {str(path)!r} has no records; write one JSON object per line.")
    entries = []
    for image_id, refs in referents.items():
        image_path, header = image_info[image_id]
        entries.append(
            ImageEntry(
                image_id,
                image_path,
                header.stored_width,
                header.stored_height,
                tuple(refs),
                header.orientation,
            )
        )
    return JsonlDataset(path.stem, entries, masks)


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


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """(1-based line number, text) of each non-blank line; bytes that are not UTF-8 name their line."""
    with open(path, "rb") as file:
        for number, raw in enumerate(file, start=1):
            try:
                # utf-8-sig on the first line: editors on Windows start files with a byte-order mark.
                line = raw.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError as error:
                raise LiteLVLMError(
                    f"line {number} of {str(path)!r} is not UTF-8 (byte {raw[error.start]:#04x} at column "
                    f"{error.start + 1}); save the file as UTF-8."
                ) from None
            if line.strip():
                yield number, line


def parse_object(line: str, where: str, required: tuple[str, ...], needs: str) -> dict:
    """One JSONL line as a JSON object holding the `required` keys (`needs` says what a line holds, for the
    message); anything else is one sentence naming `where`."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError as error:
        raise LiteLVLMError(
            f"{where} is not valid JSON ({error.msg} at column {error.colno}); fix that line."
        ) from None
    if not isinstance(record, dict):
        raise LiteLVLMError(f"{where} is not a JSON object; write one {{...}} object per line.")
    for key in required:
        if key not in record:
            raise LiteLVLMError(f"{where} has no {key!r}; each line needs {needs}.")
    return record


def _parse(line: str, where: str) -> dict:
    record = parse_object(
        line, where, ("image", "mask"), "'image', 'expressions' (or 'expression') and 'mask'"
    )
    if not isinstance(record["image"], str) or not record["image"].strip():
        raise LiteLVLMError(
            f"{where} has 'image' {shown(record['image'])}; give the image's path as a string."
        )
    return record


def _identifier(record: dict, key: str, default: int | str, where: str) -> int | str:
    value = record.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise LiteLVLMError(f"{where} has {key} {shown(value)}; use an integer or a string.")
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
        raise LiteLVLMError(
            f"{where} has expressions {shown(value)}; give a non-empty list of non-empty strings."
        )
    return tuple(value)


def _image_root(images: str | os.PathLike | None) -> Path | None:
    if images is None:
        return None
    root = Path(images).expanduser()
    if not root.is_dir():
        raise LiteLVLMError(
            f"images folder {str(root)!r} does not exist; pass the folder the JSONL's image paths are relative to."
        )
    return root


def _image_path(base: Path, image_root: Path | None, relative: str, where: str) -> Path:
    """The image file: under `image_root` when given (then under the JSONL's folder), else the JSONL's folder."""
    candidates = [root / Path(relative).expanduser() for root in (image_root, base) if root is not None]
    for path in candidates:
        if path.is_file():
            return path
    if image_root is None:
        raise LiteLVLMError(
            f"{where}: image {relative!r} ({str(candidates[0])!r}) does not exist; paths are relative to the "
            "JSONL file's folder, or pass the folder they are relative to with --images (images= in Python)."
        )
    raise LiteLVLMError(
        f"{where}: image {relative!r} is in neither the images folder {str(image_root)!r} nor the JSONL file's "
        f"folder {str(base)!r}; fix the path, or pass the folder it is relative to."
    )


def _header(path: Path, where: str) -> ImageHeader:
    """The image's stored size and orientation, without decoding its pixels; unusable sizes are refused here."""
    try:
        header = read_image_header(path)
        check_image_size(header.stored_width, header.stored_height, f"image {str(path)!r}")
    except LiteLVLMError as error:
        raise LiteLVLMError(f"{where}: {error}") from None
    return header


def _mask_source(base: Path, mask: Any, header: ImageHeader, where: str) -> MaskSource:
    """Check the mask exists and fits the image, and find its frame: stored (the default) or displayed."""
    if isinstance(mask, str):
        mask_path = _resolve_mask(base, mask, where)
        try:
            mask_header = read_image_header(mask_path, "mask", MASK_FIX)  # its own EXIF tag is ignored
        except LiteLVLMError as error:
            raise LiteLVLMError(f"{where}: {error}") from None
        displayed = _is_displayed((mask_header.stored_width, mask_header.stored_height), header)
        if displayed is None:
            raise LiteLVLMError(
                f"{where}: mask {mask!r} is {mask_header.stored_width} x {mask_header.stored_height} but the "
                f"image is {_size_text(header, '{0} x {1}')}; save the mask at the image's size."
            )
        return MaskSource(mask_path, displayed)
    if isinstance(mask, dict) and "size" in mask and "counts" in mask:
        size = mask["size"]
        if not (isinstance(size, list) and len(size) == 2 and all(_is_count(side) for side in size)):
            raise LiteLVLMError(
                f"{where}: RLE mask size {shown(size)} is not [height, width]; write the mask as COCO RLE."
            )
        displayed = _is_displayed((size[1], size[0]), header)
        if displayed is None:
            raise LiteLVLMError(
                f"{where}: RLE mask size {size} is not the image's [height, width] = "
                f"{_size_text(header, '[{1}, {0}]')}; encode the mask at the image's size."
            )
        try:  # decoded once now, so a bad `counts` is refused before any work, not mid-run
            decode_segmentation(mask, size[0], size[1])
        except LiteLVLMError as error:
            raise LiteLVLMError(f"{where}: {error}") from None
        return MaskSource(mask, displayed)
    raise LiteLVLMError(
        f"{where} has mask {shown(mask)}; give a PNG path or a COCO RLE dict with 'size' and 'counts'."
    )


def _is_displayed(size: tuple[int, int], header: ImageHeader) -> bool | None:
    """Whether a mask of (width, height) `size` is in the displayed frame (False: the stored frame, which wins
    when both have that size; None: neither)."""
    if size == (header.stored_width, header.stored_height):
        return False
    return True if size == header.size else None


def _size_text(header: ImageHeader, pattern: str) -> str:
    """The image's size written with `pattern` ({0} = width, {1} = height), and the displayed one if it differs."""
    text = pattern.format(header.stored_width, header.stored_height)
    if header.size != (header.stored_width, header.stored_height):
        text += (
            f" as stored, {pattern.format(*header.size)} as displayed (EXIF orientation {header.orientation})"
        )
    return text


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _resolve_mask(base: Path, relative: str, where: str) -> Path:
    path = base / Path(relative).expanduser()
    if not path.is_file():
        raise LiteLVLMError(
            f"{where}: mask {relative!r} ({str(path)!r}) does not exist; mask paths are relative to the JSONL "
            "file's folder."
        )
    return path
