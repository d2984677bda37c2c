"""Example images for the demo, drawn by the project (nothing is downloaded): simple scenes of coloured shapes
with the referring expressions that name them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

# name: (size, background gradient colours, shapes (kind, box, colour), expressions for the example row)
SCENES = {
    "shapes": (
        (640, 480),
        ((40, 70, 110), (150, 190, 220)),
        [
            ("ellipse", (70, 150, 250, 330), (220, 40, 40)),
            ("rectangle", (330, 110, 560, 300), (40, 90, 220)),
            ("triangle", (250, 300, 430, 460), (40, 170, 70)),
        ],
        "the red circle\nthe blue square",
    ),
    "fruit": (
        (480, 480),
        ((200, 170, 120), (120, 90, 60)),
        [
            ("ellipse", (40, 60, 200, 220), (240, 200, 30)),
            ("ellipse", (260, 80, 440, 260), (230, 120, 20)),
            ("ellipse", (150, 270, 330, 450), (150, 30, 60)),
        ],
        "the orange on the right",
    ),
    "tall": (
        (360, 640),
        ((20, 20, 30), (90, 60, 120)),
        [
            ("rectangle", (60, 60, 300, 200), (250, 250, 250)),
            ("ellipse", (120, 380, 260, 520), (250, 150, 200)),
        ],
        "the pink ball at the bottom\nthe white box",
    ),
}


def draw_scene(name: str) -> Image.Image:
    """The scene `name` as an RGB image (deterministic)."""
    (width, height), (top, bottom), shapes, _ = SCENES[name]
    ramp = np.linspace(0.0, 1.0, height)[:, None, None]
    pixels = (1 - ramp) * np.asarray(top, np.float32) + ramp * np.asarray(bottom, np.float32)
    image = Image.fromarray(np.repeat(pixels, width, axis=1).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for kind, (x0, y0, x1, y1), colour in shapes:
        if kind == "ellipse":
            draw.ellipse((x0, y0, x1, y1), fill=colour)
        elif kind == "rectangle":
            draw.rectangle((x0, y0, x1, y1), fill=colour)
        else:
            draw.polygon([((x0 + x1) // 2, y0), (x1, y1), (x0, y1)], fill=colour)
    return image


def write_examples(directory: str | Path) -> list[tuple[Path, str]]:
    """Write every scene as a PNG under `directory`; [(path, expressions)] for the page's example rows."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    rows = []
    for name, scene in SCENES.items():
        path = directory / f"{name}.png"
        if not path.exists():
            draw_scene(name).save(path)
        rows.append((path, scene[3]))
    return rows
