"""The slow LLaMA tokenizer as the hosts ran it (transformers 4.28-4.31), rebuilt on SentencePiece.

GLaMM (a transformers 4.28 development build) and LISA (4.31, `legacy=True`) tokenized differently from any
modern transformers: every added token from added_tokens.json (`<im_start>`, `<im_end>`, `[SEG]`, ...) is a
no-split token with the whitespace on both sides stripped, and every text piece between special tokens is
SentencePiece-encoded on its own, with the dummy "▁" prefix. The position of the token just before each [SEG]
depends on this, so `LegacyLlamaTokenizer` reproduces it with the SentencePiece model directly instead of
relying on the installed transformers.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

from ..checkpoints import POSITIVE, check_config_fields
from ..errors import LiteLVLMError
from .conversation import IM_END, IM_START, IMAGE_TOKEN, SEG
from .llm import IMAGE_TOKEN_INDEX

MODES = ("reference", "modern")


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise LiteLVLMError(
            f"cannot read {path} as JSON ({error}); restore the file from the checkpoint."
        ) from None
    if not isinstance(data, dict):
        raise LiteLVLMError(f"{path} must hold a JSON object; restore the file from the checkpoint.")
    return data


def _token_content(value, default: str) -> str:
    if value is None:
        return default
    return value["content"] if isinstance(value, dict) else str(value)


class LegacyLlamaTokenizer:
    """The slow LLaMA SentencePiece tokenizer of a host checkpoint plus its added tokens, with the reference
    (transformers 4.28-4.31) tokenization: no-split added tokens with surrounding whitespace stripped, every text
    piece SentencePiece-encoded on its own (with the dummy '▁' prefix), '</s>' split out as eos (not stripped).

    required_tokens: added tokens the host needs (at least `<im_start>`, `<im_end>`, `[SEG]`); host_name names
    the host in messages.

    mode "modern" tokenizes with transformers' LlamaTokenizer (legacy=False) loaded from the same files instead,
    to study the difference; decode and the ids of special tokens are shared."""

    def __init__(
        self,
        sp_model,
        added_tokens: Mapping[str, int],
        *,
        bos_token: str = "<s>",
        eos_token: str = "</s>",
        unk_token: str = "<unk>",
        model_max_length: int = 1536,
        mode: str = "reference",
        hf_tokenizer=None,
        required_tokens: Sequence[str] = (IM_START, IM_END, SEG),
        host_name: str = "host",
    ):
        if mode not in MODES:
            raise LiteLVLMError(f"mode must be one of {', '.join(MODES)}, got {mode!r}.")
        self.sp = sp_model
        self.mode = mode
        self.model_max_length = model_max_length
        self.hf_tokenizer = hf_tokenizer
        self.sp_vocab_size = sp_model.get_piece_size()
        ids = {}
        for name, content in (("bos", bos_token), ("eos", eos_token), ("unk", unk_token)):
            index = sp_model.piece_to_id(content)
            if sp_model.id_to_piece(index) != content:
                raise LiteLVLMError(
                    f"the {name} token {content!r} is not in tokenizer.model; fix {name}_token in "
                    "tokenizer_config.json."
                )
            ids[name] = index
        self.bos_id, self.eos_id, self.unk_id = ids["bos"], ids["eos"], ids["unk"]
        self.pad_id = self.unk_id  # the hosts' evaluation: tokenizer.pad_token = tokenizer.unk_token
        self.bos_token, self.eos_token, self.unk_token = bos_token, eos_token, unk_token

        missing = [token for token in required_tokens if token not in added_tokens]
        if missing:
            raise LiteLVLMError(
                f"added_tokens.json lacks {', '.join(missing)}; use the {host_name} checkpoint's added_tokens.json "
                f"(it maps {', '.join(required_tokens)} to ids from the SentencePiece size up)."
            )
        ordered = sorted(added_tokens.items(), key=lambda item: item[1])
        expected = list(range(self.sp_vocab_size, self.sp_vocab_size + len(ordered)))
        if [index for _, index in ordered] != expected:
            raise LiteLVLMError(
                f"added_tokens.json ids {[index for _, index in ordered]} are not consecutive from the "
                f"SentencePiece vocab size {self.sp_vocab_size}; tokenizer.model and added_tokens.json "
                "come from different checkpoints."
            )
        self.added_tokens = dict(ordered)
        self.vocab_size = self.sp_vocab_size + len(ordered)
        self.seg_id = self.added_tokens[SEG]
        self.im_start_id = self.added_tokens[IM_START]
        self.im_end_id = self.added_tokens[IM_END]
        self._added_by_id = {index: token for token, index in ordered}
        self.source = "the tokenizer"  # from_pretrained names its files here, for messages

        # The no-split tokens of the 4.28-4.31 slow tokenizer. Tokens from added_tokens.json were plain strings,
        # so the whitespace on both sides was stripped; bos/eos/unk were AddedTokens with lstrip = rstrip = False.
        self._strip = {token: True for token in self.added_tokens}
        self._strip.update({bos_token: False, eos_token: False, unk_token: False})
        self._special_ids = {
            **self.added_tokens,
            bos_token: self.bos_id,
            eos_token: self.eos_id,
            unk_token: self.unk_id,
        }
        # Longest first, so a token is never cut by a shorter one (the 4.28 Trie matched the longest).
        alternatives = sorted(self._special_ids, key=len, reverse=True)
        self._split = re.compile("(" + "|".join(re.escape(token) for token in alternatives) + ")")

    @classmethod
    def from_pretrained(
        cls,
        directory: str | Path,
        mode: str = "reference",
        required_tokens: Sequence[str] = (IM_START, IM_END, SEG),
        host_name: str = "host",
    ) -> LegacyLlamaTokenizer:
        """Read tokenizer.model and added_tokens.json (required) and tokenizer_config.json /
        special_tokens_map.json (optional) of a host checkpoint directory."""
        import sentencepiece as spm

        if mode not in MODES:
            raise LiteLVLMError(f"mode must be one of {', '.join(MODES)}, got {mode!r}.")
        directory = Path(directory)
        model_file = directory / "tokenizer.model"
        if not model_file.is_file():
            raise LiteLVLMError(
                f"{model_file} is missing; point at a {host_name} checkpoint directory holding tokenizer.model."
            )
        added_file = directory / "added_tokens.json"
        if not added_file.is_file():
            raise LiteLVLMError(
                f"{added_file} is missing; copy added_tokens.json (the {host_name} tokens "
                f"{', '.join(required_tokens)}) from the checkpoint."
            )
        added = _read_json(added_file)
        for token, index in added.items():
            if not isinstance(index, int):
                raise LiteLVLMError(f"{added_file} maps {token!r} to {index!r}; ids must be integers.")
        config = {}
        for name in (
            "special_tokens_map.json",
            "tokenizer_config.json",
        ):  # the config wins, as in transformers
            if (directory / name).is_file():
                config.update(
                    {key: value for key, value in _read_json(directory / name).items() if value is not None}
                )
        where = repr(str(directory / "tokenizer_config.json"))
        check_config_fields(config, {"model_max_length": POSITIVE}, where)
        sp_model = spm.SentencePieceProcessor()
        try:
            sp_model.Load(str(model_file))
        except (OSError, RuntimeError) as error:
            raise LiteLVLMError(
                f"{model_file} is not a SentencePiece model ({error}); restore it from the checkpoint."
            ) from None
        hf_tokenizer = _load_modern(directory) if mode == "modern" else None
        tokenizer = cls(
            sp_model,
            added,
            bos_token=_token_content(config.get("bos_token"), "<s>"),
            eos_token=_token_content(config.get("eos_token"), "</s>"),
            unk_token=_token_content(config.get("unk_token"), "<unk>"),
            model_max_length=int(config.get("model_max_length", 1536)),
            mode=mode,
            hf_tokenizer=hf_tokenizer,
            required_tokens=required_tokens,
            host_name=host_name,
        )
        tokenizer.source = f"the tokenizer ({str(model_file)!r} + {added_file.name})"
        return tokenizer

    def check_fits(self, rows: int, embeddings: str) -> None:
        """Refuse a tokenizer with ids beyond the model's `rows` embedding rows (`embeddings` names the matrix and
        its file): it comes from another checkpoint, so its ids (and [SEG]'s) are not the ones the model learnt,
        and the highest would index past the matrix."""
        if self.vocab_size > rows:
            raise LiteLVLMError(
                f"{self.source} has {self.vocab_size} tokens ({self.sp_vocab_size} SentencePiece pieces + "
                f"{len(self.added_tokens)} added, [SEG] = id {self.seg_id}) but {embeddings} has only {rows} rows; "
                "use the tokenizer files that came with this checkpoint."
            )

    # -- encoding ---------------------------------------------------------------------------------------------

    def segments(self, text: str) -> list[str | int]:
        """The reference segmentation: special-token ids and the (stripped) text pieces between them."""
        parts = self._split.split(text)  # text, token, text, token, ..., text
        for index in range(1, len(parts), 2):
            if self._strip[parts[index]]:
                parts[index - 1] = parts[index - 1].rstrip()
                parts[index + 1] = parts[index + 1].lstrip()
        return [self._special_ids[part] if index % 2 else part for index, part in enumerate(parts) if part]

    def encode(self, text: str) -> list[int]:
        """Ids of `text` with BOS first. "<image>" is ordinary text here (see encode_with_image)."""
        if self.mode == "modern":
            return list(self.hf_tokenizer(text, add_special_tokens=True)["input_ids"])
        ids = [self.bos_id]
        for part in self.segments(text):
            ids += [part] if isinstance(part, int) else self.sp.encode(part)
        return ids

    def encode_with_image(self, prompt: str) -> list[int]:
        """LLaVA's tokenizer_image_token: split on the literal "<image>", encode every chunk (BOS first), then
        one BOS, each chunk without its BOS, and a single IMAGE_TOKEN_INDEX between consecutive chunks.

        Whitespace around "<image>": none is stripped beyond what encode() does. "<image>" is not a token of
        the hosts' tokenizers, it is cut out of the string before tokenization, so each chunk is encoded as a
        string of its own: chunk 1 ends with "<im_start>" and chunk 2 starts with "<im_end>", both added tokens
        with nothing on their image side. The ids are therefore exactly those of encoding the whole prompt
        with "<image>" as one more no-split token. (Without the <im_start>/<im_end> wrap, "The <image> provides"
        would keep a trailing "▁" at the end of chunk 1 and a "▁▁provides" in chunk 2; no host does that.)"""
        chunks = [self.encode(chunk) for chunk in prompt.split(IMAGE_TOKEN)]
        ids: list[int] = []
        offset = 0
        if chunks[0] and chunks[0][0] == self.bos_id:
            offset = 1
            ids.append(self.bos_id)
        for index, chunk in enumerate(chunks):
            if index:
                ids.append(IMAGE_TOKEN_INDEX)
            ids += chunk[offset:]
        return ids

    # -- decoding ---------------------------------------------------------------------------------------------

    def id_to_token(self, index: int) -> str:
        """The piece or added-token name of an id ("<image>" for IMAGE_TOKEN_INDEX)."""
        if index == IMAGE_TOKEN_INDEX:
            return IMAGE_TOKEN
        if index in self._added_by_id:
            return self._added_by_id[index]
        if not 0 <= index < self.sp_vocab_size:
            raise LiteLVLMError(f"token id {index} is outside the vocabulary of {self.vocab_size}.")
        return self.sp.id_to_piece(index)

    def tokens(self, ids: Sequence[int]) -> list[str]:
        return [self.id_to_token(int(index)) for index in ids]

    def decode(self, ids: Sequence[int]) -> str:
        """Text of generated ids: stops at the first eos, drops bos and pad, renders added tokens (and -200) by
        name. Each text run is SentencePiece-decoded (its dummy '▁' dropped); parts are joined by one space,
        except before text that starts with punctuation, which gives back ANSWER_LIST's spelling
        ("Sure, it is [SEG].") and grounded captions ("<p> man </p> [SEG]")."""
        parts: list[str] = []
        run: list[int] = []

        def flush():
            if run:
                parts.append(self.sp.decode(run))
                run.clear()

        for raw in ids:
            index = int(raw)
            if index == self.eos_id:
                break
            if index in (self.bos_id, self.pad_id):
                continue
            if index == IMAGE_TOKEN_INDEX or index in self._added_by_id:
                flush()
                parts.append(self.id_to_token(index))
            elif 0 <= index < self.sp_vocab_size:
                run.append(index)
            else:
                raise LiteLVLMError(f"token id {index} is outside the vocabulary of {self.vocab_size}.")
        flush()
        text = ""
        for part in parts:
            if not part:
                continue
            if text and part[0] not in ".,;:!?)" and not text.endswith("\n"):
                text += " "
            text += part
        return text


def _load_modern(directory: Path):
    """transformers' LlamaTokenizer (legacy=False) from the same files, offline."""
    try:
        from transformers import LlamaTokenizer

        return LlamaTokenizer.from_pretrained(str(directory), legacy=False, local_files_only=True)
    except Exception as error:  # any loader failure (no protobuf, a newer file layout) means no modern mode
        raise LiteLVLMError(
            f"mode 'modern' could not load transformers' LlamaTokenizer from {directory} ({error}); "
            "use mode 'reference'."
        ) from None
