"""Question/answer pairs about a target, written by an LLM passage by passage, for the knowledge
memorisation part (MUSE's KnowMem, Shi et al. 2024, "MUSE: Machine Unlearning Six-Way Evaluation for
Language Models", criterion C2) of a target that has no hand-written questions.

The endpoint reads one passage of the target (or of its held-out part) at a time and answers with JSON
objects `{"question": ..., "answer": ...}`. A pair is kept only when it can test knowledge of the text:

- the question is a question (ends with `?`, 4 to 60 words) and does not contain its answer;
- the answer is short (1 to 8 words) and every one of its words occurs in the passage, so it is a fact
  the text states, not one the writer brought from elsewhere;
- no kept question says the same words (case and punctuation aside).

Pairs go to the dev or the test half by their passage, as the cloze probes go by their paragraph
(`anchors.probes.dev_or_test`), so no dev question shares a passage with a test one.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from dataclasses import dataclass

__all__ = ["QAPair", "half_of", "parse_pairs", "passage_order", "usable", "words"]

_OBJECT = re.compile(r"\{[^{}]*\}")
_WORDS = re.compile(r"\w+", re.UNICODE)
MAX_ANSWER_WORDS = 8
QUESTION_WORDS = (4, 60)


@dataclass(frozen=True)
class QAPair:
    """One kept pair, with the passage it was written from (`source`: target or heldout; `passage`: its
    index in the order asked)."""

    question: str
    answer: str
    source: str
    passage: int

    def record(self) -> dict[str, str | int]:
        """As a line of a question file (`question`, `answer`; `source` and `passage` for the reader)."""
        return {"question": self.question, "answer": self.answer, "source": self.source, "passage": self.passage}


def parse_pairs(reply: str) -> list[dict[str, str]]:
    """The `{"question": ..., "answer": ...}` objects of a reply, in order: one a line, in a JSON array or in
    a fenced block; an object that is not valid JSON or lacks either string is skipped."""
    pairs = []
    for match in _OBJECT.finditer(reply):
        try:
            item = json.loads(match.group(0))
        except ValueError:
            continue
        if isinstance(item, dict) and isinstance(item.get("question"), str) and isinstance(item.get("answer"), str):
            pairs.append({"question": " ".join(item["question"].split()), "answer": " ".join(item["answer"].split())})
    return pairs


def words(text: str) -> list[str]:
    """The lower-cased words of `text`."""
    return [word.lower() for word in _WORDS.findall(text)]


def usable(pair: dict[str, str], passage: str) -> str | None:
    """None when `pair` can be kept for `passage`, else why not (a short phrase)."""
    question, answer = words(pair["question"]), words(pair["answer"])
    if not pair["question"].rstrip().endswith("?") or not QUESTION_WORDS[0] <= len(question) <= QUESTION_WORDS[1]:
        return "not a question"
    if not 1 <= len(answer) <= MAX_ANSWER_WORDS:
        return "answer not short"
    if not set(answer) <= set(words(passage)):
        return "answer not in the passage"
    joined, asked = " ".join(answer), f" {' '.join(question)} "
    if f" {joined} " in asked:
        return "answer in the question"
    return None


def passage_order(counts: dict[str, int], seed: int) -> list[tuple[str, int]]:
    """The order the passages are asked in: `(source, index)` for `counts[source]` passages of each source,
    the sources taking turns (held-out first) and each source's passages shuffled by `seed`, so that the
    first pairs already come from all over both texts."""
    rng = random.Random(f"whoharry-qa-{seed}")
    sources = sorted(counts, key=lambda source: source != "heldout")
    queues = {source: rng.sample(range(counts[source]), counts[source]) for source in sources}
    order = []
    while any(queues.values()):
        for source, queue in queues.items():
            if queue:
                order.append((source, queue.pop(0)))
    return order


def half_of(passage: str, seed: int) -> str:
    """`dev` or `test` for the pairs of a passage, half and half by a hash of the passage and the seed."""
    digest = hashlib.sha256(f"{seed}\0qa\0{passage}".encode()).digest()
    return "dev" if digest[0] % 2 == 0 else "test"
