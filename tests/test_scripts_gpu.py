"""The GPU check script runs end to end (on the CPU, with a tiny random model), so it works when a GPU is there."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_runs_every_stage_and_reports_each(tmp_path):
    command = [sys.executable, str(ROOT / "scripts" / "gpu_check.py"), "--cpu", "--layers", "2", "--width", "128",
               "--vocab", "600", "--steps", "2", "--batch", "2", "--block", "64", "--repeat", "1",
               "--work", str(tmp_path)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert set(report["stages"]) == {"reinforce", "labels", "unlearn"}
    for name, stage in report["stages"].items():
        assert stage["tokens"] > 0 and stage["tokens_per_second"] > 0, name
    assert report["stages"]["reinforce"]["tokens"] == 2 * 2 * 64  # steps x batch x block
    assert (tmp_path / "run" / "unlearn" / "final" / "config.json").is_file()
