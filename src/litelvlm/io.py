"""Writing result files atomically, so an interrupted run never leaves a half-written file behind."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from PIL import Image


def write_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write bytes to a temporary file beside `path`, then rename it over `path`."""
    path = Path(path)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def format_json(payload: dict) -> str:
    """One top-level key per line, values compact: readable, and long index lists stay on one line."""
    lines = [f"  {json.dumps(key)}: {json.dumps(value)}" for key, value in payload.items()]
    return "{\n" + ",\n".join(lines) + "\n}\n"


def write_json(path: str | os.PathLike, payload: dict) -> None:
    write_atomic(path, format_json(payload).encode())


def save_png(path: str | os.PathLike, image: Image.Image) -> None:
    import io

    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    write_atomic(path, buffer.getvalue())
