"""What every `whoharry` command shares, declared once: the options of the stage commands (`RUN_OPTIONS`,
given to a command by `stage_command`), logging set-up, the config, and `_guard`, which turns a bad input
into one `error:` line and exit code 2.
"""

from __future__ import annotations

import errno
import functools
import inspect
import logging
import os
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from operator import attrgetter
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml

from whoharry.config import Config, load_config, to_dict
from whoharry.core.settings import keys_given
from whoharry.errors import WhoharryError

log = logging.getLogger("whoharry")

DEFAULT_CONFIG = Path("configs") / "default.yaml"
DEFAULT_OUT = Path("runs") / "default"
EXPERIMENT_CONFIG = Path("configs") / "experiments" / "sherlock.yaml"

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
    int | None,
    typer.Option("--max-steps", help="Cap every training stage at N optimizer steps (the evaluation's "
                                     "relearning too).", min=1),
]
SeedOption = Annotated[int | None, typer.Option("--seed", help="Random seed for data order and translations.")]
QuietOption = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars or info messages.")]
TargetOption = Annotated[
    Path | None,
    typer.Option("--target", help="The text to forget (sets data.target): a .txt, .jsonl, .json, .csv or .parquet "
                                  "file, a save_to_disk folder, or hf:OWNER/NAME. A text other than the demo's gets "
                                  "its held-out split, anchor dictionary and probes made from it, unless you "
                                  "name files of your own (target_files.make), and with the made dictionary "
                                  "generated passages about its world (target_files.augment_share; off: "
                                  "--set target_files.augment_share=0), and retain blocks fitted both to "
                                  "their own tokens and to the base model (target_files.retain_labels), and the "
                                  "unlearned model mixed with the base (WiSE-FT, target_files.wise_ft)."),
]
MethodOption = Annotated[
    str | None,
    typer.Option("--method", help="whp (generic labels, the default), or a baseline: ga (gradient ascent), "
                                  "npo (negative preference optimisation); sets forget.method."),
]


@dataclass
class RunOptions:
    """The options every stage command shares."""

    config: Path | None = None
    overrides: list[str] = field(default_factory=list)
    out: Path = DEFAULT_OUT
    max_steps: int | None = None
    seed: int | None = None
    quiet: bool = False

    def load(self, *extra: str, first: list[str] | None = None) -> Config:
        """The resolved config: defaults < YAML < `first` < `--set` < `extra` < `--max-steps`, `--seed`."""
        return resolve_config(self.config, [*(first or []), *self.overrides, *extra], self.max_steps, self.seed)

    def given(self, *extra: str) -> frozenset[str]:
        """The dotted keys the user set: in their own `--config` file where its value differs from the
        shipped default's (a copy of configs/default.yaml names nothing of its own), by `--set`, and by the
        command's own options (`extra`, as `key=value`)."""
        in_file = keys_given(self.config, None)
        if in_file:
            try:
                shipped_file = default_file(DEFAULT_CONFIG)
                same = self.config is not None and self.config.resolve() == shipped_file.resolve()
                shipped = None if same else load_config(shipped_file)
            except WhoharryError:  # no shipped config to compare with: every key of their file counts
                same, shipped = False, None
            if same:  # the shipped file itself names nothing of the user's
                in_file = frozenset()
            elif shipped is not None:
                theirs = load_config(self.config)
                in_file = frozenset(key for key in in_file if _value(theirs, key) != _value(shipped, key))
        return in_file | keys_given(None, [*self.overrides, *extra])


def _value(cfg: Config, dotted: str) -> Any:
    """The value of a dotted key, or a marker no value equals when the key names no field."""
    try:
        return attrgetter(dotted)(cfg)
    except AttributeError:
        return object()


def _option(name: str, annotation: Any, default: Any) -> inspect.Parameter:
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation)


RUN_OPTIONS = (
    _option("config", ConfigOption, None),
    _option("set_", SetOption, None),
    _option("out", OutOption, DEFAULT_OUT),
    _option("max_steps", MaxStepsOption, None),
    _option("seed", SeedOption, None),
    _option("quiet", QuietOption, False),
)


def stage_command(func: Callable[..., Callable[[], str]]) -> Callable[..., None]:
    """A stage command: `func(opts, **own options)` resolves its config and returns the action, which
    does the work and returns the text to print. The shared options join its own in the command's
    signature. The config is resolved before `--out` is checked and its lock taken, so a bad setting
    leaves no folder behind; `guard` turns errors into one line. Under `accelerate launch` the main
    process speaks for all."""
    own = [p for p in inspect.signature(func, eval_str=True).parameters.values() if p.name != "opts"]

    @functools.wraps(func)
    def command(**kwargs: Any) -> None:
        from whoharry.core import distributed, runlock
        from whoharry.stages import pipeline

        opts = RunOptions(kwargs.pop("config"), kwargs.pop("set_") or [], kwargs.pop("out"), kwargs.pop("max_steps"),
                          kwargs.pop("seed"), kwargs.pop("quiet"))
        setup(opts.quiet or not distributed.is_main())

        def body() -> None:
            named = kwargs.get("target") is not None or "data.target" in opts.given()
            pipeline.check_own_text(opts.out, named=named, own_option="target" in kwargs)
            action = func(opts, **kwargs)
            pipeline.check_out_dir(opts.out)
            with distributed.main_holds(lambda: runlock.hold(opts.out)):
                text = action()
            if distributed.is_main() and text:
                typer.echo(text)

        guard(body)

    command.__signature__ = inspect.Signature([*own, *RUN_OPTIONS])  # type: ignore[attr-defined]
    return command


def default_file(relative: Path) -> Path:
    """`relative` under the current folder, else under the whoharry checkout this package runs from."""
    if relative.is_file():
        return relative
    checkout = Path(__file__).resolve().parents[3] / relative
    if checkout.is_file():
        log.info("using the whoharry checkout's %s", checkout)
        return checkout
    raise WhoharryError(f"no --config given and {relative} not found here; run from the whoharry checkout or "
                        "pass --config")


def setup(quiet: bool) -> None:
    """Logging to stderr (warnings only when `quiet`), and the libraries' own chatter and bars off."""
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


def resolve_config(config: Path | None, overrides: list[str] | None, max_steps: int | None,
                   seed: int | None) -> Config:
    """The resolved config (see `config.load_config`), logged at debug level (each stage's folder keeps the
    config it ran with, after a run of your own text has replaced the demo's files); without `config`,
    configs/default.yaml."""
    cfg = load_config(config or default_file(DEFAULT_CONFIG), overrides, max_steps=max_steps, seed=seed)
    log.debug("resolved config:\n%s", yaml.safe_dump(to_dict(cfg), sort_keys=False).rstrip())
    return cfg


def guard(body: Callable[[], Any]) -> Any:
    """Run a command body; input problems end with one line on stderr and exit code 2 (under
    accelerate launch, every process stops and the main process says why)."""
    from whoharry.core import distributed

    try:
        return body()
    except WhoharryError as exc:
        if distributed.is_main():
            typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    except KeyboardInterrupt:
        typer.echo("interrupted; finished stages and any checkpoints or saved progress are kept: rerun the same "
                   "command to resume", err=True)
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


def method_override(method: str | None) -> list[str]:
    """`--method M` as the `--set` override it stands for."""
    return [f"forget.method={method}"] if method else []


def summary_text(report: dict[str, Any], out: Path, eval_dir: Path) -> str:
    """The base vs. unlearned table of an evaluation's report, three completions by both models (target terms
    between asterisks), then where the run folder, its resolved config and the report are."""
    from whoharry.evaluation.report import completion_pairs, marked, render_table
    from whoharry.stages.pipeline import CONFIG_FILE

    shown = ""
    pairs = completion_pairs(report, 3)
    if pairs:
        shown = "\nbefore and after (report.md shows more):\n" + "".join(
            f"  {p['prompt']}\n    base:      {marked(p['base'], p['base_terms'], '*')}\n"
            f"    unlearned: {marked(p['unlearned'], p['unlearned_terms'], '*')}\n" for p in pairs)
    config = out / CONFIG_FILE
    where = f"\nresolved config: {config.resolve()}" if config.is_file() else ""
    return (f"{render_table(report['summary'])}{shown}\nrun folder: {out.resolve()}{where}\n"
            f"report: {eval_dir.resolve() / 'report.md'}")
