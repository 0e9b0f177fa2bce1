"""Reading anchor dictionaries."""

from __future__ import annotations

import pytest

from whoharry.anchors.dictionary import load_anchors, parse_anchors
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
        ("Harry: Jon\nHarry: Sam\n", "duplicate anchor key 'Harry' at line 2"),
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
