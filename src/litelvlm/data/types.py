"""The records every referring-segmentation data set yields: images, their referents, ground-truth masks."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ..images import load_image


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
    """One image with every referent it has in the split; `width` x `height` is the original size."""

    image_id: int | str
    path: Path
    width: int
    height: int
    referents: tuple[Referent, ...]

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
        """Ground truth of `referent`: uint8 [H, W] at the image's original size (1 = object)."""
        raise NotImplementedError

    def load_image(self, entry: ImageEntry) -> Image.Image:
        """The entry's image as 8-bit RGB (PIL), of size `entry.width` x `entry.height`."""
        return load_image(entry.path)
