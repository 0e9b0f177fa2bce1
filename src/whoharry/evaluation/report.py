"""The evaluation report: which figures it shows (the listed ones of `figures.FIGURES`, then lm-eval's),
`report.md` rendered from `report.json`, and reading a report back."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from whoharry.errors import WhoharryError
from whoharry.evaluation.figures import FIGURES, LMEVAL_PREFIX, Direction, Figure, lmeval_figure

# A "keep" or "keep low" figure counts as kept within this relative change of the base model's value.
KEEP_TOLERANCE = 0.05


def figures(summary: dict[str, dict[str, float]]) -> list[Figure]:
    """The listed `figures.FIGURES` present in any model's summary, then the lm-eval figures found there."""
    present = [f for f in FIGURES if f.listed and any(f.key in values for values in summary.values())]
    extra = sorted({key for values in summary.values() for key in values if key.startswith(LMEVAL_PREFIX)})
    return present + [lmeval_figure(key) for key in extra]


def verdict(key: str, direction: Direction, summary: dict[str, dict[str, float]], spans: dict[str, dict[str, list]],
            ratio_span: list[float] | None) -> str:
    """What happened to one figure of the unlearned model, judged by its direction and its interval."""
    base, value = summary.get("base", {}).get(key), summary.get("unlearned", {}).get(key)
    if value is None:
        return ""
    if direction == "toward 0":
        if abs(value) <= KEEP_TOLERANCE:
            return "like the reference"
        return "below the reference: over-unlearning" if value < 0 else "above the reference: leaks"
    if base is None or not base:
        return ""
    ratio = value / base
    low, high = ratio_span or [ratio, ratio]
    if direction == "lower":
        if high < 1:
            return f"lower ({ratio - 1:+.0%})"
        return f"higher ({ratio - 1:+.0%})" if low > 1 else "no clear change"
    if direction in ("keep", "keep low"):
        if low <= 1 <= high or abs(ratio - 1) <= KEEP_TOLERANCE:
            return "kept"
        better = ratio > 1 if direction == "keep" else ratio < 1
        return f"{'better' if better else 'worse'} ({ratio - 1:+.0%})"
    span = spans.get("unlearned", {}).get(key)
    if span and span[1] < 0.5:
        return "below 0.5: over-unlearning"
    return "closer to 0.5" if abs(value - 0.5) < abs(base - 0.5) else "not closer to 0.5"


def table_rows(summary: dict[str, dict[str, float]]) -> list[tuple[str, str, str, str]]:
    """(figure, base, unlearned, unlearned/base) rows for every figure both models have."""
    base, other = summary.get("base", {}), summary.get("unlearned", {})
    rows = []
    for figure in figures(summary):
        key = figure.key
        if key in base and key in other:
            ratio = other[key] / base[key] if base[key] else float("nan")
            rows.append((figure.label, f"{base[key]:.4f}", f"{other[key]:.4f}", f"{ratio:.3f}"))
    return rows


def render_markdown(report: dict[str, Any]) -> str:
    """One table: every figure for every model (base, unlearned, reference when given) with bootstrap
    95% intervals, the unlearned/base ratio, and a verdict; then the plots."""
    summary, spans = report["summary"], report.get("intervals", {})
    ratio_spans = report.get("ratio_intervals", {})
    names = list(summary)

    def cell(value: float | None, span: list[float] | None, digits: int = 4) -> str:
        if value is None:
            return ""
        text = f"{value:.{digits}f}"
        return f"{text} [{span[0]:.{digits}f}, {span[1]:.{digits}f}]" if span else text

    lines = ["# whoharry evaluation", ""]
    lines += [f"- {name}: `{where}`" for name, where in report["models"].items()]
    lines += [
        "- brackets: bootstrap 95% intervals over the probes, prompts, passages or text blocks "
        "(paired for the ratio; ± 1.96 standard errors for lm-eval)",
        "",
        "| figure | " + " | ".join(names) + " | unlearned / base | verdict |",
        "|" + " --- |" + " ---: |" * (len(names) + 1) + " --- |",
    ]
    base, other = summary.get("base", {}), summary.get("unlearned", {})
    for figure in figures(summary):
        key = figure.key
        cells = [cell(summary[name].get(key), spans.get(name, {}).get(key)) for name in names]
        ratio = other[key] / base[key] if base.get(key) and key in other else None
        ratio_span = ratio_spans.get(f"unlearned/{key}")
        cells.append(cell(ratio, ratio_span, 3))
        cells.append(verdict(key, figure.direction, summary, spans, ratio_span))
        lines.append(f"| {figure.label} | " + " | ".join(cells) + " |")
    relearning = report.get("relearning")
    if relearning:
        lines += ["", f"Relearning: mean target P(answer) after each of {relearning['steps'][-1]} fine-tuning steps "
                  "on a slice of the target text", "",
                  "| step | " + " | ".join(relearning["target_p_answer"]) + " |",
                  "|" + " ---: |" * (len(relearning["target_p_answer"]) + 1)]
        for i, step in enumerate(relearning["steps"]):
            values = [f"{curve[i]:.4f}" for curve in relearning["target_p_answer"].values()]
            lines.append(f"| {step} | " + " | ".join(values) + " |")
    plots = report.get("plots", [])
    if plots:
        lines += ["", *[f"![{Path(name).stem}]({name})" for name in plots]]
    return "\n".join(lines) + "\n"


def render_table(summary: dict[str, dict[str, float]]) -> str:
    """The base vs. unlearned table of `table_rows` for a terminal (100 columns)."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title="base vs. unlearned")
    for column in ("figure", "base", "unlearned", "unlearned / base"):
        table.add_column(column, justify="left" if column == "figure" else "right")
    for row in table_rows(summary):
        table.add_row(*row)
    console = Console(width=100)
    with console.capture() as captured:
        console.print(table)
    return captured.get().rstrip()


def load_report(stage_dir: Path) -> dict[str, Any]:
    """An evaluation folder's report.json.

    Raises:
        WhoharryError: the folder holds no report.
    """
    path = stage_dir / "report.json"
    if not path.is_file():
        raise WhoharryError(f"no evaluation report in {stage_dir}: run `whoharry eval` first")
    return json.loads(path.read_text(encoding="utf-8"))
