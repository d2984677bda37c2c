"""Resolving `from_pretrained`-style arguments (a local directory or a hub id) with clear errors."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from .errors import LiteLVLMError

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def looks_like_hub_id(name: str) -> bool:
    """'owner/name' that is not an existing path and not written as a path (./x, /x, ~/x)."""
    return bool(_HUB_ID.match(name)) and not name.startswith((".", "/", "~"))


def resolve_checkpoint(name: str | os.PathLike, what: str, flag: str) -> str:
    """A local checkpoint directory, or a hub id passed through to `from_pretrained`.

    what: a human name such as "CLIP checkpoint"; flag: the CLI option users should fix, e.g. "--clip".
    """
    text = os.fspath(name)
    path = Path(text).expanduser()
    if path.exists():
        if not path.is_dir():
            raise LiteLVLMError(f"{what} {text!r} is a file; pass the checkpoint directory with {flag}.")
        return str(path)
    if looks_like_hub_id(text):
        return text
    raise LiteLVLMError(f"{what} directory {text!r} does not exist; pass an existing directory with {flag}.")


def read_config(directory: str, what: str, flag: str) -> dict:
    """config.json of a local checkpoint directory, or a clear error when it is absent or unreadable."""
    path = Path(directory) / "config.json"
    if not path.is_file():
        raise LiteLVLMError(f"{directory!r} is not a {what} (it has no config.json); check {flag}.")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise LiteLVLMError(f"{str(path)!r} is not valid JSON; re-download the {what}.") from None


def hub_error(name: str, what: str, flag: str, error: Exception) -> LiteLVLMError:
    """The message for a hub id that could not be fetched (offline, gated, misspelt)."""
    return LiteLVLMError(
        f"could not load {what} {name!r} from the Hugging Face hub ({type(error).__name__}); "
        f"if this machine is offline, download it elsewhere and pass its local directory with {flag}."
    )
