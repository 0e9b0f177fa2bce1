"""Anchor dictionaries: target-specific terms mapped to one or more generic translations.

The YAML form is a mapping, `term: generic` or `term: [generic, ...]`. Terms are matched
case-sensitively as whole words (not inside a longer word), the longest term first where several match
at one place (or the first in file order, as the authors' label script does: `Anchors.pattern`).

What "a whole word" means is decided here once (`term_pattern`), for every place that matches a term:
the labels stage, `anchors check` and the evaluation's mentions of reference terms.

- A term whose first (last) character is of a script written with spaces between words (Latin, Greek,
  Cyrillic, Hangul, Devanagari...) must not have a word character of such a script just before (after)
  it: `Ron` is not found in `Ronald`. A combining mark (Unicode category M) counts as a word character,
  so an Indic vowel sign or a decomposed accent does not end a word.
- A term whose first (last) character is of a script written without spaces (`UNSPACED_SCRIPTS`: Han,
  Hiragana, Katakana, Thai, Lao, Khmer, Myanmar...) needs no boundary on that side: such a text has none
  to find, so `哈利` is found in `哈利去了霍格沃茨`. A Latin term next to such characters is found too
  (`Harry` in `我和Harry去了`): they do not continue a Latin word.
- On either kind, a match never ends right before a combining mark: it would cut a character off the
  mark drawn on it (a Thai tone mark, an accent).

The scripts without spaces are named by Unicode block below rather than by the Unicode Script property,
which Python's `re` cannot read. Hangul is not among them: Korean puts spaces between words, though its
particles attach to the noun before them (list `해리는`, `해리가` as keys of their own to catch those).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from whoharry.config import MatchOrder
from whoharry.core.artifacts import atomic_write_text
from whoharry.errors import WhoharryError

# Unicode blocks of the scripts written without spaces between words: (first, last code point, name).
UNSPACED_SCRIPTS: tuple[tuple[int, int, str], ...] = (
    (0x0E00, 0x0E7F, "Thai"),
    (0x0E80, 0x0EFF, "Lao"),
    (0x0F00, 0x0FFF, "Tibetan"),
    (0x1000, 0x109F, "Myanmar"),
    (0x1780, 0x17FF, "Khmer"),
    (0x1980, 0x19FF, "New Tai Lue, Khmer Symbols"),
    (0x1A20, 0x1AAF, "Tai Tham"),
    (0x1B00, 0x1B7F, "Balinese"),
    (0x2E80, 0x2FDF, "CJK Radicals Supplement, Kangxi Radicals"),
    (0x3005, 0x3007, "ideographic iteration mark, closing mark, number zero"),
    (0x3021, 0x3029, "Hangzhou numerals"),
    (0x3031, 0x3035, "kana repeat marks"),
    (0x3038, 0x303C, "Hangzhou numerals, ideographic marks"),
    (0x3040, 0x30FF, "Hiragana, Katakana"),
    (0x3100, 0x312F, "Bopomofo"),
    (0x31A0, 0x31BF, "Bopomofo Extended"),
    (0x31F0, 0x31FF, "Katakana Phonetic Extensions"),
    (0x3400, 0x4DBF, "CJK Unified Ideographs Extension A"),
    (0x4E00, 0x9FFF, "CJK Unified Ideographs"),
    (0xA000, 0xA4CF, "Yi"),
    (0xA980, 0xA9FF, "Javanese, Myanmar Extended-B"),
    (0xAA60, 0xAADF, "Myanmar Extended-A, Tai Viet"),
    (0xF900, 0xFAFF, "CJK Compatibility Ideographs"),
    (0xFF66, 0xFF9F, "Halfwidth Katakana"),
    (0x1AFF0, 0x1B16F, "Kana Extended-A and -B, Kana Supplement, Small Kana Extension"),
    (0x20000, 0x323AF, "CJK Unified Ideographs Extensions B to H, CJK Compatibility Ideographs Supplement"),
)


def is_unspaced(char: str) -> bool:
    """Whether a character is of a script written without spaces between words (`UNSPACED_SCRIPTS`)."""
    code = ord(char)
    return any(first <= code <= last for first, last, _ in UNSPACED_SCRIPTS)


@cache
def script_classes() -> tuple[str, str, str]:
    """Regex character-class bodies (no brackets): the scripts without spaces, all combining marks, and
    the combining marks of the other scripts. The marks are read from `unicodedata` once, when first needed
    (planes 0, 1 and 14 hold all of them)."""

    def ranges(codes: list[int]) -> str:
        spans: list[list[int]] = []
        for code in codes:
            if spans and code == spans[-1][1] + 1:
                spans[-1][1] = code
            else:
                spans.append([code, code])
        return "".join(f"\\U{first:08x}-\\U{last:08x}" for first, last in spans)

    unspaced = "".join(f"\\U{first:08x}-\\U{last:08x}" for first, last, _ in UNSPACED_SCRIPTS)
    marks = [code for code in (*range(0x20000), *range(0xE0000, 0xE1000))
             if unicodedata.category(chr(code)).startswith("M")]
    return unspaced, ranges(marks), ranges([code for code in marks if not is_unspaced(chr(code))])


def term_pattern(terms: Iterable[str]) -> str:
    """The regex source that finds any of `terms` (taken literally, the first listed first where several
    match at one place) as a whole word, by the rule in this module's docstring. Compile it, with
    `re.IGNORECASE` if wanted; `Anchors.pattern` and the evaluation's mentions use it.

    Without terms, the pattern never matches.

    Raises:
        ValueError: an empty term (it would match everywhere).
    """
    listed = list(terms)
    if not all(listed):
        raise ValueError("an empty term matches everywhere")
    if not listed:
        return "(?!)"
    unspaced, marks, spaced_marks = script_classes()
    word = rf"[^\W{unspaced}]"  # a letter, digit or underscore of a script written with spaces
    head = rf"(?:(?=[{unspaced}])|(?<!{word})(?<![{spaced_marks}]))"
    tail = rf"(?![{marks}])(?:(?<=[{unspaced}])|(?!{word}))"
    return head + "(?:" + "|".join(re.escape(term) for term in listed) + ")" + tail


@dataclass(frozen=True)
class Anchors:
    """A validated anchor dictionary: each term (stripped, non-empty) to its distinct generic translations,
    in file order (Eldan & Russinovich 2023, section 2.2: anchored terms and their generic translations)."""

    entries: dict[str, tuple[str, ...]]

    def pattern(self, order: MatchOrder = "longest") -> re.Pattern[str]:
        """One regex for all terms, each found only as a whole word (`term_pattern`). Where several terms
        match at one place, `longest` takes the longest (`Order of the Phoenix` over `Order`);
        `dictionary` the first in file order, as the authors' label script does (it tries a token's keys in
        dictionary order and takes the first that matches), so that a shorter key listed first hides a
        longer one. Either way, the leftmost match wins and matches never overlap."""
        terms = self.entries if order == "dictionary" else sorted(self.entries, key=lambda term: (-len(term), term))
        return re.compile(term_pattern(terms))

    def composite_keys(self) -> list[str]:
        """Keys the authors' label script drops as splittable: `X's` where `X` is a key, and keys of
        several words that are all keys themselves (their parts are then translated one by one)."""
        return composite_keys(self.entries)

    def without(self, keys: list[str]) -> Anchors:
        """A copy without `keys` (names not in the dictionary are ignored)."""
        drop = set(keys)
        return Anchors({key: values for key, values in self.entries.items() if key not in drop})

    def translate_text(self, text: str) -> str:
        """The text with every anchor term replaced by its first generic translation."""
        return self.pattern().sub(lambda match: self.entries[match.group(0)][0], text)

    def __len__(self) -> int:
        return len(self.entries)


def composite_keys(entries: Mapping[str, Sequence[str]]) -> list[str]:
    """The paper's filters: a key of several words that are all keys themselves, and `X's` where X is a key.

    This matches the authors' label script, where such keys are translated part by part instead.
    """

    def composite(key: str) -> bool:
        if key.endswith("'s") and key[:-2] in entries:
            return True
        words = key.split()
        return len(words) > 1 and all(word in entries for word in words)

    return [key for key in entries if composite(key)]


# English closed-class words: articles, determiners and quantifiers, pronouns and possessives, prepositions
# and conjunctions. Auxiliaries and modals are left out: `Will` and `May` are names too.
FUNCTION_WORDS = frozenset("""
a an the this that these those some any no every each all both either neither another other such what which
whose whatever whichever much many few several my your his her its our their i me you he him she it we us they
them mine yours hers ours theirs myself yourself himself herself itself ourselves yourselves themselves who whom
someone somebody something anyone anybody anything everyone everybody everything nobody nothing none
about above across after against along among amid around at before behind below beneath beside besides between
beyond by despite down during except for from in inside into like near of off on onto out outside over past
since than through throughout till to toward towards under underneath unlike until up upon with within without
and or but nor so yet if because although though while whereas unless whether as when where
""".split())  # noqa: SIM905 - a list read as prose
_FIRST_WORD = re.compile(r"\W*([^\W\d_]+)")


def opens_with_function_word(value: str) -> bool:
    """Whether a translation opens with an English function word (`FUNCTION_WORDS`, any case): its first
    word, up to the first character that is not a letter, so `the-end` and `it's` open with one too.

    It matters because of the labels stage's suppression rule: once a translation has appeared in a block,
    its first token is suppressed at every later position there. A translation opening with `the` takes
    ` the` out of the labels for the rest of the block.
    """
    match = _FIRST_WORD.match(value)
    return match is not None and match.group(1).lower() in FUNCTION_WORDS


def strip_function_words(value: str) -> str:
    """The value without the function words it opens with (`the old mill` -> `old mill`, `in the woods` ->
    `woods`), whole words at a time; empty when nothing else is left."""
    rest = value.strip()
    while rest and opens_with_function_word(rest):
        parts = rest.split(maxsplit=1)
        rest = parts[1] if len(parts) > 1 else ""
    return rest


def function_word_values(entries: Mapping[str, Sequence[str]]) -> dict[str, list[str]]:
    """Each key with translations that open with a function word, and those translations (file order)."""
    found = {key: [value for value in values if opens_with_function_word(value)] for key, values in entries.items()}
    return {key: values for key, values in found.items() if values}


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys instead of silently keeping the last one."""


def _construct_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
    """A YAML mapping, refusing a key seen twice (`WhoharryError`, with its line)."""
    seen: set[object] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            line = key_node.start_mark.line + 1
            raise WhoharryError(f"duplicate anchor key {key!r} at line {line}; keep one entry and list its values")
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def load_anchors(path: Path) -> Anchors:
    """Read and check an anchor dictionary file (YAML: `term: generic` or `term: [generic, ...]`).

    Raises:
        WhoharryError: the file is missing, not UTF-8, not valid YAML, holds a key twice, is not a
            non-empty mapping, or fails `parse_anchors`.
    """
    if not path.is_file():
        raise WhoharryError(f"anchor dictionary not found: {path}")
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader)  # noqa: S506 - SafeLoader
    except WhoharryError as exc:  # a key seen twice: name the file
        raise WhoharryError(f"{path}: {exc}") from None
    except UnicodeDecodeError:
        raise WhoharryError(f"anchor dictionary {path} is not UTF-8") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise WhoharryError(f"{path}: YAML syntax error{where}: {getattr(exc, 'problem', exc)}") from None
    if not isinstance(data, dict) or not data:
        raise WhoharryError(f"{path}: expected a non-empty mapping of `term: generic` entries")
    return parse_anchors(data, source=str(path))


def parse_anchors(data: dict[Any, Any], source: str = "anchors") -> Anchors:
    """Check a mapping of terms to a translation or a list of them and build `Anchors` (terms and
    translations stripped, repeated translations kept once).

    Args:
        data: the mapping, as read from YAML.
        source: where it came from, for messages.

    Raises:
        WhoharryError: a key that is not text or is empty, a value that is not a string or a non-empty
            list of strings, an empty translation, or two keys equal once trimmed.
    """
    entries: dict[str, tuple[str, ...]] = {}
    for key, value in data.items():
        if not isinstance(key, str):
            raise WhoharryError(f"{source}: anchor key {key!r} is not text; quote it in the YAML")
        term = key.strip()
        if not term:
            raise WhoharryError(f"{source}: an anchor key is empty")
        values = [value] if isinstance(value, str) else value
        if not isinstance(values, list) or not values or not all(isinstance(v, str) for v in values):
            raise WhoharryError(f"{source}: anchor {term!r} needs a generic term or a list of them")
        cleaned = tuple(dict.fromkeys(v.strip() for v in values))
        if any(not v for v in cleaned):
            raise WhoharryError(f"{source}: anchor {term!r} has an empty translation")
        if term in entries:
            raise WhoharryError(f"{source}: anchor {term!r} appears twice (after trimming spaces)")
        entries[term] = cleaned
    return Anchors(entries)


def merge_dictionaries(base: Anchors, extra: Anchors) -> tuple[dict[str, list[str]], list[str], list[str]]:
    """`base` with the keys of `extra` it does not cover added after its own, for widening a hand-written
    dictionary with `anchors suggest` output: a key of `extra` already in `base`, or one that holds a key of
    `base` as a whole word or stands inside one (`Professor McGonagall` beside `McGonagall`), is left out,
    so that every occurrence `base` translates keeps its translation.

    Returns:
        (the merged entries, term -> translations in file order; the keys added; the keys left out).
    """
    merged = {key: list(values) for key, values in base.entries.items()}
    patterns = [re.compile(term_pattern([key])) for key in base.entries]
    added: list[str] = []
    left_out: list[str] = []
    for key, values in extra.entries.items():
        inside = re.compile(term_pattern([key]))
        if key in merged or any(p.search(key) for p in patterns) or any(inside.search(k) for k in base.entries):
            left_out.append(key)
            continue
        merged[key] = list(values)
        added.append(key)
    return merged, added, left_out


def write_dictionary(path: Path, entries: dict[str, list[str]], header: list[str],
                     notes: dict[str, str] | None = None) -> None:
    """Any dictionary as YAML (`term: [alternatives]`, one entry a line), written atomically, with
    `header` lines as `#` comments first and `notes[term]` as a trailing comment on its entry."""
    lines = [f"# {line}" for line in header]
    for term, values in entries.items():
        entry = yaml.safe_dump({term: values}, default_flow_style=None, allow_unicode=True, width=10_000).rstrip()
        note = (notes or {}).get(term)
        lines.append(f"{entry}  # {note}" if note else entry)
    atomic_write_text(path, "\n".join(lines) + "\n")
