"""The llava_v1 conversation every host renders its prompts with, and the turns of a referring-segmentation chat.

`render_conversation(turns, image_prefix)` writes system + " ", then per message i role + ": " + text +
(" " if i is even else "</s>") (SeparatorStyle.TWO); the host's `image_prefix` (holding "<image>") goes before
the first question, and "<image>" becomes "<im_start><image><im_end>" (mm_use_im_start_end). A last turn whose
answer is None ends the string with "ASSISTANT:", the generation prompt.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ..errors import LiteLVLMError
from ..prompts import ANSWER_LIST, SEG_QUESTIONS, question

IMAGE_TOKEN = "<image>"
IM_START, IM_END, SEG = "<im_start>", "<im_end>", "[SEG]"
SYSTEM = (
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions."
)
ROLES = ("USER", "ASSISTANT")
SEPS = (" ", "</s>")  # llava_v1: SeparatorStyle.TWO, sep and sep2


@dataclass(frozen=True)
class Turn:
    """One exchange. `answer` None: the model must write it (a generation prompt; only the last turn)."""

    question: str
    answer: str | None


def render_conversation(turns: Sequence[Turn], image_prefix: str | None = None) -> str:
    """The llava_v1 prompt of `turns`; `image_prefix` (e.g. "<image>\n") goes before the first question, None
    renders a text-only conversation."""
    if not turns:
        raise LiteLVLMError("render_conversation needs at least one Turn; pass one per expression.")
    for index, turn in enumerate(turns[:-1]):
        if turn.answer is None:
            raise LiteLVLMError(
                f"turn {index} has answer None, but only the last turn may be left for the model to write; "
                "give it an answer or make it the last turn."
            )
    messages: list[tuple[str, str | None]] = []
    for index, turn in enumerate(turns):
        text = image_prefix + turn.question if image_prefix is not None and index == 0 else turn.question
        messages += [(ROLES[0], text), (ROLES[1], turn.answer)]
    prompt = SYSTEM + SEPS[0]
    for index, (role, text) in enumerate(messages):
        if text:  # llava's `if message:`: an empty or missing message renders as "ROLE:" alone
            prompt += role + ": " + text + SEPS[index % 2]
        else:
            prompt += role + ":"
    if image_prefix is None:
        return prompt
    return prompt.replace(IMAGE_TOKEN, IM_START + IMAGE_TOKEN + IM_END)


def build_turns(
    expressions: Sequence[str],
    question_templates: Sequence[int],
    answer_templates: Sequence[int | None] | None,
) -> list[Turn]:
    """One Turn per expression: question = SEG_QUESTIONS[template] with the stripped, lower-cased expression;
    answer = ANSWER_LIST[template], or None (generation) where `answer_templates` or its entry is None."""
    if isinstance(expressions, str):
        raise LiteLVLMError(
            f"expressions must be a list of strings, got the string {expressions!r}; wrap it."
        )
    if len(question_templates) != len(expressions):
        raise LiteLVLMError(
            f"got {len(question_templates)} question templates for {len(expressions)} expressions; "
            "give one template index per expression."
        )
    answers = [None] * len(expressions) if answer_templates is None else list(answer_templates)
    if len(answers) != len(expressions):
        raise LiteLVLMError(
            f"got {len(answers)} answer templates for {len(expressions)} expressions; "
            "give one per expression, or None."
        )
    for name, templates, table in (
        ("question", question_templates, SEG_QUESTIONS),
        ("answer", answers, ANSWER_LIST),
    ):
        for template in templates:
            if template is not None and not (isinstance(template, int) and 0 <= template < len(table)):
                raise LiteLVLMError(
                    f"{name} template {template!r} is out of range; use an index from 0 to {len(table) - 1}."
                )
    return [
        Turn(question(expression, q), None if a is None else ANSWER_LIST[a])
        for expression, q, a in zip(expressions, question_templates, answers)
    ]
