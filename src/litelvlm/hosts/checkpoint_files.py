"""Streaming the tensors of a (sharded) checkpoint one shard at a time, without holding two copies.

Supports the layouts `from_pretrained` writes: `pytorch_model.bin`, `pytorch_model-0000k-of-0000n.bin` with
`pytorch_model.bin.index.json`, and their safetensors equivalents (what users convert to).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

from ..errors import LiteLVLMError

INDEX_FILES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
SINGLE_FILES = ("model.safetensors", "pytorch_model.bin")


def weight_files(directory: str | Path) -> list[Path]:
    """The weight files of a checkpoint directory, in shard order; a clear error when there are none."""
    directory = Path(directory)
    for index_name in INDEX_FILES:
        index = directory / index_name
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (json.JSONDecodeError, KeyError):
                raise LiteLVLMError(
                    f"{str(index)!r} is not a valid checkpoint index; re-download it."
                ) from None
            files = [directory / name for name in sorted(set(weight_map.values()))]
            missing = [str(path) for path in files if not path.is_file()]
            if missing:
                raise LiteLVLMError(
                    f"checkpoint shard {missing[0]!r} named in {index_name} is missing; re-download it."
                )
            return files
    for name in SINGLE_FILES:
        if (directory / name).is_file():
            return [directory / name]
    raise LiteLVLMError(
        f"{str(directory)!r} holds no weights (expected {' or '.join(SINGLE_FILES)} or a sharded index); "
        "pass a checkpoint directory."
    )


def iter_shards(
    files: list[Path], wanted: Callable[[str], bool] = lambda key: True
) -> Iterator[dict[str, torch.Tensor]]:
    """Yield each shard's wanted tensors as a dict; unwanted tensors are never read into memory.

    `.bin` shards are memory-mapped (`torch.load(mmap=True)`), so skipped tensors stay on disk; safetensors
    shards read only the requested keys.
    """
    for path in files:
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), framework="pt", device="cpu") as shard:
                yield {key: shard.get_tensor(key) for key in shard.keys() if wanted(key)}  # noqa: SIM118 (safe_open is not iterable)
        else:
            try:
                state = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
            except RuntimeError:  # legacy (non-zip) pickles cannot be memory-mapped
                state = torch.load(path, map_location="cpu", weights_only=True)
            yield {key: value for key, value in state.items() if wanted(key)}
            del state


def tensor_shapes(files: list[Path], wanted: Callable[[str], bool]) -> dict[str, tuple[int, ...]]:
    """Shapes of the wanted tensors, read from metadata (safetensors) or the memory-mapped pickle (no data)."""
    shapes: dict[str, tuple[int, ...]] = {}
    for path in files:
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), framework="pt", device="cpu") as shard:
                shapes.update({k: tuple(shard.get_slice(k).get_shape()) for k in shard.keys() if wanted(k)})  # noqa: SIM118
        else:
            for shard in iter_shards([path], wanted):
                shapes.update({key: tuple(value.shape) for key, value in shard.items()})
    return shapes
