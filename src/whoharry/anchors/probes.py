"""Familiarity probes and completion prompts made from a target text and its anchor dictionary, for a
target that has no hand-written ones.

A cloze probe is the text just before an occurrence of a dictionary key, from a sentence start, and its
answer is that key: the next words that a model that knows the text would write there. The key is a term
specific to the target (that is what the dictionary holds), so the probe asks for knowledge of the target,
as the paper's familiarity prompts do (Eldan & Russinovich 2023, section 3.1). A prompt that already
contains its answer is left out: the model could copy it. Probes are drawn from the target and from
passages held out of training (`core.text.heldout_split`), so that they test what the model knows of the
book, not only one sentence's wording, and are spread over the keys (a few per key) so that no single
name dominates the figure.

The same contexts serve as completion prompts, with the most frequent keys as the reference terms that
a completion naming the target would use (`evaluation.completions`).
"""

from __future__ import annotations

import hashlib
import random
import re
from collections import Counter
from dataclasses import dataclass

from whoharry.anchors.dictionary import Anchors

__all__ = ["Cloze", "cloze_candidates", "completion_prompts", "dev_or_test", "select_probes"]

_WORDS = re.compile(r"\w+", re.UNICODE)
# where a sentence starts: after its end mark (and closing quotes) and spaces, or after a blank line
_SENTENCE_START = re.compile(r"[.!?…][\"'”’)]*\s+")
_PARAGRAPH_BREAK = re.compile(r"\n[ \t\r]*\n\s*")
_SPACES = re.compile(r"\s+")


@dataclass(frozen=True)
class Cloze:
    """One cloze probe: `prompt` ends where the key began, `answer` is the key with its leading space."""

    prompt: str
    answer: str
    key: str
    source: str  # "target" or "heldout": the text it was cut from
    offset: int  # the key's character offset in that text
    paragraph: str  # the paragraph it was cut from: probes of one paragraph share a half (`dev_or_test`)

    def record(self) -> dict[str, str]:
        """As a line of a probe file (`prompt`, `answer`, with `key` and `source` for the reader)."""
        return {"prompt": self.prompt, "answer": self.answer, "key": self.key, "source": self.source}


def cloze_candidates(text: str, anchors: Anchors, source: str, *, min_words: int = 6,
                     context_chars: int = 300) -> list[Cloze]:
    """Every usable cloze probe of `text`: one per key occurrence, its prompt the text before it from the
    latest sentence start that leaves at least `min_words` words (its own sentence, else from an earlier
    one, within `context_chars` characters), whitespace runs made single spaces.

    Left out: an occurrence whose context already names the key, and one not preceded by a space (a key
    glued to punctuation, whose answer would not start a word).
    """
    out = []
    for match in anchors.pattern().finditer(text):
        start, key = match.start(), match.group(0)
        if start == 0 or not text[start - 1].isspace():
            continue
        prompt = _prompt_before(text, start, min_words, context_chars)
        if prompt is None or re.search(rf"(?<!\w){re.escape(key)}(?!\w)", prompt):
            continue
        begin = max((m.end() for m in _PARAGRAPH_BREAK.finditer(text, 0, start)), default=0)
        end = _PARAGRAPH_BREAK.search(text, start)
        out.append(Cloze(prompt, " " + key, key, source, start, text[begin:end.start() if end else len(text)].strip()))
    return out


def _prompt_before(text: str, start: int, min_words: int, chars: int) -> str | None:
    """The text before `start` from the latest sentence start (or paragraph start) that leaves at least
    `min_words` words, within `chars` characters; whitespace runs as single spaces. None when no sentence
    start within reach leaves that many words."""
    low = max(0, start - chars)
    window = text[low:start]
    breaks = [m.end() for m in _PARAGRAPH_BREAK.finditer(window)]
    if breaks:  # never back across a paragraph break
        low, window = low + breaks[-1], window[breaks[-1]:]
    starts = sorted({0 if low == 0 or breaks else None, *(m.end() for m in _SENTENCE_START.finditer(window))}
                    - {None}, reverse=True)
    for begin in starts:
        prompt = _SPACES.sub(" ", window[begin:]).strip()
        if len(_WORDS.findall(prompt)) >= min_words:
            return prompt
    return None


def select_probes(candidates: list[Cloze], count: int, per_key: int, seed: int,
                  taken: Counter[str] | None = None) -> list[Cloze]:
    """At most `count` probes, at most `per_key` for any key (counting those already `taken`, which it
    updates), taken in turns over the keys (most frequent key first) so that they spread over the
    dictionary; the occurrences of a key are drawn in an order fixed by `seed`. Identical prompts are kept
    once."""
    taken = Counter() if taken is None else taken
    rng = random.Random(f"whoharry-probes-{seed}")
    by_key: dict[str, list[Cloze]] = {}
    for cloze in candidates:
        by_key.setdefault(cloze.key, []).append(cloze)
    for items in by_key.values():
        rng.shuffle(items)
    order = [key for key, _ in Counter(c.key for c in candidates).most_common()]
    chosen: list[Cloze] = []
    seen: set[str] = set()
    for _ in range(per_key):
        for key in order:
            pool = by_key[key]
            while pool and len(chosen) < count and taken[key] < per_key:
                cloze = pool.pop()
                if cloze.prompt not in seen:
                    seen.add(cloze.prompt)
                    chosen.append(cloze)
                    taken[key] += 1
                    break
        if len(chosen) >= count:
            break
    return chosen


def dev_or_test(cloze: Cloze, seed: int) -> str:
    """`dev` or `test` for a probe, half and half by a hash of its paragraph and the seed: the probes of one
    paragraph share a half, so no dev prompt holds a test prompt and its answer, and a probe stays on its
    side however many others are drawn."""
    digest = hashlib.sha256(f"{seed}\0{cloze.paragraph}".encode()).digest()
    return "dev" if digest[0] % 2 == 0 else "test"


def completion_prompts(probes: list[Cloze], anchors: Anchors, text: str, references: int = 30) -> list[dict]:
    """Completion prompts from cloze probes: each prompt with its own key first among its reference terms,
    then the `references` keys most frequent in `text` (the terms a completion that knows the target would
    name)."""
    counts = Counter(match.group(0) for match in anchors.pattern().finditer(text))
    common = [key for key, _ in counts.most_common(references)]
    return [{"prompt": p.prompt, "references": [p.key, *(k for k in common if k != p.key)]} for p in probes]
