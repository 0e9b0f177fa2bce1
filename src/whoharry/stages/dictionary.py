"""The dictionary stage: the anchor dictionary made from the target by `anchors suggest` (the reinforced
model's gain, specificity against general text, name shape, offline translations), for a target without
a hand-written one. It runs after reinforce, whose model it reads (the baselines ga and npo train none,
and rank without the gain), and writes `anchors.yaml`, which the labels stage then uses like any
dictionary. With an endpoint configured (`anchors.llm_url`) it takes the LLM route of `anchors suggest
--llm` instead, passage by passage as in the paper, and reads no reinforced model.
"""

from __future__ import annotations

import logging
from pathlib import Path

from whoharry.anchors import candidates, suggest
from whoharry.config import Config, fingerprint, model_key, to_dict, without_later_defaults
from whoharry.core import artifacts, distributed
from whoharry.core.corpus import is_hub
from whoharry.core.text import target_hash
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
    the baselines (ga, npo) train none, and rank by specificity and name shape alone; an LLM's dictionary
    (`anchors.llm_url`) is not ranked."""
    return cfg.forget.method == "whp" and not cfg.anchors.llm_url


# settings added after dictionaries were first made: at these values they make the dictionary they always did,
# and stay out of the key, so a finished dictionary is not made again (`name_min_count` stays out wherever it
# is not below `min_count`, where it changes nothing)
_LATER_DEFAULTS = {"names": "model", "max_word_frequency": 1.0}


def key(cfg: Config, out: Path) -> str:
    """The fingerprint of the dictionary: the target, the reinforced model's key when it ranks the terms,
    the model, the `anchors` settings suggest reads, the general texts and the settings of the gain."""
    target = target_hash(cfg.data)
    if cfg.anchors.llm_url:  # the endpoint's dictionary depends on it, its prompt and the passages alone
        return fingerprint({"target": target,
                            "llm": [cfg.anchors.llm_url, cfg.anchors.llm_model, cfg.anchors.llm_passage_chars],
                            "prompt": artifacts.file_hash(cfg.anchors.llm_prompt)
                            if cfg.anchors.llm_prompt.is_file() else "missing", "target_name": cfg.eval.target_name})
    settings = without_later_defaults({k: v for k, v in to_dict(cfg.anchors).items()
                                       if not k.startswith("llm_") and k != "batch_size"}, _LATER_DEFAULTS)
    rare = cfg.anchors.name_min_count < cfg.anchors.min_count  # terms seen fewer than min_count times exist
    if not rare:
        del settings["name_min_count"]
    return fingerprint({
        "target": target, "ranking": candidates.RANKING_RARE if rare else candidates.RANKING,
        "reinforced": reinforce.key(cfg, out) if uses_gain(cfg) else None,
        "model": model_key(cfg.model, reading=True), "anchors": settings,
        "general": [target_hash(cfg.data, p) for p in general_texts(cfg) if p.exists() or is_hub(p)],
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
        if cfg.anchors.llm_url:
            terms = suggest.suggest_with_llm(cfg, stage_dir / DICTIONARY_FILE, progress=progress)
            log.info("dictionary: %d terms from %s", terms, cfg.anchors.llm_model)
            return Outcome(inputs={"target": str(cfg.data.target), "llm": cfg.anchors.llm_url},
                           outputs=[DICTIONARY_FILE], summary={"terms": terms, "used_gain": False, "llm": True})
        found = suggest.suggest_file(cfg, reinforced, stage_dir / DICTIONARY_FILE, general=general_texts(cfg),
                                     progress=progress)
        log.info("dictionary: %d terms of %d candidates", len(found.chosen), found.candidates)
        return Outcome(inputs={"target": str(cfg.data.target), "reinforced": str(reinforced) if reinforced else None},
                       outputs=[DICTIONARY_FILE],
                       summary={"terms": len(found.chosen), "candidates": found.candidates,
                                "used_gain": found.used_gain})

    return run_stage(NAME, cfg, stage_dir, key(cfg, out), body)
