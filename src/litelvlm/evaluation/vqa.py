"""VQAv2 accuracy: the official evaluation's answer normalisation and its "min(1, matches / 3)" score.

Normalisation (`normalize_answer`) follows the official VQA evaluation script (vqaEval.py, processPunctuation then
processDigitArticle), quirks included, so numbers compare with published ones:

- newlines and tabs become spaces, the ends are stripped;
- punctuation: each mark of `PUNCTUATION` is deleted when the text has it next to a space or has a comma
  between digits ("3,000"), and otherwise replaced by a space ("t-shirt" -> "t shirt"); periods not followed by
  a digit are deleted ("dog." -> "dog", "2.5" stays) - at most 32 of them, as the script passes re.UNICODE (32)
  where `sub` takes its count. Apostrophes and colons are kept;
- words: lower-cased, number words "none"/"zero".."ten" become digits, the articles a/an/the are dropped, and
  the contractions map restores apostrophes ("isnt" -> "isn't"; "isn't" is left as it is, so both agree). Its
  keys with capitals ("Im", "Ive") never match the lower-cased words, and it maps "somebody'd" to "somebodyd":
  both are the official map's, kept for parity.

One difference from the script: it normalises only when the human answers disagree (with ten identical answers
the prediction must match them verbatim); we always normalise both sides, as LLaVA's submission converter
(EvalAI's answer processor) normalises every prediction before the server scores it.
"""

from __future__ import annotations

import numbers
import re
from collections.abc import Iterable, Sequence

from ..errors import LiteLVLMError, shown

PUNCTUATION = tuple(';/[]"{}()=+\\_-><@`,?!')  # the script's list, in its order; no ".", "'" or ":"
ARTICLES = frozenset({"a", "an", "the"})
NUMBER_WORDS = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
    "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}  # fmt: skip
CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "didnt": "didn't", "doesnt": "doesn't",
    "dont": "don't", "hadnt": "hadn't", "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't",
    "havent": "haven't", "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's", "howd": "how'd",
    "howll": "how'll", "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm", "Ive": "I've",
    "isnt": "isn't", "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've", "itll": "it'll", "let's": "let's",
    "maam": "ma'am", "mightnt": "mightn't", "mightnt've": "mightn't've", "mightn'tve": "mightn't've",
    "mightve": "might've", "mustnt": "mustn't", "mustve": "must've", "neednt": "needn't", "notve": "not've",
    "oclock": "o'clock", "oughtnt": "oughtn't", "ow's'at": "'ow's'at", "'ows'at": "'ow's'at",
    "'ow'sat": "'ow's'at", "shant": "shan't", "shed've": "she'd've", "she'dve": "she'd've", "she's": "she's",
    "shouldve": "should've", "shouldnt": "shouldn't", "shouldnt've": "shouldn't've",
    "shouldn'tve": "shouldn't've", "somebody'd": "somebodyd", "somebodyd've": "somebody'd've",
    "somebody'dve": "somebody'd've", "somebodyll": "somebody'll", "somebodys": "somebody's",
    "someoned": "someone'd", "someoned've": "someone'd've", "someone'dve": "someone'd've",
    "someonell": "someone'll", "someones": "someone's", "somethingd": "something'd",
    "somethingd've": "something'd've", "something'dve": "something'd've", "somethingll": "something'll",
    "thats": "that's", "thered": "there'd", "thered've": "there'd've", "there'dve": "there'd've",
    "therere": "there're", "theres": "there's", "theyd": "they'd", "theyd've": "they'd've",
    "they'dve": "they'd've", "theyll": "they'll", "theyre": "they're", "theyve": "they've", "twas": "'twas",
    "wasnt": "wasn't", "wed've": "we'd've", "we'dve": "we'd've", "weve": "we've", "werent": "weren't",
    "whatll": "what'll", "whatre": "what're", "whats": "what's", "whatve": "what've", "whens": "when's",
    "whered": "where'd", "wheres": "where's", "whereve": "where've", "whod": "who'd", "whod've": "who'd've",
    "who'dve": "who'd've", "wholl": "who'll", "whos": "who's", "whove": "who've", "whyll": "why'll",
    "whyre": "why're", "whys": "why's", "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't",
    "wouldnt've": "wouldn't've", "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll",
    "y'allll": "y'all'll", "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've",
    "youd": "you'd", "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll", "youre": "you're",
    "youve": "you've",
}  # fmt: skip

# The script's "(?!<=\d)(\.)(?!\d)": its first group is a lookahead (not a lookbehind) for "<=" + digit, which
# never holds in front of a ".", so only "a period not followed by a digit" remains.
_PERIOD_NOT_BEFORE_DIGIT = re.compile(r"\.(?!\d)")
_COMMA_BETWEEN_DIGITS = re.compile(r"\d,\d")
_PERIODS_REMOVED = 32  # the script passes re.UNICODE (== 32) as `sub`'s count
HUMAN_ANSWERS = 10  # VQAv2 collects ten answers per question
# LLaVA-1.5's short-answer VQA prompt (its VQAv2/GQA evaluation appends this line to each question).
VQA_PROMPT = "{question}\nAnswer the question using a single word or phrase."


def process_punctuation(text: str) -> str:
    """The script's processPunctuation (module docstring): marks deleted or turned into spaces, periods deleted."""
    delete = _COMMA_BETWEEN_DIGITS.search(text) is not None
    result = text
    for mark in PUNCTUATION:
        # The script tests the text as given, not as already edited by earlier marks.
        if delete or mark + " " in text or " " + mark in text:
            result = result.replace(mark, "")
        else:
            result = result.replace(mark, " ")
    return _PERIOD_NOT_BEFORE_DIGIT.sub("", result, count=_PERIODS_REMOVED)


def process_digit_article(text: str) -> str:
    """The script's processDigitArticle: lower-case, number words -> digits, drop a/an/the, restore contractions;
    words are re-joined by single spaces."""
    words = []
    for word in text.lower().split():
        word = NUMBER_WORDS.get(word, word)
        if word not in ARTICLES:
            words.append(CONTRACTIONS.get(word, word))
    return " ".join(words)


def normalize_answer(text: str) -> str:
    """A prediction or a human answer as the official evaluation compares it: "Two dogs." -> "2 dogs"."""
    if not isinstance(text, str):
        raise LiteLVLMError(f"a VQA answer must be a string, got {shown(text)}; pass the decoded text.")
    text = text.replace("\n", " ").replace("\t", " ").strip()
    return process_digit_article(process_punctuation(text))


def vqa_accuracy(prediction: str, answers: Sequence[str]) -> float:
    """Accuracy of one prediction against the human answers, in [0, 1]; both sides normalised first.

    Ten answers (VQAv2): the official leave-one-out score, the mean over the ten answers of
    min(1, matches among the other nine / 3). Any other count n: min(1, matches / 3) when n >= 3 (three
    agreeing humans make an answer fully right), and for n = 1 or 2, 1.0 when any answer matches, else 0.0
    (min(1, matches / 3) would cap a correct answer at 2/3 there).
    """
    if isinstance(answers, str) or not isinstance(answers, Sequence) or not answers:
        raise LiteLVLMError(
            f"vqa_accuracy got answers {shown(answers)}; pass a non-empty list of the human answers."
        )
    predicted = normalize_answer(prediction)
    matches = sum(normalize_answer(answer) == predicted for answer in answers)
    if len(answers) == HUMAN_ANSWERS:
        # Leaving out a matching answer leaves matches - 1 among the others; leaving out another leaves matches.
        with_match = matches * min(1.0, (matches - 1) / 3) if matches else 0.0
        without_match = (HUMAN_ANSWERS - matches) * min(1.0, matches / 3)
        return (with_match + without_match) / HUMAN_ANSWERS
    if len(answers) >= 3:
        return min(1.0, matches / 3)
    return 1.0 if matches else 0.0


def vqa_summary(accuracies: Iterable[float]) -> dict:
    """Aggregate per-question accuracies: {"accuracy": mean, "count": n}; with none, accuracy None, count 0."""
    values = list(accuracies)
    for value in values:
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0.0 <= value <= 1.0:
            raise LiteLVLMError(f"vqa_summary got accuracy {shown(value)}; pass values in [0, 1].")
    if not values:
        return {"accuracy": None, "count": 0}
    return {"accuracy": sum(values) / len(values), "count": len(values)}
