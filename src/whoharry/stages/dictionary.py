"""The dictionary stage: the anchor dictionary made from the target by `anchors suggest` (the reinforced
model's gain, specificity against general text, name shape, offline translations; the LLM route when
`anchors.llm_url` is set), for a target without a hand-written one. It runs after reinforce, whose model
it reads, and writes `anchors.yaml`, which the labels stage then uses like any dictionary.
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


def key(cfg: Config, out: Path) -> str:
    """The fingerprint of the dictionary: the reinforced model's key (which holds the target), the model,
    the `anchors` settings, the general texts and the settings of the gain (alpha, labels precision)."""
    settings = {k: v for k, v in to_dict(cfg.anchors).items() if k != "llm_key_env"}
    settings["llm_prompt"] = artifacts.file_hash(cfg.anchors.llm_prompt) if cfg.anchors.llm_prompt.is_file() else None
    return fingerprint({
        "reinforced": reinforce.key(cfg, out), "model": model_key(cfg.model, reading=True), "anchors": settings,
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
        reinforced = require(reinforce, cfg, out, progress=progress) / "final"  # every process trains it
        if not distributed.is_main():  # one process writes; the others wait for its manifest
            return None
        stage_dir.mkdir(parents=True, exist_ok=True)
        found = suggest.suggest_file(cfg, reinforced, stage_dir / DICTIONARY_FILE, general=general_texts(cfg),
                                     progress=progress)
        log.info("dictionary: %d terms of %d candidates", len(found.chosen), found.candidates)
        return Outcome(inputs={"target": str(cfg.data.target), "reinforced": str(reinforced)},
                       outputs=[DICTIONARY_FILE],
                       summary={"terms": len(found.chosen), "candidates": found.candidates,
                                "used_gain": found.used_gain})

    return run_stage(NAME, cfg, stage_dir, key(cfg, out), body)
