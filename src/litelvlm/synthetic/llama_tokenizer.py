"""A tiny LLaMA-style SentencePiece tokenizer in the file layout of the hosts' checkpoints (GLaMM, LISA).

The SentencePiece BPE model is trained on the fly (in memory, a few hundred milliseconds) with LLaMA's trainer
settings: <unk>=0, <s>=1, </s>=2, no pad, byte fallback, dummy prefix, split digits, identity normalization,
extra whitespace kept. The corpus is the hosts' referring-segmentation prompt language (system prompt, question
and answer templates, generated referring expressions), without the added tokens themselves, which SentencePiece
never sees in the real model either. "\\n" is kept out of the corpus so that, as in LLaMA, it is byte-encoded
(<0x0A>).
"""

from __future__ import annotations

import io
import json
import random
from collections.abc import Sequence
from pathlib import Path

from ..errors import LiteLVLMError
from ..hosts.conversation import IMAGE_TOKEN, SYSTEM
from ..hosts.glamm import GlammHost
from ..prompts import ANSWER_LIST, SEG_QUESTIONS

_COLORS = (
    "white",
    "black",
    "red",
    "blue",
    "green",
    "yellow",
    "brown",
    "gray",
    "pink",
    "orange",
    "dark",
    "light",
)
_NOUNS = (
    "man", "woman", "guy", "girl", "boy", "kid", "person", "lady", "player", "car", "truck", "bus", "bike",
    "dog", "cat", "horse", "zebra", "giraffe", "elephant", "sheep", "cow", "bear", "chair", "couch", "table",
    "bed", "plate", "cup", "bowl", "pizza", "sandwich", "cake", "umbrella", "bag", "shirt", "jacket",
)  # fmt: skip
_PLACES = (
    "on left", "on right", "in the middle", "in front", "in back", "at top", "at bottom", "far left",
    "far right", "closest to camera", "behind the fence", "next to the tree", "on the table",
    "with glasses", "with a hat", "holding a bat", "sitting down", "standing up",
)  # fmt: skip
SAVED_BY = ("4.28", "4.31")  # the transformers releases whose tokenizer files are reproduced
_ORDINALS = ("first", "second", "third", "left most", "right most", "top", "bottom")


def _expressions(rng: random.Random, count: int) -> list[str]:
    """RefCOCO-like expressions ("white car on left", "second dog from right", "man 2", ...)."""
    out = []
    for _ in range(count):
        noun = rng.choice(_NOUNS)
        kind = rng.randrange(5)
        if kind == 0:
            out.append(f"{rng.choice(_COLORS)} {noun}")
        elif kind == 1:
            out.append(f"{noun} {rng.choice(_PLACES)}")
        elif kind == 2:
            out.append(f"{rng.choice(_COLORS)} {noun} {rng.choice(_PLACES)}")
        elif kind == 3:
            out.append(f"{rng.choice(_ORDINALS)} {noun} from {rng.choice(('left', 'right'))}")
        else:
            out.append(f"{noun} {rng.randrange(1, 120)}")
    return out


def _strip_added(text: str) -> str:
    for token in GlammHost.added_tokens:
        text = text.replace(token, "")
    return text.replace(IMAGE_TOKEN, "")


def tiny_llama_corpus(seed: int = 0, count: int = 300) -> list[str]:
    """The training sentences (no newlines; added tokens removed)."""
    rng = random.Random(seed)
    expressions = _expressions(rng, count)
    sentences = [SYSTEM, *GlammHost.image_prefix.strip().split("\n"), *ANSWER_LIST, *SEG_QUESTIONS]
    for expression in expressions:
        sentences.append(expression)
        question = rng.choice(SEG_QUESTIONS).format(class_name=expression)
        sentences.append(f"USER: {question} ASSISTANT: {rng.choice(ANSWER_LIST)}")
    sentences += ["0 1 2 3 4 5 6 7 8 9 10 42 2014", "a photo of a cat and a dog."]
    return [_strip_added(sentence).replace("\n", " ") for sentence in sentences]


def _special(content: str, normalized: bool = False) -> dict:
    return {
        "content": content,
        "lstrip": False,
        "normalized": normalized,
        "rstrip": False,
        "single_word": False,
    }


def write_tiny_llama_tokenizer(
    directory: str | Path,
    vocab_size: int = 400,
    seed: int = 0,
    added_tokens: Sequence[str] = GlammHost.added_tokens,
    saved_by: str = "4.28",
) -> dict[str, int]:
    """Write tokenizer.model, added_tokens.json, tokenizer_config.json and special_tokens_map.json in a host's
    layout, with a tiny SentencePiece vocabulary of `vocab_size` pieces (>= 300: 259 of them are <unk>, <s>,
    </s> and the 256 byte pieces). `added_tokens` get ids vocab_size, vocab_size + 1, ... in their order.
    saved_by "4.28": the files of MBZUAI/GLaMM-* (Vicuna-v1.5 fields, model_max_length 1536, legacy false);
    "4.31": those transformers 4.31 saved for xinlai/LISA-*-v1 (legacy true, model_max_length 512, special
    tokens normalized). Returns the added-token -> id dict. Deterministic: the same arguments write the same
    bytes."""
    import sentencepiece as spm

    if vocab_size < 300:
        raise LiteLVLMError(
            f"vocab_size must be at least 300 (259 special and byte pieces), got {vocab_size}."
        )
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    spm.set_random_generator_seed(seed)
    buffer = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(tiny_llama_corpus(seed)),
        model_writer=buffer,
        model_type="bpe",
        vocab_size=vocab_size,
        hard_vocab_limit=True,
        character_coverage=1.0,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        byte_fallback=True,
        add_dummy_prefix=True,
        split_digits=True,
        allow_whitespace_only_pieces=True,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        max_sentencepiece_length=16,
        num_threads=1,
        minloglevel=2,
    )
    (directory / "tokenizer.model").write_bytes(buffer.getvalue())

    added = {token: vocab_size + index for index, token in enumerate(added_tokens)}
    (directory / "added_tokens.json").write_text(json.dumps(added, indent=2) + "\n")
    if saved_by not in SAVED_BY:
        raise LiteLVLMError(f"saved_by must be one of {', '.join(SAVED_BY)}, got {saved_by!r}.")
    # 4.28: the fields of lmsys/vicuna-7b-v1.5 / llava-v1.5-7b / GLaMM-* tokenizer_config.json. 4.31: LISA's
    # (re-saving with 4.31 gives its 744-byte file; "legacy": true matters, see hosts/tokenizer.py).
    lisa = saved_by == "4.31"
    config = {
        "add_bos_token": True,
        "add_eos_token": False,
        "bos_token": {"__type": "AddedToken", **_special("<s>", lisa)},
        "clean_up_tokenization_spaces": False,
        "eos_token": {"__type": "AddedToken", **_special("</s>", lisa)},
        "legacy": lisa,
        "model_max_length": 512 if lisa else 1536,
        "pad_token": None,
        "padding_side": "right",
        "sp_model_kwargs": {},
        "tokenizer_class": "LlamaTokenizer",
        "unk_token": {"__type": "AddedToken", **_special("<unk>", lisa)},
    }
    (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    # LLaVA-style training sets pad = unk before save_pretrained, which lands here (not in the config).
    special = {
        "bos_token": _special("<s>", lisa),
        "eos_token": _special("</s>", lisa),
        "pad_token": "<unk>",
        "unk_token": _special("<unk>", lisa),
    }
    (directory / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")
    return added
