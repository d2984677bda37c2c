"""Reading user images robustly and the CLIP preprocessing geometry (resize shortest edge, centre crop).

Preprocessing is done with PIL/numpy rather than transformers' image processors so it is identical on every
transformers version and needs no torchvision; it reproduces `CLIPImageProcessor` (PIL bicubic resize of the
shortest edge, integer centre crop, rescale, normalise).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from .errors import LiteLVLMError

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# PIL refuses images above ~179M pixels as decompression bombs; we accept up to this many and say so above it.
MAX_IMAGE_PIXELS = 400_000_000


def load_image(source: str | os.PathLike | Image.Image) -> Image.Image:
    """Open an image file (or take a PIL image) and return it as 8-bit RGB.

    Grayscale, palette, CMYK and 16-bit images are converted; an alpha channel is dropped (as OpenCV's
    `imread` does in the reference pipeline). Missing, unreadable or truncated files raise `LiteLVLMError`.
    """
    if isinstance(source, Image.Image):
        return to_rgb(source)
    path = Path(source)
    if not path.exists():
        raise LiteLVLMError(f"image {str(path)!r} does not exist; check the path.")
    if path.is_dir():
        raise LiteLVLMError(f"image {str(path)!r} is a directory; pass an image file.")
    previous_limit = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None  # our own limit below replaces PIL's decompression-bomb check
    try:
        with Image.open(path) as image:
            if image.width * image.height > MAX_IMAGE_PIXELS:
                raise LiteLVLMError(
                    f"image {str(path)!r} is too large ({image.width} x {image.height} pixels); "
                    f"downscale it below {MAX_IMAGE_PIXELS:,} pixels."
                )
            image.load()
            return to_rgb(image)
    except UnidentifiedImageError:
        raise LiteLVLMError(f"{str(path)!r} is not an image PIL can read; pass a JPEG or PNG file.") from None
    except OSError as error:
        raise LiteLVLMError(
            f"image {str(path)!r} is truncated or corrupt ({error}); re-download or re-export it."
        ) from None
    finally:
        Image.MAX_IMAGE_PIXELS = previous_limit


def to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB view of any PIL image; 16-bit and float images are rescaled to 0..255, not clipped."""
    if image.mode == "RGB":
        return image
    if image.mode.startswith("I") or image.mode == "F":
        array = np.asarray(image, dtype=np.float64)
        if image.mode == "F" and array.max() <= 1.0:
            array = array * 255.0  # float images in [0, 1]
        elif image.mode.startswith("I;16") or array.max() > 255:
            array = array / 257.0  # 16-bit range 0..65535 onto 0..255
        gray = np.clip(array + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(gray).convert("RGB")
    # Alpha is dropped, not composited, as OpenCV's imread does in the reference pipeline.
    if image.mode in ("LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        image = image.convert("RGBA")
    return image.convert("RGB")


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
        config = json.loads(path.read_text())
        size = config.get("size", image_size)
        crop = config.get("crop_size", image_size)
        shortest = size.get("shortest_edge", image_size) if isinstance(size, dict) else int(size)
        crop_h, crop_w = (crop["height"], crop["width"]) if isinstance(crop, dict) else (int(crop), int(crop))
        return cls(
            shortest,
            crop_h,
            crop_w,
            tuple(config.get("image_mean", OPENAI_CLIP_MEAN)),
            tuple(config.get("image_std", OPENAI_CLIP_STD)),
        )

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
