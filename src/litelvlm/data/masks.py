"""Ground-truth masks from COCO segmentations (polygons, RLE) and from mask images, as GLaMM/LISA decode them."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from ..errors import LiteLVLMError, shown
from ..images import open_image

MASK_FIX = "save the mask as a PNG"  # what to do about a mask file PIL cannot read


def _coco_mask():
    try:
        from pycocotools import mask
    except ImportError:
        raise LiteLVLMError(
            "decoding COCO masks needs pycocotools, which is not installed; run "
            "`pip install 'litelvlm[eval]'` (or `pip install pycocotools`)."
        ) from None
    return mask


def decode_segmentation(segmentation: Any, height: int, width: int) -> np.ndarray:
    """A COCO `segmentation` -> uint8 [height, width], exactly as GLaMM/LISA build the ground truth.

    Polygons (a list of [x0, y0, x1, y1, ...] lists) go through `frPyObjects(segmentation, height, width)` and
    `decode`, then are **summed** over the polygon axis and cast to uint8: where two polygons of one object
    overlap the mask holds 2 (or more). The metric's 2-bin histogram then ignores those ground-truth pixels
    (see `litelvlm.evaluation.metrics.intersection_union`); we keep the values so scores match the reference.
    RLE (one dict or a list of dicts; `counts` as a list = uncompressed, or a str/bytes = compressed) is decoded
    and summed the same way. An empty segmentation gives all zeros.
    """
    if segmentation is None or len(segmentation) == 0:
        return np.zeros((height, width), dtype=np.uint8)
    mask = _coco_mask()
    if isinstance(segmentation, dict):
        rles = [_compressed_rle(segmentation, height, width)]
    elif isinstance(segmentation[0], dict):
        rles = [_compressed_rle(rle, height, width) for rle in segmentation]
    else:
        rles = mask.frPyObjects(segmentation, height, width)
    try:
        decoded = mask.decode(rles)  # [H, W, number of polygons or RLEs]
    except ValueError as error:  # pycocotools: "Invalid RLE mask representation"
        raise LiteLVLMError(
            f"RLE mask {shown(segmentation)} cannot be decoded ({error}); re-encode it with "
            "pycocotools.mask.encode."
        ) from None
    # Sum then cast (not `any`): overlapping parts become 2, as in the reference ground truth.
    return np.sum(decoded, axis=2).astype(np.uint8)


def _compressed_rle(rle: dict, height: int, width: int) -> dict:
    """One RLE dict with bytes `counts` (what `pycocotools.mask.decode` accepts on every version)."""
    if "counts" not in rle or "size" not in rle:
        raise LiteLVLMError(f"RLE mask {shown(rle)} needs 'counts' and 'size'; write it as COCO RLE.")
    if [int(v) for v in rle["size"]] != [height, width]:
        raise LiteLVLMError(
            f"RLE mask has size {list(rle['size'])} but its image is {height} x {width} (height x width); "
            "encode the mask at the image's size."
        )
    counts = rle["counts"]
    if isinstance(counts, list):  # uncompressed RLE
        return _coco_mask().frPyObjects(rle, height, width)
    if isinstance(counts, str):
        counts = counts.encode("ascii")
    return {"size": [height, width], "counts": counts}


def encode_mask(mask: np.ndarray) -> dict:
    """Binary mask [H, W] (nonzero = object) -> COCO compressed RLE `{"size": [H, W], "counts": str}` (JSON-ready)."""
    rle = _coco_mask().encode(np.asfortranarray(np.asarray(mask) != 0, dtype=np.uint8))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def read_mask_image(path: str | os.PathLike) -> np.ndarray:
    """A mask image (PNG, ...) -> uint8 [H, W] with 1 where the pixel is nonzero, 0 elsewhere.

    Grayscale, palette (index 0 = background) and 16-bit images use their values; RGB(A) images count a pixel
    as object when any colour channel is nonzero (alpha is ignored).
    """
    with open_image(path, "mask", MASK_FIX) as (image, _):
        image.load()
    if image.mode in ("RGB", "RGBA", "LA", "CMYK", "YCbCr"):
        colour = [image.getchannel(band) for band in image.getbands() if band != "A"]
        array = np.stack([np.asarray(channel) for channel in colour], axis=-1).any(axis=-1)
    else:
        array = np.asarray(image)
    return (array != 0).astype(np.uint8)
