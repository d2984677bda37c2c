"""The real CLIP BPE tokenizer files, rebuilt offline from the merge list shipped in open-clip-torch.

The vocabulary is the 256 byte symbols, the same with "</w>", one entry per merge, then <|startoftext|> and
<|endoftext|>: 49,408 entries, identical to openai/clip-vit-*'s vocab.json. The data file is read from the
installed wheel without importing open_clip (whose import needs torchvision).
"""

from __future__ import annotations

import gzip
import importlib.util
import json
from functools import lru_cache
from pathlib import Path

from ..errors import LiteLVLMError

NUM_MERGES = 49152 - 256 - 2
BOS, EOS = "<|startoftext|>", "<|endoftext|>"


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character table, in vocabulary order (printable bytes first,
    keeping their own character; the other bytes mapped to 256, 257, ...)."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    others = [byte for byte in range(256) if byte not in printable]
    return {
        **{byte: chr(byte) for byte in printable},
        **{byte: chr(256 + i) for i, byte in enumerate(others)},
    }


@lru_cache(maxsize=1)
def clip_merges() -> tuple[str, ...]:
    """The 48,894 BPE merges ("a b" strings) of CLIP's tokenizer."""
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise LiteLVLMError(
            "the CLIP merge list comes from open-clip-torch; install it with "
            "`pip install --no-deps open-clip-torch`."
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "bpe_simple_vocab_16e6.txt.gz"
    lines = gzip.decompress(path.read_bytes()).decode("utf-8").split("\n")
    return tuple(lines[1 : 1 + NUM_MERGES])


def clip_vocab() -> dict[str, int]:
    symbols = list(bytes_to_unicode().values())
    tokens = symbols + [symbol + "</w>" for symbol in symbols]
    tokens += [merge.replace(" ", "") for merge in clip_merges()] + [BOS, EOS]
    return {token: index for index, token in enumerate(tokens)}


def write_clip_tokenizer(directory: str | Path) -> None:
    """Write vocab.json, merges.txt, tokenizer_config.json and special_tokens_map.json as in openai/clip-vit-*,
    then tokenizer.json by loading them with transformers' fast CLIP tokenizer."""
    from transformers import AutoTokenizer

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "vocab.json").write_text(json.dumps(clip_vocab(), ensure_ascii=False))
    (directory / "merges.txt").write_text("#version: 0.2\n" + "\n".join(clip_merges()) + "\n")
    special = {
        "bos_token": {
            "content": BOS,
            "lstrip": False,
            "normalized": True,
            "rstrip": False,
            "single_word": False,
        },
        "eos_token": {
            "content": EOS,
            "lstrip": False,
            "normalized": True,
            "rstrip": False,
            "single_word": False,
        },
        "pad_token": EOS,
        "unk_token": {
            "content": EOS,
            "lstrip": False,
            "normalized": True,
            "rstrip": False,
            "single_word": False,
        },
    }
    (directory / "special_tokens_map.json").write_text(json.dumps(special, indent=2))
    config = {
        "add_prefix_space": False,
        "do_lower_case": True,
        "errors": "replace",
        "model_max_length": 77,
        "tokenizer_class": "CLIPTokenizer",
        **special,
    }
    (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    tokenizer = AutoTokenizer.from_pretrained(str(directory))  # the tokenizers-backed one on 4.x and 5.x
    tokenizer.backend_tokenizer.save(str(directory / "tokenizer.json"))
