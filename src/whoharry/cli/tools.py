"""The tool commands: `whoharry compare`, `whoharry export`, `whoharry push`, `whoharry anchors suggest |
import | check` and `whoharry experiment retrain-gap`, each a shim over the module that does the work."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from whoharry.cli.common import (
    DEFAULT_OUT,
    EXPERIMENT_CONFIG,
    ConfigOption,
    QuietOption,
    SetOption,
    default_file,
    guard,
    resolve_config,
    setup,
)
from whoharry.core.corpus import is_hub
from whoharry.errors import WhoharryError


def register(app: typer.Typer) -> None:
    """Add the tool commands and sub-apps to `app`."""
    app.command()(compare)
    app.command()(export)
    app.command()(push)
    app.add_typer(anchors_app, name="anchors")
    app.add_typer(experiment_app, name="experiment")


def compare(
    runs: Annotated[list[Path], typer.Argument(help="Run folders, each with an eval/report.json.")],
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Folder for compare.md, compare.json and compare.png.")
    ] = None,
) -> None:
    """The evaluation summaries of several runs side by side (markdown; JSON and a plot with --out)."""
    from whoharry.evaluation import compare as comparing

    setup(quiet=True)

    def body() -> None:
        if out is not None and out.exists() and not out.is_dir():
            raise WhoharryError(f"--out {out} is a file; give a folder for compare.md, compare.json and compare.png")
        data = comparing.compare(runs)
        if out is not None:
            comparing.write_comparison(data, out)
        typer.echo(comparing.render_compare(data).rstrip())

    guard(body)


def export(
    out: Annotated[Path, typer.Option("--out", "-o", help="The GGUF file to write (.gguf).")],
    gguf_type: Annotated[str, typer.Option(
        "--type", help="Tensor type: f32, f16, q8_0, q5_0, q5_1, q4_0 or q4_1.")] = "q8_0",
    run: Annotated[Path, typer.Option("--run", help="The run folder whose unlearned model is written.")] = Path(
        "runs/default"),
    model: Annotated[Path | None, typer.Option(
        "--model", help="A save_pretrained folder to write instead (default: RUN/unlearn/final).")] = None,
    source: Annotated[Path | None, typer.Option(
        "--source", help="A GGUF file of the same model whose metadata and tokenizer are kept (default: the file "
                         "the run's model came from, if any).")] = None,
    no_source: Annotated[bool, typer.Option("--no-source", help="Build the metadata from the folder instead.")] = False,
    check: Annotated[bool, typer.Option(
        "--check/--no-check", help="Read the file back and compare its logits with the folder's.")] = True,
    overwrite: OverwriteOption = False,
    quiet: QuietOption = False,
) -> None:
    """Write a model folder (the unlearned model by default) as a GGUF file for llama.cpp → [bold]OUT[/bold] and
    OUT.json (what was written, and the read-back check)."""
    setup(quiet=True)

    def body() -> None:
        from whoharry.core import artifacts
        from whoharry.core import export as exporting

        folder = model or run / "unlearn" / "final"
        if out.suffix != ".gguf":
            raise WhoharryError(f"--out {out}: a GGUF file is written as .gguf")
        if out.exists() and not overwrite:
            raise WhoharryError(f"{out} exists; pass --overwrite to replace it")
        if out.is_dir():
            raise WhoharryError(f"--out {out} is a folder; give a .gguf file name")
        if not (folder / "config.json").is_file():
            raise WhoharryError(f"no model folder at {folder} (no config.json): finish the run first, or pass --model")
        origin = None if no_source else source or _gguf_of(folder)
        if origin is not None and not origin.is_file():
            raise WhoharryError(f"--source {origin}: no such file")
        done = exporting.export_gguf(folder, out, gguf_type, origin, progress=not quiet)  # type: ignore[arg-type]
        record = {"file": str(out.resolve()), "model": str(folder.resolve()), "type": done.gguf_type,
                  "route": done.route, "source": str(origin.resolve()) if origin else None,
                  "tensors": done.tensors, "bytes": done.bytes,
                  "fallback_f16": done.fallback_f16}
        if check:
            record["check"] = exporting.check_logits(folder, out, exporting.CHECK_TEXT)
        artifacts.write_json(out.with_name(out.name + ".json"), record)
        made = f"from {origin}" if origin else "built"
        line = f"GGUF {done.gguf_type}: {out} ({done.bytes / 2**20:.1f} MiB, metadata {made})"
        if check:
            line += (f"; read back: top-1 agreement {record['check']['top1_agreement']:.3f}, "
                     f"largest logit difference {record['check']['max_abs_logit_diff']:.3f}")
        typer.echo(line)

    guard(body)


def push(
    run: Annotated[Path, typer.Argument(help="The run folder whose unlearned model (RUN/unlearn/final) is pushed.")],
    repo: Annotated[str, typer.Option("--repo", help="The hub model repository, OWNER/NAME (created if missing).")],
    private: Annotated[bool, typer.Option("--private", help="Create the repository private.")] = False,
) -> None:
    """Upload the unlearned model with its card, config and manifest to the Hugging Face hub (needs a token:
    `huggingface-cli login` or HF_TOKEN) and print the commit's URL."""
    setup(quiet=True)

    def body() -> None:
        from whoharry.core import hub

        typer.echo(hub.push_folder(hub.pushable(run), repo, private=private))

    guard(body)


def _gguf_of(folder: Path) -> Path | None:
    """The GGUF file the model of a run's stage folder (`RUN/STAGE/final`) came from, from that stage's
    config.yaml; None when there is none or the model was not a GGUF."""
    from whoharry.config import load_config
    from whoharry.core import models

    stage_config = folder.parent / "config.yaml"
    if not stage_config.is_file():
        return None
    return models.gguf_file(load_config(stage_config).model)


anchors_app = typer.Typer(
    help="Anchor dictionaries: suggest one from the target, import the paper's format, merge two, check one "
         "against a text.",
    no_args_is_help=True,
)
TextOption = Annotated[Path | None, typer.Option("--text", help="The target text (default: the config's data.target).")]
OverwriteOption = Annotated[bool, typer.Option("--overwrite", help="Replace the output file if it exists.")]


def _new_file(path: Path, overwrite: bool) -> None:
    if path.exists() and not overwrite:
        raise WhoharryError(f"{path} exists; pass --overwrite to replace it")
    if path.suffix not in (".yaml", ".yml"):
        raise WhoharryError(f"--out {path}: an anchor dictionary is written as .yaml")


@anchors_app.command("merge")
def anchors_merge(
    base: Annotated[Path, typer.Argument(help="The dictionary that stays as it is (e.g. hand-written).")],
    extra: Annotated[Path, typer.Argument(help="The dictionary whose new keys are added (e.g. suggested).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="The YAML dictionary to write.")],
    overwrite: OverwriteOption = False,
) -> None:
    """BASE with the keys of EXTRA it does not cover → [bold]OUT[/bold] (YAML)."""
    from whoharry.anchors.dictionary import load_anchors, merge_dictionaries, write_dictionary

    setup(quiet=True)

    def body() -> None:
        _new_file(out, overwrite)
        merged, added, left_out = merge_dictionaries(load_anchors(base), load_anchors(extra))
        write_dictionary(out, merged, [f"{base.name} with {len(added)} keys of {extra.name} added by "
                                       f"`whoharry anchors merge` ({len(left_out)} already covered, left out)."])
        typer.echo(f"wrote {len(merged)} keys to {out}: {len(added)} added from {extra}, {len(left_out)} left out "
                   "(already in the dictionary, or holding or inside one of its keys)")

    guard(body)


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
                     "config's retain texts and eval.utility.general_text)."),
    ] = None,
    top: Annotated[int | None, typer.Option(
        "--top", help="The N best terms seen at least anchors.min_count times (anchors.top); names seen fewer "
        "times that score at least as well as the N-th are added beyond N, with no cap "
        "(anchors.name_min_count equal to min_count for exactly N).", min=1)] = None,
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
    setup(quiet)

    def body() -> None:
        from whoharry.anchors import suggest
        from whoharry.core import runlock
        from whoharry.stages import pipeline, reinforce

        overrides = [*(set_ or []), *([f"model.name={baseline}"] if baseline else []),
                     *([f"anchors.top={top}"] if top else [])]
        cfg = resolve_config(config, overrides, None, None)
        if text is not None:
            cfg.data.target = text if is_hub(text) else text.resolve()
        _new_file(out, overwrite)
        if llm:
            typer.echo(f"wrote {suggest.suggest_with_llm(cfg, out)} terms from the LLM to {out}")
            return
        if reinforced is None:
            pipeline.check_out_dir(run_dir)
            with runlock.hold(run_dir):
                reinforce.run(cfg, run_dir, progress=not quiet)
        suggestion = suggest.suggest_file(cfg, reinforced or run_dir / reinforce.NAME / "final", out,
                                          general=general, progress=not quiet)
        best = ", ".join(c.term for c in suggestion.chosen[:10])
        typer.echo(f"wrote {len(suggestion.chosen)} terms to {out} (best: {best})")

    guard(body)


@anchors_app.command("import")
def anchors_import(
    source: Annotated[Path, typer.Argument(help="The paper's .npy of GPT-4 answers, or JSON.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="The YAML dictionary to write.")],
    no_filters: Annotated[
        bool, typer.Option("--no-filters", help="Keep composite keys (all words keys, or X's of a key X).")
    ] = False,
    no_salvage: Annotated[
        bool, typer.Option("--no-salvage", help="Drop an answer cut off mid-dictionary, as the authors' parser does.")
    ] = False,
    overwrite: OverwriteOption = False,
) -> None:
    """Read a dictionary in the paper's published format (or JSON) → [bold]OUT[/bold] (YAML)."""
    from whoharry.anchors import paper_import

    setup(quiet=False)

    def body() -> None:
        _new_file(out, overwrite)
        typer.echo(paper_import.import_dictionary(source, out, filters=not no_filters, salvage=not no_salvage))

    guard(body)


@anchors_app.command("check")
def anchors_check(
    anchors: Annotated[Path, typer.Argument(help="The anchor dictionary (YAML).")],
    text: TextOption = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Also write the report as JSON.")] = None,
    config: ConfigOption = None,
    set_: SetOption = None,
) -> None:
    """Occurrences per key, keys never found, overlaps, translations opening with a function word, token coverage."""
    from whoharry.anchors import check
    from whoharry.core import artifacts

    setup(quiet=True)

    def body() -> None:
        cfg = resolve_config(config, set_, None, None)
        target = text or cfg.data.target
        if json_out is not None and json_out.resolve() in (anchors.resolve(), target.resolve()):
            raise WhoharryError(f"--json {json_out} is an input of the check; write the report elsewhere")
        report = check.check_file(anchors, target, cfg.model, cfg.labels.match_order, data=cfg.data)
        if json_out is not None:
            artifacts.write_json(json_out, report.as_dict())
        typer.echo(check.render(report))

    guard(body)


experiment_app = typer.Typer(help="Experiments that measure the method against others.", no_args_is_help=True)


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
    from whoharry.experiments import retrain_gap

    setup(quiet)

    def body() -> None:
        exp = retrain_gap.load_experiment(config or default_file(EXPERIMENT_CONFIG), set_, quick=quick,
                                          corpora=corpora)
        folder = out or Path("runs") / ("retrain-gap-quick" if quick else "retrain-gap")
        results = retrain_gap.run_in(exp, folder, progress=not quiet)
        typer.echo(results.read_text(encoding="utf-8").rstrip())
        typer.echo(f"results: {results.resolve()} (plot: retrain_gap.png)")

    guard(body)


