"""The README's configuration table names exactly the keys of the config dataclasses, each once."""

from __future__ import annotations

import itertools
import re
from pathlib import Path

from whoharry.config import Config
from whoharry.core.settings import leaf_keys

README = Path(__file__).resolve().parents[1] / "README.md"


def expand(key: str) -> list[str]:
    """`{a,b}.{c,d}` as `a.c`, `a.d`, `b.c`, `b.d` (shell-style brace expansion); other keys as they are."""
    pieces = re.split(r"(\{[^}]*\})", key)
    choices = [piece[1:-1].split(",") if piece.startswith("{") else [piece] for piece in pieces]
    return ["".join(combination) for combination in itertools.product(*choices)]


def table_keys(markdown: str) -> list[str]:
    """The keys in the first column of the table under `## Configuration`, expanded."""
    section = markdown.split("\n## Configuration\n", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    assert rows, "no table rows under ## Configuration"
    keys = []
    for row in rows:
        cell = row.split(" | ", 1)[0].removeprefix("| ")
        for key in re.findall(r"`([^`]+)`", cell):
            keys += expand(key)
    return keys


def test_expand():
    assert expand("seed") == ["seed"]
    assert expand("{a,b}.c") == ["a.c", "b.c"]
    assert expand("{a,b}.{c,d}") == ["a.c", "a.d", "b.c", "b.d"]


def test_the_readme_table_lists_every_config_key_once():
    listed = table_keys(README.read_text(encoding="utf-8"))
    duplicates = sorted({key for key in listed if listed.count(key) > 1})
    assert not duplicates, f"listed more than once: {duplicates}"
    schema = set(leaf_keys(Config()))
    assert not schema - set(listed), f"missing from the README table: {sorted(schema - set(listed))}"
    assert not set(listed) - schema, f"in the README table but not in the config: {sorted(set(listed) - schema)}"
