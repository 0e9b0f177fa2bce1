"""Figures of an evaluation report (and of a comparison of runs), written as PNG files.

Each `plot_*` function draws one figure from the report's figures and samples and raises
`WhoharryError` naming what it lacks; `write_plots` writes every figure a report can give and skips
the others with a log line. A point that is not finite (the figures of a destroyed model: an infinite
perplexity, a nan probability) is left out with a log line, and so is an error bar or band that is not.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from whoharry.core.artifacts import atomic_path
from whoharry.errors import WhoharryError
from whoharry.evaluation.figures import PROBABILITY, label, utility_figures
from whoharry.evaluation.probes import PROBE_SETS
from whoharry.evaluation.relearning import sample_kind

log = logging.getLogger(__name__)

FLOOR = 1e-6  # probabilities below this are drawn at it on log scales


def save_figure(fig: Figure, path: Path) -> Path:
    """Write the figure under a temporary name, then rename it into place."""
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=120, bbox_inches="tight", format=path.suffix.lstrip(".") or "png")
    finally:
        plt.close(fig)
    return path


def finite(*values: float) -> bool:
    """Whether every value is a finite number: what a plot can place."""
    return all(math.isfinite(v) for v in values)


def _error(value: float, span: list[float] | None) -> list[list[float]] | None:
    """Matplotlib's [[below], [above]] error bar of a value from its [low, high] interval; none when the
    interval is not finite."""
    if not span or not finite(*span):
        return None
    return [[max(value - span[0], 0.0)], [max(span[1] - value, 0.0)]]


def plot_familiarity_vs_utility(report: dict[str, Any], path: Path) -> Path:
    """A point per model: target P(answer) (familiarity, log scale) against general P(answer) (utility),
    with the bootstrap intervals as error bars; a second panel against related-domain P(answer): the
    utility figures of `figures.FIGURES` that are answer probabilities too."""
    summary, spans = report["summary"], report.get("intervals", {})
    utilities = [f.key for f in utility_figures() if f.unit == PROBABILITY
                 and any(f.key in figures and "target_p_answer" in figures for figures in summary.values())]
    if not utilities:
        raise WhoharryError("needs target_p_answer with general_p_answer or related_p_answer")
    fig, axes = plt.subplots(1, len(utilities), figsize=(5.5 * len(utilities), 4.5), squeeze=False, sharey=True)
    for ax, x_key in zip(axes[0], utilities, strict=True):
        for name, figures in summary.items():
            if x_key not in figures or "target_p_answer" not in figures:
                continue
            if not finite(figures[x_key], figures["target_p_answer"]):
                log.info("plots: %s's target_p_answer or %s is not finite, not drawn", name, x_key)
                continue
            x, y = figures[x_key], max(figures["target_p_answer"], FLOOR)
            model_spans = spans.get(name, {})
            ax.errorbar(x, y, xerr=_error(x, model_spans.get(x_key)),
                        yerr=_error(y, model_spans.get("target_p_answer")), fmt="o", capsize=3)
            ax.annotate(name, (x, y), textcoords="offset points", xytext=(6, 6))
        ax.set_yscale("log")
        ax.set_xlabel(f"utility: {label(x_key)}")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(label("target_p_answer"))
    fig.suptitle("familiarity against utility (lower and to the right is better)")
    return save_figure(fig, path)


def _shift_panel(ax: Axes, base: list[dict], after: list[dict], probe_set: str) -> None:
    """Base P(answer) against unlearned P(answer), one point per probe, on log scales."""
    points = [(max(b["p_answer"], FLOOR), max(a["p_answer"], FLOOR), b.get("specific"))
              for b, a in zip(base, after, strict=True) if finite(b["p_answer"], a["p_answer"])]
    if len(points) < len(base):
        log.info("plots: %d %s probes with a P(answer) that is not finite, not drawn", len(base) - len(points),
                 probe_set)
    groups: dict[str, list[tuple[float, float]]] = {}
    for x, y, specific in points:
        group = "probes" if specific is None else ("target-specific" if specific else "other")
        groups.setdefault(group, []).append((x, y))
    for group, xy in groups.items():
        ax.scatter([x for x, _ in xy], [y for _, y in xy], s=14, alpha=0.7, label=f"{group} ({len(xy)})")
    ax.plot([FLOOR, 1.0], [FLOOR, 1.0], "k--", linewidth=0.8, label="unchanged")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(FLOOR / 2, 2.0)
    ax.set_ylim(FLOOR / 2, 2.0)
    ax.set_xlabel("base model: P(answer)")
    ax.set_ylabel("unlearned model: P(answer)")
    ax.set_title(f"{probe_set} probes")
    ax.legend(fontsize="small")
    ax.grid(alpha=0.3)


def plot_probe_shift(report: dict[str, Any], path: Path) -> Path:
    """Each probe's P(answer) before (base) and after (unlearned) unlearning, a panel per probe set both
    models have (target, general, related); records are coloured by their `specific` flag when present."""
    samples = report.get("samples", {})
    base, after = samples.get("base", {}), samples.get("unlearned", {})
    probe_sets = [name for name in PROBE_SETS if base.get(name) and after.get(name)]
    if not probe_sets:
        raise WhoharryError("needs probe samples of both the base and the unlearned model")
    for name in probe_sets:
        if len(base[name]) != len(after[name]):
            raise WhoharryError(f"{name} probes: {len(base[name])} base records but {len(after[name])} unlearned")
    fig, axes = plt.subplots(1, len(probe_sets), figsize=(5 * len(probe_sets), 4.8), squeeze=False)
    for ax, name in zip(axes[0], probe_sets, strict=True):
        _shift_panel(ax, base[name], after[name], name)
    fig.suptitle("per-probe P(answer), before and after unlearning")
    return save_figure(fig, path)


# each relearning source's curves (report.json's `relearning.sample_kind(source)`), with their panel titles
RELEARNING_PANELS = {"target": "on target blocks", "heldout": "on held-out text",
                     "facts": "on half the facts (the other half)"}


def plot_relearning(report: dict[str, Any], path: Path) -> Path | None:
    """Target P(answer) of each model against relearning steps, a panel per relearning source the report
    holds, shaded between the per-step intervals (`intervals[model]`: a [low, high] per step) when given; None
    without relearning data."""
    panels = [(sample_kind(source), title) for source, title in RELEARNING_PANELS.items()
              if (report.get(sample_kind(source)) or {}).get("target_p_answer")]
    if not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.5), squeeze=False)
    try:
        for ax, (key, title) in zip(axes[0], panels, strict=True):
            _relearning_panel(ax, report[key], title)
    except WhoharryError:
        plt.close(fig)
        raise
    return save_figure(fig, path)


def _relearning_panel(ax: Axes, relearning: dict[str, Any], title: str) -> None:
    steps, spans = relearning["steps"], relearning.get("intervals", {})
    for name, values in relearning["target_p_answer"].items():
        if len(values) != len(steps):
            raise WhoharryError(f"relearning: {len(values)} values of {name} for {len(steps)} steps")
        drawn = [i for i, v in enumerate(values) if finite(v)]
        if len(drawn) < len(values):
            log.info("plots: relearning: %d values of %s are not finite, not drawn", len(values) - len(drawn), name)
        line = ax.plot([steps[i] for i in drawn], [max(values[i], FLOOR) for i in drawn], marker="o", markersize=3,
                       label=name)[0]
        model_spans = spans.get(name)
        if model_spans and len(model_spans) == len(steps):
            banded = [i for i in range(len(steps)) if finite(*model_spans[i])]
            ax.fill_between([steps[i] for i in banded], [max(model_spans[i][0], FLOOR) for i in banded],
                            [model_spans[i][1] for i in banded], color=line.get_color(), alpha=0.2)
        elif model_spans:
            log.warning("relearning: %d intervals of %s for %d steps, not drawn", len(model_spans), name, len(steps))
    ax.set_yscale("log")
    ax.set_xlabel("relearning steps")
    ax.set_ylabel(label("target_p_answer"))
    ax.set_title(f"relearning {title}")
    ax.legend()
    ax.grid(alpha=0.3)


def plot_audit(report: dict[str, Any], path: Path) -> Path | None:
    """The attack audit (`evaluation.audit`): each attack's recovery (unlearned ÷ base under the attack) as a
    bar with its paired interval, the plain probes' recovery dashed, 1 (all of the base's) dotted; None
    without an audit."""
    table = report.get("audit")
    if not table:
        return None
    rows = [row for row in table["rows"] if row["family"] != "none"]
    plain = next((row["recovery"] for row in table["rows"] if row["family"] == "none"), None)
    fig, ax = plt.subplots(figsize=(7, 0.45 * len(rows) + 1.5))
    for y, row in enumerate(rows):
        if not finite(row["recovery"]):
            log.info("plots: audit: the recovery of %s is not finite, not drawn", row["attack"])
            continue
        worst = row["attack"] == table["worst"]["attack"]
        ax.barh(y, row["recovery"], color="tab:red" if worst else "tab:blue", alpha=0.8,
                xerr=_error(row["recovery"], row.get("interval")), capsize=3)
    if plain is not None and finite(plain):
        ax.axvline(plain, color="black", linestyle="--", linewidth=1, label="no attack")
    ax.axvline(1.0, color="grey", linestyle=":", linewidth=1, label="the base model's")
    ax.set_yticks(range(len(rows)), [row["attack"] for row in rows], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("recovery: unlearned ÷ base familiarity under the attack")
    ax.set_title("attack audit (worst in red)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, axis="x")
    return save_figure(fig, path)


def write_plots(report: dict[str, Any], folder: Path) -> list[Path]:
    """Write familiarity_vs_utility.png, probe_shift.png, relearning.png (when the report has relearning data)
    and audit.png (when it has an audit) into `folder`; a figure the report lacks the data for is skipped
    with a log line."""
    plots: list[tuple[str, Callable[[dict[str, Any], Path], Path | None]]] = [
        ("familiarity_vs_utility.png", plot_familiarity_vs_utility),
        ("probe_shift.png", plot_probe_shift),
        ("relearning.png", plot_relearning),
        ("audit.png", plot_audit),
    ]
    written = []
    for name, plot in plots:
        try:
            path = plot(report, folder / name)
        except WhoharryError as err:
            log.info("plots: %s skipped: %s", name, err)
            continue
        if path is None:
            log.info("plots: %s skipped: the report has no data for it", name)
        else:
            written.append(path)
    return written
