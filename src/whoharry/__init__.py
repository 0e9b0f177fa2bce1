"""whoharry: approximate unlearning of a body of text from a causal language model.

An implementation of "Who's Harry Potter? Approximate Unlearning in LLMs" (Eldan & Russinovich, 2023):
reinforce a copy of the model on the target text, derive generic next-token labels from the base and
reinforced models with an anchor dictionary, and fine-tune the base model on those labels.

The Python face, the same stages the command line runs::

    from pathlib import Path
    from whoharry import load_config, run
    cfg = load_config(Path("configs/default.yaml"), ["labels.alpha=3"])
    summary = run(cfg, Path("runs/alpha3"))          # reinforce → (augment) → labels → unlearn → evaluate

Each stage function takes the resolved `Config` and the run folder, skips itself when its folder is
complete with the same settings, and returns its folder; `WhoharryError` reports bad input in one line.
The formula itself is `generic_labels` / `whp_logits` (pure tensor functions).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from whoharry.config import Config, load_config
from whoharry.errors import WhoharryError

if TYPE_CHECKING:
    from whoharry.anchors.dictionary import Anchors

__version__ = "0.1.0"

__all__ = [
    "Anchors",
    "Config",
    "WhoharryError",
    "__version__",
    "augment",
    "evaluate",
    "generic_labels",
    "labels",
    "load_anchors",
    "load_config",
    "load_report",
    "reinforce",
    "run",
    "unlearn",
    "whp_logits",
]


def reinforce(cfg: Config, out: Path, *, progress: bool = True) -> Path:
    """Fine-tune a copy of the base model on the target → `out/reinforce/` (see `stages.reinforce.run`)."""
    from whoharry.stages import reinforce as stage

    return stage.run(cfg, out, progress=progress)


def augment(cfg: Config, out: Path, *, progress: bool = True) -> Path:
    """Passages about the target's world written by the models → `out/augment/generated.txt` (see
    `stages.augment.run`); `run` and `labels` do it themselves whenever `augment.tokens` > 0."""
    from whoharry.stages import augment as stage

    return stage.run(cfg, out, progress=progress)


def labels(cfg: Config, out: Path, *, progress: bool = True) -> Path:
    """Generic labels → `out/labels/labels.safetensors` (see `stages.labels.run`); reinforces first if needed."""
    from whoharry.stages import labels as stage

    return stage.run(cfg, out, progress=progress)


def unlearn(cfg: Config, out: Path, *, progress: bool = True) -> Path:
    """Fine-tune the base model on the generic labels (or a baseline method) → `out/unlearn/final/`."""
    from whoharry.stages import unlearn as stage

    return stage.run(cfg, out, progress=progress)


def evaluate(cfg: Config, out: Path, model_path: Path | None = None, *, progress: bool = True,
             overwrite: bool = False) -> Path:
    """The evaluation suite of `model_path` (default: `out/unlearn/final`) beside the base model →
    `out/eval/` (report.json, report.md, plots)."""
    from whoharry.stages import evaluate as stage

    return stage.run(cfg, out, model_path, progress=progress, overwrite=overwrite)


def run(cfg: Config, out: Path, *, progress: bool = True) -> dict[str, Any]:
    """Every stage in order (`stages.pipeline.run`); returns the evaluation summary, figure by model."""
    from whoharry.stages import pipeline

    return pipeline.run(cfg, out, progress=progress)


def load_report(eval_dir: Path) -> dict[str, Any]:
    """An evaluation folder's report.json as a dict (models, summary, intervals, samples, plots)."""
    from whoharry.evaluation.report import load_report as read

    return read(eval_dir)


def load_anchors(path: Path) -> Anchors:
    """Read and check an anchor dictionary file (YAML `term: generic` or `term: [generic, ...]`)."""
    from whoharry.anchors.dictionary import load_anchors as read

    return read(path)


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


def __getattr__(name: str) -> Any:
    """The tensor-level pieces, imported on first use (they bring torch)."""
    if name in ("generic_labels", "whp_logits"):
        from whoharry.method import whp

        return getattr(whp, name)
    if name == "Anchors":
        from whoharry.anchors.dictionary import Anchors

        return Anchors
    raise AttributeError(f"module 'whoharry' has no attribute {name!r}")
