"""Anchor dictionaries: target-specific terms mapped to one or more generic translations.

The YAML form is a mapping, `term: generic` or `term: [generic, ...]`. Terms are matched
case-sensitively as whole words (not inside a longer word), the longest term first.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from whoharry.core.artifacts import atomic_write_text
from whoharry.errors import WhoharryError


@dataclass(frozen=True)
class Anchors:
    """A validated anchor dictionary: each term (stripped, non-empty) to its distinct generic translations,
    in file order (Eldan & Russinovich 2023, section 2.2: anchored terms and their generic translations)."""

    entries: dict[str, tuple[str, ...]]

    def pattern(self) -> re.Pattern[str]:
        """One regex for all terms, longest first, bounded so a term never matches inside a word."""
        terms = sorted(self.entries, key=lambda term: (-len(term), term))
        return re.compile(r"(?<!\w)(?:" + "|".join(re.escape(term) for term in terms) + r")(?!\w)")

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
