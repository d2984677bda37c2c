"""Pictures of what was kept: patch overlays (kept vs pruned, by kind) and mask overlays."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .images import CropGeometry
from .selection import KIND_NAMES

KIND_COLOURS = {
    "kept": (60, 210, 90),
    "low_similarity": (255, 140, 0),
    "context": (0, 190, 255),
    "dominant": (255, 215, 0),
    "merged": (225, 70, 225),
}
KIND_LABELS = {
    "kept": "kept",
    "low_similarity": "low similarity",
    "context": "context",
    "dominant": "dominant",
    "merged": "merged (contextual)",
}
MASK_COLOURS = ((255, 60, 60), (60, 120, 255), (255, 220, 40), (40, 220, 180), (200, 80, 255))
PRUNED_BRIGHTNESS = 0.3
MIN_SHORT_SIDE, MAX_LONG_SIDE = 336, 1600


def display_copy(image: Image.Image) -> tuple[Image.Image, float]:
    """The image scaled for viewing (tiny images enlarged, huge ones reduced) and the scale used."""
    width, height = image.size
    scale = max(1.0, MIN_SHORT_SIDE / min(width, height))
    scale = min(scale, MAX_LONG_SIDE / max(width, height))
    if scale == 1.0:
        return image.copy(), 1.0
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    resample = Image.Resampling.NEAREST if scale > 1 else Image.Resampling.LANCZOS
    return image.resize(size, resample), scale


def overlay(
    image: Image.Image,
    *,
    indices: Sequence[int] | None = None,
    kinds: Sequence[int] | Sequence[str] | None = None,
    grid: tuple[int, int] | None = None,
    geometry: CropGeometry | None = None,
    masks: Sequence[np.ndarray] = (),
    mask_labels: Sequence[str] | None = None,
    title: str | None = None,
    alpha: float = 0.45,
) -> Image.Image:
    """The image for viewing, with kept tokens and/or masks, and one legend.

    indices: kept patch indices (raster over `grid`); kinds: codes into KIND_NAMES or names, one per index;
    geometry: where CLIP's centre crop lies in `image` (parts outside it were never seen and stay dimmed).
    Pruned patches are dimmed, kept ones shown in full colour with an outline by kind.
    masks: boolean [H, W] arrays at the image's size, painted in their own colours.
    """
    canvas, scale = display_copy(image.convert("RGB"))
    original = np.asarray(canvas, dtype=np.float32)
    shown = original.copy()
    rows: list[tuple[tuple[int, int, int], str]] = []
    boxes, names = [], []
    if indices is not None:
        shown *= PRUNED_BRIGHTNESS
        names = [KIND_NAMES[k] if isinstance(k, int) else k for k in (kinds or ["kept"] * len(indices))]
        boxes = [_patch_box(int(index), grid, geometry, scale) for index in indices]
        for (x0, y0, x1, y1), name in zip(boxes, names):
            tint = np.asarray(KIND_COLOURS[name], dtype=np.float32)
            shown[y0:y1, x0:x1] = 0.8 * original[y0:y1, x0:x1] + 0.2 * tint
        counts = Counter(names)
        rows += [(KIND_COLOURS[n], f"{KIND_LABELS[n]}: {counts[n]}") for n in KIND_NAMES if counts[n]]
        rows.append((_dim((200, 200, 200)), f"pruned: {grid[0] * grid[1] - len(indices)}"))
    for number, mask in enumerate(masks):
        colour = MASK_COLOURS[number % len(MASK_COLOURS)]
        shown_mask = mask
        if mask.shape[::-1] != canvas.size:
            shown_mask = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize(canvas.size)) > 127
        shown[shown_mask] = (1 - alpha) * shown[shown_mask] + alpha * np.asarray(colour, np.float32)
        label = mask_labels[number] if mask_labels else f"mask {number}"
        rows.append((colour, f"{label} ({int(mask.sum())} px)"))
    result = Image.fromarray(shown.clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(result)
    for (x0, y0, x1, y1), name in zip(boxes, names):
        draw.rectangle((x0, y0, x1 - 1, y1 - 1), outline=KIND_COLOURS[name], width=1)
    if geometry is not None and indices is not None:
        crop = [
            round(v * scale)
            for v in geometry.crop_box_in_image(0, 0, geometry.crop_width, geometry.crop_height)
        ]
        draw.rectangle((crop[0], crop[1], crop[2] - 1, crop[3] - 1), outline=(255, 255, 255), width=1)
    draw_legend(result, rows, title)
    return result


def prediction_overlay(image: Image.Image, prediction, predictor, title: str) -> Image.Image:
    """One panel per conversation of a `Prediction`, side by side: its kept tokens (dimmed where pruned)
    under its expressions' masks. predictor: the `GroundingPredictor` that made it (grid, CLIP crop)."""
    geometry = predictor.scorer.preprocess.geometry(*image.size)
    conversations: dict[int, object] = {}
    for result in prediction.results:
        conversations.setdefault(result.conversation, result)
    panels = []
    for number, first in sorted(conversations.items()):
        mine = [r for r in prediction.results if r.conversation == number and r.mask is not None]
        panels.append(
            overlay(
                image,
                indices=first.indices,
                kinds=first.kinds,
                grid=predictor.scorer.grid,
                geometry=geometry,
                masks=[r.mask for r in mine],
                mask_labels=[r.expression for r in mine],
                title=title,
            )
        )
    return side_by_side(panels)


def side_by_side(panels: Sequence[Image.Image]) -> Image.Image:
    """Panels left to right on one canvas (top-aligned)."""
    canvas = Image.new("RGB", (sum(p.width for p in panels), max(p.height for p in panels)))
    x = 0
    for panel in panels:
        canvas.paste(panel, (x, 0))
        x += panel.width
    return canvas


def draw_legend(
    image: Image.Image, rows: Sequence[tuple[tuple[int, int, int], str]], title: str | None = None
) -> None:
    """A small legend box (colour swatch + text per row) in the top-left corner, drawn in place."""
    draw = ImageDraw.Draw(image)
    font = _font(max(11, min(image.size) // 40))
    lines = ([(None, title)] if title else []) + list(rows)
    line_height = font.getbbox("Ag")[3] + 4
    width = max(draw.textlength(text, font=font) for _, text in lines) + line_height + 12
    height = line_height * len(lines) + 8
    draw.rectangle((4, 4, 4 + width, 4 + height), fill=(0, 0, 0))
    for row, (colour, text) in enumerate(lines):
        y = 8 + row * line_height
        x = 10
        if colour is not None:
            draw.rectangle((x, y + 2, x + line_height - 6, y + line_height - 4), fill=colour)
            x += line_height
        draw.text((x, y), text, fill=(255, 255, 255), font=font)


def _patch_box(
    index: int, grid: tuple[int, int], geometry: CropGeometry, scale: float
) -> tuple[int, int, int, int]:
    rows, cols = grid
    row, col = divmod(index, cols)
    cell_w, cell_h = geometry.crop_width / cols, geometry.crop_height / rows
    x0, y0, x1, y1 = geometry.crop_box_in_image(
        col * cell_w, row * cell_h, (col + 1) * cell_w, (row + 1) * cell_h
    )
    return (
        round(x0 * scale),
        round(y0 * scale),
        max(round(x1 * scale), round(x0 * scale) + 1),
        max(round(y1 * scale), round(y0 * scale) + 1),
    )


def _dim(colour: tuple[int, int, int]) -> tuple[int, int, int]:
    return tuple(int(c * PRUNED_BRIGHTNESS) for c in colour)


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has a single bitmap font
        return ImageFont.load_default()
