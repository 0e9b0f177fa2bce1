"""The dictionary stage: the anchor dictionary made from the target by `anchors suggest` (the reinforced
model's gain, specificity against general text, name shape, offline translations), for a target without
a hand-written one. It runs after reinforce, whose model it reads (the baselines ga and npo train none,
and rank without the gain), and writes `anchors.yaml`, which the labels stage then uses like any
dictionary. The LLM route is `whoharry anchors suggest --llm`, whose output can be named as data.anchors.
"""

from __future__ import annotations

import logging
from pathlib import Path

from whoharry.anchors import suggest
from whoharry.config import Config, fingerprint, model_key, to_dict
from whoharry.core import artifacts, distributed
from whoharry.stages import reinforce
from whoharry.stages.common import Outcome, require, run_stage

log = logging.getLogger(__name__)

NAME = "dictionary"
DICTIONARY_FILE = "anchors.yaml"


def general_texts(cfg: Config) -> list[Path]:
    """The general text the terms are told apart from: the retain texts and the utility part's text."""
    return [*cfg.data.retain, *([cfg.eval.utility.general_text] if cfg.eval.utility.general_text else [])]


def uses_gain(cfg: Config) -> bool:
    """Whether the terms are ranked with the reinforced model's gain: for WHP, whose run trains that model;
    the baselines (ga, npo) train none, and rank by specificity and name shape alone."""
    return cfg.forget.method == "whp"


def key(cfg: Config, out: Path) -> str:
    """The fingerprint of the dictionary: the target, the reinforced model's key when it ranks the terms,
    the model, the `anchors` settings suggest reads, the general texts and the settings of the gain."""
    settings = {k: v for k, v in to_dict(cfg.anchors).items() if not k.startswith("llm_") and k != "batch_size"}
    return fingerprint({
        "target": artifacts.file_hash(cfg.data.target) if cfg.data.target.is_file() else "missing",
        "reinforced": reinforce.key(cfg, out) if uses_gain(cfg) else None,
        "model": model_key(cfg.model, reading=True), "anchors": settings,
        "general": [artifacts.file_hash(p) for p in general_texts(cfg) if p.is_file()],
        "block_length": cfg.data.block_length, "alpha": cfg.labels.alpha, "precision": cfg.labels.precision,
    })


def run(cfg: Config, out: Path, *, progress: bool = True) -> Path:
    """Write `out/dictionary/`: anchors.yaml, config.yaml and manifest.json, unless complete; runs reinforce
    first when its folder is missing or stale.

    Raises:
        WhoharryError: as `anchors suggest` raises it (no candidate term, an unreachable LLM endpoint).
    """
    stage_dir = out / NAME

    def body() -> Outcome | None:
        reinforced = require(reinforce, cfg, out, progress=progress) / "final" if uses_gain(cfg) else None
        if not distributed.is_main():  # one process writes; the others wait for its manifest
            return None
        stage_dir.mkdir(parents=True, exist_ok=True)
        found = suggest.suggest_file(cfg, reinforced, stage_dir / DICTIONARY_FILE, general=general_texts(cfg),
                                     progress=progress)
        log.info("dictionary: %d terms of %d candidates", len(found.chosen), found.candidates)
        return Outcome(inputs={"target": str(cfg.data.target), "reinforced": str(reinforced) if reinforced else None},
                       outputs=[DICTIONARY_FILE],
                       summary={"terms": len(found.chosen), "candidates": found.candidates,
                                "used_gain": found.used_gain})

    return run_stage(NAME, cfg, stage_dir, key(cfg, out), body)
