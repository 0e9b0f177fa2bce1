"""The files every stage writes: resolved `config.yaml`, `metrics.jsonl`, and `manifest.json` last.

A stage is complete when its manifest exists, says so, carries the fingerprint of the settings and
inputs that made it, and every output it lists is still on disk. Anything else is redone.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from whoharry import __version__

MANIFEST = "manifest.json"


def atomic_write_text(path: Path, text: str) -> None:
    """Write to a temporary name beside `path`, then rename over it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def write_yaml(path: Path, data: Any) -> None:
    atomic_write_text(path, yaml.safe_dump(data, sort_keys=False))


def file_hash(path: Path) -> str:
    """sha256 of a file's bytes (first 16 hex digits)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()[:16]


def replace_dir(tmp: Path, final: Path) -> None:
    """Move a finished folder into place, removing an older one at that name."""
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)


def versions() -> dict[str, str]:
    import torch
    import transformers

    return {
        "whoharry": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }


class MetricsLog:
    """Appends one JSON object a line to `metrics.jsonl`."""

    def __init__(self, path: Path, *, append: bool = False) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        if not append and path.exists():
            path.unlink()

    def log(self, **record: Any) -> None:
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")


def truncate_metrics(path: Path, field: str, last: int) -> None:
    """Keep the records of `metrics.jsonl` whose `field` is at most `last` (a resumed stage logs the rest
    again); a line cut short by a killed process is dropped too."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and record.get(field, 0) <= last:
            kept.append(line)
    atomic_write_text(path, "".join(line + "\n" for line in kept))


@dataclass
class StageRecord:
    """What a stage's manifest says about it."""

    stage: str
    fingerprint: str
    inputs: dict[str, str]
    outputs: list[str]
    seed: int
    seconds: float = 0.0
    summary: dict[str, Any] = field(default_factory=dict)


def write_stage(stage_dir: Path, record: StageRecord, config: dict[str, Any]) -> None:
    """Write `config.yaml`, then `manifest.json` last, marking the stage complete."""
    write_yaml(stage_dir / "config.yaml", config)
    manifest = {
        "stage": record.stage,
        "status": "complete",
        "fingerprint": record.fingerprint,
        "config_hash": hashlib.sha256(yaml.safe_dump(config, sort_keys=True).encode()).hexdigest()[:16],
        "seed": record.seed,
        "inputs": record.inputs,
        "outputs": record.outputs,
        "seconds": round(record.seconds, 2),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "versions": versions(),
        "summary": record.summary,
    }
    write_json(stage_dir / MANIFEST, manifest)


def read_manifest(stage_dir: Path) -> dict[str, Any] | None:
    path = stage_dir / MANIFEST
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def is_complete(stage_dir: Path, fingerprint: str) -> bool:
    """True when the stage finished with these settings and inputs and its outputs are intact."""
    manifest = read_manifest(stage_dir)
    if manifest is None or manifest.get("status") != "complete":
        return False
    if manifest.get("fingerprint") != fingerprint:
        return False
    return all((stage_dir / name).exists() for name in manifest.get("outputs", []))


def stage_fingerprint(stage_dir: Path) -> str:
    """The fingerprint of a finished stage, for the stages that consume its outputs."""
    manifest = read_manifest(stage_dir)
    if manifest is None or manifest.get("status") != "complete":
        return "missing"
    return str(manifest.get("fingerprint"))
