"""Bootstrap 95% intervals for the evaluation's aggregates and for the unlearned/base ratios.

How each figure is recomputed from the per-sample records is data: its `figures.Resampling` (sample
kind, record field, aggregate). Every aggregate but the AUC is a ratio of sums over samples (probes,
completions, text blocks): a mean is sum(value) / count, a perplexity is exp(sum(nll) / sum(tokens)).
Resampling the samples with replacement gives a percentile interval (Efron & Tibshirani 1993, "An
Introduction to the Bootstrap", chapter 13), through `scipy.stats.bootstrap` (`method="percentile"`,
`RESAMPLES` resamples from a generator seeded with `SEED`, so a figure's interval is the same at every
run). The percentile interval, not BCa: BCa's jackknife is undefined for a sample of one value, and a
perplexity or ratio may be infinite. For the unlearned/base ratio both models are resampled with the same
indices (`paired=True`: they saw the same probes), so the interval reflects the paired comparison. A
membership AUC resamples members and non-members separately (scipy's independent samples), and has no
ratio. The percentiles are taken here (`percentiles`), of scipy's bootstrap distribution, so that infinite
values keep their meaning.

A destroyed model's figures may be infinite (a perplexity whose mean loss is past exp's range) or nan:
perplexities overflow to inf without a warning, percentiles of infinite values are those values (numpy's
interpolation would make inf - inf = nan of them), a ratio inf / inf is nan, and an interval whose
resamples hold a nan is nan.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy import stats

from whoharry.evaluation import figures
from whoharry.evaluation.figures import Resampling
from whoharry.evaluation.membership import auc

RESAMPLES = 1000
SEED = 0
QUANTILES = (2.5, 97.5)


@dataclass
class Parts:
    """One aggregate as per-sample numerators and denominators; `exp` marks a perplexity."""

    numerators: np.ndarray
    denominators: np.ndarray
    exp: bool = False

    def value(self, rows: np.ndarray | None = None) -> np.ndarray:
        num = self.numerators if rows is None else self.numerators[rows]
        den = self.denominators if rows is None else self.denominators[rows]
        total = den.sum(axis=-1)
        # nothing to average over (every completion empty): no value, NaN, not the 1 of exp(0 / tiny)
        ratio = np.where(total > 0, num.sum(axis=-1) / np.where(total > 0, total, 1.0), np.nan)
        if not self.exp:
            return ratio
        with np.errstate(over="ignore"):  # a mean loss past ~709 nats is an infinite perplexity
            return np.exp(ratio)


def percentiles(values: np.ndarray) -> tuple[float, float]:
    """The 2.5th and 97.5th percentiles (numpy's linear interpolation) of values that may be infinite:
    between two equal infinite values the percentile is that value, not inf - inf = nan; nan when any
    value is nan."""
    values = np.asarray(values, dtype=float)
    if np.isfinite(values).all():
        lo, hi = np.percentile(values, QUANTILES)
        return float(lo), float(hi)
    if np.isnan(values).any():
        return float("nan"), float("nan")
    lower, higher = np.percentile(values, QUANTILES, method="lower"), np.percentile(values, QUANTILES, method="higher")
    with np.errstate(invalid="ignore"):  # inf - inf between equal neighbours: replaced below
        linear = np.percentile(values, QUANTILES)
    lo, hi = np.where(lower == higher, lower, linear)
    return float(lo), float(hi)


def mean_parts(values: list[float]) -> Parts:
    """A plain mean as parts: each value over a count of one."""
    return Parts(np.asarray(values, dtype=float), np.ones(len(values)))


# aggregate -> the parts of the aggregate over a list of records (see `figures.Aggregate`)
AGGREGATES: dict[str, Callable[[list[dict], Resampling], Parts]] = {
    "mean": lambda rows, recipe: mean_parts([float(r[recipe.field]) for r in rows]),
    "rate": lambda rows, recipe: mean_parts([float(bool(r[recipe.field])) for r in rows]),
    "reciprocal rank": lambda rows, recipe: mean_parts([1 / r[recipe.field] for r in rows]),
    "perplexity": lambda rows, recipe: Parts(np.asarray([r[recipe.field] for r in rows], float),
                                             np.asarray([r[recipe.tokens] for r in rows], float), True),
    "last mean": lambda rows, recipe: mean_parts(rows[-1][recipe.field]),
}


def _records(samples: dict[str, list[dict]], recipe: Resampling) -> list[dict] | None:
    """The records a figure is computed from, or None when the samples do not hold them."""
    records = samples.get(recipe.kind)
    if not records or not isinstance(records[0], dict):
        return None
    if recipe.subset is not None:
        records = [r for r in records if r.get(recipe.subset)]
    # whether the records hold the field, read from the record the aggregate reads first
    first = records[-1] if recipe.aggregate == "last mean" else records[0] if records else {}
    return records if recipe.field in first else None


def parts(samples: dict[str, list[dict]], key: str) -> Parts | None:
    """The per-sample parts of a summary figure, following its `figures.Resampling`; None when the figure
    has none, is an AUC (not a ratio of sums: see `auc_groups`), or the samples do not hold its records."""
    figure = figures.lookup(key)
    recipe = figure.resampling if figure else None
    if recipe is None or recipe.aggregate == "auc":
        return None
    records = _records(samples, recipe)
    return AGGREGATES[recipe.aggregate](records, recipe) if records is not None else None


def auc_groups(samples: dict[str, list[dict]], key: str) -> tuple[list[float], list[float]] | None:
    """An AUC figure's scores of the members and of the non-members, or None for another figure or
    without its records."""
    figure = figures.lookup(key)
    recipe = figure.resampling if figure else None
    if recipe is None or recipe.aggregate != "auc" or recipe.kind not in samples:
        return None
    rows = samples[recipe.kind]
    return [r[recipe.field] for r in rows if r[recipe.group]], [r[recipe.field] for r in rows if not r[recipe.group]]


def estimate(samples: dict[str, list[dict]], key: str) -> float | None:
    """The figure's value recomputed from the samples by its recipe (what its interval resamples)."""
    groups = auc_groups(samples, key)
    if groups is not None:
        return auc(*groups)
    figure = parts(samples, key)
    return float(figure.value()) if figure is not None and len(figure.numerators) else None


def _distribution(samples: tuple[np.ndarray, ...], statistic: Callable[..., np.ndarray], resamples: int, seed: int,
                  paired: bool = True) -> np.ndarray:
    """The statistic over `resamples` bootstrap resamples of the samples (`scipy.stats.bootstrap`; paired
    samples share their indices), [resamples] or [outputs, resamples]."""
    # scipy's own interval is not read: its percentiles of inf values (inf - inf) and of nan ones warn
    with np.errstate(invalid="ignore", over="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", stats.DegenerateDataWarning)
        result = stats.bootstrap(samples, statistic, n_resamples=resamples, paired=paired, vectorized=True,
                                 method="percentile", rng=np.random.default_rng(seed))
    return np.asarray(result.bootstrap_distribution, dtype=float)


def interval(figure: Parts, resamples: int = RESAMPLES, seed: int = SEED) -> tuple[float, float]:
    """The 2.5th and 97.5th percentiles of the figure over bootstrap resamples of its samples (the value
    itself, twice, for a single sample, which every resample repeats)."""
    if len(figure.numerators) < 2:
        return percentiles(np.repeat(figure.value(), 2))
    values = _distribution((figure.numerators, figure.denominators),
                           lambda num, den, axis=-1: Parts(num, den, figure.exp).value(), resamples, seed)
    return percentiles(values)


def ratio_interval(numer: Parts, denom: Parts, resamples: int = RESAMPLES, seed: int = SEED) -> tuple[float, float]:
    """The interval of numer/denom when both are resampled with the same indices (paired samples); a
    resample whose denominator is 0, negative or nan has no ratio, nan when none has one.

    Raises:
        ValueError: the two figures have different numbers of samples.
    """
    n = len(numer.numerators)
    if len(denom.numerators) != n:
        raise ValueError("paired figures need the same number of samples")
    if n < 2:
        above, below = numer.value()[None], denom.value()[None]
    else:
        def both(a: np.ndarray, b: np.ndarray, c: np.ndarray, d: np.ndarray, axis: int = -1) -> np.ndarray:
            return np.stack([Parts(a, b, numer.exp).value(), Parts(c, d, denom.exp).value()])

        above, below = _distribution((numer.numerators, numer.denominators, denom.numerators, denom.denominators),
                                     both, resamples, seed)
    defined = below > 0  # a resample whose base figure is 0 (or below, or nan) has no ratio
    if not defined.any():
        return float("nan"), float("nan")
    with np.errstate(invalid="ignore"):  # inf / inf is nan
        return percentiles(above[defined] / below[defined])


def auc_interval(members: list[float], nonmembers: list[float], resamples: int = RESAMPLES,
                 seed: int = SEED) -> tuple[float, float]:
    """The interval of a membership AUC, resampling members and non-members separately (a side of one
    score is that score in every resample); nan when a side is empty or holds a nan."""
    m, n = np.asarray(members, dtype=float), np.asarray(nonmembers, dtype=float)
    if not m.size or not n.size or np.isnan(m).any() or np.isnan(n).any():
        return float("nan"), float("nan")
    varied = [side for side in (m, n) if side.size > 1]
    if not varied:
        return percentiles(np.repeat(auc(m, n), 2))

    def statistic(*sides: np.ndarray, axis: int = -1) -> np.ndarray:
        drawn = iter(sides)
        return auc(*(next(drawn) if side.size > 1 else side for side in (m, n)))

    return percentiles(_distribution(tuple(varied), statistic, resamples, seed, paired=False))


def add_intervals(results: dict[str, dict], reference: str = "base") -> dict[str, list[float]]:
    """Put `intervals` (figure -> [low, high]) into every model's result; return the intervals of each
    other model's ratio to the reference model, keyed `model/figure` (infinite bounds kept, a nan interval
    left out)."""
    ratios: dict[str, list[float]] = {}
    for name, result in results.items():
        result["intervals"] = {}
        for key in result["summary"]:
            groups = auc_groups(result["samples"], key)
            if groups is not None:  # no ratio: the AUCs of two models are not paired
                result["intervals"][key] = [_round(v) for v in auc_interval(*groups)]
                continue
            figure = parts(result["samples"], key)
            if figure is None or not len(figure.numerators):
                continue
            result["intervals"][key] = [_round(v) for v in interval(figure)]
            base = parts(results[reference]["samples"], key) if name != reference else None
            if base is not None and len(base.numerators) == len(figure.numerators):
                span = ratio_interval(figure, base)
                if not any(math.isnan(v) for v in span):
                    ratios[f"{name}/{key}"] = [_round(v) for v in span]
    return ratios


def _round(value: float) -> float:
    return round(value, 6) if math.isfinite(value) else value
