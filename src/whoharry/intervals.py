"""Bootstrap 95% intervals for the evaluation's aggregates and for the unlearned/base ratios.

Every aggregate of the report is a ratio of sums over samples (probes, completions, text blocks):
a mean is sum(value) / count, a perplexity is exp(sum(nll) / sum(tokens)). Resampling the samples with
replacement gives a percentile interval; for the unlearned/base ratio both models are resampled with the
same indices (they saw the same probes), so the interval reflects the paired comparison.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from whoharry.membership import auc

RESAMPLES = 1000
SEED = 0


@dataclass
class Parts:
    """One aggregate as per-sample numerators and denominators; `exp` marks a perplexity."""

    numerators: np.ndarray
    denominators: np.ndarray
    exp: bool = False

    def value(self, rows: np.ndarray | None = None) -> np.ndarray:
        num = self.numerators if rows is None else self.numerators[rows]
        den = self.denominators if rows is None else self.denominators[rows]
        ratio = num.sum(axis=-1) / np.maximum(den.sum(axis=-1), 1e-12)
        return np.exp(ratio) if self.exp else ratio


def mean_parts(values: list[float]) -> Parts:
    """A plain mean as parts: each value over a count of one."""
    return Parts(np.asarray(values, dtype=float), np.ones(len(values)))


# figure -> (sample kind, record field) for figures that are a plain mean of one field
MEANS = {
    "completion_judge_score": ("completions", "judge_score"),
    "completion_judge_score_sampled": ("completions_sampled", "judge_score"),
    "completion_llm_score": ("completions_llm", "llm_score"),
    "verbmem_rouge_l": ("verbatim", "rouge_l"),
    "knowmem_rouge_l": ("knowmem", "rouge_l"),
}


def parts(samples: dict[str, list[dict]], key: str) -> Parts | None:
    """The per-sample parts of a summary figure, or None when the samples do not hold them."""
    probe_set, _, figure = key.partition("_")
    if key == "target_specific_p_answer":
        records = [r for r in samples.get("target", []) if r.get("specific")]
        return mean_parts([r["p_answer"] for r in records]) if records else None
    if key == "relearn_target_p_answer" and samples.get("relearning"):
        return mean_parts(samples["relearning"][-1]["p_answer"])
    if key in MEANS and MEANS[key][0] in samples:
        kind, field = MEANS[key]
        return mean_parts([float(r[field]) for r in samples[kind]])
    if key in ("completion_reference_rate", "completion_reference_rate_sampled"):
        kind = "completions" if key == "completion_reference_rate" else "completions_sampled"
        return mean_parts([float(bool(r["references_named"])) for r in samples[kind]]) if kind in samples else None
    if key == "completion_fluency_perplexity" and "completions" in samples:
        rows = samples["completions"]
        return Parts(np.asarray([r["judge_nll"] for r in rows]), np.asarray([r["tokens"] for r in rows], float), True)
    if key == "general_perplexity" and "general_text" in samples:
        rows = samples["general_text"]
        return Parts(np.asarray([r["nll"] for r in rows]), np.asarray([r["tokens"] for r in rows], float), True)
    if probe_set in samples and samples[probe_set] and isinstance(samples[probe_set][0], dict):
        records = samples[probe_set]
        if figure == "p_answer" and "p_answer" in records[0]:
            return mean_parts([r["p_answer"] for r in records])
        if figure == "hit_rate" and "hit" in records[0]:
            return mean_parts([float(r["hit"]) for r in records])
        if figure == "reciprocal_rank" and "rank" in records[0]:
            return mean_parts([1 / r["rank"] for r in records])
    return None


def interval(figure: Parts, resamples: int = RESAMPLES, seed: int = SEED) -> tuple[float, float]:
    """The 2.5th and 97.5th percentiles of the figure over bootstrap resamples of its samples."""
    n = len(figure.numerators)
    rows = np.random.default_rng(seed).integers(0, n, size=(resamples, n))
    lo, hi = np.percentile(figure.value(rows), [2.5, 97.5])
    return float(lo), float(hi)


def ratio_interval(numer: Parts, denom: Parts, resamples: int = RESAMPLES, seed: int = SEED) -> tuple[float, float]:
    """The interval of numer/denom when both are resampled with the same indices (paired samples)."""
    n = len(numer.numerators)
    if len(denom.numerators) != n:
        raise ValueError("paired figures need the same number of samples")
    rows = np.random.default_rng(seed).integers(0, n, size=(resamples, n))
    below = denom.value(rows)
    defined = below > 0  # a resample whose base figure is 0 has no ratio
    if not defined.any():
        return float("nan"), float("nan")
    lo, hi = np.percentile(numer.value(rows)[defined] / below[defined], [2.5, 97.5])
    return float(lo), float(hi)


def auc_interval(members: list[float], nonmembers: list[float], resamples: int = RESAMPLES,
                 seed: int = SEED) -> tuple[float, float]:
    """The interval of a membership AUC, resampling members and non-members separately."""
    rng = np.random.default_rng(seed)
    m, n = np.asarray(members, dtype=float), np.asarray(nonmembers, dtype=float)
    values = [auc(m[rng.integers(0, len(m), len(m))], n[rng.integers(0, len(n), len(n))]) for _ in range(resamples)]
    lo, hi = np.percentile(values, [2.5, 97.5])
    return float(lo), float(hi)


def add_intervals(results: dict[str, dict], reference: str = "base") -> dict[str, list[float]]:
    """Put `intervals` (figure -> [low, high]) into every model's result; return the intervals of each
    other model's ratio to the reference model, keyed `model/figure`."""
    ratios: dict[str, list[float]] = {}
    for name, result in results.items():
        result["intervals"] = {}
        for key in result["summary"]:
            if key.startswith("membership_auc_") and "membership" in result["samples"]:
                score, rows = key.removeprefix("membership_auc_"), result["samples"]["membership"]
                inside = [r[score] for r in rows if r["member"]]
                span = auc_interval(inside, [r[score] for r in rows if not r["member"]])
                result["intervals"][key] = [_round(v) for v in span]
                continue
            figure = parts(result["samples"], key)
            if figure is None or not len(figure.numerators):
                continue
            result["intervals"][key] = [_round(v) for v in interval(figure)]
            base = parts(results[reference]["samples"], key) if name != reference else None
            if base is not None and len(base.numerators) == len(figure.numerators):
                span = ratio_interval(figure, base)
                if all(math.isfinite(v) for v in span):
                    ratios[f"{name}/{key}"] = [_round(v) for v in span]
    return ratios


def _round(value: float) -> float:
    return round(value, 6) if math.isfinite(value) else value
