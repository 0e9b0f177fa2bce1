"""The skeleton every stage runs through, written once.

A stage has a folder under the run folder and a key: the fingerprint of every setting and input its
result depends on. `run_stage` skips the stage when its manifest says it finished with that key and its
outputs are intact; otherwise it runs the stage's body and writes `config.yaml`, then `manifest.json`
last, so an interrupted stage is never taken for a finished one. `require` gives a stage the folder of
an earlier stage it reads, running that stage first when the folder is missing or stale (a stage
invoked on its own); `whoharry run` names the order itself (`stages.pipeline`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from whoharry.config import Config, to_dict
from whoharry.core import artifacts, checkpoints, distributed

log = logging.getLogger(__name__)


@dataclass
class Outcome:
    """What a stage's body reports for its manifest."""

    inputs: dict[str, str | None]  # what it read, by name (paths, model names, fingerprints)
    outputs: list[str]  # the files it wrote, relative to its folder; all must exist for it to count as done
    summary: dict[str, Any] = field(default_factory=dict)  # its headline figures


class Stage(Protocol):
    """A stage module: `NAME` (its folder under the run folder), `key` (the fingerprint of its settings and
    inputs) and `run` (which returns the stage's folder)."""

    NAME: str

    def key(self, cfg: Config, out: Path) -> str:
        """The fingerprint of the stage's settings and inputs (hex digits)."""
        ...

    def run(self, cfg: Config, out: Path, *, progress: bool = True) -> Path:
        """Run the stage unless complete with its key; return its folder."""
        ...


def run_stage(name: str, cfg: Config, stage_dir: Path, key: str, body: Callable[[], Outcome | None], *,
              overwrite: bool = False, collective: bool = True) -> Path:
    """Skip the stage if complete with `key`, else run `body` and write its manifest (main process only).

    Args:
        name: the stage's name, for the manifest and the log.
        cfg: the resolved config, saved as `config.yaml` beside the outputs.
        stage_dir: the stage's folder.
        key: the fingerprint of the stage's settings and inputs.
        body: does the work; returns the `Outcome` (None in processes that write nothing).
        overwrite: run even when complete.
        collective: every process of an `accelerate launch` runs this stage, and all wait for the
            manifest; False for a stage only the main process runs (the evaluation).

    Returns:
        `stage_dir`. Raises whatever `body` raises (`WhoharryError` for bad input); what it finished
        before (checkpoints, saved progress) stays for the next attempt.
    """
    done = not overwrite and artifacts.is_complete(stage_dir, key)
    if collective:  # the main process decides for all, so none skips a barrier the others reach
        done = distributed.share(done)
    if done:
        log.info("%s: complete with these settings, skipped (%s)", name, stage_dir)
        return stage_dir
    began = time.perf_counter()
    outcome = body()
    if outcome is not None and (distributed.is_main() or not collective):
        record = artifacts.StageRecord(stage=name, fingerprint=key, inputs=outcome.inputs, outputs=outcome.outputs,
                                       seed=cfg.seed, seconds=time.perf_counter() - began, summary=outcome.summary)
        artifacts.write_stage(stage_dir, record, to_dict(cfg))
        checkpoints.clear(stage_dir)
    if collective:
        distributed.barrier()
    return stage_dir


def require(stage: Stage, cfg: Config, out: Path, *, progress: bool = True) -> Path:
    """The folder of an earlier stage, complete with the current settings: run that stage first when its
    folder is missing or stale. Returns `out / stage.NAME`.

    Raises:
        WhoharryError: as that stage's `run` raises it.
    """
    stage_dir = out / stage.NAME
    if not artifacts.is_complete(stage_dir, stage.key(cfg, out)):
        log.info("%s: missing or made with other settings; running it first", stage_dir)
        stage.run(cfg, out, progress=progress)
    return stage_dir
