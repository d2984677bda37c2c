"""A command's output files: every location checked before any work, all files written together at the end.

So a command that fails — on bad input found late, a model that will not load, an unwritable path — leaves
every file it would have written exactly as it was, and never dies with a traceback half-way through writing.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

from PIL import Image

from ..errors import LiteLVLMError
from ..io import format_json, png_bytes, write_temporary

# Picture outputs (--overlay, --plot): the format follows the file name.
IMAGE_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}


def check_directory_writable(directory: Path, flag: str, given: str) -> None:
    """`directory`, or the nearest of its ancestors that exists (the rest is created when writing), must be a
    directory this process can create files in. Tried for real: permission bits say nothing for root or on a
    read-only file system."""
    existing = directory
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise LiteLVLMError(
            f"{flag} {given!r} cannot be created: {str(existing)!r} is a file, not a directory; choose another path."
        )
    try:
        handle, probe = tempfile.mkstemp(dir=existing, prefix=".litelvlm-write-check.")
    except OSError as error:
        reason = error.strerror or type(error).__name__
        raise LiteLVLMError(
            f"{flag} {given!r} is not writable: cannot create files in {str(existing)!r} ({reason.lower()}); "
            "choose a writable location."
        ) from None
    os.close(handle)
    os.unlink(probe)


def check_output_dir(path: str, flag: str = "--out") -> Path:
    """A directory to write into: an existing directory, or one that can be created (with its parents)."""
    output = Path(path)
    if output.exists() and not output.is_dir():
        raise LiteLVLMError(f"{flag} {path!r} is a file; pass a directory.")
    check_directory_writable(output, flag, path)
    return output


class OutputFiles:
    """The files one command writes. `add` checks a location up front; `stage_*` keeps the bytes in memory;
    `commit` writes every staged file to a temporary beside its target, then renames them all."""

    def __init__(self, inputs: dict[str, str | None] | None = None) -> None:
        """inputs: {flag: path} of the files the command reads, which no output may replace."""
        self._flags: dict[Path, str] = {}
        self._staged: dict[Path, bytes] = {}
        self._inputs = {
            Path(path).resolve(): flag for flag, path in (inputs or {}).items() if path is not None
        }

    def add(self, path: str | None, flag: str, *, suffixes: tuple[str, ...] | None = None) -> Path | None:
        """Check an output file location (None: the option was not given). `suffixes`: the accepted file
        name endings, e.g. IMAGE_FORMATS for pictures."""
        if path is None:
            return None
        output = Path(path)
        if output.is_dir() or path.endswith(os.sep):
            example = Path(path) / f"{flag.lstrip('-')}{(suffixes or ('.json',))[0]}"
            raise LiteLVLMError(f"{flag} {path!r} is a directory; pass a file name such as {str(example)!r}.")
        if suffixes is not None and output.suffix.lower() not in suffixes:
            raise LiteLVLMError(
                f"{flag} {path!r} must end in {', '.join(suffixes)} (the file's format follows its name)."
            )
        key = output.resolve()
        if key in self._inputs:
            raise LiteLVLMError(
                f"{flag} {path!r} would replace the {self._inputs[key]} file the command reads; choose another name."
            )
        if key in self._flags:
            raise LiteLVLMError(
                f"{self._flags[key]} and {flag} both name {path!r}; give each output its own file."
            )
        check_directory_writable(output.parent, flag, path)
        self._flags[key] = flag
        return output

    def stage(self, path: Path, data: bytes) -> None:
        self._staged[Path(path)] = data

    def stage_json(self, path: Path, payload: dict) -> None:
        self.stage(path, format_json(payload).encode())

    def stage_image(self, path: Path, image: Image.Image) -> None:
        """A picture in the format its name asks for (PNG unless .jpg/.jpeg/.webp)."""
        kind = IMAGE_FORMATS.get(Path(path).suffix.lower(), "PNG")
        if kind == "PNG":
            self.stage(path, png_bytes(image))
            return
        import io

        buffer = io.BytesIO()
        image.convert("RGB").save(buffer, format=kind, quality=95)
        self.stage(path, buffer.getvalue())

    def commit(self, command: str | None = None) -> list[Path]:
        """Write every staged file; if any cannot be written, none is replaced. Returns the paths written, and
        says which on stderr when `command` (e.g. "select") is given."""
        temporaries: list[tuple[Path, Path]] = []
        for path, data in self._staged.items():
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                temporaries.append((write_temporary(path, data), path))
            except OSError as error:
                for temporary, _ in temporaries:
                    temporary.unlink(missing_ok=True)
                raise LiteLVLMError(
                    f"could not write {str(path)!r} ({error.strerror or error}); no output was changed — free "
                    "space or choose another location."
                ) from None
        for temporary, path in temporaries:
            os.replace(temporary, path)
        self._staged.clear()
        written = [path for _, path in temporaries]
        if command and written:
            print(f"litelvlm {command}: wrote {', '.join(str(path) for path in written)}", file=sys.stderr)
        return written
