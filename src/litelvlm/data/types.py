"""The records every referring-segmentation data set yields: images, their referents, ground-truth masks."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import LiteLVLMError
from ..images import displayed_size, load_image, read_image_header


@dataclass(frozen=True)
class Referent:
    """One referred object (one ground-truth mask) and the expressions that refer to it.

    `sentences` are the expressions in file order (for RefCOCO, `sent["sent"]` of each sentence of the ref).
    """

    ref_id: int | str
    image_id: int | str
    sentences: tuple[str, ...]
    ann_id: int | None = None
    category_id: int | None = None


@dataclass(frozen=True)
class ImageEntry:
    """One image with every referent it has in the split.

    `stored_width` x `stored_height` is the pixel grid as stored in the file, the frame annotations such as COCO's
    are drawn in; `width` x `height` is the image as displayed (and as `load_image` returns it), after its EXIF
    orientation. `known_orientation` is that orientation when the loader has read it already; otherwise it is
    read from the file's header on first use (and the header's size checked against the stored size).
    """

    image_id: int | str
    path: Path
    stored_width: int
    stored_height: int
    referents: tuple[Referent, ...]
    known_orientation: int | None = None

    @cached_property
    def orientation(self) -> int:
        """EXIF orientation 1..8 of the image file (1: displayed as stored)."""
        if self.known_orientation is not None:
            return self.known_orientation
        header = read_image_header(self.path)
        if (header.stored_width, header.stored_height) != (self.stored_width, self.stored_height):
            raise LiteLVLMError(
                f"image {str(self.path)!r} is {header.stored_width} x {header.stored_height} pixels but its "
                f"annotations are for {self.stored_width} x {self.stored_height}; use the original, unresized "
                "image files the annotations were made on."
            )
        return header.orientation

    @property
    def width(self) -> int:
        """Width as displayed (after the EXIF orientation)."""
        return displayed_size(self.stored_width, self.stored_height, self.orientation)[0]

    @property
    def height(self) -> int:
        """Height as displayed (after the EXIF orientation)."""
        return displayed_size(self.stored_width, self.stored_height, self.orientation)[1]

    @property
    def sentences(self) -> list[str]:
        """Every expression of every referent, in referent order (the pool the evaluation samples from)."""
        return [sentence for referent in self.referents for sentence in referent.sentences]


class ReferringDataset:
    """A split of a referring-segmentation data set: a list of images, visited in a fixed order.

    The unit is the image (as in the GLaMM/LISA evaluation): `dataset[i]` is an `ImageEntry`, and
    `dataset.mask(referent)` decodes that referent's ground truth on demand, so memory stays small.
    """

    def __init__(self, name: str, split: str, images: list[ImageEntry]):
        self.name = name
        self.split = split
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __iter__(self) -> Iterator[ImageEntry]:
        return iter(self.images)

    def __getitem__(self, index: int) -> ImageEntry:
        return self.images[index]

    def __repr__(self) -> str:
        referents = sum(len(entry.referents) for entry in self.images)
        return f"{type(self).__name__}({self.name!r}, split={self.split!r}, images={len(self)}, referents={referents})"

    def mask(self, referent: Referent) -> np.ndarray:
        """Ground truth of `referent`: uint8 [H, W] at the image's displayed size (1 = object), turned by the
        image's EXIF orientation from the stored frame annotations are drawn in."""
        raise NotImplementedError

    def box(self, referent: Referent) -> tuple[float, float, float, float]:
        """Ground-truth box of `referent` as [x0, y0, x1, y1] in the displayed frame (continuous coordinates:
        pixel column i spans [i, i + 1)): here the tight box of its mask; data sets with annotated boxes say so."""
        rows, cols = np.nonzero(self.mask(referent))
        if not len(rows):
            raise LiteLVLMError(
                f"referent {referent.ref_id!r} has an empty ground-truth mask, so it has no box; fix or drop its "
                "annotation."
            )
        return (float(cols.min()), float(rows.min()), float(cols.max() + 1), float(rows.max() + 1))

    def load_image(self, entry: ImageEntry) -> Image.Image:
        """The entry's image as 8-bit RGB (PIL), as displayed: of size `entry.width` x `entry.height`."""
        return load_image(entry.path)
