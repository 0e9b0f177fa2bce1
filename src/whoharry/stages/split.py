"""The split stage: the target cut into the text every fine-tune trains on and a held-out part that none
ever sees (`core.text.heldout_split`), for a target without hand-written evaluation files.

The held-out part is what membership inference tells the target from (MUSE's PrivLeak needs text of the
same source that the model never trained on) and where half the generated familiarity probes come from,
so they ask what the model knows of the book rather than how one trained sentence goes on.
"""

from __future__ import annotations

import logging
from pathlib import Path

from whoharry.config import Config, fingerprint
from whoharry.core import artifacts, distributed
from whoharry.core.text import heldout_split, make_blocks, read_target, read_text, target_hash
from whoharry.errors import WhoharryError
from whoharry.stages.common import Outcome, run_stage

log = logging.getLogger(__name__)

NAME = "split"
# held-out passages membership inference needs at least: fewer give an AUC of a handful of comparisons
MIN_HELDOUT_PASSAGES = 4
TRAIN_FILE = "train.txt"
HELDOUT_FILE = "heldout.txt"


def key(cfg: Config, out: Path | None = None) -> str:
    """The fingerprint of the split: the target's content and the held-out settings."""
    return fingerprint({
        "target": target_hash(cfg.data),
        "share": cfg.target_files.heldout_share, "pieces": cfg.target_files.heldout_pieces,
    })


def run(cfg: Config, out: Path, *, progress: bool = True) -> Path:
    """Write `out/split/`: train.txt, heldout.txt, stats.json, config.yaml and manifest.json, unless complete.

    Raises:
        WhoharryError: an unreadable target, or one with too few paragraphs to hold any out.
    """
    stage_dir = out / NAME

    def body() -> Outcome | None:
        if not distributed.is_main():  # one process writes; the others wait for its manifest
            return None
        text = read_target(cfg.data)
        train, heldout = heldout_split(text, cfg.target_files.heldout_share, cfg.target_files.heldout_pieces)
        stage_dir.mkdir(parents=True, exist_ok=True)
        artifacts.atomic_write_text(stage_dir / TRAIN_FILE, train)
        artifacts.atomic_write_text(stage_dir / HELDOUT_FILE, heldout)
        paragraphs = len([p for p in heldout.split("\n\n") if p.strip()])
        stats = {"target": str(cfg.data.target), "target_chars": len(text), "train_chars": len(train),
                 "heldout_chars": len(heldout), "heldout_paragraphs": paragraphs,
                 "heldout_share": round(len(heldout) / max(1, len(train) + len(heldout)), 4)}
        artifacts.write_json(stage_dir / "stats.json", stats)
        log.info("split: %d characters held out of %d (%d paragraphs, in up to %d runs)", len(heldout), len(text),
                 paragraphs, cfg.target_files.heldout_pieces)
        return Outcome(inputs={"target": str(cfg.data.target)}, outputs=[TRAIN_FILE, HELDOUT_FILE, "stats.json"],
                       summary=stats)

    return run_stage(NAME, cfg, stage_dir, key(cfg, out), body)


def check_heldout(cfg: Config) -> int:
    """The number of held-out passages membership inference will score (`eval.membership`), counted with the
    model's tokenizer as the evaluation counts them, so that a held-out text too short for it fails before
    any training rather than at the evaluation; 0 when the part is off.

    Raises:
        WhoharryError: fewer than `MIN_HELDOUT_PASSAGES` passages of `eval.membership.passage_tokens` tokens.
    """
    heldout = cfg.eval.membership.heldout
    if "membership" not in cfg.eval.parts or heldout is None:
        return 0
    from whoharry.core import models

    tokenizer = models.load_tokenizer(models.resolve(cfg.model), cfg.model)
    tokens = cfg.eval.membership.passage_tokens
    try:
        count = len(make_blocks(read_text(heldout, "held-out text"), tokenizer, tokens).ids)
    except WhoharryError:  # shorter than one passage
        count = 0
    if count < MIN_HELDOUT_PASSAGES:
        target = len(tokenizer(read_target(cfg.data), add_special_tokens=False).input_ids)
        raise WhoharryError(
            f"the held-out text {heldout} holds {count} passage(s) of {tokens} tokens (the text trained on holds "
            f"{target} tokens), and membership inference "
            f"needs at least {MIN_HELDOUT_PASSAGES}: give a longer target, raise target_files.heldout_share "
            f"(now {cfg.target_files.heldout_share}), lower eval.membership.passage_tokens, or leave out the part "
            f"(--set 'eval.parts=[...]' without membership)")
    return count
