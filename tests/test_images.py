"""Reading awkward images as OpenCV's `imread` does: EXIF orientation, CMYK and 16-bit decoding, every mode to
8-bit RGB, numpy arrays; unreadable files give one clear error. References are written from the specs here."""

import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from litelvlm.errors import LiteLVLMError
from litelvlm.images import displayed_size, load_image, orient_mask, read_image_header

# EXIF 2.32, Orientation tag: where the stored 0th row and 0th column appear in the displayed picture.
ORIENTATION_SPEC = {
    1: ("top", "left"),
    2: ("top", "right"),
    3: ("bottom", "right"),
    4: ("bottom", "left"),
    5: ("left", "top"),
    6: ("right", "top"),
    7: ("right", "bottom"),
    8: ("left", "bottom"),
}


def displayed_reference(stored: np.ndarray, orientation: int) -> np.ndarray:
    """The displayed picture of stored pixels [H, W, ...], placed pixel by pixel from the spec's table."""
    row_side, column_side = ORIENTATION_SPEC[orientation]
    height, width = stored.shape[:2]
    rows, columns = np.indices((height, width))
    if row_side in ("top", "bottom"):  # stored rows stay rows
        out = np.empty_like(stored)
        to_row = rows if row_side == "top" else height - 1 - rows
        to_column = columns if column_side == "left" else width - 1 - columns
    else:  # stored rows become columns
        out = np.empty((width, height, *stored.shape[2:]), stored.dtype)
        to_column = rows if row_side == "left" else height - 1 - rows
        to_row = columns if column_side == "top" else width - 1 - columns
    out[to_row, to_column] = stored
    return out


def oriented_file(path, pixels: np.ndarray, orientation: int, **save_options):
    """Save stored `pixels` with an EXIF Orientation tag (format from the suffix) and return the path."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(pixels).save(path, exif=exif.tobytes(), **save_options)
    return path


def png_16_bit(path, samples: np.ndarray):
    """A 16-bit PNG written by hand (PIL writes only 16-bit gray): samples uint16 [H, W] or [H, W, 2|3|4]."""
    colour_type = {1: 0, 2: 4, 3: 2, 4: 6}[1 if samples.ndim == 2 else samples.shape[2]]
    rows = b"".join(b"\x00" + row.astype(">u2").tobytes() for row in samples)  # filter 0 per row

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", samples.shape[1], samples.shape[0], 16, colour_type, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )
    return path


def opencv_cmyk_reference(stored: np.ndarray) -> np.ndarray:
    """OpenCV's icvCvt_CMYK2BGR_8u_C4C3R on the stored (Adobe-inverted) CMYK bytes, returned as RGB."""
    c, m, y, k = (stored[..., i].astype(np.int64) for i in range(4))
    red, green, blue = (k - (((255 - v) * k) >> 8) for v in (c, m, y))
    return np.stack([red, green, blue], axis=-1).astype(np.uint8)


def patterned(height=24, width=40, seed=0):
    """Pixels where every row and column differs, so any wrong flip or turn shows."""
    rng = np.random.default_rng(seed)
    return (rng.random((height, width, 3)) * 255).astype(np.uint8)


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


# ---- EXIF orientation ---------------------------------------------------------------------------------


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_gives_the_displayed_picture(tmp_path, orientation):
    path = oriented_file(tmp_path / "o.jpg", patterned(), orientation, quality=100)
    with Image.open(path) as raw:  # the stored pixels, decoded without turning them
        stored = np.asarray(raw.convert("RGB"))
    expected = displayed_reference(stored, orientation)
    assert np.array_equal(np.asarray(load_image(path)), expected)
    with Image.open(path) as opened:  # a PIL image opened by the user is turned the same way
        assert np.array_equal(np.asarray(load_image(opened)), expected)
    # Turned once only: the CLI and the data sets hand load_image's result to set_image, which loads it again.
    assert np.array_equal(np.asarray(load_image(load_image(path))), expected)
    header = read_image_header(path)
    assert (header.stored_width, header.stored_height, header.orientation) == (40, 24, orientation)
    assert header.size == displayed_size(40, 24, orientation) == load_image(path).size
    mask = (np.arange(24 * 40).reshape(24, 40) % 3).astype(np.uint8)
    assert np.array_equal(orient_mask(mask, orientation), displayed_reference(mask, orientation))


def test_phone_photo_320x240_with_orientation_6_is_240x320(tmp_path):
    path = oriented_file(tmp_path / "phone.jpg", patterned(240, 320), 6, quality=90)
    assert load_image(path).size == (240, 320) and read_image_header(path).size == (240, 320)


@pytest.mark.parametrize("orientation", [2, 8])
@pytest.mark.parametrize("suffix", ["png", "webp", "tif"])
def test_exif_orientation_of_other_formats(tmp_path, suffix, orientation):
    # Lossless formats: the stored pixels are the ones written (recent Pillow turns TIFFs itself on loading).
    options = {"lossless": True} if suffix == "webp" else {}
    path = oriented_file(tmp_path / f"o.{suffix}", patterned(), orientation, **options)
    expected = displayed_reference(patterned(), orientation)
    assert np.array_equal(np.asarray(load_image(path)), expected)
    with Image.open(path) as opened:
        assert np.array_equal(np.asarray(load_image(opened)), expected)
    assert np.array_equal(np.asarray(load_image(load_image(path))), expected)
    assert read_image_header(path) == (40, 24, orientation)


@pytest.mark.parametrize("value", [0, 9, 65535])
def test_unknown_orientation_values_leave_the_pixels_as_stored(tmp_path, value):
    path = oriented_file(tmp_path / "odd.png", patterned(), value)
    assert np.array_equal(np.asarray(load_image(path)), patterned())
    assert read_image_header(path).orientation == 1


def test_header_is_read_without_decoding_the_pixels(tmp_path):
    path = oriented_file(tmp_path / "full.jpg", patterned(200, 300), 6)
    data = path.read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 3])  # header intact, pixel data cut
    assert read_image_header(tmp_path / "cut.jpg").size == (200, 300)
    with pytest.raises(LiteLVLMError, match="truncated or corrupt"):
        load_image(tmp_path / "cut.jpg")


# ---- decoding as OpenCV's imread -------------------------------------------------------------------------


def test_cmyk_jpeg_uses_opencvs_formula(tmp_path):
    rng = np.random.default_rng(3)
    Image.fromarray(rng.integers(0, 256, (16, 24, 4), dtype=np.uint8), "CMYK").save(tmp_path / "c.jpg")
    with Image.open(tmp_path / "c.jpg") as decoded:
        assert decoded.mode == "CMYK"
        # PIL un-inverts Adobe CMYK (rawmode CMYK;I); OpenCV gets the stored, inverted bytes from libjpeg.
        stored = 255 - np.asarray(decoded)
    loaded = np.asarray(load_image(tmp_path / "c.jpg"))
    assert np.array_equal(loaded, opencv_cmyk_reference(stored))
    assert loaded.std() > 10  # a real picture, not a constant


def test_cmyk_of_known_values():
    from litelvlm.images import cmyk_jpeg_to_rgb

    plain = np.array([[[0, 0, 0, 0], [255, 0, 0, 0], [0, 0, 0, 255], [128, 64, 32, 100]]], np.uint8)
    # stored = 255 - plain; white, cyan, black and a mix worked by hand from OpenCV's formula. Full cyan leaves
    # red at 1, not 0: `>> 8` divides by 256, not 255.
    assert cmyk_jpeg_to_rgb(plain).tolist() == [[[255, 255, 255], [1, 255, 255], [0, 0, 0], [78, 117, 136]]]


@pytest.mark.parametrize("channels", [1, 2, 3, 4])
def test_16_bit_png_keeps_the_high_byte(tmp_path, channels):
    rng = np.random.default_rng(channels)
    shape = (6, 9) if channels == 1 else (6, 9, channels)
    samples = rng.integers(0, 65536, shape, dtype=np.uint16)
    samples.flat[0] = 0x12FF  # high byte 0x12; dividing by 257 would round to 0x13
    loaded = np.asarray(load_image(png_16_bit(tmp_path / "deep.png", samples)))
    high = (samples >> 8).astype(np.uint8)
    colour = (
        np.dstack([high] * 3)
        if channels == 1
        else np.dstack([high[..., :1]] * 3)
        if channels == 2
        else high[..., :3]
    )
    assert np.array_equal(loaded, colour)
    assert loaded[0, 0, 0] == 0x12


def test_16_bit_tiff_keeps_the_high_byte(tmp_path):
    samples = np.array([[0x12FF, 0xFF00, 0x0080]], np.uint16)
    Image.fromarray(samples).save(tmp_path / "deep.tif")
    assert np.asarray(load_image(tmp_path / "deep.tif"))[0, :, 0].tolist() == [0x12, 0xFF, 0x00]


# ---- numpy arrays --------------------------------------------------------------------------------------


def test_numpy_rgb_and_gray_arrays():
    rgb = patterned()
    assert np.array_equal(np.asarray(load_image(rgb)), rgb)
    assert np.array_equal(np.asarray(load_image(rgb[:, ::-1])), rgb[:, ::-1])  # non-contiguous views too
    gray = rgb[..., 0]
    assert np.array_equal(np.asarray(load_image(gray)), np.dstack([gray] * 3))


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


def test_select_on_a_tagged_photo_keeps_what_it_keeps_on_the_upright_copy(tmp_path, tiny_clip_dir, capsys):
    import json

    from bad_input import run_cli

    upright = patterned(180, 240, seed=4)
    Image.fromarray(upright).save(tmp_path / "upright.png")
    oriented_file(tmp_path / "sideways.png", displayed_reference(upright, 8), 6)  # 6 undoes 8
    kept = []
    for name in ("upright.png", "sideways.png"):
        code, out, err = run_cli(
            capsys, "select", "--clip", tiny_clip_dir, "--image", tmp_path / name, "--text", "the red car",
            "--budget", "16",
        )  # fmt: skip
        assert code == 0, err
        kept.append(json.loads(out)["indices"])
    assert kept[0] == kept[1]
