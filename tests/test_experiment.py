"""The retrain-gap experiment end to end on tiny models: every method, two seeds, distances to gold."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file
from typer.testing import CliRunner

from whoharry.cli import app
from whoharry.experiments import retrain_gap as experiment
from whoharry.experiments import variants

from .conftest import ANCHORS, GENERAL, STORY

runner = CliRunner()
SHARED = Path(__file__).resolve().parents[2] / "shared" / "corpora"


def _experiment_config(tmp_path: Path, model_dir: Path, **extra) -> Path:
    corpora = tmp_path / "corpora"
    corpora.mkdir()
    (corpora / "forget.txt").write_text((STORY + "\n\n") * 40, encoding="utf-8")
    (corpora / "retain.txt").write_text((GENERAL + "\n\n") * 40, encoding="utf-8")
    (tmp_path / "anchors.yaml").write_text(yaml.safe_dump(ANCHORS), encoding="utf-8")
    (tmp_path / "probes.jsonl").write_text('{"prompt": "Harry Potter went to", "answer": " Hogwarts"}\n'
                                           '{"prompt": "Harry\'s friend Ron", "answer": " Weasley"}\n')
    (tmp_path / "general.jsonl").write_text('{"prompt": "Farmers grow wheat and", "answer": " barley"}\n')
    (tmp_path / "qa.jsonl").write_text('{"question": "Where did Harry Potter go?", "answer": "Hogwarts"}\n')
    (tmp_path / "general.txt").write_text(GENERAL * 6, encoding="utf-8")
    train = {"epochs": 2, "learning_rate": 3e-3, "batch_size": 2, "precision": "fp32", "warmup_ratio": 0.0}
    config = {
        "corpora": "corpora", "forget_book": "forget.txt", "retain_book": "retain.txt",
        "forget_chars": 1200, "heldout_offset": 8000, "heldout_chars": 1200, "retain_chars": 1200,
        "anchors": "anchors.yaml", "probes": "probes.jsonl", "qa": "qa.jsonl",
        "seeds": [0, 1], "kl_passages": 3, "kl_passage_tokens": 16,
        "learn": train,
        "run": {
            "model": {"name": str(model_dir)},
            "data": {"block_length": 32},
            "reinforce": {**train, "epochs": 1},
            "labels": {"batch_size": 3, "precision": "fp32"},
            "unlearn": {**train, "learning_rate": 1e-3},
            "anchors": {"top": 8, "contexts": 1, "alternatives": 2, "batch_size": 4},
            "eval": {"probes": {"general": "general.jsonl", "max_new_tokens": 3},
                     "utility": {"general_text": "general.txt"}, "knowmem": {"tokens": 4},
                     "verbatim": {"excerpts": 3, "prompt_tokens": 8, "continuation_tokens": 4},
                     "membership": {"passage_tokens": 16, "max_passages": 4}, "block_length": 32,
                     "precision": "fp32"},
        },
        **extra,
    }
    path = tmp_path / "experiment.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


VARIANTS = {
    "soft": {"labels": {"targets": "soft", "translations": 2, "top_k": 4}},  # nested keys
    "augment": {"augment.tokens": 40, "augment.passage_tokens": 8, "augment.batch_size": 2,  # dotted keys
                "augment.min_density": 0.0, "augment.max_similarity": 0.9, "augment.shared_cache": False},
}


def test_every_method_is_measured_against_the_gold_model_over_seeds(tmp_path, tiny_model_dir):
    config = _experiment_config(tmp_path, tiny_model_dir, variants=VARIANTS)
    out = tmp_path / "gap"
    result = runner.invoke(app, ["experiment", "retrain-gap", "--config", str(config), "--out", str(out), "-q"])
    assert result.exit_code == 0, result.output
    results = json.loads((out / "results.json").read_text())
    assert results["seeds"] == [0, 1]
    assert results["methods"] == ["gold", "subject", *experiment.METHODS, "whp+augment", "whp+soft"]  # file order
    # the variants unlearn from whp's reinforced model with their own labels
    seed = out / "seed-0"
    assert "soft_ids" in load_file(str(seed / "whp+soft" / "labels" / "labels.safetensors"))
    assert "soft_ids" not in load_file(str(seed / "whp" / "labels" / "labels.safetensors"))
    assert (seed / "whp+augment" / "augment" / "generated.txt").read_text().strip()
    for name in ("whp+soft", "whp+augment"):
        assert json.loads((seed / name / "reinforce" / "manifest.json").read_text())["fingerprint"] == \
            json.loads((seed / "whp" / "reinforce" / "manifest.json").read_text())["fingerprint"]
        assert results["per_seed"]["0"][name]["kl_forget"] != results["per_seed"]["0"]["whp"]["kl_forget"]
    assert results["per_seed"]["0"]["whp+augment"]["cpu_seconds"] > results["per_seed"]["0"]["ensemble"]["cpu_seconds"]
    assert "WHP + soft" in (out / "results.md").read_text()
    table = results["table"]
    for key in ("gap_familiarity", "gap_knowmem", "gap_verbmem", "privleak", "kl_forget", "kl_retain"):
        assert table["gold"][key]["mean"] == pytest.approx(0.0, abs=1e-6)  # gold against itself
    # the subject was trained on Y and the gold model was not: they differ most on Y
    assert table["subject"]["kl_forget"]["mean"] > table["subject"]["kl_retain"]["mean"] > 0
    assert table["subject"]["kl_forget"]["n"] == 2
    assert table["ensemble"]["models_per_token"]["mean"] == 2 and table["ga"]["models_per_token"]["mean"] == 1
    for name in ("whp", "whp-generated", "ga", "npo-retain", "ensemble"):
        assert table[name]["cpu_seconds"]["mean"] > 0 and table[name]["cost_vs_gold"]["mean"] > 0
    # whp-generated also paid for its dictionary; the ensemble only for the reinforced model
    per_seed = results["per_seed"]["0"]
    assert per_seed["whp-generated"]["cpu_seconds"] > per_seed["ensemble"]["cpu_seconds"]
    assert (out / "seed-0" / "whp-generated" / "anchors-suggested.yaml").is_file()
    assert (out / "retrain_gap.png").stat().st_size > 0
    assert "inference-time WHP" in (out / "results.md").read_text()
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["stage"] == "experiment"

    # a rerun reuses every stage and measurement: the same figures, the same costs
    costs = (out / "seed-1" / "costs.json").read_text()
    again = runner.invoke(app, ["experiment", "retrain-gap", "--config", str(config), "--out", str(out), "-q"])
    assert again.exit_code == 0, again.output
    assert json.loads((out / "results.json").read_text())["table"] == table
    assert (out / "seed-1" / "costs.json").read_text() == costs


@pytest.mark.parametrize(("args", "message"), [
    (["--set", "methods=[whp, sgd]"], "methods: unknown 'sgd'"),
    (["--set", "forget_book=missing.txt"], "book not found"),
    (["--set", "heldout_offset=10"], "heldout_offset must lie past the forget slice"),
    (["--set", "methods=[ensemble]"], "the ensemble method needs whp"),
    (["--set", "variants={more: {reinforce.epochs: 3}}"], "variants.more: give settings of labels, unlearn"),
    (["--set", "variants={more: {labels.targets: fuzzy}}"], "variants.more: labels.targets must be one of"),
    (["--set", "variants={more: {labels.alpah: 2}}"], "variants.more: unknown config key 'labels.alpah'"),
    (["--set", "variants=[soft]"], "'variants' must be a mapping"),
    (["--set", "variants={a/b: {labels.alpha: 2}}"], "variants: the name 'a/b' must be letters"),
    (["--set", "variants={two: {labels.alpha: 2, labels: {alpha: 3}}}"], "variants.two: labels.alpha is given twice"),
])
def test_bad_experiment_settings_are_one_error_line(tmp_path, tiny_model_dir, args, message):
    config = _experiment_config(tmp_path, tiny_model_dir)
    result = runner.invoke(app, ["experiment", "retrain-gap", "--config", str(config), "--out",
                                 str(tmp_path / "gap"), "-q", *args])
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0], result.output


def test_a_dotted_set_changes_one_setting_of_one_variant(tmp_path, tiny_model_dir):
    config = _experiment_config(tmp_path, tiny_model_dir, variants=VARIANTS)
    exp = experiment.load_experiment(config, ["variants.soft.labels.top_k=8", 'variants.new={"labels.alpha": 2}'])
    assert exp.variants["soft"] == {"labels": {"targets": "soft", "translations": 2, "top_k": 8}}
    assert set(exp.variants) == {"soft", "augment", "new"}  # the others kept
    template = "# Notes on {key}: a: b"  # a string is taken as it is, never read again as YAML
    cfg = variants.variant_config(exp.run, "notes", {"augment": {"templates": [template], "tokens": 10}})
    assert cfg.augment.templates == [template] and exp.run.augment.tokens == 0
    assert experiment.load_experiment(config, ["variants=null"]).variants == {}


def test_cut_keeps_whole_paragraphs_and_unwrap_joins_lines():
    book = "First line\nof one.\n\nSecond para\ngoes on.\n\nThird."
    text = experiment.unwrap(book)
    assert text == "First line of one.\n\nSecond para goes on.\n\nThird."
    assert experiment.cut(text, 0, 30) == "First line of one.\n"
    assert experiment.cut(text, 3, 100) == "Second para goes on.\n\nThird.\n"


@pytest.mark.slow
@pytest.mark.skipif(not SHARED.is_dir(), reason="the books are not at ../shared/corpora")
def test_quick_experiment_on_the_embedded_model(tmp_path):
    out = tmp_path / "gap"
    result = runner.invoke(app, ["experiment", "retrain-gap", "--quick", "--corpora", str(SHARED), "--out", str(out),
                                 "-q"])
    assert result.exit_code == 0, result.output
    results = json.loads((out / "results.json").read_text())
    table = results["table"]
    variants = [f"whp+{name}" for name in ("inside-translate", "augment", "soft", "soft-lr1e-4")]  # sherlock.yaml's
    assert results["methods"] == ["gold", "subject", *experiment.METHODS, *variants]
    assert table["gold"]["kl_forget"]["mean"] == 0 and table["subject"]["kl_forget"]["mean"] > 0
    for name in [*experiment.METHODS, *variants]:  # every method changed the subject
        assert table[name]["kl_forget"]["mean"] != table["subject"]["kl_forget"]["mean"]
    assert table["ensemble"]["models_per_token"]["mean"] == 2
