"""The stage commands: `whoharry reinforce | augment | labels | unlearn | eval | run`, each a shim over its stage:
it resolves the config and returns the action that runs the stage (see `common.stage_command`)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer

from whoharry.cli.common import (
    MethodOption,
    RunOptions,
    TargetOption,
    method_override,
    stage_command,
    summary_text,
)
from whoharry.config import AUDIT, EVAL_PARTS, QUICK, as_overrides
from whoharry.config.evaluation import MUSE
from whoharry.core.corpus import is_hub
from whoharry.errors import WhoharryError

Action = Callable[[], str]  # does the work, returns the text to print


def register(app: typer.Typer) -> None:
    """Add the stage commands to `app`."""
    for command in (reinforce, augment, labels, unlearn):
        app.command()(command)
    app.command("eval")(eval_)
    app.command()(run)


@stage_command
def reinforce(opts: RunOptions) -> Action:
    """Fine-tune a copy of the base model on the target text → [bold]OUT/reinforce/final/[/bold]."""
    from whoharry.stages import reinforce as stage

    cfg = opts.load()
    return lambda: f"reinforced model: {stage.run(cfg, opts.out, progress=not opts.quiet) / 'final'}"


@stage_command
def augment(opts: RunOptions) -> Action:
    """Passages about the target's world written by the models → [bold]OUT/augment/generated.txt[/bold].

    Set the budget with --set augment.tokens=N. `labels` and `run` label the generated text with the target
    only when they get the same augment settings (a run without them labels the target alone, except a run
    that makes its dictionary from a target of your own, which writes target_files.augment_share of its
    tokens)."""
    from whoharry.stages import augment as stage

    cfg = opts.load()
    if not stage.enabled(cfg):
        raise WhoharryError("augment.tokens is 0: nothing to generate; --set augment.tokens=N (tokens to add)")

    def action() -> str:
        path = stage.run(cfg, opts.out, progress=not opts.quiet)
        return (f"generated text: {path / stage.TEXT_FILE} (every passage, kept or not, in "
                f"{path / stage.PASSAGES_FILE})")

    return action


@stage_command
def labels(opts: RunOptions) -> Action:
    """Generic labels from the base and reinforced models and the anchor dictionary → [bold]OUT/labels/[/bold]."""
    from whoharry.stages import labels as stage

    cfg = opts.load()

    def action() -> str:
        path = stage.run(cfg, opts.out, progress=not opts.quiet)
        return f"labels: {path / stage.LABELS_FILE} (statistics in {path / 'stats.json'})"

    return action


@stage_command
def unlearn(opts: RunOptions, method: MethodOption = None) -> Action:
    """Fine-tune the base model on the original text with the generic labels → [bold]OUT/unlearn/final/[/bold].

    Runs the earlier stages first when their artifacts are missing. With --method ga or npo, a baseline
    method forgets instead, with no labels (and no reinforced model)."""
    from whoharry.stages import unlearn as stage

    cfg = opts.load(*method_override(method))
    return lambda: f"unlearned model: {stage.run(cfg, opts.out, progress=not opts.quiet) / 'final'}"


@stage_command
def eval_(
    opts: RunOptions,
    model: Annotated[
        Path | None, typer.Option("--model", "-m", help="Model folder to evaluate (default: OUT/unlearn/final).")
    ] = None,
    baseline: Annotated[
        str | None, typer.Option("--baseline", help="The model to compare with (default: the config's model.name).")
    ] = None,
    reference: Annotated[
        str | None,
        typer.Option("--reference", help="A model that never saw the target, scored beside (eval.reference)."),
    ] = None,
    full: Annotated[bool, typer.Option("--full", help="Every part of the suite, whatever eval.parts says.")] = False,
    quick: Annotated[
        bool, typer.Option("--quick", help="Every part on small slices (minutes on a CPU) → OUT/eval-quick/.")
    ] = False,
    audit: Annotated[
        bool, typer.Option("--audit", help="The attacks on the model: other phrasings, adversarial prompts, the logit "
                                           "lens, quantization and relearning from every source, with an audit "
                                           "table → OUT/eval-audit/ (with --quick: OUT/eval-audit-quick/). Not with "
                                           "--full, --parts or --inference-time.")
    ] = False,
    muse: Annotated[
        bool, typer.Option("--muse", help="MUSE's figures with MUSE's lengths and thresholds (Shi et al. 2024): "
                                          "VerbMem, KnowMem, the membership AUCs (Min-40%) and PrivLeak with "
                                          "--reference, and utility → OUT/eval-muse/ (with --quick: "
                                          "OUT/eval-muse-quick/). Not with --audit, --full or --parts.")
    ] = False,
    parts: Annotated[
        str | None, typer.Option("--parts", help="Comma-separated parts to run (eval.parts), e.g. probes,knowmem.")
    ] = None,
    lm_eval: Annotated[
        str | None, typer.Option("--lm-eval", help="lm-eval tasks, e.g. arc_easy,boolq (needs lm-eval installed).")
    ] = None,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Recompute every part instead of reusing cached ones.")
    ] = False,
    target: Annotated[
        Path | None,
        typer.Option("--target", help="After `whoharry run --target FILE`: score the files that run made from FILE "
                                      "in OUT (its split, dictionary and probes), and name FILE in the report."),
    ] = None,
    ensemble: Annotated[
        bool, typer.Option("--inference-time", "--ensemble",
                           help="Score inference-time WHP instead of a fine-tuned model: the base and the "
                                "reinforced model (--model, default OUT/reinforce/final) combined by the label "
                                "formula at every token (--ensemble: the same).")
    ] = False,
) -> Action:
    """Familiarity, memorisation, leakage, robustness and utility of a model beside the base model's
    → [bold]OUT/eval/report.md[/bold] (with --quick: OUT/eval-quick/; with --audit: OUT/eval-audit/; with
    --muse: OUT/eval-muse/)."""
    from whoharry.core import distributed
    from whoharry.stages import evaluate, pipeline

    if audit and (full or parts):
        raise WhoharryError("--audit chooses its own parts; leave out --full and --parts (narrow it with --set "
                            "eval.parts=... or eval.relearning.sources=...)")
    if audit and ensemble:
        raise WhoharryError("--audit attacks a model's own weights and layers (quantization, the logit lens, "
                            "relearning), which an inference-time pair does not have; leave out "
                            "--inference-time (--ensemble)")
    if muse and (audit or full or parts):
        raise WhoharryError("--muse chooses its own parts and settings; leave out --audit, --full and --parts "
                            "(narrow it with --set eval.parts=...)")
    if target is not None and not (target.exists() or is_hub(target)):
        raise WhoharryError(f"--target {target}: no such file")
    chosen = None if audit or muse else list(EVAL_PARTS) if full or quick else parts.split(",") if parts else None
    tasks = [t.strip() for t in lm_eval.split(",") if t.strip()] if lm_eval else None
    own = [f"data.target={json.dumps(str(target))}"] if target is not None else []
    cfg = opts.load(
        *own,
        *([f"model.name={baseline}"] if baseline else []),
        *([f"eval.reference={reference}"] if reference else []),
        *([f"eval.parts={chosen}"] if chosen else []),
        *([f"eval.benchmarks.tasks={tasks}"] if tasks else []),
        # MUSE's settings, --quick's slices (over MUSE's counts) and --audit's parts, under the user's own --set
        first=[*(as_overrides(MUSE) if muse else []), *(as_overrides(QUICK) if quick else []),
               *(as_overrides(AUDIT) if audit else [])],
    )
    if tasks and "benchmarks" not in cfg.eval.parts:
        cfg.eval.parts.append("benchmarks")  # naming tasks asks for them

    def action() -> str:
        if distributed.world() > 1:
            raise WhoharryError("whoharry eval runs in one process; start it without accelerate launch")
        model_path = model or opts.out / ("reinforce" if ensemble else "unlearn") / "final"
        if not (model_path / "config.json").is_file():
            stage = "reinforce" if ensemble else "unlearn"
            raise WhoharryError(f"no model to evaluate at {model_path}: pass --model or run `whoharry {stage}` first")
        stage_dir = evaluate.stage_dir_for(opts.out, quick=quick, ensemble=ensemble, audit=audit, muse=muse)
        # a target of the user's own is scored on the files its run made from it
        made = pipeline.made_config(cfg, opts.out, opts.given(*own))
        path = evaluate.run(made, opts.out, model_path, progress=not opts.quiet, stage_dir=stage_dir,
                            overwrite=overwrite, ensemble=ensemble, target=cfg.data.target)
        return summary_text(evaluate.load_report(path), opts.out, path)

    return action


@stage_command
def run(opts: RunOptions, method: MethodOption = None, target: TargetOption = None) -> Action:
    """Every stage in order; finished stages with the same settings are skipped.

    reinforce, augment (when augment.tokens > 0, or for a made dictionary), labels, unlearn, eval. For a
    target of your own (--target), the files you did not give are made from it: a held-out split first,
    the anchor dictionary and the probes right after reinforce. A run that makes the dictionary also
    writes passages about the target's world, target_files.augment_share of its tokens (off:
    --set target_files.augment_share=0), fits the retain blocks to their tokens and to the base model
    (target_files.retain_labels) and mixes the unlearned model with the base (WiSE-FT, target_files.wise_ft;
    off: --set forget.wise_ft=1)."""
    from whoharry.stages import evaluate, pipeline

    # the path as a JSON string: a YAML-special name (`book #1.txt`, `null`) stays the file name it is
    own = [*method_override(method), *([f"data.target={json.dumps(str(target))}"] if target is not None else [])]
    cfg = opts.load(*own)
    given = opts.given(*own)

    def action() -> str:
        summary = pipeline.run(cfg, opts.out, progress=not opts.quiet, explicit=given)
        # empty in the processes that do not evaluate
        eval_dir = opts.out / evaluate.NAME
        return summary_text(evaluate.load_report(eval_dir), opts.out, eval_dir) if summary else ""

    return action


