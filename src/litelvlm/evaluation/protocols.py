"""Evaluation protocols: which expressions of an image are asked, in which conversations, with which templates.

glamm: GLaMM's RefCOCO evaluation (docs/evaluation.md), but seeded. Per image, every sentence of every referent
    (in file order); if there are 3 or more, 3 are sampled without replacement (random order), else all are used;
    they form ONE multi-turn conversation, each turn with a random question (of 16) and answer (of 5) template.
lisa: every sentence of every referent, each in its own single-turn conversation, with LISA's fixed question
    "What is {expression} in this image? Please output segmentation mask." and answer "[SEG].".

Randomness is drawn from a generator seeded by (seed, image id), so an image's sample does not depend on which
images came before it, on the number of processes, or on resuming.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np

from ..errors import LiteLVLMError
from ..hosts.glamm import GlammHost
from ..hosts.lisa import LisaHost
from ..prompts import ANSWER_LIST, SEG_QUESTIONS

PROTOCOLS = ("glamm", "lisa")
# Each protocol is its host's own evaluation: GLaMM's conversations of up to 3 turns, LISA's fixed templates.
GLAMM_TURNS = GlammHost.max_turns
TURNS = {"glamm": GLAMM_TURNS, "lisa": LisaHost.max_turns}  # expressions per conversation
LISA_QUESTION = LisaHost.default_question
LISA_ANSWER = LisaHost.default_answer


def check_protocol(protocol: str, host) -> str:
    """The protocol, if the host's conversations can hold its turns (a litelvlm.hosts.Host); else one sentence."""
    if protocol not in PROTOCOLS:
        raise LiteLVLMError(f"unknown protocol {protocol!r}; choose one of: {', '.join(PROTOCOLS)}.")
    if TURNS[protocol] > host.max_turns:
        problem = (
            f"protocol {protocol!r} puts {TURNS[protocol]} expressions in one conversation, but "
            f"{host.display_name} holds {host.max_turns} per conversation (its training and evaluation format); "
            "use"
        )
        fix = f"{host.protocol}, {host.display_name}'s own."
        raise LiteLVLMError(f"{problem} protocol {fix}", cli_message=f"{problem} --protocol {fix}")
    return protocol


@dataclass(frozen=True)
class Query:
    """One expression to segment: the referent it names and which of its sentences."""

    referent: object  # litelvlm.data.Referent
    sentence_index: int
    question_template: int
    answer_template: int

    @property
    def sentence(self) -> str:
        return self.referent.sentences[self.sentence_index]


@dataclass(frozen=True)
class Plan:
    """The queries of one image and how they are grouped into conversations (`turns_per_conversation`)."""

    queries: tuple[Query, ...]
    turns_per_conversation: int


def image_generator(seed: int, image_id: int | str) -> np.random.Generator:
    """A generator for one image, independent of every other image's."""
    key = image_id if isinstance(image_id, int) and image_id >= 0 else zlib.crc32(str(image_id).encode())
    return np.random.default_rng([seed, key])


def plan_image(image, protocol: str, seed: int) -> Plan:
    """The queries an image gets under `protocol` (`image` is a litelvlm.data.ImageEntry)."""
    items = [(referent, index) for referent in image.referents for index in range(len(referent.sentences))]
    if protocol == "lisa":
        return Plan(tuple(Query(r, i, LISA_QUESTION, LISA_ANSWER) for r, i in items), TURNS["lisa"])
    if protocol != "glamm":
        raise LiteLVLMError(f"unknown protocol {protocol!r}; choose one of: {', '.join(PROTOCOLS)}.")
    rng = image_generator(seed, image.image_id)
    if len(items) >= GLAMM_TURNS:
        items = [items[k] for k in rng.choice(len(items), GLAMM_TURNS, replace=False)]
    queries = tuple(
        Query(referent, index, int(rng.integers(len(SEG_QUESTIONS))), int(rng.integers(len(ANSWER_LIST))))
        for referent, index in items
    )
    return Plan(queries, GLAMM_TURNS)
