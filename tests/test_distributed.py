"""Two processes through `accelerate launch` (gloo on the CPU) against one process with the same global batch."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from tests.conftest import write_config
from whoharry.cli import app

runner = CliRunner()


def launch(*args: str, processes: int = 2) -> subprocess.CompletedProcess:
    """`accelerate launch -m whoharry ARGS` with two processes on this machine."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
        "--main_process_port", str(port), "-m", "whoharry", *args,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)


def weights(folder) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


@pytest.fixture(scope="module")
def one_process(tmp_path_factory, tiny_model_dir):
    """Every training stage in one process, batch 4: the reference for the two-process runs."""
    project = tmp_path_factory.mktemp("one")
    _project_files(project)
    config = write_config(project, tiny_model_dir, reinforce={"batch_size": 4}, unlearn={"batch_size": 4})
    out = project / "run"
    result = runner.invoke(app, ["unlearn", "--config", str(config), "--out", str(out), "-q"])
    assert result.exit_code == 0, result.output
    return project, out


def _project_files(project) -> None:
    import yaml

    from tests.conftest import ANCHORS, STORY

    (project / "target.txt").write_text(STORY * 4, encoding="utf-8")
    (project / "anchors.yaml").write_text(yaml.safe_dump(ANCHORS), encoding="utf-8")


def test_two_processes_give_the_same_labels_as_one(one_process, tiny_model_dir, tmp_path):
    project, reference = one_process
    out = tmp_path / "run"
    out.mkdir()
    shutil.copytree(reference / "reinforce", out / "reinforce")  # the same reinforced model
    config = write_config(project, tiny_model_dir, reinforce={"batch_size": 4}, unlearn={"batch_size": 4})
    result = launch("labels", "--config", str(config), "--out", str(out), "-q")
    assert result.returncode == 0, result.stderr[-3000:]
    one, two = load_file(str(reference / "labels" / "labels.safetensors")), load_file(
        str(out / "labels" / "labels.safetensors"))
    blocks = one["labels"].shape[0]
    assert blocks >= 6  # enough for both processes to label several batches of 3
    assert torch.equal(one["labels"], two["labels"]) and torch.equal(one["input_ids"], two["input_ids"])
    assert (reference / "labels" / "stats.json").read_text() == (out / "labels" / "stats.json").read_text()
    assert not (out / "labels" / "shards").exists() and not list((out / "labels").glob("partial*"))
    manifest = json.loads((out / "labels" / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["summary"]["processes"] == 2


def test_ddp_with_two_processes_trains_the_same_weights_as_one(one_process, tiny_model_dir, tmp_path):
    """Unlearning labels leave positions unlabelled unevenly across blocks: the loss must be the mean over
    the whole step's labelled tokens for the split not to matter."""
    project, reference = one_process
    out = tmp_path / "run"
    out.mkdir()
    for stage in ("reinforce", "labels"):
        shutil.copytree(reference / stage, out / stage)
    config = write_config(project, tiny_model_dir, reinforce={"batch_size": 4}, unlearn={"batch_size": 2})
    result = launch("unlearn", "--config", str(config), "--out", str(out), "-q")
    assert result.returncode == 0, result.stderr[-3000:]
    one, two = weights(reference / "unlearn" / "final"), weights(out / "unlearn" / "final")
    base = weights(tiny_model_dir)
    assert one.keys() == two.keys()
    moved = max((one[name] - base[name]).abs().max().item() for name in one)
    assert moved > 1e-3  # training changed the weights, so agreeing means something
    for name in one:
        torch.testing.assert_close(two[name], one[name], rtol=1e-4, atol=1e-5)
    summary = json.loads((out / "unlearn" / "manifest.json").read_text())["summary"]
    assert summary["processes"] == 2
    assert summary["steps"] == json.loads((reference / "unlearn" / "manifest.json").read_text())["summary"]["steps"]


def test_a_bad_config_under_two_processes_stops_with_one_error_line(tmp_path, tiny_model_dir):
    config = tmp_path / "bad.yaml"
    config.write_text("labels:\n  alpah: 3\n", encoding="utf-8")
    result = launch("labels", "--config", str(config), "--out", str(tmp_path / "run"), "-q")
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors == ["error: unknown config key 'labels.alpah'; did you mean 'labels.alpha'?"]
