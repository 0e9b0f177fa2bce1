"""`whoharry run`: every stage in order; a stage already complete with the same settings is skipped."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from whoharry import distributed, evaluate, unlearn
from whoharry.config import Config
from whoharry.errors import WhoharryError
from whoharry.runlock import LOCK

# What a run folder holds: the stages' folders (and the lock); anything else means it is not a run.
RUN_ENTRIES = ("reinforce", "labels", "unlearn", "eval", "eval-quick", "eval-reinforced", "eval-ensemble",
               "eval-quick-ensemble", LOCK)


def check_out_dir(out: Path) -> None:
    """The output folder must be a folder, and either new, empty, or a whoharry run."""
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


def run(cfg: Config, out: Path, *, progress: bool = True) -> dict[str, Any]:
    """Reinforce, labels, unlearn, eval; returns the evaluation summary."""
    check_out_dir(out)
    # unlearn.run runs labels.run first, which runs reinforce.run first; each skips when complete
    unlearn.run(cfg, out, progress=progress)
    if not distributed.is_main():
        return {}  # under accelerate launch the main process evaluates, alone
    eval_dir = evaluate.run(cfg, out, progress=progress)
    report = evaluate.load_report(eval_dir)
    return report["summary"]
