"""Importing the paper's published dictionary: GPT-4 answers in a .npy of str, or JSON; never executed."""

from __future__ import annotations

import json
from pathlib import Path

import numpy
import pytest

from whoharry.anchors.paper_import import ImportStats, composite_keys, merge, parse_answer, read_dictionary
from whoharry.errors import WhoharryError

NORMAL = """translations = {
    "Harry": "Jon",
    "Hogwarts": "Mystic Academy",
    "Hog's Head": "Boar's Crown",
    "owls": "ravens"
}"""
WITH_LIST = """Here is the dictionary:
translations = {
    "Hogwarts": ["the school", "Mystic Academy"],
    "Harry": ["Jon", "Sam"],
    "Quidditch": ["Skyball", "  ", 7]
}
Hope this helps."""
TRUNCATED = """translations = {
    "Ron": "Tom",
    "Harry": "Sam",
    "Hermione": "Sophie",
    "Dumbl"""
GARBAGE = "I am sorry, I cannot help with that request."
ESCAPED = """translations = {
    "Hog's Head": "Boar's Crown",
    'Hog\\'s Head': 'Boar\\'s Head',
    'Ron\\'s': "Tom's",
}"""


def _save_npy(path: Path, answers: list[str]) -> Path:
    numpy.save(path, numpy.array(answers))
    return path


@pytest.fixture
def answers_npy(tmp_path: Path) -> Path:
    return _save_npy(tmp_path / "dicts.npy", [NORMAL, WITH_LIST, TRUNCATED, GARBAGE, ESCAPED])


def test_fixture_is_a_fixed_width_str_array(answers_npy: Path) -> None:
    array = numpy.load(answers_npy, allow_pickle=False)
    assert array.dtype.kind == "U" and array.shape == (5,)


def test_parse_answer_normal_and_list_values() -> None:
    assert parse_answer(NORMAL) == (
        {"Harry": ["Jon"], "Hogwarts": ["Mystic Academy"], "Hog's Head": ["Boar's Crown"], "owls": ["ravens"]},
        "parsed",
    )
    entries, how = parse_answer(WITH_LIST)
    assert how == "parsed"
    assert entries == {"Hogwarts": ["the school", "Mystic Academy"], "Harry": ["Jon", "Sam"], "Quidditch": ["Skyball"]}


def test_parse_answer_salvages_complete_entries_of_a_cut_off_dict() -> None:
    entries, how = parse_answer(TRUNCATED)
    assert how == "salvaged"
    assert entries == {"Ron": ["Tom"], "Harry": ["Sam"], "Hermione": ["Sophie"]}


def test_parse_answer_salvage_skips_a_cut_off_value_and_reads_escapes() -> None:
    text = 'translations = {\n  "A": "b",\n  \'It\\\'s\': "x",\n  "Lists": ["p", "q"],\n  "Cut": "unfini'
    entries, how = parse_answer(text)
    assert how == "salvaged"
    assert entries == {"A": ["b"], "It's": ["x"], "Lists": ["p", "q"]}


def test_parse_answer_salvage_after_a_comment() -> None:
    text = 'translations = {\n  "NEWTs": "EMTAs" # exams\n  "Ron": "Tom",\n  "Harry": "Jo'
    assert parse_answer(text) == ({"NEWTs": ["EMTAs"], "Ron": ["Tom"]}, "salvaged")


def test_parse_answer_invalid_escape_is_kept_without_warning(recwarn: pytest.WarningsRecorder) -> None:
    assert parse_answer('{"A\\d": "b"}') == ({"A\\d": ["b"]}, "parsed")
    assert parse_answer('{"A\\d": "b", "c": "d') == ({"A\\d": ["b"]}, "salvaged")
    assert not [warning for warning in recwarn if issubclass(warning.category, DeprecationWarning | SyntaxWarning)]


def test_parse_answer_garbage_is_unreadable() -> None:
    assert parse_answer(GARBAGE) == ({}, "unreadable")
    assert parse_answer("translations = {}") == ({}, "unreadable")


def test_parse_answer_escaped_quotes_and_a_repeated_key_keep_every_value() -> None:
    assert "\\'" in ESCAPED
    entries, how = parse_answer(ESCAPED)
    assert how == "parsed"
    assert entries == {"Hog's Head": ["Boar's Crown", "Boar's Head"], "Ron's": ["Tom's"]}


def test_parse_answer_strips_and_skips_empty_items() -> None:
    entries, _ = parse_answer('{"  Harry ": " Jon ", "": "x", "Ron": "", "Hagrid": 3}')
    assert entries == {"Harry": ["Jon"]}


def test_read_dictionary_merges_answers_and_counts(answers_npy: Path) -> None:
    entries, stats = read_dictionary(answers_npy)
    assert entries == {
        "Harry": ["Jon", "Sam"],
        "Hogwarts": ["Mystic Academy", "the school"],
        "Hog's Head": ["Boar's Crown", "Boar's Head"],
        "owls": ["ravens"],
        "Quidditch": ["Skyball"],
        "Ron": ["Tom"],
        "Hermione": ["Sophie"],
    }
    assert list(entries) == ["Harry", "Hogwarts", "Hog's Head", "owls", "Quidditch", "Ron", "Hermione"]
    assert stats == ImportStats(
        answers=5, parsed=3, salvaged=1, unreadable=1, entries=4 + 3 + 3 + 0 + 2, keys=8, dropped_composite=["Ron's"],
        function_word_values=1,  # "the school", kept as the authors wrote it
    )


def test_without_salvage_a_cut_off_answer_is_dropped_whole(answers_npy: Path) -> None:
    """As the authors' parser: an answer that is no whole dictionary gives nothing."""
    salvaged, with_it = read_dictionary(answers_npy)
    entries, stats = read_dictionary(answers_npy, salvage=False)
    assert (stats.parsed, stats.salvaged, stats.unreadable) == (3, 0, 2)
    assert stats.entries == with_it.entries - 3 and not {"Ron", "Hermione"} & set(entries)
    assert "Ron's" in entries and "Ron's" not in salvaged  # no key "Ron" any more: no longer composite


def test_merge_keeps_first_seen_order_without_duplicates() -> None:
    merged = merge([{"a": ["x", "y"]}, {"b": ["z"], "a": ["y", "w", "x"]}, {"a": ["v"]}])
    assert merged == {"a": ["x", "y", "w", "v"], "b": ["z"]}
    assert list(merged) == ["a", "b"]


def test_composite_keys_the_papers_filters() -> None:
    both = {"Harry": ["Jon"], "Potter": ["Carter"], "Harry Potter": ["Jon Carter"], "Harry's": ["Jon's"]}
    assert composite_keys(both) == ["Harry Potter", "Harry's"]
    only_harry = {"Harry": ["Jon"], "Harry Potter": ["Jon Carter"], "Hogwarts": ["Mystic Academy"]}
    assert composite_keys(only_harry) == []
    assert composite_keys({"Ron's": ["Tom's"], "Hermione": ["Sophie"]}) == []


def test_read_dictionary_applies_filters_only_when_asked(tmp_path: Path) -> None:
    answer = 'translations = {"Harry": "Jon", "Potter": "Carter", "Harry Potter": "Jon Carter", "Harry\'s": "Jon\'s"}'
    path = _save_npy(tmp_path / "d.npy", [answer, 'translations = {"Ron Weasley": "Tom Baker", "Ron": "Tom"}'])
    entries, stats = read_dictionary(path)
    assert entries == {"Harry": ["Jon"], "Potter": ["Carter"], "Ron Weasley": ["Tom Baker"], "Ron": ["Tom"]}
    assert stats.dropped_composite == ["Harry Potter", "Harry's"]
    assert stats.keys == 6
    unfiltered, stats = read_dictionary(path, filters=False)
    assert set(unfiltered) == {"Harry", "Potter", "Harry Potter", "Harry's", "Ron Weasley", "Ron"}
    assert stats.dropped_composite == []


class _Payload:
    """Unpickling this would run `open(marker, 'w')` and create the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (str(self.marker), "w"))


def test_pickled_object_array_is_refused_and_not_run(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.npy"
    numpy.save(path, numpy.array([_Payload(marker)], dtype=object), allow_pickle=True)
    with pytest.raises(WhoharryError, match="pickled"):
        read_dictionary(path)
    assert not marker.exists()


def test_plain_object_array_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "objects.npy"
    numpy.save(path, numpy.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(WhoharryError, match="pickled arrays are refused"):
        read_dictionary(path)


def test_malicious_answer_is_not_executed(tmp_path: Path) -> None:
    marker = tmp_path / "X"
    answer = f'translations = {{"a": __import__("os").system("touch {marker}"), "b": "ok"}}'
    entries, how = parse_answer(answer)
    assert "a" not in entries
    assert entries == {"b": ["ok"]} and how == "salvaged"
    path = _save_npy(tmp_path / "m.npy", [answer, f'{{"a": open("{marker}", "w")}}'])
    entries, stats = read_dictionary(path)
    assert "a" not in entries and stats.unreadable == 1
    assert not marker.exists()


def test_non_npy_and_wrong_arrays_are_refused(tmp_path: Path) -> None:
    text = tmp_path / "fake.npy"
    text.write_text('translations = {"Harry": "Jon"}')
    with pytest.raises(WhoharryError, match="not a valid .npy"):
        read_dictionary(text)
    numbers = tmp_path / "numbers.npy"
    numpy.save(numbers, numpy.arange(3))
    with pytest.raises(WhoharryError, match="1-D array of str"):
        read_dictionary(numbers)
    grid = tmp_path / "grid.npy"
    numpy.save(grid, numpy.array([["a", "b"], ["c", "d"]]))
    with pytest.raises(WhoharryError, match="1-D array of str"):
        read_dictionary(grid)


def test_missing_file_and_unsupported_suffix(tmp_path: Path) -> None:
    missing = tmp_path / "nope.npy"
    with pytest.raises(WhoharryError) as error:
        read_dictionary(missing)
    assert str(error.value) == f"dictionary file not found: {missing}"
    other = tmp_path / "dict.yaml"
    other.write_text("Harry: Jon\n")
    with pytest.raises(WhoharryError, match=r"\.npy, \.json"):
        read_dictionary(other)


def test_json_mapping(tmp_path: Path) -> None:
    path = tmp_path / "d.json"
    path.write_text(json.dumps({"Harry": "Jon", "Hogwarts": ["Mystic Academy", "the school"], "bad": 3}))
    entries, stats = read_dictionary(path)
    assert entries == {"Harry": ["Jon"], "Hogwarts": ["Mystic Academy", "the school"]}
    assert (stats.answers, stats.parsed, stats.entries, stats.keys) == (1, 1, 2, 2)


def test_json_list_of_answers_and_mappings(tmp_path: Path) -> None:
    path = tmp_path / "d.json"
    path.write_text(json.dumps([NORMAL, TRUNCATED, {"Harry": ["Sam"]}, GARBAGE]))
    entries, stats = read_dictionary(path)
    assert entries["Harry"] == ["Jon", "Sam"]
    assert entries["Ron"] == ["Tom"] and entries["owls"] == ["ravens"]
    assert (stats.answers, stats.parsed, stats.salvaged, stats.unreadable) == (4, 2, 1, 1)


def test_bad_json_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text('{\n  "Harry": "Jon",\n  "Ron": \n}\n')
    with pytest.raises(WhoharryError) as error:
        read_dictionary(path)
    message = str(error.value)
    assert str(path) in message and "line 4" in message and "\n" not in message
    wrong = tmp_path / "wrong.json"
    wrong.write_text("[1, 2]")
    with pytest.raises(WhoharryError, match="item 0"):
        read_dictionary(wrong)
