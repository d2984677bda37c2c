"""Writing result files atomically, so an interrupted run never leaves a half-written file behind."""

from __future__ import annotations

import io
import json
import os
import tempfile
from pathlib import Path

from PIL import Image

TEMPORARY_SUFFIX = ".tmp"  # `.NAME.<random>.tmp` beside the file it will replace


def write_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write bytes to a temporary file beside `path`, then rename it over `path`."""
    temporary = write_temporary(path, data)
    try:
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def write_temporary(path: str | os.PathLike, data: bytes) -> Path:
    """The bytes in a new temporary file beside `path` (flushed to disk, with the umask's permissions), ready to
    be renamed over `path`; removed again if writing fails."""
    path = Path(path)
    handle, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMPORARY_SUFFIX)
    temporary = Path(name)
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(data)
            file.flush()
            os.fchmod(file.fileno(), 0o666 & ~current_umask())  # mkstemp makes 0600 whatever the umask
            os.fsync(file.fileno())
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return temporary


def current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def remove_stale_temporaries(directory: str | os.PathLike) -> int:
    """Delete temporary files a killed atomic write left in `directory`; returns how many were removed. Call it
    only while no other process writes there (e.g. under the run's lock)."""
    removed = 0
    for path in Path(directory).glob(f".*{TEMPORARY_SUFFIX}"):
        if path.is_file():
            path.unlink(missing_ok=True)
            removed += 1
    return removed


def format_json(payload: dict) -> str:
    """One top-level key per line, values compact: readable, and long index lists stay on one line."""
    lines = [f"  {json.dumps(key)}: {json.dumps(value)}" for key, value in payload.items()]
    return "{\n" + ",\n".join(lines) + "\n}\n"


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def figure_png(figure) -> bytes:
    """A matplotlib figure as PNG bytes without the library's metadata (same figure, same bytes); closes it."""
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", metadata={"Software": None})
    plt.close(figure)
    return png_bytes(Image.open(buffer).convert("RGB"))
