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


@app.command()
def unlearn(
    config: ConfigOption = None,
    set_: SetOption = None,
    out: OutOption = DEFAULT_OUT,
    max_steps: MaxStepsOption = None,
    seed: SeedOption = None,
    quiet: QuietOption = False,
) -> None:
    """Fine-tune the base model on the original text with the generic labels → [bold]OUT/unlearn/final/[/bold].

    Runs the earlier stages first when their artifacts are missing."""
    from whoharry import unlearn as stage

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
        target = model or out / "unlearn" / "final"
        if not (target / "config.json").is_file():
            raise WhoharryError(f"no model to evaluate at {target}: pass --model or run `whoharry unlearn` first")
        if lm_eval and "benchmarks" not in cfg.eval.parts:
            cfg.eval.parts.append("benchmarks")  # naming tasks asks for them
        stage_dir = out / ("eval-quick" if quick else "eval")
        path = evaluate.run(cfg, out, target, progress=not quiet, stage_dir=stage_dir, overwrite=overwrite)
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
    max_steps: MaxStepsOption = None,
    seed: SeedOption = None,
    quiet: QuietOption = False,
) -> None:
    """Every stage in order: reinforce, labels, unlearn, eval. Finished stages with the same settings are skipped."""
    from whoharry import pipeline

    def action(cfg: Config) -> str:
        summary = pipeline.run(cfg, out, progress=not quiet)
        return _table(summary, out) if summary else ""  # empty in the processes that do not evaluate

    _stage(quiet, config, set_, max_steps, seed, out, action)


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
