"""The evaluation report: which figures it shows (the listed ones of `figures.FIGURES`, then lm-eval's),
`report.md` rendered from `report.json`, and reading a report back.

Every figure prints finite, `inf`, `-inf` or `nan` (`number`): a destroyed model is a normal thing to
evaluate. When its utility has collapsed (`utility_collapse`), the report says so above the table and
does not read the privacy verdicts (membership AUC, PrivLeak) off what is then noise.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

from whoharry.errors import WhoharryError
from whoharry.evaluation.figures import FIGURES, LMEVAL_PREFIX, Direction, Figure, label, lmeval_figure
from whoharry.evaluation.relearning import sample_kind

# A "keep" or "keep low" figure counts as kept within this relative change of the base model's value.
KEEP_TOLERANCE = 0.05
# Numbers this large print with three significant digits and an exponent (1.23e+30), not dozens of digits.
COMPACT_ABOVE = 1e6
# A change up to this many times the base value prints as a percentage (+900%), a larger one as a factor (×25.3).
PERCENT_UP_TO = 10.0

# Utility has collapsed when the evaluated model no longer models language: its perplexity on the general
# text, or the base model's perplexity of its completions, above COLLAPSE_PERPLEXITY times the base
# model's (or nan, where the base's is a number), or its mean P(answer) on the general probes below
# COLLAPSE_P_ANSWER times the base model's. Its membership scores are then noise, and the privacy verdicts
# (membership AUC, PrivLeak) are not read.
COLLAPSE_PERPLEXITY = 10.0
COLLAPSE_P_ANSWER = 0.1
# (not the fluency after the target prompts themselves: forgetting alone raises it)
COLLAPSE_PERPLEXITIES = ("general_perplexity", "completion_fluency_generic_perplexity", "general_fluency_perplexity")
PRIVACY_DIRECTIONS: tuple[Direction, ...] = ("toward 0.5", "toward 0")
NOT_READ = "not read: utility collapsed"
UNDEFINED = "undefined (nan)"


def number(value: float, digits: int = 4) -> str:
    """A figure as the reports print it: `digits` decimals; `inf`, `-inf` and `nan` as such; beyond
    ±`COMPACT_ABOVE`, three significant digits with an exponent (1.23e+30)."""
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return f"{value:.3g}" if abs(value) >= COMPACT_ABOVE else f"{value:.{digits}f}"


def change(ratio: float) -> str:
    """A ratio to the base value as a change: `+38%`, or a factor `×1.56e+170` (`×inf`) beyond
    `PERCENT_UP_TO` times."""
    return f"{ratio - 1:+.0%}" if abs(ratio) <= PERCENT_UP_TO else f"×{ratio:.3g}"


def figures(summary: dict[str, dict[str, float]]) -> list[Figure]:
    """The listed `figures.FIGURES` present in any model's summary, then the lm-eval figures found there."""
    present = [f for f in FIGURES if f.listed and any(f.key in values for values in summary.values())]
    extra = sorted({key for values in summary.values() for key in values if key.startswith(LMEVAL_PREFIX)})
    return present + [lmeval_figure(key) for key in extra]


def utility_collapse(summary: dict[str, dict[str, float]]) -> list[str]:
    """Why the unlearned model's utility has collapsed (see `COLLAPSE_PERPLEXITY`), one reason per figure
    that shows it; empty when it has not, or when the summary lacks the figures to tell."""
    base, other = summary.get("base", {}), summary.get("unlearned", {})

    def reason(key: str, bound: str) -> str:
        value, mark = float(other[key]), float(base[key])
        if math.isnan(value):
            return f"{label(key)} is nan where the base model's is {mark:.4g}"
        return f"{label(key)} is {value:.4g}, {bound} the base model's {mark:.4g}"

    reasons = []
    for key in COLLAPSE_PERPLEXITIES:
        if key in base and key in other:
            value, mark = float(other[key]), float(base[key])
            if (math.isnan(value) and not math.isnan(mark)) or value > COLLAPSE_PERPLEXITY * mark:
                reasons.append(reason(key, f"above {COLLAPSE_PERPLEXITY:g}×"))
    key = "general_p_answer"
    if key in base and key in other and float(base[key]) > 0:
        value = float(other[key])
        if math.isnan(value) or value < COLLAPSE_P_ANSWER * float(base[key]):
            reasons.append(reason(key, f"below {COLLAPSE_P_ANSWER:g}×"))
    return reasons


def collapse_notice(reasons: list[str]) -> str:
    """One paragraph saying that utility collapsed, why, and which verdicts are therefore not read."""
    return ("**Utility collapsed**: " + "; ".join(reasons) + ". The unlearned model no longer models language: "
            "its membership scores are noise, so the membership AUC and PrivLeak verdicts are not read "
            f"(the rule: a general-text or completion perplexity above {COLLAPSE_PERPLEXITY:g}× the base model's, "
            f"or general probes' mean P(answer) below {COLLAPSE_P_ANSWER:g}× the base model's).")


def verdict(key: str, direction: Direction, summary: dict[str, dict[str, float]], spans: dict[str, dict[str, list]],
            ratio_span: list[float] | None, collapsed: bool = False) -> str:
    """What happened to one figure of the unlearned model, judged by its direction and its interval;
    `collapsed`: utility collapsed, so the privacy verdicts are not read (`NOT_READ`). A nan figure, or a
    nan ratio (inf / inf), is `UNDEFINED`."""
    base, value = summary.get("base", {}).get(key), summary.get("unlearned", {}).get(key)
    if value is None:
        return ""
    if collapsed and direction in PRIVACY_DIRECTIONS:
        return NOT_READ
    if math.isnan(value):
        return UNDEFINED
    if direction == "toward 0":
        if abs(value) <= KEEP_TOLERANCE:
            return "like the reference"
        return "below the reference: over-unlearning" if value < 0 else "above the reference: leaks"
    if base is None or not base:
        return ""
    ratio = value / base
    if math.isnan(ratio):
        return UNDEFINED
    low, high = ratio_span or [ratio, ratio]
    if direction == "lower":
        if high < 1:
            return f"lower ({change(ratio)})"
        return f"higher ({change(ratio)})" if low > 1 else "no clear change"
    if direction in ("keep", "keep low"):
        if low <= 1 <= high or abs(ratio - 1) <= KEEP_TOLERANCE:
            return "kept"
        better = ratio > 1 if direction == "keep" else ratio < 1
        return f"{'better' if better else 'worse'} ({change(ratio)})"
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
            rows.append((figure.label, number(base[key]), number(other[key]), number(ratio, 3)))
    return rows


def render_markdown(report: dict[str, Any]) -> str:
    """One table: every figure for every model (base, unlearned, reference when given) with bootstrap
    95% intervals, the unlearned/base ratio, and a verdict; then the relearning curve and the plots. When
    utility collapsed (`utility_collapse`), a notice above the table says so and the privacy verdicts
    are not read."""
    summary, spans = report["summary"], report.get("intervals", {})
    ratio_spans = report.get("ratio_intervals", {})
    names = list(summary)

    def cell(value: float | None, span: list[float] | None, digits: int = 4) -> str:
        if value is None:
            return ""
        text = number(value, digits)
        return f"{text} [{number(span[0], digits)}, {number(span[1], digits)}]" if span else text

    lines = ["# whoharry evaluation", ""]
    target = report.get("target")
    if target:
        lines.append(f"- target: `{target['file']}` ({target['bytes']:,} bytes)")
        lines += [f"- made from the target by this run: {what} `{where}`"
                  for what, where in target.get("made", {}).items()]
        if target.get("dictionary_mismatch"):
            lines.append(f"- **the anchor dictionary is about another text**: {target['dictionary_mismatch']}, so "
                         "few positions got a generic label")
    lines += [f"- {name}: `{where}`" for name, where in report["models"].items()]
    lines += [
        "- brackets: bootstrap 95% intervals over the probes, prompts, passages or text blocks "
        "(paired for the ratio; ± 1.96 standard errors for lm-eval)",
        "",
    ]
    collapse = utility_collapse(summary)
    if collapse:
        lines += [collapse_notice(collapse), ""]
    lines += [
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
        cells.append(verdict(key, figure.direction, summary, spans, ratio_span, collapsed=bool(collapse)))
        lines.append(f"| {figure.label} | " + " | ".join(cells) + " |")
    for source, what in RELEARNING_TABLES.items():
        relearning = report.get(sample_kind(source))
        if not relearning:
            continue
        lines += ["", f"Relearning {what}: mean target P(answer) over {relearning['steps'][-1]} fine-tuning "
                  f"steps, measured at steps {', '.join(map(str, relearning['steps']))}", "",
                  "| step | " + " | ".join(relearning["target_p_answer"]) + " |",
                  "|" + " ---: |" * (len(relearning["target_p_answer"]) + 1)]
        for i, step in enumerate(relearning["steps"]):
            values = [number(curve[i]) for curve in relearning["target_p_answer"].values()]
            lines.append(f"| {step} | " + " | ".join(values) + " |")
    if report.get("audit"):
        lines += ["", *audit_lines(report["audit"])]
    shown = completion_lines(report)
    if shown:
        lines += ["", *shown]
    plots = report.get("plots", [])
    if plots:
        lines += ["", *[f"![{Path(name).stem}]({name})" for name in plots]]
    return "\n".join(lines) + "\n"


SHOWN_COMPLETIONS = 12  # prompts report.md shows completed by both models


def completion_pairs(report: dict[str, Any], count: int = SHOWN_COMPLETIONS) -> list[dict[str, Any]]:
    """`count` of the target completion prompts, evenly spread (`core.text.evenly_spread`), each with the base
    and the unlearned model's greedy completion and the target terms each names (the offline judge's
    `terms_named` and `references_named`); empty when the report has no completions of both models."""
    from whoharry.core.text import evenly_spread

    samples = report.get("samples", {})
    base = samples.get("base", {}).get("completions") or []
    other = samples.get("unlearned", {}).get("completions") or []
    if not base or len(base) != len(other):
        return []

    def terms(record: dict[str, Any]) -> list[str]:
        return sorted({*record.get("terms_named", []), *record.get("references_named", [])}, key=len, reverse=True)

    return [{"prompt": base[i]["prompt"], "base": base[i]["completion"], "base_terms": terms(base[i]),
             "unlearned": other[i]["completion"], "unlearned_terms": terms(other[i])}
            for i in evenly_spread(len(base), count)]


def marked(text: str, terms: list[str], mark: str = "**") -> str:
    """A completion on one line (line breaks as ` / `), each occurrence of a target term between `mark`s."""
    line = " / ".join(part.strip() for part in text.strip().splitlines() if part.strip())
    if terms:
        pattern = re.compile("|".join(re.escape(term) for term in terms))
        line = pattern.sub(lambda match: f"{mark}{match.group(0)}{mark}", line)
    return line


def completion_lines(report: dict[str, Any]) -> list[str]:
    """The before/after completions (`completion_pairs`) as a markdown table, target terms in bold."""
    pairs = completion_pairs(report)
    if not pairs:
        return []
    cell = lambda text: text.replace("|", "\\|")  # noqa: E731
    lines = ["## Completions before and after", "",
             f"Greedy completions of {len(pairs)} target prompts, evenly spread over the file; target terms "
             "(the anchor dictionary's keys and the prompt's reference terms) in bold.", "",
             "| prompt | base | unlearned |", "| --- | --- | --- |"]
    return lines + [f"| {cell(p['prompt'])} | {cell(marked(p['base'], p['base_terms']))} | "
                    f"{cell(marked(p['unlearned'], p['unlearned_terms']))} |" for p in pairs]


# each relearning source's curves (report.json's `relearning.sample_kind(source)`), as report.md names them
RELEARNING_TABLES = {"target": "on a slice of the target text", "heldout": "on held-out text about the target",
                     "facts": "on half the facts (the other half scored)"}


# audit rows whose figure is not the plain probes' measure (the other half of the facts; the first token alone)
NOT_PLAIN = ("relearn_facts_p_answer", "latent_p_first")


def audit_lines(table: dict[str, Any]) -> list[str]:
    """The attack audit (`evaluation.audit.audit_table`) as markdown: a heading, how to read it, one row per
    attack with its recovery and paired interval, and the worst attack."""

    def recovery(row: dict[str, Any]) -> str:
        span = row.get("interval")
        text = number(row["recovery"], 3)
        return f"{text} [{number(span[0], 3)}, {number(span[1], 3)}]" if span else text

    worst = table["worst"]
    lines = ["## Attack audit", "",
             "Recovery: the unlearned model's familiarity under the attack ÷ the base model's under the same attack "
             "(1: the attack shows as much of the target as in the base; the first row, no attack, is what "
             "unlearning leaves). Brackets: paired bootstrap 95% intervals.", "",
             "| attack | figure | base | unlearned | recovery |", "| --- | --- | ---: | ---: | ---: |"]
    lines += [f"| {row['attack']} | {label(row['figure'])} | {number(row['base'])} | {number(row['unlearned'])} | "
              f"{recovery(row)} |" for row in table["rows"]]
    plain = next((row for row in table["rows"] if row["family"] == "none"), None)
    fallen = [row["attack"] for row in table["rows"] if plain and row["family"] != "none"
              and row["figure"] not in NOT_PLAIN and row["base"] < plain["base"]]
    if fallen:  # a ratio can rise because the base fell: say so where it happens
        lines += ["", "The base model's own familiarity falls under " + "; ".join(fallen) + ": there a recovery "
                  "above the first row's can come from the base losing, not the unlearned model gaining "
                  "(compare the unlearned column with the first row's)."]
    return [*lines, "", f"**Worst attack** (of the attacks, not the first row): {worst['attack']}, recovery "
                        f"{recovery(worst)}."]


def render_table(summary: dict[str, dict[str, float]]) -> str:
    """The base vs. unlearned table of `table_rows` for a terminal (100 columns), then a line saying that
    utility collapsed when it did."""
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
        collapse = utility_collapse(summary)
        if collapse:
            console.print("utility collapsed: " + "; ".join(collapse) + ". The membership AUC and PrivLeak "
                          "verdicts are not read.", markup=False, highlight=False)
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
