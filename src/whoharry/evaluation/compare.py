"""Several runs side by side: each run's unlearned figures and their ratio to its own base model.

`compare` reads every run's `eval/report.json`; `render_compare` turns the result into one markdown
table, a row per listed figure of `figures.FIGURES` and a column per run; `plot_comparison` draws
familiarity against each utility figure (`Figure.utility`). A run whose utility collapsed
(`report.utility_collapse`) is named in a warning: its familiarity and privacy figures are noise.
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path
from typing import Any

from whoharry.core import artifacts
from whoharry.errors import WhoharryError
from whoharry.evaluation import figures
from whoharry.evaluation.plots import FLOOR, finite, plt, save_figure
from whoharry.evaluation.report import load_report, utility_collapse

log = logging.getLogger(__name__)


def ratios(unlearned: dict[str, float], base: dict[str, float]) -> dict[str, float]:
    """unlearned / base for every figure both hold; a figure whose base value is 0 has no ratio."""
    return {key: value / base[key] for key, value in unlearned.items() if base.get(key)}


def compare(run_dirs: list[Path]) -> dict[str, Any]:
    """The unlearned and base summaries of each run's evaluation report, with their ratios. Runs whose
    base model differs from the first run's are kept, and named in `warnings`, as are runs whose utility
    collapsed (their reasons under `utility_collapse`)."""
    if not run_dirs:
        raise WhoharryError("no runs to compare: name at least one run folder")
    runs: list[dict[str, Any]] = []
    warnings: list[str] = []
    for run_dir in run_dirs:
        report = load_report(run_dir / "eval")
        summary = report["summary"]
        unlearned, base = summary.get("unlearned", {}), summary.get("base", {})
        collapse = utility_collapse(summary)
        runs.append({"run": str(run_dir), "models": report["models"], "summary": unlearned, "base": base,
                     "ratio": ratios(unlearned, base), **({"utility_collapse": collapse} if collapse else {})})
        if collapse:
            warnings.append(f"{run_dir}: utility collapsed ({'; '.join(collapse)}); its familiarity and privacy "
                            "figures are noise")
        first_base, this_base = runs[0]["models"].get("base"), report["models"].get("base")
        if this_base != first_base:
            warnings.append(f"{run_dir}: base model `{this_base}` differs from `{first_base}` of "
                            f"{runs[0]['run']}; its ratios are against its own base")
    for warning in warnings:
        log.warning("compare: %s", warning)
    return {"runs": runs, "warnings": warnings}


def run_labels(runs: list[dict[str, Any]]) -> list[str]:
    """Short names of the runs: the folder name, with its parent folder where two names clash, and the
    whole path where even that clashes."""
    paths = [Path(run["run"]) for run in runs]
    labels = [path.name or str(path) for path in paths]
    clashes = Counter(labels)
    labels = [str(Path(*path.parts[-2:])) if clashes[label] > 1 else label
              for path, label in zip(paths, labels, strict=True)]
    clashes = Counter(labels)
    return [str(path) if clashes[label] > 1 else label for path, label in zip(paths, labels, strict=True)]


def _cell(value: float | None, ratio: float | None = None) -> str:
    """`value (ratio×)` with four and three significant digits; `inf` and `nan` as such."""
    if value is None:
        return ""
    text = f"{value:.4g}"
    return f"{text} ({ratio:.3g}×)" if ratio is not None else text


def _escape(text: str) -> str:
    return text.replace("|", "\\|")


def render_compare(data: dict[str, Any]) -> str:
    """One markdown table: a row per figure any run holds, the first run's base model, then each run's
    unlearned value with its ratio to that run's base; the warnings follow the table."""
    runs = data["runs"]
    labels = run_labels(runs)
    lines = ["# whoharry: runs compared", ""]
    lines += [f"- {label}: `{run['run']}` (base `{run['models'].get('base')}`)"
              for label, run in zip(labels, runs, strict=True)]
    lines += [
        "- cells: the unlearned model's value (its ratio to the run's own base model)",
        "",
        f"| figure | base ({_escape(labels[0])}) | " + " | ".join(_escape(label) for label in labels) + " |",
        "| --- |" + " ---: |" * (len(runs) + 1),
    ]
    for figure in figures.FIGURES:
        key = figure.key
        if not figure.listed or not any(key in run["summary"] or key in run["base"] for run in runs):
            continue
        cells = [_cell(runs[0]["base"].get(key))]
        cells += [_cell(run["summary"].get(key), run["ratio"].get(key)) for run in runs]
        lines.append(f"| {figure.label} | " + " | ".join(cells) + " |")
    if data.get("warnings"):
        lines += ["", "Warnings:", ""] + [f"- {warning}" for warning in data["warnings"]]
    return "\n".join(lines) + "\n"


def plot_comparison(data: dict[str, Any], path: Path) -> Path:
    """From `compare.compare`: a point per run of its unlearned/base ratios, target P(answer) (log scale)
    against each utility figure the runs have (a panel each), joined in order of utility: the runs'
    familiarity/utility trade-off curves."""
    labels = run_labels(data["runs"])
    panels = []
    for key in (figure.key for figure in figures.utility_figures()):
        held = [(run["ratio"][key], run["ratio"]["target_p_answer"], label)
                for run, label in zip(data["runs"], labels, strict=True)
                if key in run["ratio"] and "target_p_answer" in run["ratio"]]
        points = sorted((x, max(y, FLOOR), label) for x, y, label in held if finite(x, y))
        for x, y, label in held:
            if not finite(x, y):
                log.info("compare: %s's ratios (%s %s, target_p_answer %s) are not finite, not drawn", label, key, x, y)
        if points:
            panels.append((key, points))
    if not panels:
        raise WhoharryError("no run has target_p_answer with a utility figure as ratios")
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 5), squeeze=False)
    for ax, (key, points) in zip(axes[0], panels, strict=True):
        ax.plot([x for x, _, _ in points], [y for _, y, _ in points], color="0.6", linewidth=0.8, zorder=1)
        ax.scatter([x for x, _, _ in points], [y for _, y, _ in points], zorder=2)
        for x, y, label in points:
            ax.annotate(label, (x, y), textcoords="offset points", xytext=(5, 5), fontsize="x-small")
        ax.axhline(1.0, color="k", linestyle=":", linewidth=0.8)
        ax.axvline(1.0, color="k", linestyle=":", linewidth=0.8)
        ax.set_yscale("log")
        ax.set_xlabel(f"{figures.BY_KEY[key].heading}, unlearned / base")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("familiarity left: target P(answer), unlearned / base")
    fig.suptitle("runs compared: familiarity left against each utility figure")
    return save_figure(fig, path)


def write_comparison(data: dict[str, Any], folder: Path) -> None:
    """compare.json, compare.md and compare.png of `compare(...)`'s result in `folder`; the plot is skipped
    with a log line when no run has finite ratios to draw."""
    artifacts.write_json(folder / "compare.json", data)
    artifacts.atomic_write_text(folder / "compare.md", render_compare(data))
    try:
        plot_comparison(data, folder / "compare.png")
    except WhoharryError as err:
        log.info("compare: compare.png skipped: %s", err)
