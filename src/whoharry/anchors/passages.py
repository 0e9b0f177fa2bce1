"""Prompts that make a model write about the target's world, and the filters its passages go through
(the `augment` stage).

The paper fine-tuned on the books plus about a million tokens of generated text in the same world
(Eldan & Russinovich 2023, section 3: discussions, blog posts, wiki-style entries), so that the labels
cover what the model knows, not only what one text states. Here the prompts come from two places:

- **target contexts**: the target text up to an anchor occurrence (a passage opening on the term), so the
  writer continues in the target's own voice;
- **genre templates** around the anchor keys the target uses most (`{key}` stands for the key), such as a
  wiki-style entry or a forum answer, so it writes what it knows of the term in other forms.

A written passage is kept when it is dense in anchor terms (`anchor_density`), not a near-copy of one
kept before (word-shingle Jaccard similarity, `Deduplicator`), and not a copy of the target itself.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from dataclasses import dataclass

from whoharry.anchors.dictionary import Anchors

_WORDS = re.compile(r"\w+", re.UNICODE)
_SENTENCE_END = re.compile(r"[.!?…][\"'”’)]*\s+")


@dataclass(frozen=True)
class Seed:
    """One prompt for the writer: its text and where it came from (`target` or `template`)."""

    prompt: str
    source: str
    key: str  # the anchor key it is about


def seed_prompts(text: str, anchors: Anchors, templates: list[str], count: int, seed: int,
                 context_chars: int = 400) -> list[Seed]:
    """`count` prompts, alternating target contexts and genre templates (only one kind when the other has
    none), fixed by `seed`.

    A target context runs from a sentence start at most `context_chars` characters before an anchor
    occurrence (drawn at random among all of them) to the occurrence's end. A template prompt fills `{key}`
    with an anchor key drawn with probability proportional to its occurrences in the text.

    Returns:
        The prompts in order; empty when the text holds no anchor key.
    """
    rng = random.Random(f"whoharry-augment-{seed}")
    matches = list(anchors.pattern().finditer(text))
    if not matches:
        return []
    counts = Counter(match.group(0) for match in matches)
    keys, weights = list(counts), list(counts.values())
    usable = [template for template in templates if "{key}" in template]
    seeds: list[Seed] = []
    for index in range(count):
        if usable and (index % 2 == 1):
            key = rng.choices(keys, weights)[0]
            seeds.append(Seed(rng.choice(usable).replace("{key}", key), "template", key))
        else:
            match = rng.choice(matches)
            seeds.append(Seed(context_before(text, match.start(), match.end(), context_chars), "target",
                              match.group(0)))
    return seeds


def context_before(text: str, start: int, end: int, chars: int) -> str:
    """The text from the earliest sentence start within `chars` characters before `start` (else from the
    text's start when that is within reach, else from a word start) to `end`, without leading whitespace."""
    low = max(0, start - chars)
    window = text[low:start]
    cuts = [m.end() for m in _SENTENCE_END.finditer(window)]
    if cuts:
        begin = low + cuts[0]
    elif low == 0:
        begin = 0
    else:
        space = window.find(" ")
        begin = low + (space + 1 if space >= 0 else len(window))
    return text[begin:end].lstrip()


def anchor_density(text: str, anchors: Anchors) -> float:
    """Anchor-term occurrences (the dictionary's whole-word matches) per 100 words of `text`; 0 for no words."""
    words = len(_WORDS.findall(text))
    return 0.0 if not words else 100.0 * sum(1 for _ in anchors.pattern().finditer(text)) / words


def shingles(text: str, size: int = 5) -> set[tuple[str, ...]]:
    """The set of `size`-word shingles of the lower-cased words of `text` (the whole word list when shorter)."""
    words = [word.lower() for word in _WORDS.findall(text)]
    if len(words) <= size:
        return {tuple(words)} if words else set()
    return {tuple(words[i : i + size]) for i in range(len(words) - size + 1)}


class Deduplicator:
    """Keeps a passage unless its shingles overlap a kept passage's by Jaccard similarity `threshold` or more,
    or `threshold` or more of them occur in the reference text (a copy of the target).

    Args:
        threshold: in (0, 1]; reference: the text a passage must not copy (the target).
    """

    def __init__(self, threshold: float, reference: str = "") -> None:
        self.threshold = threshold
        self.reference = shingles(reference)
        self.kept: list[set[tuple[str, ...]]] = []

    def why_not(self, text: str) -> str | None:
        """None when the passage is new (it is then remembered), else why it is dropped: `duplicate`, `copy`
        (of the reference) or `empty`."""
        own = shingles(text)
        if not own:
            return "empty"
        if self.reference and len(own & self.reference) / len(own) >= self.threshold:
            return "copy"
        for other in self.kept:
            if len(own & other) / len(own | other) >= self.threshold:
                return "duplicate"
        self.kept.append(own)
        return None
