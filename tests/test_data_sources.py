"""Data through 🤗 datasets: the target, retain and evaluation files as JSONL, JSON, CSV, Parquet, a
save_to_disk folder or a hub dataset; labels that load with `load_from_disk` and train with `Trainer`."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from whoharry.cli import app
from whoharry.config import load_config
from whoharry.core import corpus
from whoharry.core.text import read_jsonl, read_text
from whoharry.errors import WhoharryError
from whoharry.stages import labels

from .conftest import STORY, write_config

runner = CliRunner()
ROWS = (STORY * 6).split("\n\n")
TEXT = "\n\n".join(ROWS)


def write_table(path: Path, rows: list[str], column: str = "text") -> Path:
    """`rows` under `column` in the format `path`'s suffix names, or as a save_to_disk folder (no suffix)."""
    table = datasets.Dataset.from_dict({column: rows, "id": list(range(len(rows)))})
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps({column: r}) + "\n" for r in rows), encoding="utf-8")
    elif path.suffix == ".json":
        path.write_text(json.dumps([{column: r} for r in rows]), encoding="utf-8")
    elif path.suffix == ".csv":
        table.to_csv(str(path), index=False)
    elif path.suffix == ".parquet":
        table.to_parquet(str(path))
    else:
        table.save_to_disk(str(path))
    return path


@pytest.mark.parametrize("name", ["t.jsonl", "t.json", "t.csv", "t.parquet", "saved"])
def test_every_table_format_reads_as_the_equivalent_text(tmp_path, name):
    path = write_table(tmp_path / name, ROWS)
    assert corpus.is_table(path)
    assert read_text(path) == TEXT
    assert corpus.source_hash(path) != "missing"


def test_the_text_column_setting_names_another_column(tmp_path):
    path = write_table(tmp_path / "t.parquet", ROWS, column="body")
    with pytest.raises(WhoharryError, match=r"no column 'text' \(its columns: body, id\).*data.text_column"):
        read_text(path)
    assert read_text(path, column="body") == TEXT


def test_bad_tables_fail_with_one_line_naming_the_place(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n\n{"text": "also fine"}\n{"text": oops}\n', encoding="utf-8")
    with pytest.raises(WhoharryError, match=r"bad\.jsonl:4: not valid JSON"):
        read_text(bad)
    numbers = tmp_path / "n.parquet"
    datasets.Dataset.from_dict({"text": [1, 2]}).to_parquet(str(numbers))
    with pytest.raises(WhoharryError, match=r"row 1 of column 'text' is not text \(int\)"):
        read_text(numbers)
    datasets.Dataset.from_dict({"text": ["one", None, "three"]}).to_parquet(str(numbers))
    assert read_text(numbers) == "one\n\nthree"  # an empty cell is skipped like a blank one
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(WhoharryError, match="is empty"):
        read_text(tmp_path / "empty.jsonl")
    (tmp_path / "plain").mkdir()
    with pytest.raises(WhoharryError, match="not a saved dataset"):
        read_text(tmp_path / "plain")
    with pytest.raises(WhoharryError, match="not found"):
        read_text(tmp_path / "missing.parquet")


def test_probe_rows_come_from_any_table_and_are_checked_by_row(tmp_path):
    rows = [{"prompt": "Harry went to", "answer": " Hogwarts"}, {"prompt": "Ron", "answer": " Weasley"}]
    datasets.Dataset.from_list(rows).to_parquet(str(tmp_path / "p.parquet"))

    def valid(row):
        return all(isinstance(row.get(k), str) and row[k].strip() for k in ("prompt", "answer"))

    assert read_jsonl(tmp_path / "p.parquet", "probe file", valid, "a probe") == rows
    datasets.Dataset.from_list([*rows, {"prompt": "x", "answer": " "}]).to_csv(str(tmp_path / "p.csv"), index=False)
    with pytest.raises(WhoharryError, match=r"p\.csv: row 3: expected a probe"):
        read_jsonl(tmp_path / "p.csv", "probe file", valid, "a probe")


def fake_hub_cache(root: Path, name: str, rows: list[str]) -> str:
    """A hub dataset as the local Hugging Face cache holds it after a download: refs/main naming a
    snapshot folder with its data file; returns the snapshot's commit."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = root / f"datasets--{name.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    write_table(snapshot / "train.jsonl", rows)
    return commit


def test_a_hub_dataset_is_read_from_the_cache_and_refused_offline_when_absent(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # never the network, even with downloads on
    path = Path("hf:someone/books")
    with pytest.raises(WhoharryError, match="not in the local Hugging Face cache; pass data.allow_download=true"):
        read_text(path)
    assert corpus.source_hash(path) == "someone/books#train@uncached"
    commit = fake_hub_cache(tmp_path / "hub", "someone/books", ROWS)
    assert read_text(path) == TEXT
    assert corpus.source_hash(path) == f"someone/books#train@{commit}"
    with pytest.raises(WhoharryError, match="split 'test'"):
        read_text(Path("hf:someone/books#test"))


def test_a_hub_id_in_the_config_is_not_taken_for_a_path(tmp_path):
    (tmp_path / "c.yaml").write_text("data:\n  target: hf:someone/books\n  retain: [general.parquet]\n")
    cfg = load_config(tmp_path / "c.yaml", ["data.text_column=body"])
    assert cfg.data.target == Path("hf:someone/books") and corpus.is_hub(cfg.data.target)
    assert cfg.data.retain == [(tmp_path / "general.parquet").resolve()]
    assert cfg.data.text_column == "body"


@pytest.fixture(scope="module")
def label_runs(tmp_path_factory, tiny_model_dir):
    """The labels stage on the same text given as .txt, .jsonl and .parquet (each its own run)."""
    import yaml

    from .conftest import ANCHORS

    project = tmp_path_factory.mktemp("formats")
    (project / "anchors.yaml").write_text(yaml.safe_dump(ANCHORS), encoding="utf-8")
    (project / "target.txt").write_text(TEXT, encoding="utf-8")
    write_table(project / "target.jsonl", ROWS)
    write_table(project / "target.parquet", ROWS)
    config = write_config(project, tiny_model_dir)
    runs = {}
    for suffix in ("txt", "jsonl", "parquet"):
        cfg = load_config(config, [f"data.target={project / f'target.{suffix}'}", "reinforce.max_steps=2"])
        runs[suffix] = labels.run(cfg, project / suffix, progress=False)
    return runs


def test_jsonl_and_parquet_targets_give_the_labels_of_the_equivalent_text(label_runs):
    txt = load_file(str(label_runs["txt"] / "labels.safetensors"))
    assert int((txt["labels"] != txt["input_ids"]).sum()) > 0  # the anchors changed some labels
    for suffix in ("jsonl", "parquet"):
        other = load_file(str(label_runs[suffix] / "labels.safetensors"))
        assert torch.equal(other["input_ids"], txt["input_ids"]), suffix
        assert torch.equal(other["labels"], txt["labels"]), suffix


def test_the_labels_load_from_disk_and_train_a_step_with_transformers_trainer(label_runs, tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM, Trainer, TrainingArguments

    stage = label_runs["txt"]
    table = datasets.load_from_disk(str(stage / "dataset"))
    tensors = load_file(str(stage / "labels.safetensors"))
    assert table.column_names == ["input_ids", "labels", "attention_mask"]
    assert torch.equal(torch.tensor(table["labels"], dtype=torch.int32), tensors["labels"])
    assert torch.equal(torch.tensor(table["input_ids"], dtype=torch.int32), tensors["input_ids"])
    assert all(set(mask) == {1} for mask in table["attention_mask"])

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    args = TrainingArguments(output_dir=str(tmp_path / "trainer"), max_steps=1, per_device_train_batch_size=2,
                             learning_rate=1e-2, report_to=[], save_strategy="no", use_cpu=True, logging_steps=1)
    result = Trainer(model=model, args=args, train_dataset=table).train()
    assert result.global_step == 1 and torch.isfinite(torch.tensor(result.training_loss))
    assert any(not torch.equal(before[name], p) for name, p in model.named_parameters())


def test_a_parquet_retain_text_joins_the_unlearning_data(project, tiny_model_dir):
    write_table(project / "general.parquet", (project / "general.txt").read_text().split("\n\n"))
    config = write_config(project, tiny_model_dir)
    args = ["unlearn", "--config", str(config), "--out", str(project / "run"), "--max-steps", "1", "-q",
            "--set", f"data.retain={project / 'general.parquet'}"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    manifest = json.loads((project / "run" / "unlearn" / "manifest.json").read_text())
    assert manifest["summary"]["retain_blocks"] > 0


def test_anchors_check_and_suggest_read_tables_and_hub_ids_as_the_run_does(tmp_path):
    import yaml

    from .conftest import ANCHORS

    (tmp_path / "a.yaml").write_text(yaml.safe_dump(ANCHORS), encoding="utf-8")
    write_table(tmp_path / "t.jsonl", ROWS, column="body")
    result = runner.invoke(app, ["anchors", "check", str(tmp_path / "a.yaml"), "--text", str(tmp_path / "t.jsonl"),
                                 "--set", "data.text_column=body", "--set", "model.name=/nonexistent"])
    assert result.exit_code == 0, result.output
    assert "Hogwarts" in result.output
    hub = runner.invoke(app, ["anchors", "suggest", "--out", str(tmp_path / "s.yaml"), "--text", "hf:someone/none",
                              "--reinforced", str(tmp_path)])
    assert hub.exit_code == 2 and "hub dataset 'someone/none'" in hub.output, hub.output
