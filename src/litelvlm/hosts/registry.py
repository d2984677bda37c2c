"""The registered hosts, and which one a checkpoint directory holds (read from the checkpoint itself)."""

from __future__ import annotations

import os
from pathlib import Path

from ..checkpoints import error_with_fix, hub_error, read_config, resolve_checkpoint
from ..errors import LiteLVLMError
from .checkpoint_files import tensor_shapes, weight_files
from .glamm import GlammHost
from .host import MODEL_FLAG, Host
from .lisa import LisaHost

HOSTS: dict[str, Host] = {host.name: host for host in (GlammHost(), LisaHost())}


def list_hosts() -> list[str]:
    return list(HOSTS)


def get_host(name: str) -> Host:
    try:
        return HOSTS[name]
    except KeyError:
        raise LiteLVLMError(f"unknown host {name!r}; choose one of: {', '.join(HOSTS)}.") from None


def local_checkpoint_dir(path_or_id: str | os.PathLike) -> str:
    """A local directory for a checkpoint given as a directory or a hub id (from the local cache, else downloaded
    by the hub client when the hub is reachable; `resolve_checkpoint` refuses at once when it is not)."""
    name = resolve_checkpoint(path_or_id, "model checkpoint", MODEL_FLAG)
    if os.path.isdir(name):
        return name
    try:
        from huggingface_hub import snapshot_download

        return snapshot_download(name)
    except Exception as error:  # noqa: BLE001 - any hub failure gets the same advice
        raise hub_error(name, "model checkpoint", MODEL_FLAG, error) from None


def detect_host(directory: str | os.PathLike) -> tuple[Host, dict]:
    """(host, config.json) of a local checkpoint directory: by config.json's `architectures`, else (a config
    without that field) by where the weights keep SAM. Unsupported layouts and unknown models are one clear
    sentence each."""
    directory = Path(directory)
    config = read_config(str(directory), "model checkpoint", MODEL_FLAG)
    for host in HOSTS.values():
        reason = host.unsupported_layout(directory, config)
        if reason:
            raise LiteLVLMError(reason)
    found = [host for host in HOSTS.values() if host.matches(config)]
    if not found and not config.get("architectures"):
        found = [host for host in HOSTS.values() if host.sam_prefix in _sam_prefixes(directory)]
    if len(found) == 1:
        return found[0], config
    first, *others = HOSTS.values()
    if "LlavaForConditionalGeneration" in (
        config.get("architectures") or []
    ):  # text, not masks: its own host
        raise LiteLVLMError(
            f"{str(directory)!r} is a transformers LLaVA, which answers in text rather than masks; run it with "
            "`litelvlm answer`, `litelvlm eval --task rec|vqa` or litelvlm.hosts.llava.LlavaPredictor."
        )
    described = f"architectures {config.get('architectures')!r}, model_type {config.get('model_type')!r}"
    nor = ", nor a ".join(host.display_name for host in others)
    examples = " or ".join(host.example_checkpoint for host in HOSTS.values())
    raise error_with_fix(
        f"{str(directory)!r} is not a {first.display_name} checkpoint, nor a {nor} one (its config.json has "
        f"{described})",
        f"pass a directory such as {examples}",
        MODEL_FLAG,
    )


def _sam_prefixes(directory: Path) -> set[str]:
    """Where a checkpoint keeps SAM (the prefix before its mask decoder), from its weights; empty if it has none."""
    try:
        files = weight_files(directory)
    except LiteLVLMError:
        return set()
    marker = "mask_decoder.iou_token.weight"
    return {key[: -len(marker)] for key in tensor_shapes(files, lambda key: key.endswith(marker))}
