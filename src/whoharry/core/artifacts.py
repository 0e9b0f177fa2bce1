"""The files every stage writes: resolved `config.yaml`, `metrics.jsonl`, and `manifest.json` last.

A stage is complete when its manifest exists, says so, carries the fingerprint of the settings and
inputs that made it, and every output it lists is still on disk. Anything else is redone.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import platform
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml

from whoharry import __version__

MANIFEST = "manifest.json"


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary name beside `path` (`.NAME.tmp`) to write a file or a folder under; when the block ends
    without an exception it is renamed over `path` (an older folder of that name is removed first), so
    a reader never sees a half-written artifact. A temporary folder left by a killed process is cleared
    first (a temporary file is simply overwritten by the writer).

    Yields:
        The temporary path (`.NAME.tmp` beside `path`); nothing is created there yet.

    Raises:
        Whatever the block raises (the temporary is then left for the next attempt to clear), or the
        `OSError` of the rename.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_name(path)
    if tmp.is_dir():
        shutil.rmtree(tmp)
    yield tmp
    publish(tmp, path)


def temporary_name(path: Path) -> Path:
    """Where `path` is written before `publish` puts it in place: `.NAME.tmp` beside it."""
    return path.with_name(f".{path.name}.tmp")


def publish(tmp: Path, path: Path) -> None:
    """Rename a finished file or folder over `path`, removing an older folder of that name first.

    Raises:
        OSError: the rename failed (e.g. `tmp` is missing).
    """
    if path.is_dir() and tmp.is_dir():
        shutil.rmtree(path)
    os.replace(tmp, path)


def atomic_write_text(path: Path, text: str) -> None:
    """Write UTF-8 text to `path` through `atomic_path`, flushed to disk before the rename."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())


def write_json_unique(path: Path, data: Any) -> None:
    """`data` as JSON, written under a temporary name of its own and renamed into place: for a file that
    several processes may write at once (a cache shared by run folders); the last rename wins whole.

    Raises:
        OSError: the folder cannot be made or written.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write(json.dumps(data, indent=2) + "\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, data: Any) -> None:
    """`data` as JSON (2-space indent, keys in their own order, a final newline), written atomically.

    Raises:
        TypeError: `data` holds something JSON cannot represent.
    """
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    """One JSON object a line (non-ASCII kept as it is), written atomically.

    Raises:
        TypeError: a row holds something JSON cannot represent.
    """
    atomic_write_text(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))


def write_yaml(path: Path, data: Any) -> None:
    """`data` as YAML (`yaml.safe_dump`, keys in their own order), written atomically.

    Raises:
        yaml.representer.RepresenterError: `data` holds something safe YAML cannot represent.
    """
    atomic_write_text(path, yaml.safe_dump(data, sort_keys=False))


def file_hash(path: Path) -> str:
    """The sha256 of a file's bytes, read in 1 MiB chunks: its first 16 hex digits (a 16-character str).

    Raises:
        OSError: the file cannot be read.
    """
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()[:16]


def versions() -> dict[str, str]:
    """The versions of whoharry, Python, torch and transformers, for a manifest (imports torch)."""
    import torch
    import transformers

    return {
        "whoharry": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }


@functools.cache
def code_hash() -> str:
    """What identifies the code that computes a result kept across run folders: the sha256 (16 hex digits)
    of the whoharry package's Python files, of the versions of `versions()` and of the other libraries a
    measurement runs through (a str). Any edit to the package or a library update changes it, so such a
    result is never read by other code."""
    libraries = {}
    for name in ("tokenizers", "accelerate", "peft", "numpy", "safetensors", "lm_eval"):
        try:
            libraries[name] = metadata.version(name.replace("_", "-"))
        except metadata.PackageNotFoundError:
            libraries[name] = None
    digest = hashlib.sha256(json.dumps([versions(), libraries], sort_keys=True).encode())
    package = Path(__file__).resolve().parents[1]
    for path in sorted(package.rglob("*.py")):
        digest.update(str(path.relative_to(package)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


class MetricsLog:
    """Appends one JSON object a line to `metrics.jsonl` (the file is opened and closed per record).

    Args:
        path: the log file; its folder is created.
        append: keep the records already there (a resumed stage); otherwise an existing file is deleted.
    """

    def __init__(self, path: Path, *, append: bool = False) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        if not append and path.exists():
            path.unlink()

    def log(self, **record: Any) -> None:
        """Append `record` as one JSON line (raises `TypeError` for a value JSON cannot represent)."""
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")


def truncate_metrics(path: Path, field: str, last: int) -> None:
    """Keep the records of `metrics.jsonl` whose `field` is at most `last` (a resumed stage logs the rest
    again); a record without `field` counts as 0 and is kept; a line cut short by a killed process, or one
    that is not a JSON object, is dropped. Nothing happens when the file is missing."""
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


class ResumeLog:
    """Results saved one at a time in a JSONL file, so that an interrupted step resumes after the last one.

    The first line holds the key of the settings the results depend on; each further line is one result,
    `{"index": i, "value": ...}`, in order. A file of another key is started afresh, and a line cut short by
    a killed process (or out of order) ends the results read back; the lines after it are dropped.
    """

    def __init__(self, path: Path, key: str) -> None:
        self.path, self.key = path, key
        self.done: list[Any] = self._read()
        if self.done:
            atomic_write_text(path, "".join(json.dumps(line) + "\n" for line in self._lines()))
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(path, json.dumps({"key": key}) + "\n")

    def _lines(self) -> list[dict[str, Any]]:
        return [{"key": self.key}, *({"index": i, "value": v} for i, v in enumerate(self.done))]

    def _read(self) -> list[Any]:
        if not self.path.is_file():
            return []
        lines = self.path.read_text(encoding="utf-8").splitlines()
        done: list[Any] = []
        try:
            if not lines or json.loads(lines[0]).get("key") != self.key:
                return []
            for line in lines[1:]:
                record = json.loads(line)
                if record.get("index") != len(done):
                    break
                done.append(record["value"])
        except (ValueError, AttributeError, KeyError):
            pass  # a cut line: what came before it stands
        return done

    def append(self, value: Any) -> None:
        """Save the next result (JSON-serialisable) at the end of the file, and in `done`."""
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps({"index": len(self.done), "value": value}) + "\n")
        self.done.append(value)


@dataclass
class StageRecord:
    """What a stage's manifest says about it: its name, fingerprint (key), inputs by name, output files
    (relative to its folder), seed, wall-clock `seconds`, and headline `summary` figures."""

    stage: str
    fingerprint: str
    inputs: dict[str, str]
    outputs: list[str]
    seed: int
    seconds: float = 0.0
    summary: dict[str, Any] = field(default_factory=dict)


def write_stage(stage_dir: Path, record: StageRecord, config: dict[str, Any]) -> None:
    """Write `config.yaml`, then `manifest.json` last, marking the stage complete.

    The manifest also holds a `config_hash` (sha256 of the config as sorted YAML, 16 hex digits), the
    finish time, `seconds` rounded to 0.01 s, and `versions()`.
    """
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
    """A stage folder's `manifest.json` as a dict, or None when it is missing, unreadable or not an object."""
    return read_json_object(stage_dir / MANIFEST)


def read_json_object(path: Path) -> dict[str, Any] | None:
    """A JSON file holding an object, as a dict; None when it is missing, unreadable or not an object."""
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


def read_cached(path: Path, key: str) -> dict[str, Any] | None:
    """A result stored by `write_cached` under the same `key`, or None (missing, unreadable or stale)."""
    stored = read_json_object(path)
    return stored if stored is not None and stored.get("key") == key else None


def write_cached(path: Path, key: str, payload: dict[str, Any]) -> None:
    """Store a JSON result as `{"key": key, **payload}`, for `read_cached` to return while `key` holds."""
    write_json(path, {"key": key, **payload})


def stage_fingerprint(stage_dir: Path) -> str:
    """The fingerprint of a finished stage, for the stages that consume its outputs; "missing" when the
    folder holds no complete manifest."""
    manifest = read_manifest(stage_dir)
    if manifest is None or manifest.get("status") != "complete":
        return "missing"
    return str(manifest.get("fingerprint"))
