"""The `whoharry` command line: thin shims over the stage functions.

Every command takes the same options: `--config`, `--set key.sub=value` (repeatable), `--out`,
`--max-steps`, `--seed`. A problem with the input ends with one `error:` line and exit code 2.
"""

from __future__ import annotations

import errno
import logging
import os
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml

from whoharry import __version__
from whoharry.config import Config, load_config, to_dict
from whoharry.errors import WhoharryError

app = typer.Typer(
    name="whoharry",
    help="Make a causal language model approximately forget a body of text "
    "(Who's Harry Potter?, Eldan & Russinovich 2023).",
    rich_markup_mode="rich",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

log = logging.getLogger("whoharry")

DEFAULT_CONFIG = Path("configs") / "default.yaml"
DEFAULT_OUT = Path("runs") / "default"

ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config", "-c",
        help="YAML config merged over the defaults. Without it: ./configs/default.yaml "
        "(the embedded Harry Potter default).",
        dir_okay=False,
    ),
]
SetOption = Annotated[
    list[str] | None,
    typer.Option("--set", "-s", help="Override one key, e.g. --set labels.alpha=3 (repeatable).", metavar="KEY=VALUE"),
]
OutOption = Annotated[Path, typer.Option("--out", "-o", help="Run folder; each stage writes a subfolder.")]
MaxStepsOption = Annotated[
    int | None, typer.Option("--max-steps", help="Cap every training stage at N optimizer steps.", min=1)
]
SeedOption = Annotated[int | None, typer.Option("--seed", help="Random seed for data order and translations.")]
QuietOption = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars or info messages.")]


def _default_config() -> Path:
    """./configs/default.yaml, else the one beside this source checkout."""
    if DEFAULT_CONFIG.is_file():
        return DEFAULT_CONFIG
    checkout = Path(__file__).resolve().parents[2] / DEFAULT_CONFIG
    if checkout.is_file():
        log.info("using the default config of the whoharry checkout: %s", checkout)
        return checkout
    raise WhoharryError(
        f"no --config given and {DEFAULT_CONFIG} not found here; run from the whoharry checkout or pass --config"
    )


def _setup(quiet: bool) -> None:
    logging.basicConfig(
        level=logging.WARNING if quiet else logging.INFO,
        format="[whoharry] %(levelname)s %(message)s" if quiet else "[whoharry] %(message)s",
        stream=sys.stderr,
        force=True,
    )
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.filterwarnings("ignore", module="transformers")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    logging.getLogger("accelerate").setLevel(logging.ERROR)  # e.g. notes on tied weights in checkpoints


def _config(config: Path | None, overrides: list[str] | None, max_steps: int | None, seed: int | None) -> Config:
    cfg = load_config(config or _default_config(), overrides, max_steps=max_steps, seed=seed)
    log.info("resolved config:\n%s", yaml.safe_dump(to_dict(cfg), sort_keys=False).rstrip())
    return cfg


def _stage(
    quiet: bool,
    config: Path | None,
    overrides: list[str] | None,
    max_steps: int | None,
    seed: int | None,
    out: Path,
    action: Callable[[Config], str],
) -> None:
    """The common shape of a command: set up logging, resolve the config, check --out, act, report."""
    from whoharry import distributed, pipeline, runlock

    _setup(quiet or not distributed.is_main())  # under accelerate launch, the main process speaks

    def body() -> None:
        cfg = _config(config, overrides, max_steps, seed)
        pipeline.check_out_dir(out)
        with distributed.main_holds(lambda: runlock.hold(out)):
            text = action(cfg)
        if distributed.is_main():
            typer.echo(text)

    _guard(body)


def _guard(body: Callable[[], Any]) -> Any:
    """Run a command body; input problems end with one line on stderr and exit code 2 (under
    accelerate launch, every process stops and the main process says why)."""
    from whoharry import distributed

    try:
        return body()
    except WhoharryError as exc:
        if distributed.is_main():
            typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    except KeyboardInterrupt:
        typer.echo("interrupted; rerun the same command to resume from the last checkpoint", err=True)
        raise typer.Exit(130) from None
    except OSError as exc:  # the machine, not the input: a full disk, a folder without write permission
        where = f" ({exc.filename})" if exc.filename else ""
        hint = "; free some space and rerun to resume" if exc.errno == errno.ENOSPC else ""
        typer.echo(f"error: {exc.strerror or exc}{where}{hint}", err=True)
        raise typer.Exit(1) from None
    except Exception as exc:  # anything unforeseen: one line, the finished work kept for a rerun
        if os.environ.get("WHOHARRY_DEBUG"):
            raise
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        typer.echo(f"error: {type(exc).__name__}: {first} (finished stages and checkpoints are kept; "
                   "WHOHARRY_DEBUG=1 shows the traceback)", err=True)
        raise typer.Exit(1) from None


@app.command()
def reinforce(
    config: ConfigOption = None,
    set_: SetOption = None,
    out: OutOption = DEFAULT_OUT,
    max_steps: MaxStepsOption = None,
    seed: SeedOption = None,
    quiet: QuietOption = False,
) -> None:
    """Fine-tune a copy of the base model on the target text → [bold]OUT/reinforce/final/[/bold]."""
    from whoharry import reinforce as stage

    def action(cfg: Config) -> str:
        return f"reinforced model: {stage.run(cfg, out, progress=not quiet) / 'final'}"

    _stage(quiet, config, set_, max_steps, seed, out, action)


@app.command()
def labels(
    config: ConfigOption = None,
    set_: SetOption = None,
    out: OutOption = DEFAULT_OUT,
    max_steps: MaxStepsOption = None,
    seed: SeedOption = None,
    quiet: QuietOption = False,
) -> None:
    """Generic labels from the base and reinforced models and the anchor dictionary → [bold]OUT/labels/[/bold]."""
    from whoharry import labels as stage

    def action(cfg: Config) -> str:
        path = stage.run(cfg, out, progress=not quiet)
        return f"labels: {path / stage.LABELS_FILE} (statistics in {path / 'stats.json'})"

    _stage(quiet, config, set_, max_steps, seed, out, action)


MethodOption = Annotated[
    str | None,
    typer.Option("--method", help="whp (generic labels, the default), or a baseline: ga (gradient ascent), "
                                  "npo (negative preference optimisation); sets forget.method."),
]


@app.command()
def unlearn(
    config: ConfigOption = None,
    set_: SetOption = None,
    out: OutOption = DEFAULT_OUT,
    method: MethodOption = None,
    max_steps: MaxStepsOption = None,
    seed: SeedOption = None,
    quiet: QuietOption = False,
) -> None:
    """Fine-tune the base model on the original text with the generic labels → [bold]OUT/unlearn/final/[/bold].

    Runs the earlier stages first when their artifacts are missing. With --method ga or npo, a baseline
    method forgets instead, with no labels (and no reinforced model)."""
    from whoharry import unlearn as stage

    set_ = [*(set_ or []), *([f"forget.method={method}"] if method else [])]

    def action(cfg: Config) -> str:
        return f"unlearned model: {stage.run(cfg, out, progress=not quiet) / 'final'}"

    _stage(quiet, config, set_, max_steps, seed, out, action)


@app.command("eval")
def eval_(
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
    parts: Annotated[
        str | None, typer.Option("--parts", help="Comma-separated parts to run (eval.parts), e.g. probes,knowmem.")
    ] = None,
    lm_eval: Annotated[
        str | None, typer.Option("--lm-eval", help="lm-eval tasks, e.g. arc_easy,boolq (needs lm-eval installed).")
    ] = None,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Recompute every part instead of reusing cached ones.")
    ] = False,
    ensemble: Annotated[
        bool, typer.Option("--ensemble", help="Score inference-time WHP instead of a fine-tuned model: the base "
                                              "and the reinforced model (--model, default OUT/reinforce/final) "
                                              "combined by the label formula at every token.")
    ] = False,
    config: ConfigOption = None,
    set_: SetOption = None,
    out: OutOption = DEFAULT_OUT,
    max_steps: MaxStepsOption = None,
    seed: SeedOption = None,
    quiet: QuietOption = False,
) -> None:
    """Familiarity, memorisation, leakage, robustness and utility of a model beside the base model's
    → [bold]OUT/eval/report.md[/bold] (with --quick: OUT/eval-quick/)."""
    from whoharry import evaluate
    from whoharry.config import EVAL_PARTS, QUICK, as_overrides

    chosen = list(EVAL_PARTS) if full or quick else parts.split(",") if parts else None
    set_ = [
        *(as_overrides(QUICK) if quick else []),
        *(set_ or []),
        *([f"model.name={baseline}"] if baseline else []),
        *([f"eval.reference={reference}"] if reference else []),
        *([f"eval.parts={chosen}"] if chosen else []),
        *([f"eval.lm_eval_tasks={[t.strip() for t in lm_eval.split(',') if t.strip()]}"] if lm_eval else []),
    ]

    def action(cfg: Config) -> str:
        from whoharry import distributed

        if distributed.world() > 1:
            raise WhoharryError("whoharry eval runs in one process; start it without accelerate launch")
        target = model or out / ("reinforce" if ensemble else "unlearn") / "final"
        if not (target / "config.json").is_file():
            stage = "reinforce" if ensemble else "unlearn"
            raise WhoharryError(f"no model to evaluate at {target}: pass --model or run `whoharry {stage}` first")
        if lm_eval and "benchmarks" not in cfg.eval.parts:
            cfg.eval.parts.append("benchmarks")  # naming tasks asks for them
        stage_dir = out / (("eval-quick" if quick else "eval") + ("-ensemble" if ensemble else ""))
        path = evaluate.run(cfg, out, target, progress=not quiet, stage_dir=stage_dir, overwrite=overwrite,
                            ensemble=ensemble)
        return _table(evaluate.load_report(path)["summary"], out, path)

    _stage(quiet, config, set_, max_steps, seed, out, action)


@app.command()
def compare(
    runs: Annotated[list[Path], typer.Argument(help="Run folders, each with an eval/report.json.")],
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Folder for compare.md, compare.json and compare.png.")
    ] = None,
) -> None:
    """The evaluation summaries of several runs side by side (markdown; JSON and a plot with --out)."""
    from whoharry import artifacts, plots
    from whoharry import compare as comparing

    _setup(quiet=True)

    def body() -> None:
        data = comparing.compare(runs)
        table = comparing.render_compare(data)
        if out is not None:
            artifacts.write_json(out / "compare.json", data)
            artifacts.atomic_write_text(out / "compare.md", table)
            plots.plot_comparison(data, out / "compare.png")
        typer.echo(table.rstrip())

    _guard(body)


@app.command()
def run(
    config: ConfigOption = None,
    set_: SetOption = None,
    out: OutOption = DEFAULT_OUT,
    method: MethodOption = None,
    max_steps: MaxStepsOption = None,
    seed: SeedOption = None,
    quiet: QuietOption = False,
) -> None:
    """Every stage in order: reinforce, labels, unlearn, eval. Finished stages with the same settings are skipped."""
    from whoharry import pipeline

    set_ = [*(set_ or []), *([f"forget.method={method}"] if method else [])]

    def action(cfg: Config) -> str:
        summary = pipeline.run(cfg, out, progress=not quiet)
        return _table(summary, out) if summary else ""  # empty in the processes that do not evaluate

    _stage(quiet, config, set_, max_steps, seed, out, action)


anchors_app = typer.Typer(
    help="Anchor dictionaries: suggest one from the target, import the paper's format, check one against a text.",
    no_args_is_help=True,
)
app.add_typer(anchors_app, name="anchors")
TextOption = Annotated[Path | None, typer.Option("--text", help="The target text (default: the config's data.target).")]
OverwriteOption = Annotated[bool, typer.Option("--overwrite", help="Replace the output file if it exists.")]


def _new_file(path: Path, overwrite: bool) -> None:
    if path.exists() and not overwrite:
        raise WhoharryError(f"{path} exists; pass --overwrite to replace it")
    if path.suffix not in (".yaml", ".yml"):
        raise WhoharryError(f"--out {path}: an anchor dictionary is written as .yaml")


@anchors_app.command("suggest")
def anchors_suggest(
    out: Annotated[Path, typer.Option("--out", "-o", help="The YAML dictionary to write.")],
    text: TextOption = None,
    baseline: Annotated[
        str | None, typer.Option("--baseline", help="The baseline model (default: the config's model.name).")
    ] = None,
    reinforced: Annotated[
        Path | None,
        typer.Option("--reinforced",
                     help="A reinforced model folder (default: RUN/reinforce/final, trained if missing)."),
    ] = None,
    general: Annotated[
        list[Path] | None,
        typer.Option("--general", help="General text to compare frequencies with (repeatable; default: the "
                     "config's retain texts and eval.general_text)."),
    ] = None,
    top: Annotated[int | None, typer.Option("--top", help="How many terms to write (anchors.top).", min=1)] = None,
    run_dir: Annotated[Path, typer.Option("--run", help="Run folder holding (or to hold) the reinforced model.")] = (
        DEFAULT_OUT),
    llm: Annotated[
        bool, typer.Option("--llm", help="Ask the LLM at anchors.llm_url instead, passage by passage.")
    ] = False,
    overwrite: OverwriteOption = False,
    config: ConfigOption = None,
    set_: SetOption = None,
    quiet: QuietOption = False,
) -> None:
    """Rank the target's most specific terms and give each generic translations → [bold]OUT[/bold] (YAML)."""
    _setup(quiet)

    def body() -> None:
        from whoharry import anchor_check, mine, pipeline, reinforce, runlock
        from whoharry.anchors import parse_anchors
        from whoharry.text import read_text

        overrides = [*(set_ or []), *([f"model.name={baseline}"] if baseline else []),
                     *([f"anchors.top={top}"] if top else [])]
        cfg = _config(config, overrides, None, None)
        if text is not None:
            cfg.data.target = text.resolve()
        _new_file(out, overwrite)
        target = read_text(cfg.data.target)
        if llm:
            entries, counts = mine.ask_llm(target, cfg.anchors, cfg.eval.target_name)
            if not entries:
                raise WhoharryError("the LLM's answers held no dictionary entries")
            found = anchor_check.check(parse_anchors(entries), target).occurrences
            ordered = dict(sorted(entries.items(), key=lambda kv: (-found.get(kv[0], 0), kv[0])))
            mine.write_dictionary(out, ordered, [
                f"Anchor dictionary from {cfg.anchors.llm_model} at {cfg.anchors.llm_url}, passage by passage "
                f"({counts['passages']} passages: {counts['parsed']} parsed, {counts['salvaged']} salvaged, "
                f"{counts['unreadable']} unreadable), of {cfg.data.target}; comment: occurrences in the text"],
                {term: str(found.get(term, 0)) for term in ordered})
            typer.echo(f"wrote {len(ordered)} terms from the LLM to {out}")
            return
        if reinforced is None:
            pipeline.check_out_dir(run_dir)
            with runlock.hold(run_dir):
                reinforce.run(cfg, run_dir, progress=not quiet)
        suggestion = mine.suggest_file(cfg, reinforced or run_dir / "reinforce" / "final", out, general=general,
                                       progress=not quiet)
        best = ", ".join(c.term for c in suggestion.chosen[:10])
        typer.echo(f"wrote {len(suggestion.chosen)} terms to {out} (best: {best})")

    _guard(body)


@anchors_app.command("import")
def anchors_import(
    source: Annotated[Path, typer.Argument(help="The paper's .npy of GPT-4 answers, or JSON.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="The YAML dictionary to write.")],
    no_filters: Annotated[
        bool, typer.Option("--no-filters", help="Keep composite keys (all words keys, or X's of a key X).")
    ] = False,
    overwrite: OverwriteOption = False,
) -> None:
    """Read a dictionary in the paper's published format (or JSON) → [bold]OUT[/bold] (YAML)."""
    _setup(quiet=False)

    def body() -> None:
        from whoharry import anchor_import, mine

        _new_file(out, overwrite)
        entries, stats = anchor_import.read_dictionary(source, filters=not no_filters)
        if not entries:
            raise WhoharryError(f"{source} holds no dictionary entries")
        summary = (f"{stats.answers} answers ({stats.parsed} parsed, {stats.salvaged} salvaged, "
                   f"{stats.unreadable} unreadable), {stats.entries} entries, {stats.keys} keys, "
                   f"{len(stats.dropped_composite)} composite keys dropped")
        mine.write_dictionary(out, entries, [f"Imported from {source.name} by `whoharry anchors import`: {summary}."])
        typer.echo(f"wrote {len(entries)} keys to {out}: {summary}")

    _guard(body)


@anchors_app.command("check")
def anchors_check(
    anchors: Annotated[Path, typer.Argument(help="The anchor dictionary (YAML).")],
    text: TextOption = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Also write the report as JSON.")] = None,
    config: ConfigOption = None,
    set_: SetOption = None,
) -> None:
    """Occurrences per key, keys never found, overlaps, and the share of the text's tokens covered."""
    _setup(quiet=True)

    def body() -> None:
        from whoharry import anchor_check, artifacts, models
        from whoharry.anchors import load_anchors
        from whoharry.text import read_text

        cfg = _config(config, set_, None, None)
        dictionary = load_anchors(anchors)
        target = read_text(text or cfg.data.target)
        try:
            tokenizer = models.load_tokenizer(models.resolve(cfg.model), cfg.model)
        except WhoharryError as exc:
            log.warning("no token coverage: %s", exc)
            tokenizer = None
        report = anchor_check.check(dictionary, target, tokenizer)
        if json_out is not None:
            artifacts.write_json(json_out, report.as_dict())
        typer.echo(anchor_check.render(report))

    _guard(body)


experiment_app = typer.Typer(help="Experiments that measure the method against others.", no_args_is_help=True)
app.add_typer(experiment_app, name="experiment")
EXPERIMENT_CONFIG = Path("configs") / "experiments" / "sherlock.yaml"


@experiment_app.command("retrain-gap")
def experiment_retrain_gap(
    config: Annotated[
        Path | None, typer.Option("--config", "-c", help=f"Experiment config (default: {EXPERIMENT_CONFIG}).")
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option("--out", "-o", help="Experiment folder (default: runs/retrain-gap, or runs/retrain-gap-quick)."),
    ] = None,
    corpora: Annotated[
        Path | None, typer.Option("--corpora", help="Folder holding the books (default: the config's corpora).")
    ] = None,
    quick: Annotated[bool, typer.Option("--quick", help="One seed on small slices, every method: minutes.")] = False,
    set_: SetOption = None,
    quiet: QuietOption = False,
) -> None:
    """Unlearn a book from a model fine-tuned on it with every method, and measure each against the gold
    model fine-tuned without it → [bold]OUT/results.md[/bold] and OUT/retrain_gap.png."""
    from whoharry import experiment, runlock

    _setup(quiet)

    def body() -> None:
        path = config or (EXPERIMENT_CONFIG if EXPERIMENT_CONFIG.is_file()
                          else Path(__file__).resolve().parents[2] / EXPERIMENT_CONFIG)
        exp = experiment.load_experiment(path, set_, quick=quick, corpora=corpora)
        folder = out or Path("runs") / ("retrain-gap-quick" if quick else "retrain-gap")
        if folder.is_file():
            raise WhoharryError(f"output folder {folder} is a file; choose another --out")
        folder.mkdir(parents=True, exist_ok=True)
        with runlock.hold(folder):
            experiment.run(exp, folder, progress=not quiet)
        typer.echo((folder / "results.md").read_text(encoding="utf-8").rstrip())
        typer.echo(f"results: {(folder / 'results.md').resolve()} (plot: retrain_gap.png)")

    _guard(body)


def _table(summary: dict[str, dict[str, float]], out: Path, eval_dir: Path | None = None) -> str:
    """The base vs. unlearned table and where the run folder is, rendered as text."""
    from rich.console import Console
    from rich.table import Table

    from whoharry.report import table_rows

    table = Table(title="base vs. unlearned")
    for column in ("figure", "base", "unlearned", "unlearned / base"):
        table.add_column(column, justify="left" if column == "figure" else "right")
    for row in table_rows(summary):
        table.add_row(*row)
    console = Console(width=100)
    with console.capture() as captured:
        console.print(table)
    report = (eval_dir or out / "eval").resolve() / "report.md"
    return f"{captured.get().rstrip()}\nrun folder: {out.resolve()}\nreport: {report}"


def version_callback(value: bool) -> None:
    if value:
        typer.echo(f"whoharry {__version__}")
        raise typer.Exit()


@app.callback()
def main_callback(
    version: Annotated[
        bool, typer.Option("--version", callback=version_callback, is_eager=True, help="Print the version.")
    ] = False,
) -> None:
    """Make a causal language model approximately forget a body of text."""


def main() -> None:
    app()
