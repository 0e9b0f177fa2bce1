"""The unlearned model's card: `unlearn/final/README.md`, written with `huggingface_hub.ModelCard`, and the
run's provenance beside it (`whoharry_config.yaml`, `whoharry_manifest.json`: the unlearn stage's resolved
config and manifest), so that a copy of the folder, or its upload, says what was removed and how.

The card holds the base model, what was unlearned (the target's file name and size, the anchor dictionary's
size), the method and its settings, the evaluation table and the attack audit's worst attack when the run
has them (rewritten whenever `whoharry eval` writes a report for this folder), the limits measured, and the
paper's citation.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from whoharry.config import Config
from whoharry.core import artifacts, corpus
from whoharry.core.hub import CARD

log = logging.getLogger(__name__)

__all__ = ["CARD", "CONFIG_COPY", "MANIFEST_COPY", "write_card"]

CONFIG_COPY = "whoharry_config.yaml"
MANIFEST_COPY = "whoharry_manifest.json"
# the hub repositories of the embedded models (`core.models.ALIASES`), for the card's `base_model`
HUB_IDS = {"smollm2-135m": "HuggingFaceTB/SmolLM2-135M-Instruct", "gemma3-270m": "google/gemma-3-270m"}
CITATION = """@article{eldan2023whos,
  title   = {Who's Harry Potter? Approximate Unlearning in LLMs},
  author  = {Eldan, Ronen and Russinovich, Mark},
  journal = {arXiv preprint arXiv:2310.02238},
  year    = {2023}
}"""
METHODS = {"whp": "Who's Harry Potter (Eldan & Russinovich 2023): fine-tuned on the target with generic labels "
                  "from an anchor dictionary and a reinforced model",
           "ga": "gradient ascent on the target (a baseline)",
           "npo": "negative preference optimisation against the base model (Zhang et al. 2024; a baseline)"}


def _base_model(name: str) -> str | None:
    """The hub id of the base model, when it has one: an embedded alias's, or a name shaped `owner/model`
    that is not a local path."""
    if name in HUB_IDS:
        return HUB_IDS[name]
    return name if name.count("/") == 1 and not Path(name).exists() and not name.startswith((".", "/")) else None


def _target_lines(cfg: Config, run_dir: Path, report: dict) -> list[str]:
    target = report.get("target") or {}
    name = Path(target.get("file") or cfg.data.target).name
    size = target.get("bytes") or corpus.source_bytes(cfg.data.target)
    lines = [f"- **Target**: `{name}` ({size:,} bytes)"]
    labels_stats = artifacts.read_json_object(run_dir / "labels" / "stats.json") or {}
    if cfg.forget.method == "whp" and labels_stats:
        found = labels_stats.get("anchor_keys_found", 0)
        missing = labels_stats.get("anchor_keys_missing", 0)
        lines.append(f"- **Anchor dictionary**: `{cfg.data.anchors.name}`, {found + missing} keys ({found} found in "
                     f"the target, {labels_stats.get('anchor_occurrences', 0):,} occurrences); "
                     f"{labels_stats.get('positions_changed', 0):,} of {labels_stats.get('positions_labelled', 0):,} "
                     "positions got a generic label")
    made = target.get("made") or {}
    if made:
        lines.append(f"- Made from the target by the run: {', '.join(made)}")
    return lines


def _epochs(count: float) -> str:
    return f"{count:g} epoch{'' if count == 1 else 's'}"


RETAIN_LABELS = {"text": "their own tokens", "base": "the base model's distribution",
                 "both": "their own tokens and the base model's distribution"}


def _settings_lines(cfg: Config) -> list[str]:
    train = cfg.unlearn
    lines = [f"- **Method**: `{cfg.forget.method}`, {METHODS[cfg.forget.method]}",
             f"- Unlearning fine-tune: {_epochs(train.epochs)}, learning rate {train.learning_rate:g}, batch "
             f"{train.batch_size} × {cfg.data.block_length} tokens, precision `{train.precision}`"
             + (f", LoRA rank {train.lora_rank}" if train.lora_rank else "")
             + (f"; then mixed with the base, base + {cfg.forget.wise_ft:g} × (trained − base) (WiSE-FT)"
                if cfg.forget.wise_ft != 1 else "")]
    if cfg.forget.method == "whp":
        lines.append(f"- Generic labels: α = {cfg.labels.alpha:g}, targets `{cfg.labels.targets}`; reinforced model "
                     f"fine-tuned for {_epochs(cfg.reinforce.epochs)} at learning rate {cfg.reinforce.learning_rate:g}")
    else:
        lines.append(f"- Forget settings: β = {cfg.forget.npo_beta:g} (NPO), retain weight "
                     f"{cfg.forget.retain_weight:g}")
    fitted = (f", fitted to {RETAIN_LABELS[cfg.forget.retain_labels]}"
              if cfg.forget.method == "whp" and cfg.data.retain else "")
    lines.append(f"- Retain text: {', '.join(f'`{path.name}`' for path in cfg.data.retain) or 'none'}{fitted}; "
                 f"seed {cfg.seed}")
    return lines


def _evaluation_lines(run_dir: Path, report: dict) -> list[str]:
    from whoharry.evaluation.report import table_rows

    lines = ["## Evaluation", ""]
    if report.get("summary"):
        lines += ["Measured by `whoharry eval` on the run's probe files (`eval/report.md` has the intervals):", "",
                  "| figure | base | unlearned | unlearned / base |", "| --- | ---: | ---: | ---: |"]
        lines += [f"| {' | '.join(row)} |" for row in table_rows(report["summary"])]
    else:
        lines.append("Not evaluated yet: `whoharry eval` writes the table here.")
    lines += ["", "## Limits measured", ""]
    audit = (artifacts.read_json_object(run_dir / "eval-audit" / "report.json")
             or artifacts.read_json_object(run_dir / "eval-audit-quick" / "report.json") or {})
    table = audit.get("audit")  # written whenever the report's evaluation ran an attack
    if table:
        worst = table["worst"]
        span = worst.get("interval")
        lines.append(f"The attack audit (`whoharry eval --audit`): the worst attack, {worst['attack']}, brings back "
                     f"{worst['recovery']:.2f}{f' [{span[0]:.2f}, {span[1]:.2f}]' if span else ''} of the base model's "
                     "familiarity under the same attack. Fine-tuning-based unlearning can hide knowledge a few steps "
                     "of fine-tuning restore: treat the model as one that does not guarantee removal.")
    else:
        lines.append("Robustness not measured: `whoharry eval --audit` attacks the model (prompts, the logit lens, "
                     "quantization, relearning) and writes its worst case here. Fine-tuning-based unlearning can "
                     "hide knowledge rather than remove it.")
    return lines


def write_card(final: Path, cfg: Config, run_dir: Path) -> Path:
    """Write `final/README.md` (the card) and, when the unlearn stage finished, copy its `config.yaml` and
    `manifest.json` into `final/` as `whoharry_config.yaml` and `whoharry_manifest.json`.

    Args:
        final: the unlearned model's save_pretrained folder (`run_dir/unlearn/final`).
        cfg: the resolved config of the command writing the card; the method and its settings are read from
            the unlearn stage's own `config.yaml` beside `final/` when it is there (a later `whoharry eval`
            need not repeat `--method` or the training settings).
        run_dir: the run folder, read for the labels' statistics and the evaluation and audit reports.

    Returns:
        The card's path.
    """
    from huggingface_hub import ModelCard, ModelCardData

    from whoharry.config import load_config

    own = final.parent / "config.yaml"
    cfg = load_config(own) if own.is_file() else cfg
    report = artifacts.read_json_object(run_dir / "eval" / "report.json") or {}  # the plain evaluation's
    base = _base_model(cfg.model.name)
    data = ModelCardData(base_model=base, library_name="transformers",
                         tags=["whoharry", "unlearning", "who-is-harry-potter", f"unlearning-{cfg.forget.method}"])
    body = [f"# {cfg.model.name}, with a text unlearned", "",
            f"This model is `{cfg.model.name}`{f' ([{base}](https://huggingface.co/{base}))' if base else ''} after "
            "approximate unlearning with whoharry, made to forget the text below without retraining from "
            "scratch.", "",
            "## What was unlearned", "", *_target_lines(cfg, run_dir, report), "",
            "## Method and settings", "", *_settings_lines(cfg), "",
            f"The run's resolved config and manifest are in `{CONFIG_COPY}` and `{MANIFEST_COPY}`.", "",
            *_evaluation_lines(run_dir, report), "", "## Citation", "", "```bibtex", CITATION, "```", ""]
    card = ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(body))
    path = final / CARD
    with artifacts.atomic_path(path) as tmp:
        card.save(tmp)
    stage_dir = final.parent
    for source, copy in (("config.yaml", CONFIG_COPY), ("manifest.json", MANIFEST_COPY)):
        if (stage_dir / source).is_file():
            shutil.copyfile(stage_dir / source, final / copy)
    log.info("model card: %s", path)
    return path
