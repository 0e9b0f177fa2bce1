"""The probes stage: familiarity probes and completion prompts made from the target and its dictionary
(`anchors.probes`), for a target without hand-written ones, split into dev and test halves.

Every candidate goes to the dev or the test half by a hash of its prompt; each half takes up to half its
probes from the held-out text of the split stage, the rest from the training text. Each probe is checked
against the base model: the share whose answer's first token
the base ranks in its top 10 says whether they ask something the model knows (`stats.json`,
`base_top10_share`); a set the base cannot answer measures nothing. No probe is dropped for that, so the
check cannot shape the figure it qualifies.
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

from whoharry.anchors.dictionary import load_anchors
from whoharry.anchors.probes import cloze_candidates, completion_prompts, dev_or_test, select_probes
from whoharry.config import Config, fingerprint, model_key, to_dict
from whoharry.core import artifacts, models
from whoharry.core.text import read_text
from whoharry.evaluation.probes import score_probes
from whoharry.stages import split
from whoharry.stages.common import Outcome, run_stage

log = logging.getLogger(__name__)

NAME = "probes"
FILES = {"probes": "probes_{half}.jsonl", "completions": "completions_{half}.jsonl"}


def path(out: Path, kind: str, half: str) -> Path:
    """The generated file of `kind` (probes, completions) and `half` (dev, test) in the run folder `out`."""
    return out / NAME / FILES[kind].format(half=half)


def key(cfg: Config, out: Path) -> str:
    """The fingerprint of the probes: the split, the dictionary's content, the seed, the settings, and the
    base model that checks them."""
    return fingerprint({
        "split": artifacts.stage_fingerprint(out / split.NAME),
        "anchors": artifacts.file_hash(cfg.data.anchors) if cfg.data.anchors.is_file() else "missing",
        "seed": cfg.seed, "settings": to_dict(cfg.target_files), "model": model_key(cfg.model, reading=True),
        "precision": cfg.eval.precision,
    })


def run(cfg: Config, out: Path, *, progress: bool = True) -> Path:
    """Write `out/probes/`: probes_{dev,test}.jsonl, completions_{dev,test}.jsonl, stats.json, config.yaml
    and manifest.json, unless complete. Reads the finished split stage's folder (`whoharry run` makes it
    first, from the user's target).

    Raises:
        WhoharryError: no finished split, an unreadable dictionary, or too few usable probes in the target
            (a key must follow enough words of its sentence).
    """
    stage_dir = out / NAME

    def body() -> Outcome:
        from whoharry.errors import WhoharryError

        split_dir = out / split.NAME  # made from the user's target before the run trained on its training part
        if artifacts.stage_fingerprint(split_dir) == "missing":
            raise WhoharryError(f"no held-out split in {split_dir}: the probes are made by `whoharry run`, after it")
        anchors = load_anchors(cfg.data.anchors)
        settings = cfg.target_files
        texts = {source: read_text(split_dir / name, f"{source} text")
                 for source, name in (("target", split.TRAIN_FILE), ("heldout", split.HELDOUT_FILE))}
        pools = {source: cloze_candidates(text, anchors, source, min_words=settings.probe_min_words)
                 for source, text in texts.items()}
        if not any(pools.values()):
            raise WhoharryError(f"no familiarity probe could be made: no key of {cfg.data.anchors} follows "
                                f"{settings.probe_min_words} words of its sentence in the target")
        stage_dir.mkdir(parents=True, exist_ok=True)
        stats: dict = {"candidates": {s: len(p) for s, p in pools.items()}, "keys": len(anchors)}
        chosen = []
        for half in ("dev", "test"):  # halved first, so that each half gets its share
            mine = {source: [c for c in pool if dev_or_test(c, cfg.seed) == half] for source, pool in pools.items()}
            wanted, taken = settings.probes // 2, Counter()  # one count per key over both sources
            from_heldout = min(len(mine["heldout"]), wanted // 2)
            probes = select_probes(mine["heldout"], from_heldout, settings.probes_per_key, cfg.seed, taken)
            probes += select_probes(mine["target"], wanted - len(probes), settings.probes_per_key, cfg.seed, taken)
            prompts = completion_prompts(select_probes(mine["target"] + mine["heldout"], settings.completions // 2,
                                                       1, cfg.seed + 1), anchors, texts["target"])
            if not probes or not prompts:
                raise WhoharryError(f"too few probes for a {half} half: the target has {sum(map(len, pools.values()))} "
                                    "places where a dictionary key follows enough words of its sentence; give a "
                                    "longer target, or lower target_files.probe_min_words")
            artifacts.write_jsonl(path(out, "probes", half), [c.record() for c in probes])
            artifacts.write_jsonl(path(out, "completions", half), prompts)
            stats[f"probes_{half}"] = len(probes)
            stats[f"probes_{half}_heldout"] = sum(1 for c in probes if c.source == "heldout")
            stats[f"completions_{half}"] = len(prompts)
            chosen += probes
        stats["base_top10_share"] = _top10_share(cfg, [c.record() for c in chosen], progress)
        artifacts.write_json(stage_dir / "stats.json", stats)
        log.info("probes: %d cloze probes (%d from held-out text), %d completion prompts; the base model ranks "
                 "%.0f%% of the answers in its top 10", len(chosen), sum(1 for c in chosen if c.source == "heldout"),
                 stats["completions_dev"] + stats["completions_test"], 100 * stats["base_top10_share"])
        return Outcome(inputs={"split": str(split_dir), "anchors": str(cfg.data.anchors)},
                       outputs=[path(out, kind, half).name for kind in FILES for half in ("dev", "test")]
                       + ["stats.json"], summary=stats)

    return run_stage(NAME, cfg, stage_dir, key(cfg, out), body, collective=False)


def _top10_share(cfg: Config, probes: list[dict], progress: bool) -> float:
    """The share of probes whose answer's first token the base model ranks among its 10 most likely."""
    source = models.resolve(cfg.model)
    tokenizer = models.load_tokenizer(source, cfg.model)
    base = models.load_model(source, cfg.model, inference=True).requires_grad_(False)
    records = score_probes(base, tokenizer, probes, cfg.eval, "probes: base check", greedy=False, progress=progress)
    return sum(1 for r in records if 1 <= r["rank"] <= 10) / len(records) if records else float("nan")
