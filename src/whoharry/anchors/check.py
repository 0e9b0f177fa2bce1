"""`whoharry anchors check`: how a dictionary meets a text, before any model runs.

Occurrences per key as the labels stage will match them (whole words as `anchors.dictionary.term_pattern`
decides for every script; where keys overlap, the longest, or with `labels.match_order: dictionary` the first
in file order), keys that never match, keys that overlap (one inside another, so one of them loses those
occurrences: the shorter one, or in dictionary order the one listed later), the composite keys the labels
stage leaves to their parts, the translations that open with a function word
(`anchors.dictionary.opens_with_function_word`), and the share of the text's tokens covered. All of them are
warnings: the command succeeds whatever it finds.
"""

from __future__ import annotations

import bisect
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from whoharry.anchors.dictionary import Anchors, function_word_values, load_anchors
from whoharry.config import DataConfig, MatchOrder, ModelConfig
from whoharry.core.text import read_target, read_text
from whoharry.errors import WhoharryError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

log = logging.getLogger(__name__)


@dataclass
class CheckReport:
    """How a dictionary meets a text: counts of keys and occurrences, and, with a tokenizer, the text's
    tokens and how many of them lie inside an anchor match (0 and 0 without one)."""

    keys: int
    occurrences: dict[str, int]  # per key, as matched (in `match_order`)
    never_found: list[str]
    # key -> its whole-word occurrences that a key containing it, or contained in it, takes
    shadowed: dict[str, int]
    contained: dict[str, list[str]] = field(default_factory=dict)  # key -> longer keys that contain it
    composite: list[str] = field(default_factory=list)
    # key -> its translations that open with a function word (that word is then suppressed in the block)
    function_word_values: dict[str, list[str]] = field(default_factory=dict)
    tokens: int = 0
    tokens_covered: int = 0
    match_order: MatchOrder = "longest"

    @property
    def coverage(self) -> float:
        """The share of the text's tokens inside anchor matches, 0 to 1 (0 without a token count)."""
        return self.tokens_covered / self.tokens if self.tokens else 0.0

    def as_dict(self) -> dict[str, Any]:
        """The report as JSON-ready data, with `keys_found` and `coverage` (4 decimals) added."""
        return {
            "keys": self.keys,
            "match_order": self.match_order,
            "keys_found": self.keys - len(self.never_found),
            "never_found": self.never_found,
            "occurrences": self.occurrences,
            "shadowed": self.shadowed,
            "contained": self.contained,
            "composite": self.composite,
            "function_word_values": self.function_word_values,
            "tokens": self.tokens,
            "tokens_covered": self.tokens_covered,
            "coverage": round(self.coverage, 4),
        }


def check(anchors: Anchors, text: str, tokenizer: PreTrainedTokenizerBase | None = None,
          order: MatchOrder = "longest") -> CheckReport:
    """Match the dictionary against the text the way translation does (`Anchors.pattern(order)`); with a
    `tokenizer`, count the text's tokens (no special tokens) and those inside a match (a token's leading
    whitespace may lie outside it). Keys in `occurrences` are ordered most frequent first."""
    matches = list(anchors.pattern(order).finditer(text))
    occurrences = Counter(match.group(0) for match in matches)
    covered_chars = [(match.start(), match.end()) for match in matches]
    shadowed: dict[str, int] = {}
    contained: dict[str, list[str]] = {}
    for key in anchors.entries:
        longer = [other for other in anchors.entries if other != key and key in other]
        if longer:
            contained[key] = sorted(longer, key=lambda other: (len(other), other))
        # in dictionary order a key may also lose its places to a shorter key inside it, listed before it
        inside = order == "dictionary" and any(other != key and other in key for other in anchors.entries)
        if not longer and not inside:
            continue
        alone = Anchors({key: anchors.entries[key]}).pattern()
        hidden = sum(1 for _ in alone.finditer(text)) - occurrences[key]
        if hidden:
            shadowed[key] = hidden
    tokens = covered = 0
    if tokenizer is not None:
        encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
        spans = encoded["offset_mapping"]
        tokens = len(spans)
        covered = sum(1 for start, end in spans if end > start and _inside((start, end), covered_chars, text))
    return CheckReport(
        keys=len(anchors),
        occurrences={key: occurrences[key] for key in sorted(anchors.entries, key=lambda k: (-occurrences[k], k))},
        never_found=sorted(key for key in anchors.entries if occurrences[key] == 0),
        shadowed=shadowed,
        contained=contained,
        composite=anchors.composite_keys(),
        function_word_values=function_word_values(anchors.entries),
        tokens=tokens,
        tokens_covered=covered,
        match_order=order,
    )


def check_file(anchors_path: Path, text_path: Path, model: ModelConfig,
               order: MatchOrder = "longest", data: DataConfig | None = None) -> CheckReport:
    """`check` of a dictionary file against a text (any source `core.text.read_text` takes, read with the
    text column and download setting of `data` when given), counting tokens with the model's tokenizer
    when it can be loaded (a warning, and no token coverage, when it cannot).

    Raises:
        WhoharryError: an unreadable dictionary or text.
    """
    from whoharry.core import models

    dictionary = load_anchors(anchors_path)
    target = read_target(data, text_path) if data is not None else read_text(text_path)
    try:
        tokenizer = models.load_tokenizer(models.resolve(model), model)
    except WhoharryError as exc:
        log.warning("no token coverage: %s", exc)
        tokenizer = None
    return check(dictionary, target, tokenizer, order)


def _inside(span: tuple[int, int], covered: list[tuple[int, int]], text: str) -> bool:
    """Whether a token's span lies within one of the sorted `covered` spans, but for a leading whitespace
    character (a byte-level " Harry"); a token with any other character outside a match is not inside."""
    start, end = span
    start += 1 if end - start > 1 and text[start].isspace() else 0
    index = bisect.bisect_right(covered, (start, float("inf"))) - 1
    return index >= 0 and covered[index][0] <= start and end <= covered[index][1]


def render(report: CheckReport, *, shown: int = 25) -> str:
    """The report as plain text for the terminal."""
    found = report.keys - len(report.never_found)
    lines = [f"{report.keys} keys, {found} found in the text, {sum(report.occurrences.values())} occurrences"]
    if report.tokens:
        lines.append(f"tokens covered by anchors: {report.tokens_covered} of {report.tokens} "
                     f"({100 * report.coverage:.1f}%)")
    lines.append("most frequent: " + ", ".join(f"{key} {count}" for key, count in
                                               list(report.occurrences.items())[:shown] if count))
    if report.never_found:
        lines.append(f"never found ({len(report.never_found)}): " + ", ".join(report.never_found[:shown])
                     + (" ..." if len(report.never_found) > shown else ""))
    if report.shadowed:
        lines.append("inside another key, or holding one (those occurrences go to the key that wins): "
                     + ", ".join(f"{key} {count}" for key, count in list(report.shadowed.items())[:shown]))
    if report.composite:
        lines.append("composite, left to their parts by the labels stage: " + ", ".join(report.composite[:shown]))
    if report.function_word_values:
        flagged = list(report.function_word_values.items())
        lines.append(f"translations opening with a function word ({len(flagged)}): "
                     + "; ".join(f"{key} -> {', '.join(values)}" for key, values in flagged[:shown])
                     + (" ..." if len(flagged) > shown else ""))
        lines.append("  once such a translation has appeared in a block, its first token (that word) is suppressed "
                     "at every later position there, so the word cannot be a label")
    return "\n".join(lines)
