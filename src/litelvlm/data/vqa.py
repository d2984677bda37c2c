"""A plain JSONL format for visual question answering: one question per line.

    {"image": "imgs/a.jpg", "question": "What colour is the bus?", "answers": ["red", "red", "dark red"]}
    {"image": "imgs/b.jpg", "question": "How many dogs?", "answer": "2", "id": "q17"}

"answers" is a non-empty list of the human answers (ten in VQAv2; `litelvlm.evaluation.vqa.vqa_accuracy` scores
against them), or "answer" a single one. Optional "id" (an integer or a string; default: the 1-based line number),
unique in the file. Image paths follow `load_jsonl`'s rule: relative to the `images` folder when one is given
(then to the JSONL file's folder), else to the JSONL file's folder. Every image is checked to exist up front, so a
wrong path fails before any model runs; its pixels are read only when the sample is evaluated. Other keys are
ignored; blank lines are skipped; a UTF-8 byte-order mark on the first line is accepted.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import LiteLVLMError, shown
from .jsonl import _identifier, _image_path, _image_root, _lines, parse_object


@dataclass(frozen=True)
class VqaSample:
    """One question about one image, with the human answers it is scored against (file order)."""

    id: int | str
    image_path: Path
    question: str
    answers: tuple[str, ...]


def load_vqa_jsonl(path: str | os.PathLike, images: str | os.PathLike | None = None) -> list[VqaSample]:
    """Read a VQA JSONL file (module docstring) into samples in file order; every line is checked up front.

    `images`: the folder relative image paths are relative to (default: the JSONL file's folder, which is also
    tried when an image is not under `images`).
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise LiteLVLMError(
            f"VQA JSONL file {str(path)!r} does not exist; pass a file with one question per line."
        )
    image_root = _image_root(images)
    image_paths: dict[str, Path] = {}  # "image" as written -> its file, each looked up once
    samples: list[VqaSample] = []
    seen: set[int | str] = set()
    for number, line in _lines(path):
        where = f"line {number} of {str(path)!r}"
        record = _parse(line, where)
        if record["image"] not in image_paths:
            image_paths[record["image"]] = _image_path(path.parent, image_root, record["image"], where)
        sample_id = _identifier(record, "id", number, where)
        if sample_id in seen:
            raise LiteLVLMError(f"{where} repeats id {sample_id!r}; give every line a unique id.")
        seen.add(sample_id)
        samples.append(
            VqaSample(
                id=sample_id,
                image_path=image_paths[record["image"]],
                question=record["question"],
                answers=_answers(record, where),
            )
        )
    if not samples:
        raise LiteLVLMError(f"VQA JSONL file {str(path)!r} has no records; write one JSON object per line.")
    return samples


def _parse(line: str, where: str) -> dict:
    record = parse_object(
        line, where, ("image", "question"), "'image', 'question' and 'answers' (or 'answer')"
    )
    for key, what in (("image", "the image's path"), ("question", "the question")):
        if not isinstance(record[key], str) or not record[key].strip():
            raise LiteLVLMError(
                f"{where} has {key!r} {shown(record[key])}; give {what} as a non-empty string."
            )
    return record


def _answers(record: dict, where: str) -> tuple[str, ...]:
    if ("answers" in record) == ("answer" in record):
        raise LiteLVLMError(
            f"{where} needs exactly one of 'answers' (a list of strings) or 'answer' (a string)."
        )
    value = record["answers"] if "answers" in record else record["answer"]
    if "answer" in record:
        if not isinstance(value, str) or not value.strip():
            raise LiteLVLMError(f"{where} has answer {shown(value)}; give the answer as a non-empty string.")
        return (value,)
    if (
        not isinstance(value, list)
        or not value
        or not all(isinstance(answer, str) and answer.strip() for answer in value)
    ):
        raise LiteLVLMError(
            f"{where} has answers {shown(value)}; give a non-empty list of non-empty strings."
        )
    return tuple(value)
