"""The augment stage: prompts from the target and templates, the filters, a text fixed by the seed, resuming,
the shared cache, the endpoint route, and the labels over target + generated text."""

from __future__ import annotations

import json

import pytest
import yaml
from safetensors.torch import load_file
from typer.testing import CliRunner

from whoharry.anchors.dictionary import parse_anchors
from whoharry.anchors.passages import Deduplicator, anchor_density, seed_prompts
from whoharry.cli import app

from .conftest import ANCHORS, STORY, interrupted_batches, write_config

runner = CliRunner()
AUGMENT = {"tokens": 60, "passage_tokens": 8, "batch_size": 2, "min_density": 0.0, "max_similarity": 0.9,
           "writer": "both"}


def test_seed_prompts_alternate_target_contexts_and_templates_and_repeat_with_the_seed():
    anchors = parse_anchors(ANCHORS)
    text = STORY * 4
    seeds = seed_prompts(text, anchors, ["Wiki entry: {key}\n\n{key}"], 6, seed=3)
    assert [s.source for s in seeds] == ["target", "template"] * 3
    assert seeds == seed_prompts(text, anchors, ["Wiki entry: {key}\n\n{key}"], 6, seed=3)
    assert seeds != seed_prompts(text, anchors, ["Wiki entry: {key}\n\n{key}"], 6, seed=4)
    for seed in seeds:
        assert seed.prompt.endswith(seed.key) and seed.key in anchors.entries
        if seed.source == "target":
            assert seed.prompt in text and len(seed.prompt) <= 400 + len(seed.key)
    assert [s.source for s in seed_prompts(text, anchors, [], 4, seed=0)] == ["target"] * 4
    assert seed_prompts("nothing of the world here", anchors, [], 4, seed=0) == []


def test_density_and_the_near_duplicate_and_copy_filters():
    anchors = parse_anchors(ANCHORS)
    assert anchor_density("Harry met Ron at Hogwarts today", anchors) == pytest.approx(100 * 3 / 6)
    assert anchor_density("", anchors) == 0.0
    dedup = Deduplicator(0.5, reference=STORY)
    fresh = "the owls flew over the lake at dawn while the first years slept in the tower above the hall"
    assert dedup.why_not(fresh) is None
    assert dedup.why_not(fresh.replace("dawn", "dusk")) == "duplicate"
    assert dedup.why_not(STORY[:160]) == "copy"
    assert dedup.why_not("   ") == "empty"
    assert dedup.why_not("a wholly different passage about broom racing in the valley on a windy day") is None


def run_augment(project, model_dir, out, **augment):
    config = write_config(project, model_dir, augment={**AUGMENT, **augment})
    return runner.invoke(app, ["augment", "--config", str(config), "--out", str(out), "--max-steps", "1", "-q"])


def test_generated_text_is_fixed_by_the_seed_and_capped(project, tiny_model_dir, monkeypatch, tmp_path):
    monkeypatch.setenv("WHOHARRY_CACHE", str(tmp_path / "cache"))
    first = run_augment(project, tiny_model_dir, project / "a", shared_cache=False)
    assert first.exit_code == 0, first.output
    second = run_augment(project, tiny_model_dir, project / "b", shared_cache=False)
    assert second.exit_code == 0, second.output
    folder = project / "a" / "augment"
    text = (folder / "generated.txt").read_text()
    assert text == (project / "b" / "augment" / "generated.txt").read_text() and text.strip()
    stats = json.loads((folder / "stats.json").read_text())
    assert 0 < stats["tokens_kept"] <= 60 and stats["kept_by_writer"].keys() <= {"base", "reinforced"}
    records = [json.loads(line) for line in (folder / "passages.jsonl").read_text().splitlines()]
    assert {r["writer"] for r in records} == {"base", "reinforced"}
    assert sum(r["tokens"] for r in records if r["kept"]) == stats["tokens_kept"]
    assert not (folder / "partial.jsonl").exists() and (folder / "manifest.json").is_file()
    other = run_augment(project, tiny_model_dir, project / "c", shared_cache=False, temperature=0.5)
    assert other.exit_code == 0 and (project / "c" / "augment" / "generated.txt").read_text() != text


def test_an_interrupted_augment_resumes_to_the_same_text(project, tiny_model_dir, monkeypatch, tmp_path):
    monkeypatch.setenv("WHOHARRY_CACHE", str(tmp_path / "cache"))
    clean = run_augment(project, tiny_model_dir, project / "clean", shared_cache=False, tokens=200)
    assert clean.exit_code == 0, clean.output
    calls = interrupted_batches(monkeypatch, 2, lambda: run_augment(project, tiny_model_dir, project / "broken",
                                                                      shared_cache=False, tokens=200))
    partial = project / "broken" / "augment" / "partial.jsonl"
    assert len(partial.read_text().splitlines()) == 1 + 2  # the key, then two batches
    with open(partial, "a") as handle:  # a line cut short by the killed process
        handle.write('{"batch": 2, "texts": ["half')
    resumed = run_augment(project, tiny_model_dir, project / "broken", shared_cache=False, tokens=200)
    assert resumed.exit_code == 0, resumed.output
    assert calls[-1] > 2 and calls.count(0) == 1  # batches 0 and 1 were not written again
    for name in ("generated.txt", "passages.jsonl", "stats.json"):
        assert (project / "clean" / "augment" / name).read_text() == (project / "broken" / "augment" / name).read_text()


def test_a_run_elsewhere_with_the_same_settings_reads_the_shared_cache(project, tiny_model_dir, monkeypatch,
                                                                       tmp_path):
    monkeypatch.setenv("WHOHARRY_CACHE", str(tmp_path / "cache"))
    assert run_augment(project, tiny_model_dir, project / "a").exit_code == 0
    shared = list((tmp_path / "cache" / "augment").iterdir())
    assert len(shared) == 1 and (shared[0] / "done.json").is_file()
    from whoharry.stages import augment

    monkeypatch.setattr(augment._Writers, "write", lambda *a: pytest.fail("the cached text was written again"))
    result = run_augment(project, tiny_model_dir, project / "b")
    assert result.exit_code == 0, result.output
    assert (project / "b" / "augment" / "generated.txt").read_text() == (
        project / "a" / "augment" / "generated.txt").read_text()


def test_an_endpoint_writes_the_passages_when_configured(project, tiny_model_dir, monkeypatch, tmp_path):
    from whoharry.core.http import ChatClient

    monkeypatch.setenv("WHOHARRY_CACHE", str(tmp_path / "cache"))
    asked = []

    def fake_ask(self, content, what):
        asked.append(content)
        return f" Ron and Harry flew to Hogwarts on day {len(asked)} of the term, over the lake and the hills."

    monkeypatch.setattr(ChatClient, "ask", fake_ask)
    result = run_augment(project, tiny_model_dir, project / "run", llm_url="http://localhost:1/v1", min_density=1.0)
    assert result.exit_code == 0, result.output
    assert asked and all("Continue this text" in content for content in asked)
    records = [json.loads(line) for line in (project / "run" / "augment" / "passages.jsonl").read_text().splitlines()]
    assert {r["writer"] for r in records} == {"llm"} and any(r["kept"] for r in records)
    assert not (project / "run" / "reinforce").exists()  # an endpoint needs no reinforced model


def test_labels_cover_the_target_and_the_generated_text(project, tiny_model_dir, monkeypatch, tmp_path):
    monkeypatch.setenv("WHOHARRY_CACHE", str(tmp_path / "cache"))
    plain = write_config(project, tiny_model_dir)
    assert runner.invoke(app, ["labels", "--config", str(plain), "--out", str(project / "plain"), "--max-steps",
                               "1", "-q"]).exit_code == 0
    config = write_config(project, tiny_model_dir, augment={**AUGMENT, "tokens": 120})
    result = runner.invoke(app, ["run", "--config", str(config), "--out", str(project / "run"), "--max-steps", "1",
                                 "-q"])
    assert result.exit_code == 0, result.output
    more = load_file(str(project / "run" / "labels" / "labels.safetensors"))["input_ids"].shape[0]
    fewer = load_file(str(project / "plain" / "labels" / "labels.safetensors"))["input_ids"].shape[0]
    assert more > fewer
    assert json.loads((project / "run" / "augment" / "manifest.json").read_text())["status"] == "complete"


def test_augment_refuses_to_run_with_no_token_budget_or_no_anchor_in_the_target(project, tiny_model_dir):
    result = run_augment(project, tiny_model_dir, project / "run", tokens=0)
    assert result.exit_code == 2 and "augment.tokens is 0" in result.output
    (project / "anchors.yaml").write_text(yaml.safe_dump({"Zebedee": "Tom"}))
    result = run_augment(project, tiny_model_dir, project / "run2", writer="base")
    assert result.exit_code == 2 and "nothing to prompt" in result.output, result.output
