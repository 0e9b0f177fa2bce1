"""Reading anchor dictionaries."""

from __future__ import annotations

from pathlib import Path

import pytest

from whoharry.anchors.dictionary import (
    FUNCTION_WORDS,
    function_word_values,
    load_anchors,
    opens_with_function_word,
    parse_anchors,
    strip_function_words,
)
from whoharry.errors import WhoharryError


def test_single_and_several_translations(tmp_path):
    path = tmp_path / "a.yaml"
    path.write_text("Harry: Jon\nHogwarts: [Mystic Academy, Wizard School]\n'He-Who-Must-Not-Be-Named': the villain\n")
    anchors = load_anchors(path)
    assert anchors.entries == {
        "Harry": ("Jon",),
        "Hogwarts": ("Mystic Academy", "Wizard School"),
        "He-Who-Must-Not-Be-Named": ("the villain",),
    }
    assert anchors.pattern().findall("He-Who-Must-Not-Be-Named met Harry at Hogwarts.") == [
        "He-Who-Must-Not-Be-Named", "Harry", "Hogwarts",
    ]


def test_regex_characters_in_keys_are_literal():
    anchors = parse_anchors({"Mr. Ollivander (wandmaker)": "a shopkeeper", "C++": "a language"})
    pattern = anchors.pattern()
    assert pattern.findall("Mr. Ollivander (wandmaker) and Mrx Ollivander (wandmaker)") == [
        "Mr. Ollivander (wandmaker)"
    ]
    assert pattern.findall("C++ is not C") == ["C++"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("Harry: Jon\nHarry: Sam\n", r"a.yaml: duplicate anchor key 'Harry' at line 2"),
        ("Harry: ''\n", "empty translation"),
        ("Harry: []\n", "needs a generic term"),
        ("'': Jon\n", "key is empty"),
        ("1984: a year\n", "not text"),
        ("- Harry\n- Jon\n", "expected a non-empty mapping"),
        ("Harry: [Jon\n", "YAML syntax error at line"),
    ],
)
def test_bad_dictionaries_fail_clearly(tmp_path, text, message):
    path = tmp_path / "a.yaml"
    path.write_text(text)
    with pytest.raises(WhoharryError, match=message):
        load_anchors(path)


def test_composite_keys_are_those_the_authors_split():
    anchors = parse_anchors({
        "Harry": "Jon", "Potter": "Smith", "Harry Potter": "Jon Smith", "Harry's": "Jon's",
        "Sirius": "Steven", "Sirius Black": "Steven Gray", "Potters": "Smiths",
    })
    assert anchors.composite_keys() == ["Harry Potter", "Harry's"]
    assert set(anchors.without(anchors.composite_keys()).entries) == {"Harry", "Potter", "Sirius", "Sirius Black",
                                                                      "Potters"}


@pytest.mark.parametrize(
    ("value", "opens"),
    [
        ("the groundskeeper", True), ("The Crying Ghost", True), ("a shopkeeper", True), ("AN owl", True),
        ("of the East", True), ("his wand", True), ("in the woods", True), ("it's", True), ("the-end", True),
        ('"the bank"', True), ("Theodore", False), ("Anna", False), ("Ofelia", False), ("Mrs. Tibbs", False),
        ("Little Ashford", False), ("Will", False), ("May", False), ("3 relics", False), ("", False),
    ],
)
def test_a_value_opens_with_a_function_word_by_its_first_word_in_any_case(value, opens):
    assert opens_with_function_word(value) is opens


def test_function_words_are_stripped_from_the_front_only():
    assert strip_function_words("the old mill") == "old mill"
    assert strip_function_words("  In the Dark Woods ") == "Dark Woods"
    assert strip_function_words("Lady of the Lake") == "Lady of the Lake"
    assert strip_function_words("the") == "" and strip_function_words("of the") == ""
    assert {"the", "a", "an", "of", "in", "and", "his", "they"} <= FUNCTION_WORDS


def test_function_word_values_lists_each_key_with_its_flagged_values():
    entries = {"Hagrid": ("Hank", "the groundskeeper"), "Harry": ("Jon",), "Owlery": ("the bird tower", "a loft")}
    assert function_word_values(entries) == {"Hagrid": ["the groundskeeper"], "Owlery": ["the bird tower", "a loft"]}


def test_the_shipped_dictionary_has_no_value_that_opens_with_a_function_word():
    """Once a translation has appeared in a block, its first token is suppressed there: a value opening
    with `the` would keep ` the` from being a label for the rest of the block."""
    shipped = load_anchors(Path(__file__).resolve().parents[1] / "data" / "harry_potter" / "anchors.yaml")
    assert len(shipped) > 300
    assert function_word_values(shipped.entries) == {}
