"""The retrain-gap experiment's results: every model's distance to the gold model, its utility and its cost,
as the mean and spread over seeds, written as a markdown table and a plot.

Distances to gold, per seed, then averaged:

- `gap_familiarity`, `gap_knowmem`, `gap_verbmem`: the model's figure minus the gold model's (P(answer)
  on the forget book's probes, KnowMem and VerbMem ROUGE-L); 0 is the gold model's, positive means the
  model still knows more than a model that never saw Y, negative that it lost more;
- `privleak`: (membership AUC − gold's AUC) / gold's AUC with Min-K%++ (MUSE's PrivLeak, gold as reference);
- `kl_forget`, `kl_heldout`, `kl_retain`: the mean KL(p_gold || p_model) per token on Y, on held-out
  passages of Y's book, and on R.

Utility: P(answer) on the general probes and the perplexity of the general text. Cost: models run per
generated token, and the CPU-seconds the method spent (reinforcing, suggesting a dictionary, labels,
unlearning), also as a share of what fine-tuning the gold model cost. The units, headings and digits of
these figures are in `whoharry.evaluation.figures` (`GAP_FIGURES` and, for the utility, `FIGURES`).
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Any

from whoharry.config import to_dict
from whoharry.evaluation.figures import BY_KEY, Figure
from whoharry.evaluation.report import number, utility_collapse

ORDER = ("gold", "subject", "whp", "whp-generated", "ga", "ga-retain", "npo", "npo-retain", "ensemble")
NAMES = {
    "gold": "gold (base + R: the target of unlearning)",
    "subject": "subject (base + R + Y: nothing unlearned)",
    "whp": "WHP, hand-written dictionary",
    "whp-generated": "WHP, generated dictionary",
    "ga": "gradient ascent",
    "ga-retain": "gradient ascent + retain loss",
    "npo": "NPO",
    "npo-retain": "NPO + retain loss",
    "ensemble": "inference-time WHP (two models)",
}


def display_name(method: str) -> str:
    """A method's name in the table: `whp+NAME`, a WHP variant, reads "WHP + NAME"."""
    return NAMES.get(method) or (f"WHP + {method[4:]}" if method.startswith("whp+") else method)


# The table's columns: figures of `figures.GAP_FIGURES` and `figures.FIGURES`, with their headings and digits
COLUMNS: tuple[Figure, ...] = tuple(BY_KEY[key] for key in (
    "gap_familiarity", "gap_knowmem", "gap_verbmem", "privleak", "kl_forget", "kl_heldout", "kl_retain",
    "general_p_answer", "general_perplexity", "models_per_token", "cpu_seconds", "cost_vs_gold"))
AUC = "membership_auc_minkpp"


def distances(figures: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    """One seed's figures with the distances to the gold model added."""
    gold = figures["gold"]
    out = {}
    for name, fig in figures.items():
        row = dict(fig)
        for key, source in (("gap_familiarity", "target_p_answer"), ("gap_knowmem", "knowmem_rouge_l"),
                            ("gap_verbmem", "verbmem_rouge_l")):
            if source in fig and source in gold:
                row[key] = fig[source] - gold[source]
        if AUC in fig and gold.get(AUC):
            row["privleak"] = (fig[AUC] - gold[AUC]) / gold[AUC]
        if gold.get("cpu_seconds"):
            row["cost_vs_gold"] = fig["cpu_seconds"] / gold["cpu_seconds"]
        out[name] = row
    return out


def summarise(per_seed: dict[int, dict[str, dict[str, float]]], exp: Any) -> dict[str, Any]:
    """Mean, standard deviation, minimum and maximum over seeds of every figure of every model."""
    seeds = sorted(per_seed)
    rows = {seed: distances(per_seed[seed]) for seed in seeds}
    names = [name for name in ORDER if name in rows[seeds[0]]] + [name for name in rows[seeds[0]] if name not in ORDER]
    table: dict[str, dict[str, dict[str, float]]] = {}
    for name in names:
        keys = sorted(set().union(*(rows[seed][name] for seed in seeds)))
        table[name] = {}
        for key in keys:
            values = [rows[seed][name][key] for seed in seeds if key in rows[seed][name]]
            values = [float(v) for v in values if isinstance(v, int | float)]
            if values:
                table[name][key] = spread(values)
        reasons = collapse_reasons(table, name)
        if reasons:
            table[name]["utility_collapse"] = reasons
    return {"seeds": seeds, "methods": names, "table": table, "per_seed": {str(s): rows[s] for s in seeds},
            "settings": to_dict(exp)}


def spread(values: list[float]) -> dict[str, float]:
    """Mean, standard deviation, minimum and maximum of one figure over seeds. A seed's inf or nan is kept,
    not dropped: the mean of values holding inf is inf (nan with both signs), any nan makes every
    statistic nan, and the spread of values that are not all finite is nan."""
    n = len(values)
    if any(math.isnan(v) for v in values):
        return {"mean": math.nan, "std": math.nan, "min": math.nan, "max": math.nan, "n": n}
    finite = all(math.isfinite(v) for v in values)
    std = (statistics.stdev(values) if n > 1 else 0.0) if finite else math.nan
    return {"mean": statistics.fmean(values), "std": std, "min": min(values), "max": max(values), "n": n}


def collapse_reasons(table: dict[str, dict[str, Any]], name: str) -> list[str]:
    """Why a method's utility collapsed, measured against the gold model by `report.utility_collapse`'s
    rule on the mean figures; empty for the gold model itself or when it did not."""
    if name == "gold" or "gold" not in table:
        return []
    means = {model: {key: stat["mean"] for key, stat in table[model].items() if isinstance(stat, dict)}
             for model in ("gold", name)}
    return utility_collapse({"base": means["gold"], "unlearned": means[name]})


def _cell(stat: dict[str, float] | None, digits: int) -> str:
    """mean ± standard deviation as the reports print numbers (`report.number`: inf, nan, 1.2e+30)."""
    if stat is None:
        return "–"
    if stat["n"] > 1 and stat["std"] != 0:
        return f"{number(stat['mean'], digits)} ± {number(stat['std'], digits)}"
    return number(stat["mean"], digits)


def render(results: dict[str, Any]) -> str:
    """The table of distances to gold, utility and cost (mean ± standard deviation over seeds)."""
    seeds = results["seeds"]
    lines = [
        "# Retrain gap: each method against the gold model",
        "",
        f"Seeds: {', '.join(map(str, seeds))} (mean ± standard deviation over {len(seeds)} seed(s)). "
        "Δ is the model's figure minus the gold model's: 0 is where unlearning should land.",
        "",
        "| model | " + " | ".join(column.heading for column in COLUMNS) + " |",
        "| --- | " + " | ".join("---:" for _ in COLUMNS) + " |",
    ]
    collapsed = []
    for name in results["methods"]:
        stats = results["table"][name]
        reasons = stats.get("utility_collapse")
        cells = [_cell(stats.get(column.key), column.digits) for column in COLUMNS]
        if reasons:  # a destroyed model's membership scores are noise: its PrivLeak is not read
            cells = [("not read" if column.key == "privleak" else cell) for column, cell in zip(COLUMNS, cells,
                                                                                              strict=True)]
            collapsed.append(f"- {display_name(name)}: utility collapsed ({'; '.join(reasons)})")
        lines.append(f"| {display_name(name)} | " + " | ".join(cells) + " |")
    if collapsed:
        lines += ["", *collapsed]
    settings = results["settings"]
    lines += [
        "",
        f"Forget text Y: the first {settings['forget_chars']:,} characters of {settings['forget_book']}; "
        f"retain text R: the first {settings['retain_chars']:,} characters of {settings['retain_book']}; "
        f"held-out passages: {settings['heldout_chars']:,} characters from character "
        f"{settings['heldout_offset']:,} of the forget book.",
        "",
    ]
    return "\n".join(lines)


def plot(results: dict[str, Any], path: Path) -> Path:
    """Distance to gold on Y (KL) against utility (general-text perplexity), one point per model, with
    the spread over seeds as error bars."""
    import matplotlib.pyplot as plt

    from whoharry.evaluation.plots import save_figure

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name in results["methods"]:
        stats = results["table"][name]
        if "kl_forget" not in stats or "general_perplexity" not in stats:
            continue
        x, y = stats["kl_forget"], stats["general_perplexity"]
        ax.errorbar(x["mean"], y["mean"], xerr=x["std"], yerr=y["std"], fmt="o", capsize=3)
        ax.annotate(name, (x["mean"], y["mean"]), textcoords="offset points", xytext=(5, 4), fontsize=8)
    ax.set_xlabel("KL(gold || model) per token on the forget text (0 = the gold model)")
    ax.set_ylabel("general-text perplexity (lower is better)")
    ax.set_title("Retrain gap: distance to the gold model vs. utility")
    ax.grid(alpha=0.3)
    return save_figure(fig, path)
