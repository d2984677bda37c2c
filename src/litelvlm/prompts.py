"""The GLaMM/LISA referring-segmentation question and answer templates, and the texts CLIP scores."""

from __future__ import annotations

from collections.abc import Sequence

from .errors import LiteLVLMError

_BASE_QUESTIONS = (
    "Can you segment the {class_name} in this image?",
    "Please segment {class_name} in this image.",
    "What is {class_name} in this image? Please respond with segmentation mask.",
    "What is {class_name} in this image? Please output segmentation mask.",
)
_LONG_QUESTIONS = (
    "Could you provide a segmentation mask for the {class_name} in this image?",
    "Please identify and segment the {class_name} in this image.",
    "Where is the {class_name} in this picture? Please respond with a segmentation mask.",
    "Can you highlight the {class_name} in this image with a segmentation mask?",
)
# Spec section 5: each group of four, then the same four without their final "?" or ".".
SEG_QUESTIONS: tuple[str, ...] = (
    *_BASE_QUESTIONS,
    *(question[:-1] for question in _BASE_QUESTIONS),
    *_LONG_QUESTIONS,
    *(question[:-1] for question in _LONG_QUESTIONS),
)
ANSWER_LIST: tuple[str, ...] = (
    "It is [SEG].",
    "Sure, [SEG].",
    "Sure, it is [SEG].",
    "Sure, the segmentation result is [SEG].",
    "[SEG].",
)
# "Please segment {class_name} in this image.": the question CLIP scores by default (the authors' code).
DEFAULT_QUESTION = 1
# LISA's evaluation question and answer ("What is {class_name} in this image? Please output segmentation mask.",
# "[SEG].").
OUTPUT_MASK_QUESTION = 3
BARE_ANSWER = 4
TEXT_SOURCES = ("questions", "expressions")


def question(expression: str, template: int = DEFAULT_QUESTION) -> str:
    """The question asking to segment `expression` (stripped and lower-cased, as GLaMM does)."""
    return SEG_QUESTIONS[template].format(class_name=expression.strip().lower())


def clip_texts(
    expressions: Sequence[str], text_source: str = "questions", templates: Sequence[int] | None = None
) -> list[str]:
    """The strings CLIP scores: the full questions (the authors' current code) or the raw expressions
    (their first release). `templates` gives each expression's question template (default: fixed)."""
    if text_source not in TEXT_SOURCES:
        raise LiteLVLMError(f"text_source must be one of {', '.join(TEXT_SOURCES)}, got {text_source!r}.")
    if text_source == "expressions":
        return list(expressions)
    templates = templates or [DEFAULT_QUESTION] * len(expressions)
    return [question(expression, template) for expression, template in zip(expressions, templates)]
