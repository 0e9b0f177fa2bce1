"""FSDP 2 on two CPU processes: `accelerate launch --use_fsdp` on a machine without a GPU, where accelerate
runs plain multi-CPU processes and the training loop shards the model with torch's `fully_shard` over gloo
(`core.fsdp`). A reinforce stage with sharded checkpoints, killed and resumed, ends with the weights of one
plain process, and its sharded checkpoint loads back."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from tests.conftest import STORY, write_config
from whoharry.cli import app

runner = CliRunner()


def start(*args: str) -> subprocess.Popen:
    """`accelerate launch --use_fsdp --fsdp_version 2 -m whoharry ARGS`, two processes."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "-m", "accelerate.commands.launch", "--use_fsdp", "--fsdp_version", "2",
               "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "--main_process_port", str(port), "-m", "whoharry", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def kill_tree(pid: int) -> None:
    """SIGKILL a process and every process below it (torch's launcher starts its workers in sessions of
    their own, so a process group does not reach them)."""
    children: dict[int, list[int]] = {}
    for stat in os.listdir("/proc"):
        if stat.isdigit():
            try:
                with open(f"/proc/{stat}/stat") as handle:
                    fields = handle.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            children.setdefault(int(fields[1]), []).append(int(stat))
    tree, todo = [], [pid]
    while todo:
        tree.append(todo.pop())
        todo += children.get(tree[-1], [])
    for member in tree:
        with contextlib.suppress(ProcessLookupError):
            os.kill(member, signal.SIGKILL)


def checkpoint_steps(stage) -> list[int]:
    return sorted(int(p.parent.name.removeprefix("step-")) for p in (stage / "checkpoints").glob("step-*/state.json"))


@pytest.mark.slow
def test_fsdp_on_two_cpu_processes_killed_and_resumed_gives_the_weights_of_one_process(project, tiny_model_dir):
    (project / "target.txt").write_text(STORY * 16, encoding="utf-8")
    one = write_config(project, tiny_model_dir, reinforce={"batch_size": 4, "epochs": 2, "learning_rate": 1e-3,
                                                           "precision": "fp32"})
    reference = project / "one"
    result = runner.invoke(app, ["reinforce", "--config", str(one), "--out", str(reference), "-q"])
    assert result.exit_code == 0, result.output
    steps = json.loads((reference / "reinforce" / "manifest.json").read_text())["summary"]["steps"]
    assert steps >= 12

    two = write_config(project, tiny_model_dir, reinforce={"batch_size": 2, "epochs": 2, "learning_rate": 1e-3,
                                                           "precision": "fp32", "save_every": 1,
                                                           "keep_checkpoints": 100})
    out = project / "two"
    args = ("reinforce", "--config", str(two), "--out", str(out), "-q")
    run = start(*args)
    stage = out / "reinforce"
    while run.poll() is None and len(checkpoint_steps(stage)) < 2:
        time.sleep(0.005)
    kill_tree(run.pid)  # the launcher and both workers, mid-stage
    run.wait()
    assert run.returncode != 0 and not (stage / "manifest.json").exists(), run.stderr.read()[-3000:]
    kept = checkpoint_steps(stage)
    assert 2 <= kept[-1] < steps
    shards = stage / "checkpoints" / f"step-{kept[-1]}" / "fsdp"
    assert {p.name for p in shards.iterdir()} >= {".metadata", "__0_0.distcp", "__1_0.distcp"}

    # the sharded checkpoint loads back in one process: the model's weights, trained, and the optimizer's state
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    dcp_to_torch_save(str(shards), str(project / "whole.pt"))
    whole = torch.load(project / "whole.pt", weights_only=True)
    start_weights = load_file(str(tiny_model_dir / "model.safetensors"))
    assert set(whole["model"]) >= set(start_weights) and whole["optim"]["state"]
    assert all(whole["model"][k].shape == w.shape for k, w in start_weights.items())
    assert max((whole["model"][k] - w).abs().max().item() for k, w in start_weights.items()) > 1e-4

    resumed = start(*args)
    stdout, stderr = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, stderr[-3000:]
    summary = json.loads((stage / "manifest.json").read_text())["summary"]
    assert (summary["processes"], summary["steps"], summary["resumed_from"]) == (2, steps, kept[-1]), (summary, kept)
    a, b = load_file(str(reference / "reinforce" / "final" / "model.safetensors")), load_file(
        str(stage / "final" / "model.safetensors"))
    assert a.keys() == b.keys()
    assert max((a[k] - start_weights[k]).abs().max().item() for k in a) > 1e-3  # training moved the weights
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=1e-4, atol=1e-5)
    assert not (stage / "checkpoints").exists()


def test_a_checkpoint_of_the_other_kind_of_launch_is_not_resumed(tmp_path):
    """torch's FSDP shards and accelerate's states are told apart: a rerun launched the other way starts
    afresh instead of loading half a checkpoint."""
    from accelerate import Accelerator

    from whoharry.core import checkpoints

    acc = Accelerator(cpu=True)
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    root = tmp_path / "checkpoints"
    (root / "step-3").mkdir(parents=True)
    for written_by_torch, trained in ((True, None), (False, (model, optimizer))):
        state = {"step": 3, "run_key": "k", "processes": 1, "scheduler": scheduler.state_dict(),
                 "torch_fsdp": written_by_torch}
        (root / "step-3" / "state.json").write_text(json.dumps(state))
        assert checkpoints.resume(root, "k", acc, scheduler, trained=trained) == 0
