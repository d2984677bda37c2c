"""Reading user images robustly and the CLIP preprocessing geometry (resize shortest edge, centre crop).

Images are decoded as the reference pipeline's `cv2.imread(path, cv2.IMREAD_COLOR)` decodes them (EXIF
orientation applied, alpha dropped, 16-bit reduced to the high byte, CMYK JPEGs by OpenCV's formula); the
remaining differences are listed in docs/images.md.

Preprocessing is done with PIL/numpy rather than transformers' image processors so it is identical on every
transformers version and needs no torchvision; it reproduces `CLIPImageProcessor` (PIL bicubic resize of the
shortest edge, integer centre crop, rescale, normalise).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from .errors import LiteLVLMError, shown

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# PIL refuses images above ~179M pixels as decompression bombs; we accept up to this many and say so above it.
MAX_IMAGE_PIXELS = 400_000_000
# Longest side : shortest side. CLIP resizes the short side to 336 px, so at 100:1 the resized image is at most
# 336 x 33,600 (34 MB as uint8, 135 MB as float32) instead of unbounded (1 x 10,000 -> 336 x 3,360,000), and
# SAM's resize of the long side to 1024 px keeps the short side at round(1024 / 100) = 10 px, never 0.
MAX_ASPECT_RATIO = 100

# EXIF Orientation (tag 0x0112) -> the transpose that turns the stored pixel grid into the picture as displayed
# (EXIF 2.32, section 4.6.4); 5..8 swap width and height. 1, absent and unknown values leave the pixels as stored.
ORIENTATION_TAG = 0x0112
DISPLAY_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
JPEG_FORMATS = ("JPEG", "MPO")  # MPO: the multi-picture JPEGs many phones write

ImageSource = str | os.PathLike | Image.Image | np.ndarray


class ImageHeader(NamedTuple):
    """What an image file's header says: the stored pixel grid and its EXIF orientation."""

    stored_width: int
    stored_height: int
    orientation: int

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) as displayed, after the orientation."""
        return displayed_size(self.stored_width, self.stored_height, self.orientation)


def load_image(source: ImageSource) -> Image.Image:
    """An image file, PIL image or numpy array -> 8-bit RGB PIL image, as displayed.

    Files and PIL images get their EXIF orientation applied; grayscale, palette, CMYK and 16-bit images are
    converted as OpenCV's `imread` does, and an alpha channel is dropped (not composited), as `imread` does in
    the reference pipeline. Arrays must be H x W x 3 uint8 RGB or H x W uint8 gray (what SAM's predictor takes).
    Missing, unreadable, truncated, empty, too large or too elongated images raise `LiteLVLMError`.
    """
    if isinstance(source, np.ndarray):
        return _from_array(source)
    if isinstance(source, Image.Image):
        check_image_size(*source.size, "the PIL image")
        try:
            source.load()  # first: Pillow may turn a TIFF while loading it, and then drops its tag
        except OSError as error:
            raise LiteLVLMError(
                f"the PIL image cannot be decoded ({error}); re-open or re-export it."
            ) from None
        return apply_orientation(to_rgb(source), image_orientation(source))
    if not isinstance(source, (str, os.PathLike)):
        raise LiteLVLMError(
            f"load_image got {type(source).__name__}; pass an image path, a PIL image or a numpy array "
            "(H x W x 3 uint8 RGB, or H x W uint8 gray)."
        )
    with open_image(source) as (image, name):
        orientation = image_orientation(image)  # from the header, as `read_image_header` reads it
        check_image_size(*image.size, name)
        image.load()
        if image.format == "TIFF" and ORIENTATION_TAG not in image.tag_v2:
            orientation = 1  # recent Pillow turns TIFFs itself while loading them, and drops the tag
    return apply_orientation(to_rgb(image), orientation)


def image_list(images: object, caller: str) -> list[ImageSource]:
    """`images` as a non-empty list of image sources: one image (a path, PIL image or numpy array) becomes a
    list of one; anything else is one sentence naming what `caller` got."""
    if isinstance(images, (str, os.PathLike, Image.Image, np.ndarray)):
        return [images]
    if isinstance(images, (list, tuple)) and images:
        return list(images)
    raise LiteLVLMError(
        f"{caller} takes an image (a PIL image, a file path or an H x W x 3 uint8 array) or a non-empty list of "
        f"them, got {describe(images)}."
    )


def describe(value: object) -> str:
    """A short description of a bad argument for messages (arrays and long values are not printed whole)."""
    if hasattr(value, "shape") and hasattr(value, "dtype"):
        return f"a {type(value).__name__} of shape {tuple(value.shape)}"
    return f"{type(value).__name__} {shown(value, 80)}"


def read_image_header(
    path: str | os.PathLike, what: str = "image", fix: str = "pass a JPEG or PNG file"
) -> ImageHeader:
    """Stored size and EXIF orientation of an image file, from its header (the pixels are not decoded); `what`
    and `fix` word the error for a file PIL cannot read."""
    with open_image(path, what, fix) as (image, _):
        return ImageHeader(*_stored_size(image), image_orientation(image))


def _stored_size(image: Image.Image) -> tuple[int, int]:
    """(width, height) of the stored pixel grid of an opened image (not yet loaded)."""
    if image.format == "TIFF" and {256, 257} <= set(image.tag_v2):
        # Recent Pillow reports a TIFF's size already turned by its orientation; ImageWidth/ImageLength are not.
        return int(image.tag_v2[256]), int(image.tag_v2[257])
    return image.size


@contextmanager
def open_image(
    path: str | os.PathLike, what: str = "image", fix: str = "pass a JPEG or PNG file"
) -> Iterator[tuple[Image.Image, str]]:
    """`Image.open` with our pixel limit instead of PIL's, yielding (image, its name for messages); a missing,
    unreadable or corrupt file (also while decoding inside the block) raises one `LiteLVLMError`."""
    if str(path) == "":
        raise LiteLVLMError(f"the {what} path is empty; pass an image file.")
    path = Path(path).expanduser()
    name = f"{what} {str(path)!r}"
    if not path.exists():
        raise LiteLVLMError(f"{name} does not exist; check the path.")
    if path.is_dir():
        raise LiteLVLMError(f"{name} is a directory; pass an image file.")
    previous_limit = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None  # `check_image_size` replaces PIL's decompression-bomb check
    try:
        with Image.open(path) as image:
            yield image, name
    except UnidentifiedImageError:
        raise LiteLVLMError(f"{name} is not an image PIL can read; {fix}.") from None
    except LiteLVLMError:
        raise
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        raise LiteLVLMError(
            f"{name} is truncated or corrupt ({error}); re-download or re-export it."
        ) from None
    finally:
        Image.MAX_IMAGE_PIXELS = previous_limit


def check_image_size(width: int, height: int, name: str) -> None:
    """Refuse empty images, images above `MAX_IMAGE_PIXELS` and aspect ratios beyond `MAX_ASPECT_RATIO`:1."""
    if width < 1 or height < 1:
        raise LiteLVLMError(f"{name} is empty ({width} x {height} pixels); pass an image with pixels in it.")
    if width * height > MAX_IMAGE_PIXELS:
        raise LiteLVLMError(
            f"{name} is too large ({width} x {height} pixels); downscale it below {MAX_IMAGE_PIXELS:,} pixels."
        )
    ratio = max(width, height) / min(width, height)
    if ratio > MAX_ASPECT_RATIO:
        shown = f"{ratio:.1f}".removesuffix(".0")
        raise LiteLVLMError(
            f"{name} is {width} x {height} pixels, an aspect ratio of {shown}:1 beyond the {MAX_ASPECT_RATIO}:1 "
            f"limit; crop or pad it to at most {MAX_ASPECT_RATIO}:1."
        )


def _from_array(array: np.ndarray) -> Image.Image:
    """H x W x 3 uint8 RGB or H x W uint8 gray -> RGB PIL image (no orientation: arrays carry no EXIF)."""
    if array.dtype != np.uint8 or not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] == 3)):
        raise LiteLVLMError(
            f"load_image got a numpy array of shape {array.shape} and dtype {array.dtype}; pass an H x W x 3 "
            "uint8 RGB array or an H x W uint8 gray one."
        )
    check_image_size(array.shape[1], array.shape[0], f"the array of shape {array.shape}")
    return Image.fromarray(np.ascontiguousarray(array)).convert("RGB")


# ---------------------------------------------------------------------------------------------- orientation


def image_orientation(image: Image.Image) -> int:
    """EXIF orientation 1..8 of an opened image, from what `Image.open` read of the header; 1 when absent,
    unknown or unreadable, as OpenCV treats it.

    Only the EXIF block counts (a TIFF's own tag directory for TIFFs), not XMP's tiff:Orientation, which PIL's
    `getexif` falls back to but OpenCV and browsers ignore. A PNG's eXIf chunk after the pixel data is not in
    the header: it is only seen once the image is loaded, so files are asked before loading.
    """
    try:
        data = image.info.get("exif")
        if data is not None:
            exif = Image.Exif()
            exif.load(data)
            orientation = exif.get(ORIENTATION_TAG, 1)
        else:
            orientation = getattr(image, "tag_v2", {}).get(ORIENTATION_TAG, 1)
    except Exception:  # noqa: BLE001 - a broken EXIF block is ignored, as viewers and OpenCV ignore it
        return 1
    return orientation if orientation in DISPLAY_TRANSPOSE else 1


def displayed_size(width: int, height: int, orientation: int) -> tuple[int, int]:
    """(width, height) of a stored width x height grid once displayed with this orientation."""
    return (height, width) if orientation in (5, 6, 7, 8) else (width, height)


def apply_orientation(image: Image.Image, orientation: int) -> Image.Image:
    """The stored pixels of `image` turned as displayed (orientation 1: `image` itself), without its EXIF block:
    PIL copies `info` into the turned image, and `load_image` of the result must not turn it a second time."""
    transpose = DISPLAY_TRANSPOSE.get(orientation)
    if transpose is None:
        return image
    turned = image.transpose(transpose)
    turned.info.pop("exif", None)
    return turned


def orient_mask(mask: np.ndarray, orientation: int) -> np.ndarray:
    """A uint8 mask [H, W] in the stored pixel frame -> the same mask in the displayed frame."""
    if orientation not in DISPLAY_TRANSPOSE:
        return mask
    return np.asarray(apply_orientation(Image.fromarray(mask), orientation)).copy()


# ---------------------------------------------------------------------------------------------- decoding


def to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB view of any PIL image, with OpenCV's conversions where the reference pipeline used them.

    16-bit images keep the high byte (value >> 8), as `imread` does; CMYK JPEGs use OpenCV's CMYK -> RGB formula;
    32-bit integer and float images are rescaled to 0..255 (not clipped); alpha is dropped.
    """
    if image.mode == "RGB":
        return image
    if image.mode.startswith("I;16") or (image.mode == "I" and image.format == "PNG"):
        # 16-bit gray (PIL < 11 opens 16-bit PNGs as "I"); 16-bit RGB(A) PNGs already arrive high-byte only.
        high = (np.asarray(image).astype(np.uint32) >> 8).astype(np.uint8)
        return Image.fromarray(high).convert("RGB")
    if image.mode in ("I", "F"):
        array = np.asarray(image, dtype=np.float64)
        if image.mode == "F" and array.max() <= 1.0:
            array = array * 255.0  # float images in [0, 1]
        elif array.max() > 255:
            array = array / 257.0  # 16-bit range 0..65535 onto 0..255
        gray = np.clip(array + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(gray).convert("RGB")
    if image.mode == "CMYK" and image.format in JPEG_FORMATS:
        return Image.fromarray(cmyk_jpeg_to_rgb(np.asarray(image)))
    # Alpha is dropped, not composited, as OpenCV's imread does in the reference pipeline.
    if image.mode in ("LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        image = image.convert("RGBA")
    return image.convert("RGB")


def cmyk_jpeg_to_rgb(cmyk: np.ndarray) -> np.ndarray:
    """A CMYK JPEG as PIL decodes it, uint8 [H, W, 4] -> uint8 RGB [H, W, 3] exactly as OpenCV's `imread` makes it.

    PIL un-inverts every 4-channel JPEG (Adobe's inverted-CMYK convention, rawmode "CMYK;I"), so the bytes libjpeg
    gives OpenCV are 255 - PIL's. OpenCV's `icvCvt_CMYK2BGR_8u_C4C3R` reads them as inverted too:
    channel = k - ((255 - c) * k >> 8) for c in (C, M, Y) -> (R, G, B), with k the stored K byte.
    """
    stored = 255 - cmyk.astype(np.int32)
    k = stored[..., 3:4]
    return (k - (((255 - stored[..., :3]) * k) >> 8)).astype(np.uint8)


@dataclass(frozen=True)
class ClipPreprocess:
    """CLIP image preprocessing settings, read from a checkpoint's `preprocessor_config.json`."""

    resize_shortest_edge: int = 336
    crop_height: int = 336
    crop_width: int = 336
    mean: tuple[float, float, float] = OPENAI_CLIP_MEAN
    std: tuple[float, float, float] = OPENAI_CLIP_STD

    @classmethod
    def from_dir(cls, directory: str | os.PathLike | None, image_size: int) -> ClipPreprocess:
        """Settings from `directory/preprocessor_config.json`, or CLIP defaults at `image_size`."""
        path = Path(directory) / "preprocessor_config.json" if directory is not None else None
        if path is None or not path.is_file():
            return cls(image_size, image_size, image_size)
        fix = f"re-download it, or delete it to use CLIP's defaults at {image_size} px"
        try:
            config = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise LiteLVLMError(f"{str(path)!r} is not valid JSON; {fix}.") from None
        try:
            size = config.get("size", image_size)
            crop = config.get("crop_size", image_size)
            shortest = size.get("shortest_edge", image_size) if isinstance(size, dict) else int(size)
            crop_h, crop_w = (
                (crop["height"], crop["width"]) if isinstance(crop, dict) else (int(crop), int(crop))
            )
            preprocess = cls(
                int(shortest),
                int(crop_h),
                int(crop_w),
                tuple(float(v) for v in config.get("image_mean", OPENAI_CLIP_MEAN)),
                tuple(float(v) for v in config.get("image_std", OPENAI_CLIP_STD)),
            )
        except (AttributeError, KeyError, TypeError, ValueError) as error:
            raise LiteLVLMError(
                f"{str(path)!r} does not hold CLIP's image sizes and mean/std ({type(error).__name__}: {error}); "
                f"{fix}."
            ) from None
        if min(preprocess.resize_shortest_edge, preprocess.crop_height, preprocess.crop_width) < 1 or (
            len(preprocess.mean) != 3 or len(preprocess.std) != 3 or not all(preprocess.std)
        ):
            raise LiteLVLMError(
                f"{str(path)!r} holds sizes below 1 px or a mean/std that is not 3 numbers; {fix}."
            )
        return preprocess

    def geometry(self, width: int, height: int) -> CropGeometry:
        """Where the CLIP crop lies in an image of this size."""
        short, long = (width, height) if width <= height else (height, width)
        new_long = int(self.resize_shortest_edge * long / short)
        resized_w, resized_h = (
            (self.resize_shortest_edge, new_long)
            if width <= height
            else (new_long, self.resize_shortest_edge)
        )
        # Images smaller than the crop are padded by the crop in transformers; resizing makes that rare.
        top = (resized_h - self.crop_height) // 2
        left = (resized_w - self.crop_width) // 2
        return CropGeometry(width, height, resized_w, resized_h, left, top, self.crop_width, self.crop_height)

    def __call__(self, images: list[Image.Image]) -> torch.Tensor:
        """Pixel values [B, 3, crop_height, crop_width] (float32) for a list of RGB PIL images."""
        return torch.stack([self._one(to_rgb(image)) for image in images])

    def _one(self, image: Image.Image) -> torch.Tensor:
        geometry = self.geometry(*image.size)
        resized = image.resize((geometry.resized_width, geometry.resized_height), Image.Resampling.BICUBIC)
        array = np.asarray(resized, dtype=np.float32)
        canvas = np.zeros((self.crop_height, self.crop_width, 3), dtype=np.float32)
        top, left = geometry.crop_top, geometry.crop_left
        # Source and destination windows of the crop (a negative offset pads, as CLIPImageProcessor does).
        src_y, dst_y = max(top, 0), max(-top, 0)
        src_x, dst_x = max(left, 0), max(-left, 0)
        h = min(self.crop_height - dst_y, array.shape[0] - src_y)
        w = min(self.crop_width - dst_x, array.shape[1] - src_x)
        canvas[dst_y : dst_y + h, dst_x : dst_x + w] = array[src_y : src_y + h, src_x : src_x + w]
        canvas = (canvas / 255.0 - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        return torch.from_numpy(canvas).permute(2, 0, 1).contiguous()


@dataclass(frozen=True)
class CropGeometry:
    """Maps CLIP crop coordinates back to the original image (for overlays and referent masks)."""

    width: int
    height: int
    resized_width: int
    resized_height: int
    crop_left: int
    crop_top: int
    crop_width: int
    crop_height: int

    def crop_box_in_image(
        self, x0: float, y0: float, x1: float, y1: float
    ) -> tuple[float, float, float, float]:
        """A box in crop pixels -> the same box in original-image pixels."""
        sx = self.width / self.resized_width
        sy = self.height / self.resized_height
        return (
            (x0 + self.crop_left) * sx,
            (y0 + self.crop_top) * sy,
            (x1 + self.crop_left) * sx,
            (y1 + self.crop_top) * sy,
        )
