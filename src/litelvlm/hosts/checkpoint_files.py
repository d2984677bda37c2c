"""Reading the tensors of a (sharded) checkpoint one shard at a time, without holding two copies.

Supports the layouts `from_pretrained` writes: `pytorch_model.bin`, `pytorch_model-0000k-of-0000n.bin` with
`pytorch_model.bin.index.json`, and their safetensors equivalents (what users convert to). Every weight file is
opened in `_read_shard`, which turns any failure to decode it (a truncated download, a file of other bytes) into
one sentence naming the file; `check_weights` compares what the files hold with what a model expects.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import torch

from ..errors import LiteLVLMError

INDEX_FILES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
SINGLE_FILES = ("model.safetensors", "pytorch_model.bin")
Shapes = dict[str, tuple[tuple[int, ...], Path]]  # key -> (shape, the file holding it)


def weight_files(directory: str | Path) -> list[Path]:
    """The weight files of a checkpoint directory, in shard order; a clear error when there are none."""
    directory = Path(directory)
    for index_name in INDEX_FILES:
        index = directory / index_name
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
                names = sorted({str(name) for name in weight_map.values()})
            except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, AttributeError):
                raise LiteLVLMError(
                    f"{str(index)!r} is not a valid checkpoint index; re-download it."
                ) from None
            files = [directory / name for name in names]
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


def corrupt_file(path: Path, reason: str) -> LiteLVLMError:
    return LiteLVLMError(f"weight file {str(path)!r} {reason}; re-download it (the file is damaged).")


def _read_shard(path: Path, wanted: Callable[[str], bool], data: bool) -> dict:
    """The wanted tensors of one weight file (`data=False`: their shapes only, read from the header or the
    memory-mapped pickle), or `corrupt_file` for bytes that do not decode."""
    try:
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), framework="pt", device="cpu") as shard:
                keys = [key for key in shard.keys() if wanted(key)]  # noqa: SIM118 (safe_open is not iterable)
                if data:
                    return {key: shard.get_tensor(key) for key in keys}
                return {key: tuple(shard.get_slice(key).get_shape()) for key in keys}
        try:  # `.bin` shards are memory-mapped, so tensors nobody asks for stay on disk
            state = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
        except RuntimeError:  # legacy (non-zip) pickles cannot be memory-mapped
            state = torch.load(path, map_location="cpu", weights_only=True)
    except LiteLVLMError:
        raise
    except Exception as error:  # noqa: BLE001 - the decoders' errors vary with the bytes (Unpickling, EOF, ...)
        raise corrupt_file(path, f"cannot be read as {_format(path)} ({type(error).__name__})") from None
    if not isinstance(state, Mapping):
        raise corrupt_file(path, f"holds a {type(state).__name__}, not a dictionary of tensors")
    tensors = {key: value for key, value in state.items() if isinstance(key, str) and wanted(key)}
    for key, value in tensors.items():
        if not isinstance(value, torch.Tensor):
            raise corrupt_file(path, f"holds {type(value).__name__} under {key!r} where a tensor belongs")
    return tensors if data else {key: tuple(value.shape) for key, value in tensors.items()}


def _format(path: Path) -> str:
    return "safetensors" if path.suffix == ".safetensors" else "a PyTorch checkpoint"


def iter_shards(
    files: list[Path], wanted: Callable[[str], bool] = lambda key: True
) -> Iterator[tuple[Path, dict[str, torch.Tensor]]]:
    """Yield (file, its wanted tensors) shard by shard; unwanted tensors are never read into memory."""
    for path in files:
        yield path, _read_shard(path, wanted, data=True)


def tensor_index(files: list[Path], wanted: Callable[[str], bool]) -> Shapes:
    """Shape and file of every wanted tensor, from metadata (safetensors) or the memory-mapped pickle (no data)."""
    return {key: (shape, path) for path in files for key, shape in _read_shard(path, wanted, False).items()}


def tensor_shapes(files: list[Path], wanted: Callable[[str], bool]) -> dict[str, tuple[int, ...]]:
    """Shapes of the wanted tensors (see `tensor_index`)."""
    return {key: shape for key, (shape, _) in tensor_index(files, wanted).items()}


def layer_count(keys, prefix: str) -> int:
    """How many numbered layers `prefix<i>.` the keys hold (the highest index + 1; 0 for none)."""
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    return max((int(match.group(1)) + 1 for key in keys if (match := pattern.match(key))), default=0)


def check_weights(found: Shapes, expected: Mapping[str, tuple[int, ...]], where: str, what: str) -> None:
    """Refuse weights that lack a tensor `expected` names (it would stay randomly initialised) or hold one of
    another shape. `where` names the config.json the expectation comes from; `what` the checkpoint."""
    for key, shape in expected.items():
        if key in found and tuple(found[key][0]) != tuple(shape):
            got, path = found[key]
            raise LiteLVLMError(
                f"tensor {key!r} in {str(path)!r} has shape {tuple(got)} but {where} implies {tuple(shape)}; "
                f"re-download the {what} (its weights and config.json do not match)."
            )
    missing = [key for key in expected if key not in found]
    if missing:
        raise LiteLVLMError(
            f"the weight files lack {len(missing)} tensor(s) that {where} describes, e.g. "
            f"{', '.join(missing[:3])}; re-download the {what} (nothing is initialised at random)."
        )
