"""Fault injection: a real `whoharry run` on a tiny model, killed with SIGKILL at random moments again and
again and then left to finish, ends exactly where a run that was never interrupted ends."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from .conftest import STORY, write_config

STAGES = ("reinforce", "labels", "unlearn", "eval")


def start(config: Path, out: Path) -> subprocess.Popen:
    command = [sys.executable, "-m", "whoharry", "run", "--config", str(config), "--out", str(out), "-q"]
    # a cache of the run's own: a killed run must not read the base model's figures the clean run measured
    env = {**os.environ, "WHOHARRY_CACHE": str(out.parent / f"{out.name}-cache")}
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)


def holds_lock(out: Path, pid: int) -> bool:
    """Whether the process holds the run folder's lock: it is past its start-up, at work on the stages."""
    try:
        return json.loads((out / ".whoharry.lock").read_text()).get("pid") == pid
    except (OSError, ValueError):
        return False


def finished_stages(out: Path) -> list[str]:
    return [s for s in STAGES if (out / s / "manifest.json").is_file()]


@pytest.mark.slow
def test_runs_killed_at_random_moments_resume_to_the_uninterrupted_result(project, trained_model_dir):
    (project / "target.txt").write_text(STORY * 24, encoding="utf-8")  # stages long enough to be hit
    config = write_config(
        project, trained_model_dir,
        reinforce={"save_every": 1},
        labels={"batch_size": 1, "save_every": 1},
        unlearn={"save_every": 1},
    )
    clean, broken = project / "clean", project / "broken"
    uninterrupted = start(config, clean)
    assert uninterrupted.wait(timeout=600) == 0, uninterrupted.stderr.read()

    # two rounds over the stages: a run is killed a random moment after it took the lock and the stage has
    # begun (its folder appeared); each run resumes from what the last one left, so a stage already
    # finished passes the kill on to a later one
    rng = random.Random(0)
    kills = []
    for stage in STAGES * 2:
        run = start(config, broken)
        while run.poll() is None and not (holds_lock(broken, run.pid) and (broken / stage).exists()):
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 0.2))
        if run.poll() is not None:
            assert run.returncode == 0, run.stderr.read()
            break
        run.kill()  # SIGKILL: no handler, no clean-up
        run.wait()
        done = finished_stages(broken)
        kills.append(next((s for s in STAGES if s not in done), "after eval"))
    print(f"kills, by the stage under way: {kills}")
    assert len(kills) >= 4 and len(set(kills)) >= 3, kills
    final = start(config, broken)
    assert final.wait(timeout=600) == 0, final.stderr.read()

    for name in ("labels/labels.safetensors", "labels/stats.json"):
        assert (clean / name).read_bytes() == (broken / name).read_bytes(), name
    for stage in ("reinforce", "unlearn"):
        a = load_file(str(clean / stage / "final" / "model.safetensors"))
        b = load_file(str(broken / stage / "final" / "model.safetensors"))
        assert a.keys() == b.keys()
        for key in a:
            assert torch.allclose(a[key], b[key], atol=1e-6, rtol=0), (stage, key)
        assert not (broken / stage / "checkpoints").exists()
    reports = [json.loads((run / "eval" / "report.json").read_text()) for run in (clean, broken)]
    assert reports[0]["summary"] == reports[1]["summary"]
    assert reports[0]["intervals"] == reports[1]["intervals"]
    assert not (broken / ".whoharry.lock").exists()
