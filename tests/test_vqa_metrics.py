"""VQAv2 answer normalisation (the official script's cases) and accuracy against a brute-force leave-one-out."""

import random

import pytest

from litelvlm.errors import LiteLVLMError
from litelvlm.evaluation.vqa import (
    normalize_answer,
    process_digit_article,
    process_punctuation,
    vqa_accuracy,
    vqa_summary,
)


@pytest.mark.parametrize(
    "text, normalised",
    [
        ("Two", "2"),
        ("the dog.", "dog"),
        ("A red bus", "red bus"),
        ("an apple", "apple"),
        ("none", "0"),
        ("Zero", "0"),
        ("ten", "10"),
        ("eleven", "eleven"),  # the map stops at ten
        ("isnt", "isn't"),  # the contractions map restores the apostrophe ...
        ("isn't", "isn't"),  # ... and leaves a written one alone: both agree
        ("Dont", "don't"),
        ("Im", "im"),  # the map's capitalised keys never match lower-cased words
        ("somebody'd", "somebodyd"),  # the official map's typo, kept
        ("yes!", "yes"),
        ("Yes", "yes"),
        ("t-shirt", "t shirt"),  # a mark without a space beside it becomes a space
        ("red, white", "red white"),  # ... and is deleted when a space is next to it
        ("red,white", "red white"),
        ("3,000", "3000"),  # a comma between digits: every mark is deleted
        ("2.5", "2.5"),  # a period before a digit stays
        ("3.", "3"),
        ("mr. smith", "mr smith"),
        ("12:30", "12:30"),  # colons are not in the list
        ("  the\tcat \n", "cat"),
        ("(left)", "left"),
        ("red/white", "red white"),
        ("a/b", "b"),  # "/" becomes a space, then "a" is an article
        ("", ""),
        ("THE ONE", "1"),
    ],
)
def test_normalize_answer(text, normalised):
    assert normalize_answer(text) == normalised


def test_hyphen_between_numbers_with_comma_is_deleted():
    # With "d,d" anywhere, every mark is deleted; here that glues the range together.
    assert process_punctuation("1,000-2,000") == "10002000"
    assert normalize_answer("1,000-2,000") == "10002000"


def test_periods_removed_at_most_32_times():
    assert process_punctuation("." * 40) == "." * 8


def test_steps_separately():
    # ", " is deleted (a space beside it); "!" at the end has none beside it, so it becomes a space.
    assert process_punctuation("Hello, World!") == "Hello World "
    assert process_digit_article("The  Two   Cats") == "2 cats"


def official_accuracy(prediction, answers):
    """The official loop: each human answer left out in turn, min(1, matches among the others / 3), averaged."""
    predicted = normalize_answer(prediction)
    records = [{"answer": normalize_answer(a), "answer_id": i + 1} for i, a in enumerate(answers)]
    scores = []
    for left_out in records:
        others = [record for record in records if record != left_out]
        matching = [record for record in others if record["answer"] == predicted]
        scores.append(min(1, len(matching) / 3))
    return sum(scores) / len(scores)


def test_ten_answers_match_brute_force():
    rng = random.Random(0)
    vocabulary = ["yes", "no", "2", "red", "dog"]
    for _ in range(500):
        answers = [rng.choice(vocabulary) for _ in range(10)]
        prediction = rng.choice(vocabulary + ["cat"])
        assert vqa_accuracy(prediction, answers) == pytest.approx(official_accuracy(prediction, answers))


@pytest.mark.parametrize("matches, accuracy", [(0, 0.0), (1, 0.3), (2, 0.6), (3, 0.9), (4, 1.0), (10, 1.0)])
def test_ten_answers_known_values(matches, accuracy):
    answers = ["red"] * matches + ["blue"] * (10 - matches)
    assert vqa_accuracy("red", answers) == pytest.approx(accuracy)


def test_normalisation_applies_to_both_sides():
    assert vqa_accuracy("Two.", ["2"] * 10) == 1.0
    assert vqa_accuracy("2", ["two"] * 3 + ["3"] * 7) == pytest.approx(0.9)


def test_other_answer_counts():
    assert vqa_accuracy("red", ["red"]) == 1.0
    assert vqa_accuracy("red", ["blue"]) == 0.0
    assert vqa_accuracy("red", ["blue", "Red"]) == 1.0
    assert vqa_accuracy("red", ["red", "blue", "green"]) == pytest.approx(1 / 3)
    assert vqa_accuracy("red", ["red", "red", "blue", "green", "red"]) == 1.0
    assert vqa_accuracy("red", ["red"] * 2 + ["blue"] * 9) == pytest.approx(
        2 / 3
    )  # 11 answers: no leave-one-out


@pytest.mark.parametrize("answers", [[], "red", None])
def test_answers_must_be_a_non_empty_list(answers):
    with pytest.raises(LiteLVLMError, match="non-empty list"):
        vqa_accuracy("red", answers)


def test_prediction_must_be_a_string():
    with pytest.raises(LiteLVLMError, match="string"):
        vqa_accuracy(None, ["red"])


def test_summary():
    assert vqa_summary([1.0, 0.3, 0.0, 0.9]) == {"accuracy": pytest.approx(0.55), "count": 4}
    assert vqa_summary([]) == {"accuracy": None, "count": 0}
    with pytest.raises(LiteLVLMError, match="accuracy"):
        vqa_summary([1.2])
