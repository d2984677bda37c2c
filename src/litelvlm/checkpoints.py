"""Resolving `from_pretrained`-style arguments with clear errors: a checkpoint (a local directory, or a hub id
found in the local cache or fetched when the hub is reachable), its config.json and the kinds of its fields, and
the device to load onto.

Messages say what to fix without naming command-line flags; where a CLI flag is the fix, `cli_message` names it.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from .errors import LiteLVLMError, shown

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
HUB_PROBE_TIMEOUT = 3.0  # seconds to wait for the hub's endpoint before calling it unreachable
OFFLINE_HINT = "HF_HUB_OFFLINE=1"


def error_with_fix(sentence: str, fix: str, flag: str | None = None) -> LiteLVLMError:
    """'sentence; fix.' for the Python API; the CLI's version adds 'with FLAG' to the fix."""
    cli = f"{sentence}; {fix} with {flag}." if flag else None
    return LiteLVLMError(f"{sentence}; {fix}.", cli_message=cli)


def reason_of(error: BaseException, limit: int = 200) -> str:
    """A library error's first line (its type when it has no text), to quote inside one sentence."""
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0][:limit]}" if lines else type(error).__name__


def check_path_argument(value: object, name: str) -> None:
    """A checkpoint argument must be a path or a hub id string (not a number, None, ...)."""
    if not isinstance(value, (str, os.PathLike)):
        raise LiteLVLMError(
            f"{name} must be a checkpoint directory or a hub id such as 'owner/name', got {type(value).__name__} "
            f"{shown(value)}."
        )


def looks_like_hub_id(name: str) -> bool:
    """'owner/name' that is not an existing path and not written as a path (./x, /x, ~/x)."""
    return bool(_HUB_ID.match(name)) and not name.startswith((".", "/", "~"))


def resolve_checkpoint(name: str | os.PathLike, what: str, flag: str | None = None) -> str:
    """A local checkpoint directory: `name` itself, or the local Hugging Face cache's snapshot of hub id `name`;
    else the hub id (for the caller to download), when the hub can be reached.

    what: a human name such as "CLIP checkpoint"; flag: the CLI option that takes it (named in CLI messages).
    """
    text = os.fspath(name)
    path = Path(text).expanduser()
    if path.exists():
        if not path.is_dir():
            raise error_with_fix(f"{what} {text!r} is a file", "pass the checkpoint directory", flag)
        return str(path)
    if not looks_like_hub_id(text):
        raise error_with_fix(f"{what} directory {text!r} does not exist", "pass an existing directory", flag)
    cached = cached_snapshot(text)
    if cached is not None:
        return cached
    if not hub_reachable():
        why = (
            f"{OFFLINE_HINT} is set"
            if hub_offline()
            else f"{hub_endpoint()} did not answer in {HUB_PROBE_TIMEOUT:g} s; set {OFFLINE_HINT} to skip that wait"
        )
        raise error_with_fix(
            f"{what} {text!r} is not a local directory and not in the local Hugging Face cache, and the hub "
            f"cannot be reached ({why})",
            "download it on a machine with network access and pass its local directory",
            flag,
        )
    return text


def cached_snapshot(repo_id: str) -> str | None:
    """The local cache's snapshot directory of `repo_id` when it holds config.json and complete weights."""
    from huggingface_hub import try_to_load_from_cache

    from .hosts.checkpoint_files import weight_files  # here: hosts imports this module

    try:
        config = try_to_load_from_cache(repo_id, "config.json")
    except Exception:  # noqa: BLE001 - an unreadable cache is an empty one
        return None
    if not isinstance(config, str):
        return None
    directory = os.path.dirname(config)
    try:
        weight_files(directory)
    except LiteLVLMError:  # partly cached (e.g. config.json only): the hub has to complete it
        return None
    return directory


def hub_offline() -> bool:
    """Whether HF_HUB_OFFLINE is set (read now, and as huggingface_hub read it at import)."""
    from huggingface_hub import constants

    value = os.environ.get("HF_HUB_OFFLINE", "")
    return value.strip().upper() in {"1", "ON", "YES", "TRUE"} or bool(constants.HF_HUB_OFFLINE)


def hub_reachable() -> bool:
    """False when offline mode is set or the hub's endpoint does not answer within HUB_PROBE_TIMEOUT, so that a
    missing checkpoint fails at once instead of after minutes of download retries."""
    return not hub_offline() and probe_endpoint(hub_endpoint(), HUB_PROBE_TIMEOUT)


def hub_endpoint() -> str:
    """The hub's address (HF_ENDPOINT, as huggingface_hub read it)."""
    from huggingface_hub import constants

    return constants.ENDPOINT


def probe_endpoint(endpoint: str, timeout: float) -> bool:
    """One HEAD request with the hub client's own session (its proxies and certificates); any answer counts."""
    try:
        from huggingface_hub.utils import get_session

        get_session().head(endpoint, timeout=timeout)
    except Exception:  # noqa: BLE001 - refused, timed out, DNS, TLS: all mean "not reachable now"
        return False
    return True


def hub_error(name: str, what: str, flag: str | None, error: Exception) -> LiteLVLMError:
    """The message for a hub id that could not be fetched although the hub answered (gated, misspelt)."""
    return error_with_fix(
        f"could not load {what} {name!r} from the Hugging Face hub ({type(error).__name__})",
        "check the id, or download it elsewhere and pass its local directory",
        flag,
    )


def read_config(directory: str, what: str, flag: str | None = None) -> dict:
    """config.json of a local checkpoint directory, or a clear error when it is absent or unreadable."""
    path = Path(directory) / "config.json"
    if not path.is_file():
        raise error_with_fix(
            f"{directory!r} is not a {what} (it has no config.json)", "pass a checkpoint directory", flag
        )
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise LiteLVLMError(f"{str(path)!r} is not valid JSON; re-download the {what}.") from None
    if not isinstance(config, dict):
        raise LiteLVLMError(f"{str(path)!r} holds no JSON object; re-download the {what}.")
    return config


# ---------------------------------------------------------------------------------------------- config fields
@dataclass(frozen=True)
class FieldKind:
    """What a config.json field must hold: `description` completes "... which is not ___"."""

    description: str
    accepts: Callable[[object], bool]


def _whole(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


COUNT = FieldKind("a positive whole number", lambda value: _whole(value) and value > 0)
WHOLE = FieldKind("a whole number", _whole)
POSITIVE = FieldKind("a positive number", lambda value: _number(value) and value > 0)
NUMBER = FieldKind("a number", _number)
TEXT = FieldKind("a string", lambda value: isinstance(value, str))
FLAG = FieldKind("true or false", lambda value: isinstance(value, bool))
OBJECT = FieldKind("a JSON object", lambda value: isinstance(value, dict))
TOKEN_IDS = FieldKind(
    "a token id or a list of them",
    lambda value: _whole(value) or (isinstance(value, list) and all(_whole(item) for item in value)),
)


def config_value(config: Mapping, field: str) -> object:
    """The value of a dotted field ("vision_config.hidden_size"); None when it or a parent is absent."""
    value: object = config
    for part in field.split("."):
        if not isinstance(value, Mapping):
            return None
        value = value.get(part)
    return value


def check_config_fields(
    config: Mapping,
    fields: Mapping[str, FieldKind],
    where: str,
    divisible: tuple[tuple[str, str], ...] = (),
) -> None:
    """Refuse a config.json whose fields (dotted names; absent or null ones are left to defaults) are of the
    wrong kind, or whose `divisible` pairs (field, by) do not divide; `where` names the file."""
    for field, kind in fields.items():
        value = config_value(config, field)
        if value is not None and not kind.accepts(value):
            raise LiteLVLMError(
                f"{where} has {field} = {shown(value)}, which is not {kind.description}; fix that field "
                "(or re-download the file)."
            )
    for field, by in divisible:
        value, divisor = config_value(config, field), config_value(config, by)
        if value is not None and divisor is not None and value % divisor:
            raise LiteLVLMError(
                f"{where} has {field} = {value}, which {by} = {divisor} does not divide; fix one of the two "
                "fields (or re-download the file)."
            )


def size_mismatch(where: str, field: str, stated: object, actual: int, evidence: str) -> LiteLVLMError:
    """A config.json size that its weights contradict; the weights decide, so the field is what to fix."""
    return LiteLVLMError(
        f"{where} has {field} = {stated} but {evidence}; set {field} to {actual} (or use the config.json that "
        "came with these weights)."
    )


# ---------------------------------------------------------------------------------------------- dtypes, devices
DTYPE_NAMES = (
    "float32",
    "bfloat16",
    "float16",
)  # the model dtypes litelvlm runs in (the CLI's --dtype choices)


def check_dtype(dtype: object):
    """`dtype` as a torch floating dtype litelvlm runs in: a torch.dtype or its name ("bfloat16", also
    "torch.bfloat16"); one sentence otherwise."""
    import torch

    name = str(dtype).removeprefix("torch.") if isinstance(dtype, (str, torch.dtype)) else None
    if name in DTYPE_NAMES:
        return getattr(torch, name)
    raise LiteLVLMError(
        f"dtype {dtype!r} is not one litelvlm runs in; pass torch.float32, torch.bfloat16 or torch.float16 (or "
        "their names)."
    )


def check_device(device: object):
    """`device` as a `torch.device` this machine has (None: "cuda" when available, else "cpu"); one sentence for
    an unknown name, a backend this torch build or machine lacks, or an index beyond the devices present."""
    import torch

    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise LiteLVLMError(
            f'device {device!r} is not a torch device on this machine; use "cpu" (or "cuda" / "cuda:N" where '
            "GPUs are available).",
            cli_message=f"--device {device!r} is not a torch device on this machine; use --device cpu.",
        ) from None
    if parsed.type == "cpu":
        return parsed
    count = _device_count(parsed.type)
    if count == 0:
        raise LiteLVLMError(
            f"device {device!r} is not available: this machine (or torch build) has no {parsed.type} device; "
            'use "cpu".',
            cli_message=f"--device {device!r} is not available on this machine; use --device cpu.",
        )
    if parsed.index is not None and parsed.index >= count:
        raise LiteLVLMError(
            f"device {device!r} does not exist: this machine has {count} {parsed.type} device(s), numbered from "
            f'0; use "{parsed.type}:0" or "cpu".',
            cli_message=f"--device {device!r} does not exist (this machine has {count}); use --device cpu.",
        )
    return parsed


def _device_count(kind: str) -> int:
    """How many devices of a torch backend ("cuda", "mps", "xpu", ...) are usable here (0: none)."""
    import torch

    if kind == "mps":
        return int(torch.backends.mps.is_available())
    backend = getattr(torch, kind, None)
    try:
        return int(backend.device_count()) if backend.is_available() else 0
    except (AttributeError, RuntimeError):  # no such backend module ("meta", "lazy", ...)
        return 0
