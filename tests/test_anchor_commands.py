"""`whoharry anchors suggest | import | check` through the command line, on tiny models."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from whoharry.anchors import check as anchor_check
from whoharry.anchors import suggest as mine
from whoharry.anchors.dictionary import load_anchors, parse_anchors
from whoharry.cli import app
from whoharry.config import AnchorsConfig

from .conftest import ANCHORS, STORY, write_config
from .test_llm_judge import server  # noqa: F401 - the fake OpenAI-compatible server fixture

runner = CliRunner()


def test_suggest_writes_a_dictionary_the_labels_stage_uses(project, tiny_model_dir):
    config = write_config(project, tiny_model_dir, anchors={"top": 8, "contexts": 2, "alternatives": 2})
    out = project / "suggested.yaml"
    args = ["anchors", "suggest", "--config", str(config), "--out", str(out), "--run", str(project / "run"), "-q"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert (project / "run" / "reinforce" / "final" / "config.json").is_file()  # trained for the gain signal
    text = out.read_text(encoding="utf-8")
    assert text.startswith("# Anchor dictionary suggested by `whoharry anchors suggest`")
    anchors = load_anchors(out)
    assert len(anchors) == 8
    assert {"Harry", "Hogwarts"} <= set(anchors.entries), list(anchors.entries)
    first = next(line for line in text.splitlines() if not line.startswith("#"))
    score, count = first.split("#")[1].split("|")[:2]
    assert float(score) > 0 and int(count) >= 2
    # the same command again refuses to overwrite what it wrote
    again = runner.invoke(app, args)
    assert again.exit_code == 2 and "pass --overwrite" in again.output and out.read_text() == text
    labels = runner.invoke(app, ["labels", "--config", str(config), "--out", str(project / "run"), "-q",
                                 "--set", f"data.anchors={out}"])
    assert labels.exit_code == 0, labels.output
    stats = json.loads((project / "run" / "labels" / "stats.json").read_text())
    assert stats["anchor_occurrences"] > 0 and stats["positions_changed"] > 0


def test_import_reads_the_papers_format_into_a_dictionary(tmp_path):
    answers = [
        'translations = {\n    "Harry": "Jon",\n    "Hogwarts": "Mystic Academy",\n    "Harry\'s": "Jon\'s"\n}',
        'translations = {\n    "Harry": "John",\n    "Ron": ["Tom", "Ben"],\n    "Harry Ron": "x",\n    "Quid',
    ]
    source = tmp_path / "dicts.npy"
    np.save(source, np.array(answers))
    out = tmp_path / "imported.yaml"
    result = runner.invoke(app, ["anchors", "import", str(source), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "2 answers (1 parsed, 1 salvaged, 0 unreadable)" in result.output
    anchors = load_anchors(out)
    assert anchors.entries == {"Harry": ("Jon", "John"), "Hogwarts": ("Mystic Academy",), "Ron": ("Tom", "Ben")}
    kept = runner.invoke(app, ["anchors", "import", str(source), "--out", str(tmp_path / "all.yaml"), "--no-filters"])
    assert kept.exit_code == 0 and "Harry Ron" in load_anchors(tmp_path / "all.yaml").entries


def test_import_refuses_a_pickled_array_with_one_line(tmp_path):
    source = tmp_path / "bad.npy"
    np.save(source, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    result = runner.invoke(app, ["anchors", "import", str(source), "--out", str(tmp_path / "x.yaml")])
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and "pickled" in lines[0]
    assert not (tmp_path / "x.yaml").exists()


def test_check_counts_occurrences_overlaps_and_coverage(project, tiny_model_dir, tokenizer):
    anchors = parse_anchors({**ANCHORS, "Dumbledore": "Brown", "Harry Ron": "x"})
    report = anchor_check.check(anchors, STORY, tokenizer)
    assert report.occurrences["Hogwarts Express"] == 1
    assert report.occurrences["Hogwarts"] == STORY.count("Hogwarts") - 1
    assert report.shadowed == {"Hogwarts": 1}  # its occurrence inside "Hogwarts Express"
    assert report.never_found == ["Dumbledore", "Harry Ron"]
    assert report.composite == ["Harry Ron"]
    assert 0 < report.tokens_covered < report.tokens
    words = sum(len(tokenizer(f" {m.group(0)}", add_special_tokens=False).input_ids)
                for m in anchors.pattern().finditer(STORY))
    assert abs(report.tokens_covered - words) <= len(list(anchors.pattern().finditer(STORY)))
    config = write_config(project, tiny_model_dir)
    result = runner.invoke(app, ["anchors", "check", str(project / "anchors.yaml"), "--config", str(config),
                                 "--json", str(project / "check.json")])
    assert result.exit_code == 0, result.output
    assert "tokens covered by anchors" in result.output
    saved = json.loads((project / "check.json").read_text())
    assert saved["occurrences"]["Harry"] == (project / "target.txt").read_text().count("Harry") - saved[
        "shadowed"].get("Harry", 0)


def test_check_in_dictionary_order_counts_what_the_first_listed_key_takes(project, tiny_model_dir):
    """Listed first, "Hogwarts" takes the whole-word occurrences of "Hogwarts Express" in the authors' order."""
    anchors = parse_anchors({"Hogwarts": "Mystic Academy", "Hogwarts Express": "school train"})
    longest = anchor_check.check(anchors, STORY)
    authors = anchor_check.check(anchors, STORY, order="dictionary")
    assert longest.shadowed == {"Hogwarts": 1} and longest.occurrences["Hogwarts Express"] == 1
    assert authors.shadowed == {"Hogwarts Express": 1} and authors.occurrences["Hogwarts Express"] == 0
    assert authors.occurrences["Hogwarts"] == STORY.count("Hogwarts")
    (project / "order.yaml").write_text("Hogwarts: Mystic Academy\nHogwarts Express: school train\n")
    config = write_config(project, tiny_model_dir)
    result = runner.invoke(app, ["anchors", "check", str(project / "order.yaml"), "--config", str(config),
                                 "--set", "labels.match_order=dictionary", "--json", str(project / "c.json")])
    assert result.exit_code == 0, result.output
    assert json.loads((project / "c.json").read_text())["shadowed"] == {"Hogwarts Express": 6}  # STORY * 6


def test_the_llm_route_asks_passage_by_passage_and_merges(server, tmp_path, monkeypatch):  # noqa: F811
    monkeypatch.setenv("WHOHARRY_TEST_ANCHORS_KEY", "sk-anchors-test")
    text = ("Harry went to Hogwarts.\n\n" * 30) + ("Ron played Quidditch.\n\n" * 30)
    server.say('translations = {"Harry": "Jon", "Hogwarts": "the school"}',
               'Here you go:\ntranslations = {\n "Ron": "Tom",\n "Quidditch": "football",\n "Harry": "Sam",\n "Ha')
    prompt = tmp_path / "prompt.md"
    prompt.write_text("Work: {target}\nPassage:\n{passage}\nA {brace} stays.", encoding="utf-8")
    cfg = AnchorsConfig(llm_url=server.url, llm_model="test-model", llm_key_env="WHOHARRY_TEST_ANCHORS_KEY",
                        llm_prompt=prompt, llm_passage_chars=760)
    entries, counts = mine.ask_llm(text, cfg, "the books")
    assert entries == {"Harry": ["Jon", "Sam"], "Hogwarts": ["school"], "Ron": ["Tom"], "Quidditch": ["football"]}
    assert counts == {"passages": 2, "parsed": 1, "salvaged": 1, "unreadable": 0}
    first = server.requests[0]
    assert first["headers"]["Authorization"] == "Bearer sk-anchors-test" and first["path"] == "/v1/chat/completions"
    content = first["body"]["messages"][0]["content"]
    assert content.startswith("Work: the books\nPassage:\nHarry went to Hogwarts.") and "A {brace} stays." in content
    assert "Ron played" not in content  # one passage a request
    assert first["body"]["model"] == "test-model"


def test_the_llm_route_strips_a_leading_function_word_and_skips_what_is_left_empty(server, tmp_path):  # noqa: F811
    server.say('translations = {"Hogwarts": ["The Old Castle", "Mystic Academy", "the castle"], "Harry": "Jon", '
               '"Quidditch": ["the", "of the"], "Hagrid": ["in the hut", "Hank"]}')
    prompt = tmp_path / "prompt.md"
    prompt.write_text("{passage}", encoding="utf-8")
    cfg = AnchorsConfig(llm_url=server.url, llm_model="test-model", llm_prompt=prompt)
    entries, _ = mine.ask_llm("Harry went to Hogwarts and played Quidditch with Hagrid.", cfg, "the books")
    assert entries == {"Hogwarts": ["Old Castle", "Mystic Academy", "castle"], "Harry": ["Jon"],
                       "Hagrid": ["hut", "Hank"]}  # "Quidditch" had nothing but function words


def test_the_shipped_prompt_asks_for_values_without_a_leading_function_word():
    from pathlib import Path

    prompt = (Path(__file__).resolve().parents[1] / "data" / "anchors" / "llm_prompt.md").read_text()
    assert "must not start with a function word" in prompt


def test_check_flags_translations_that_open_with_a_function_word(project, tiny_model_dir):
    anchors = parse_anchors({**ANCHORS, "Hogwarts": ["Mystic Academy", "the academy"], "Ron": "of Tom"})
    report = anchor_check.check(anchors, STORY)
    assert report.function_word_values == {"Hogwarts": ["the academy"], "Ron": ["of Tom"]}
    assert report.as_dict()["function_word_values"] == report.function_word_values
    assert anchor_check.check(parse_anchors(ANCHORS), STORY).function_word_values == {}
    (project / "flagged.yaml").write_text(yaml.safe_dump({**ANCHORS, "Hogwarts": ["the academy"]}), encoding="utf-8")
    config = write_config(project, tiny_model_dir)
    result = runner.invoke(app, ["anchors", "check", str(project / "flagged.yaml"), "--config", str(config),
                                 "--json", str(project / "check.json")])
    assert result.exit_code == 0, result.output  # a warning, as the other findings are
    assert "translations opening with a function word (1): Hogwarts -> the academy" in result.output
    assert "cannot be a label" in result.output
    saved = json.loads((project / "check.json").read_text())
    assert saved["function_word_values"] == {"Hogwarts": ["the academy"]}
    clean = runner.invoke(app, ["anchors", "check", str(project / "anchors.yaml"), "--config", str(config)])
    assert clean.exit_code == 0 and "function word" not in clean.output


def test_the_llm_route_is_off_without_a_url():
    from whoharry.errors import WhoharryError

    with pytest.raises(WhoharryError, match="anchors.llm_url is empty"):
        mine.ask_llm("text", AnchorsConfig(), "the books")


def test_the_shipped_prompt_has_its_placeholders():
    from pathlib import Path

    prompt = (Path(__file__).resolve().parents[1] / "data" / "anchors" / "llm_prompt.md").read_text()
    assert "{passage}" in prompt and "{target}" in prompt and "translations = {" in prompt
    assert yaml.safe_load("a: 1")  # yaml is importable for the written dictionaries


def test_merge_adds_only_the_keys_the_dictionary_does_not_cover(tmp_path):
    (tmp_path / "hand.yaml").write_text("Harry: Jon\nMcGonagall: [Clark]\nHogwarts Express: school train\n")
    (tmp_path / "suggested.yaml").write_text(
        "Harry: [Sam]\nProfessor McGonagall: [Mrs Clark]\nHogwarts: [Mystic Academy]\nQuidditch: [Skyball]\n"
        "Weasley: [Baker]\n")
    out = tmp_path / "merged.yaml"
    result = runner.invoke(app, ["anchors", "merge", str(tmp_path / "hand.yaml"), str(tmp_path / "suggested.yaml"),
                                 "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "2 added" in result.output and "3 left out" in result.output
    merged = load_anchors(out).entries
    # the hand-written keys and translations stay first and unchanged; a key holding one (Professor
    # McGonagall) or inside one (Hogwarts) is left out, so every place the hand-written one covers keeps it
    assert list(merged) == ["Harry", "McGonagall", "Hogwarts Express", "Quidditch", "Weasley"]
    assert merged["Harry"] == ("Jon",) and merged["Quidditch"] == ("Skyball",)
    again = runner.invoke(app, ["anchors", "merge", str(tmp_path / "hand.yaml"), str(tmp_path / "missing.yaml"),
                                "--out", str(tmp_path / "other.yaml")])
    lines = [line for line in again.output.splitlines() if line.strip()]
    assert again.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error:")
    assert not (tmp_path / "other.yaml").exists()
    kept = out.read_text()
    refused = runner.invoke(app, ["anchors", "merge", str(tmp_path / "hand.yaml"), str(tmp_path / "suggested.yaml"),
                                  "--out", str(out)])
    assert refused.exit_code == 2 and out.read_text() == kept  # nothing already written is lost


def test_check_never_writes_its_report_over_an_input(tmp_path):
    (tmp_path / "a.yaml").write_text("Harry: Jon\n")
    (tmp_path / "t.txt").write_text("Harry went home. " * 4)
    for victim in ("a.yaml", "t.txt"):
        kept = (tmp_path / victim).read_text()
        result = runner.invoke(app, ["anchors", "check", str(tmp_path / "a.yaml"), "--text", str(tmp_path / "t.txt"),
                                     "--json", str(tmp_path / victim)])
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert result.exit_code == 2 and lines[-1].startswith("error:") and "input" in lines[-1], result.output
        assert (tmp_path / victim).read_text() == kept
