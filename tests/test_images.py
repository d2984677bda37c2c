"""Reading awkward images: every mode becomes 8-bit RGB; unreadable files give one clear error."""

import numpy as np
import pytest
from PIL import Image

from litelvlm.errors import LiteLVLMError
from litelvlm.images import load_image


def gradient(height=20, width=30):
    return (np.arange(height * width).reshape(height, width) % 256).astype(np.uint8)


@pytest.mark.parametrize(
    "make",
    [
        lambda: Image.fromarray(gradient()),  # grayscale L
        lambda: Image.fromarray(np.dstack([gradient()] * 4)),  # RGBA
        lambda: Image.fromarray(np.dstack([gradient()] * 3)).convert("CMYK"),
        lambda: Image.fromarray(np.dstack([gradient()] * 3)).convert("P"),
        lambda: Image.fromarray(gradient()).convert("LA"),
        lambda: Image.fromarray(gradient()).convert("1"),
    ],
)
def test_modes_become_rgb(tmp_path, make):
    image = make()
    path = tmp_path / ("x.tif" if image.mode == "CMYK" else "x.png")
    image.save(path)
    loaded = load_image(path)
    assert loaded.mode == "RGB" and loaded.size == (30, 20)


def test_16_bit_png_is_rescaled_not_clipped(tmp_path):
    values = np.array([[0, 257 * 100, 65535]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "deep.png")
    loaded = np.asarray(load_image(tmp_path / "deep.png"))
    assert loaded[0, :, 0].tolist() == [0, 100, 255]


def test_rgba_alpha_is_dropped_like_opencv(tmp_path):
    pixels = np.zeros((2, 2, 4), np.uint8)
    pixels[..., 0] = 200
    Image.fromarray(pixels).save(tmp_path / "clear.png")  # fully transparent red
    assert np.asarray(load_image(tmp_path / "clear.png"))[0, 0].tolist() == [200, 0, 0]


def test_one_pixel_image(tmp_path):
    Image.new("RGB", (1, 1), (10, 20, 30)).save(tmp_path / "dot.png")
    assert load_image(tmp_path / "dot.png").size == (1, 1)


def test_missing_directory_and_non_image(tmp_path):
    with pytest.raises(LiteLVLMError, match="does not exist"):
        load_image(tmp_path / "missing.jpg")
    with pytest.raises(LiteLVLMError, match="is a directory"):
        load_image(tmp_path)
    (tmp_path / "notes.jpg").write_text("not an image at all")
    with pytest.raises(LiteLVLMError, match="not an image"):
        load_image(tmp_path / "notes.jpg")


def test_truncated_jpeg(tmp_path):
    Image.fromarray(np.dstack([gradient(200, 300)] * 3)).save(tmp_path / "full.jpg")
    data = (tmp_path / "full.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(LiteLVLMError, match="truncated or corrupt"):
        load_image(tmp_path / "cut.jpg")


def test_very_large_image_is_read(tmp_path):
    # Above PIL's 89M-pixel warning, within our limit: read (slowly), no DecompressionBomb error.
    Image.new("L", (10_000, 9_000)).save(tmp_path / "big.png")
    assert load_image(tmp_path / "big.png").size == (10_000, 9_000)


def test_image_beyond_the_pixel_limit_is_refused_before_decoding(tmp_path):
    import struct
    import zlib

    header = struct.pack(">IIBBBBB", 30_000, 20_000, 8, 2, 0, 0, 0)  # 600M-pixel RGB, no pixel data

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", b"") + chunk(b"IEND", b"")
    (tmp_path / "huge.png").write_bytes(png)
    with pytest.raises(LiteLVLMError, match="too large"):
        load_image(tmp_path / "huge.png")
