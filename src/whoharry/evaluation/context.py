"""What every part of one evaluation shares (`Context`), and the cache of the parts' results: a part is
stored under `parts/MODEL/PART.json` with the fingerprint of the model and of the settings that part depends on
(`PART_INPUTS`), and the base model's parts also in `$WHOHARRY_CACHE/eval/` (`shared_parts_dir`), keyed by
the base's weights and the code besides, for runs in other folders.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from operator import attrgetter
from pathlib import Path
from typing import Any

from whoharry.anchors.dictionary import Anchors
from whoharry.config import Config, EvalConfig, fingerprint, to_dict
from whoharry.core import artifacts, corpus, models

log = logging.getLogger(__name__)

Part = tuple[dict[str, float], dict[str, Any]]  # (summary figures, per-sample records by kind)


# What each part's figures depend on, beside the model, the seed, the anchor dictionary and the target
# text (which every part's key holds) and the settings every part shares (COMMON_FIELDS): dotted paths
# into `eval`, a whole section or one of its fields. A part reads its own section and these only.
RELEARNING = ("relearning.steps", "relearning.eval_every", "relearning.blocks", "relearning.learning_rate",
              "probes.target", "block_length")
PART_INPUTS: dict[str, tuple[str, ...]] = {
    "probes": ("probes",),
    "completions": ("completions",),
    "llm_judge": ("completions", "llm_judge", "target_name"),  # judges the greedy completions
    "sampling": ("completions", "sampling"),
    "knowmem": ("knowmem",),
    "robustness": ("robustness", "probes.target", "probes.max_new_tokens"),
    "verbatim": ("verbatim",),
    "membership": ("membership",),
    "utility": ("utility", "block_length"),
    "quantization": ("quantization", "probes.target", "probes.general"),
    "benchmarks": ("benchmarks.limit",),  # one cached part per task, `benchmark-TASK`: the task is in the name
    "prompts": ("prompts", "probes.target"),
    "latent": ("latent", "probes.target"),
    # one cached part per source: `relearning` (the target's blocks), `relearning-heldout`, `relearning-facts`
    "relearning": RELEARNING,
    "relearning-heldout": (*RELEARNING, "membership.heldout"),
    "relearning-facts": RELEARNING,
}
COMMON_FIELDS = ("max_samples", "batch_size", "precision")


def value_key(value: Any, *, by_content: bool = False) -> Any:
    """A setting as it enters a fingerprint: a file by its path and content hash (`by_content`: its content
    hash alone, the same wherever the file lies), a section field by field, a list item by item."""
    if isinstance(value, Path):
        digest = corpus.source_hash(value) if value.is_file() or corpus.is_table(value) else None
        digest = None if digest == "missing" else digest
        return digest if by_content else [str(value), digest]
    if dataclasses.is_dataclass(value):
        return {f.name: value_key(getattr(value, f.name), by_content=by_content) for f in dataclasses.fields(value)}
    if isinstance(value, list):
        return [value_key(item, by_content=by_content) for item in value]
    return to_dict(value)


def part_inputs(part: str) -> tuple[str, ...]:
    """The dotted `eval` settings a cached part (`probes`, ..., `llm_judge`, `benchmark-TASK`) depends on."""
    return PART_INPUTS["benchmarks" if part.startswith("benchmark-") else part] + COMMON_FIELDS


def part_fingerprint(cfg: Config, part: str, *, by_content: bool = False) -> str:
    """The fingerprint of everything one part's figures depend on, the model aside (`by_content`: input
    files by their content alone)."""
    return fingerprint({
        "part": part,
        "settings": {path: value_key(attrgetter(path)(cfg.eval), by_content=by_content) for path in part_inputs(part)},
        "seed": cfg.seed,
        "anchors": value_key(cfg.data.anchors, by_content=by_content),
        "target": value_key(cfg.data.target, by_content=by_content),
    })


@dataclass
class Context:
    """What every part of one evaluation shares."""

    config: Config
    folder: Path  # the eval stage folder (parts/ cache, relearning work folders)
    overwrite: bool
    control: Anchors | None  # the anchor dictionary: generic controls of target probes, judge terms
    member_text: str | None  # the target text
    progress: bool
    base_id: str = ""  # identifies the base model, the judge of every model's completion fluency
    # the base model's weights by content (`evaluate.weights_identity`): its parts are then also kept across
    # run folders, in `shared_parts_dir()`; None keeps them in this folder only
    shared_id: str | None = None
    shared_reads: dict[str, str] = dataclasses.field(default_factory=dict)  # part -> the shared file read

    @property
    def eval(self) -> EvalConfig:
        """The `eval` section of the config."""
        return self.config.eval

    @property
    def seed(self) -> int:
        return self.config.seed

    def cached(self, model_name: str, model_id: str, part: str, compute: Callable[[], Part], *,
               reference: bool = False) -> Part:
        """The part's (summary, samples) from the cache when made by the same model and settings (and, for
        the completions, the same judge and the same role: the fluency reference or not)."""
        path = self.folder / "parts" / model_name / f"{part}.json"
        judge = [self.base_id, reference] if part == "completions" else None
        key = fingerprint({"model": model_id, "judge": judge, "settings": part_fingerprint(self.config, part)})
        stored = None if self.overwrite else artifacts.read_cached(path, key)
        if stored is not None:
            log.info("eval: %s %s cached, skipped", model_name, part)
            if stored.get("shared_from"):
                self.shared_reads[part] = stored["shared_from"]
            return stored["summary"], stored["samples"]
        shared = None
        if model_name == "base" and self.shared_id is not None:
            # input files by content: a clone of the project elsewhere reads what this one measured
            shared_key = fingerprint([model_id, judge, part_fingerprint(self.config, part, by_content=True),
                                      self.shared_id, artifacts.code_hash()])
            shared = shared_parts_dir() / f"{shared_key}.json"
            try:
                stored = None if self.overwrite else artifacts.read_cached(shared, shared_key)
            except OSError:  # an unreadable cache folder: measured here instead
                stored = None
            if stored is not None:
                log.info("eval: base %s read from %s", part, shared)
                self.shared_reads[part] = str(shared)
                artifacts.write_cached(path, key, {**{k: v for k, v in stored.items() if k != "key"},
                                                   "shared_from": str(shared)})
                return stored["summary"], stored["samples"]
        began = time.perf_counter()
        summary, samples = compute()
        seconds = time.perf_counter() - began
        log.info("eval: %s %s done in %.0f s", model_name, part, seconds)
        payload = {"seconds": round(seconds, 2), "summary": summary, "samples": samples}
        artifacts.write_cached(path, key, payload)
        if shared is not None:
            try:  # a cache that cannot be written costs the next run a minute, not this run its result
                artifacts.write_json_unique(shared, {"key": shared_key, **payload})
            except OSError as exc:
                log.warning("eval: the base's %s part not kept in %s: %s", part, shared.parent, exc)
        return summary, samples


def shared_parts_dir() -> Path:
    """Where the base model's evaluation parts are kept across run folders: `$WHOHARRY_CACHE/eval`."""
    return models.cache_dir() / "eval"
