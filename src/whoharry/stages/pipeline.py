"""`whoharry run`: every stage in order; a stage already complete with the same settings is skipped.

The order is written here, once: reinforce → augment (when `augment.tokens` > 0) → labels → unlearn →
evaluate (the baselines `ga` and `npo` need no reinforced model and no labels: unlearn → evaluate).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from whoharry.config import Config
from whoharry.core import distributed
from whoharry.core.runlock import LOCK
from whoharry.errors import WhoharryError
from whoharry.stages import augment, evaluate, labels, reinforce, unlearn

if TYPE_CHECKING:
    from whoharry.stages.common import Stage

# What a run folder holds: the stages' folders (and the lock); anything else means it is not a run.
RUN_ENTRIES = (reinforce.NAME, augment.NAME, labels.NAME, unlearn.NAME, evaluate.NAME, "eval-quick", "eval-reinforced",
               "eval-ensemble", "eval-quick-ensemble", LOCK)


def check_out_dir(out: Path) -> None:
    """The output folder must be a folder, and either new, empty, or a whoharry run.

    Raises:
        WhoharryError: it is a file, or a folder holding anything else.
    """
    if out.exists() and not out.is_dir():
        raise WhoharryError(f"output folder {out} is a file; choose another --out")
    if out.is_dir():
        entries = sorted(entry.name for entry in out.iterdir())
        if entries and not any(name in RUN_ENTRIES for name in entries):
            shown = ", ".join(entries[:3]) + (", ..." if len(entries) > 3 else "")
            raise WhoharryError(
                f"output folder {out} holds files that are not a whoharry run ({shown}); "
                "choose a new or empty folder for --out"
            )


def training_stages(cfg: Config) -> list[Stage]:
    """The training stages `whoharry run` goes through, in order, for the configured method."""
    if cfg.forget.method != "whp":
        return [unlearn]
    return [reinforce, augment, labels, unlearn] if augment.enabled(cfg) else [reinforce, labels, unlearn]


def run(cfg: Config, out: Path, *, progress: bool = True) -> dict[str, Any]:
    """Reinforce, labels, unlearn, evaluate; returns the evaluation summary (figure -> value, by model:
    base, unlearned, and reference when configured). Under `accelerate launch` every process trains and
    the main process alone evaluates; the others return {}.

    Raises:
        WhoharryError: as the stages raise it (bad input, a diverged loss).
    """
    check_out_dir(out)
    unlearn.preflight(cfg)  # inputs that would otherwise fail only after hours of training
    for stage in training_stages(cfg):
        stage.run(cfg, out, progress=progress)
    if not distributed.is_main():
        return {}
    eval_dir = evaluate.run(cfg, out, progress=progress)
    return evaluate.load_report(eval_dir)["summary"]
