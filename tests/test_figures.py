"""The figure table: every summary key the evaluation writes has a Figure, every Figure is written by some
part, and each Figure's resampling recipe recomputes the summary value from the per-sample records."""

from __future__ import annotations

import ast
import math
from pathlib import Path

import numpy as np
import pytest

from whoharry.config.choices import GGUF_TYPES, RELEARN_SOURCES
from whoharry.evaluation import completions, figures, intervals, membership, probes, quantization, suite
from whoharry.evaluation.figures import FIGURES, GAP_FIGURES, lookup
from whoharry.evaluation.latent import summarize as latent_figures
from whoharry.evaluation.prompts import FORMS as PROMPT_FORMS
from whoharry.evaluation.prompts import figure_key as prompt_key
from whoharry.evaluation.relearning import figure_key as relearn_key
from whoharry.evaluation.relearning import sample_kind as relearn_kind
from whoharry.stages import evaluate

SOURCE = Path(suite.__file__)


def _template(node: ast.expr) -> str | None:
    """A dict key as text: a string constant, or an f-string with its fields as `{expression}`."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        return "".join(part.value if isinstance(part, ast.Constant) else "{" + ast.unparse(part.value) + "}"
                       for part in node.values)
    return None


def _dict_keys(node: ast.expr, namespace: dict) -> set[str]:
    """The keys of a dict literal, or of a dict comprehension with its one field expanded over its iterable."""
    if isinstance(node, ast.Dict):
        return {key for key in map(_template, [k for k in node.keys if k is not None]) if key}
    if isinstance(node, ast.DictComp) and len(node.generators) == 1:
        generator = node.generators[0]
        key = _template(node.key)
        assert key and isinstance(generator.target, ast.Name), ast.unparse(node)
        values = eval(compile(ast.Expression(generator.iter), str(SOURCE), "eval"), namespace)  # noqa: S307
        return {key.replace("{" + generator.target.id + "}", str(value)) for value in values}
    return set()


def part_literal_keys() -> set[str]:
    """The summary keys the `part_*` functions of evaluation/suite.py write as literals: the keys of the
    summary dict each returns first, or assigns to `summary`, or sets as `summary["key"]`."""
    tree = ast.parse(SOURCE.read_text(encoding="utf-8"))
    keys: set[str] = set()
    for function in (n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name.startswith("part_")):
        for node in ast.walk(function):
            if isinstance(node, ast.Return) and isinstance(node.value, ast.Tuple):
                keys |= _dict_keys(node.value.elts[0], vars(suite))
            elif isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "summary"
                                                      for t in node.targets):
                keys |= _dict_keys(node.value, vars(suite))
            elif isinstance(node, ast.Assign):
                keys |= {t.slice.value for t in node.targets
                         if isinstance(t, ast.Subscript) and isinstance(t.value, ast.Name) and t.value.id == "summary"
                         and isinstance(t.slice, ast.Constant)}
    return keys


def robustness_variants() -> set[str]:
    """The probe-set names part_robustness scores (the string keys it sets from a `probes.*` call)."""
    tree = ast.parse(SOURCE.read_text(encoding="utf-8"))
    names = set()
    for node in ast.walk(tree):
        if (isinstance(node, ast.Assign) and isinstance(node.value, ast.Call)
                and ast.unparse(node.value.func).startswith("probes.")):
            names |= {t.slice.value for t in node.targets if isinstance(t, ast.Subscript)
                      and isinstance(t.slice, ast.Constant) and isinstance(t.slice.value, str)}
    return names


PROBE_SET_NAMES = (*probes.PROBE_SETS, *sorted(robustness_variants()))


def probe_records(rng: np.random.Generator, n: int, scale: float, control: bool = False) -> list[dict]:
    records = []
    for i in range(n):
        p = float(rng.uniform(0.01, 1.0) * scale)
        record = {"prompt": f"p{i}", "answer": " a", "p_answer": p, "rank": int(rng.integers(1, 40)),
                  "hit": bool(rng.uniform() < p)}
        if control:
            record["p_control"] = float(p * rng.uniform(0.1, 1.5))
        records.append(record)
    return records


def synthetic_model(seed: int, scale: float) -> dict:
    """Per-sample records of every kind, and the summary the library's own helpers make of them (the
    suite's one-line aggregates written out as it defines them)."""
    rng = np.random.default_rng(seed)
    samples: dict[str, list] = {name: probe_records(rng, 12, scale, control=name == "target")
                                for name in PROBE_SET_NAMES}
    summary: dict[str, float] = {}
    for name in PROBE_SET_NAMES:
        summary.update(probes.summarize(name, samples[name]))

    def judged(n: int) -> list[dict]:
        return [{"prompt": f"c{i}", "completion": "x",
                 "references_named": ["Hogwarts"] if rng.uniform() < scale else [],
                 "judge_score": int(rng.integers(0, 4)), "judge_nll": float(rng.uniform(5, 40)),
                 "tokens": int(rng.integers(4, 20)), "generic_nll": float(rng.uniform(5, 30)),
                 "generic_tokens": int(rng.integers(4, 20))} for i in range(n)]

    samples["completions"], samples["completions_sampled"] = judged(9), judged(18)
    samples["completions_llm"] = [{"prompt": f"c{i}", "llm_score": int(rng.integers(0, 4))} for i in range(9)]
    for kind, suffix in (("completions", ""), ("completions_sampled", "_sampled")):
        rows = samples[kind]
        summary[f"completion_reference_rate{suffix}"] = sum(bool(r["references_named"]) for r in rows) / len(rows)
        summary[f"completion_judge_score{suffix}"] = sum(r["judge_score"] for r in rows) / len(rows)
    summary["completion_fluency_perplexity"] = completions.pooled_perplexity(
        [(r["judge_nll"], r["tokens"]) for r in samples["completions"]])
    summary["completion_fluency_generic_perplexity"] = completions.pooled_perplexity(
        [(r["generic_nll"], r["generic_tokens"]) for r in samples["completions"]])
    samples["general_completions"] = judged(8)
    summary["general_fluency_perplexity"] = completions.pooled_perplexity(
        [(r["judge_nll"], r["tokens"]) for r in samples["general_completions"]])
    summary["completion_llm_score"] = float(np.mean([r["llm_score"] for r in samples["completions_llm"]]))
    for kind, key in (("verbatim", "verbmem_rouge_l"), ("knowmem", "knowmem_rouge_l")):
        samples[kind] = [{"rouge_l": float(rng.uniform(0, scale))} for _ in range(7)]
        summary[key] = float(np.mean([r["rouge_l"] for r in samples[kind]]))
    samples["membership"] = [{"member": i < 10, **{score: float(rng.normal(0.5 * scale * (i < 10), 1))
                                                   for score in membership.SCORES}} for i in range(18)]
    for score in membership.SCORES:
        rows = samples["membership"]
        summary[f"membership_auc_{score}"] = membership.auc([r[score] for r in rows if r["member"]],
                                                            [r[score] for r in rows if not r["member"]])
    samples["general_text"] = [{"nll": float(rng.uniform(20, 60)), "tokens": int(rng.integers(10, 30))}
                               for _ in range(5)]
    summary["general_perplexity"] = completions.pooled_perplexity(
        [(r["nll"], r["tokens"]) for r in samples["general_text"]])
    for kind in map(relearn_kind, RELEARN_SOURCES):
        samples[kind] = [{"step": step, "p_answer": [float(rng.uniform(0, scale)) for _ in range(12)]}
                         for step in (0, 5, 10)]
    for form in PROMPT_FORMS:  # the prompts part: a mean P(answer) per form
        samples[f"prompt_{form}"] = probe_records(rng, 12, scale, control=False)
        summary[prompt_key(form)] = float(np.mean([r["p_answer"] for r in samples[f"prompt_{form}"]]))
    samples["latent"] = [{"p_best": float(rng.uniform(0, scale)), "found": bool(rng.uniform() < scale)}
                         for _ in range(12)]
    summary.update(latent_figures(samples["latent"]))
    for gguf_type in GGUF_TYPES:  # the quantization part: a mean P(answer) per rounded probe set
        for probe_set in quantization.PROBE_SETS:
            key = quantization.figure_key(gguf_type, probe_set)
            samples[key.removesuffix("_p_answer")] = probe_records(rng, 12, scale, control=False)
            summary[key] = float(np.mean([r["p_answer"] for r in samples[key.removesuffix("_p_answer")]]))
    return {"summary": summary, "samples": samples}


@pytest.fixture(scope="module")
def results() -> dict[str, dict]:
    results = {"base": synthetic_model(1, 1.0), "unlearned": synthetic_model(2, 0.3),
               "reference": synthetic_model(3, 0.1)}
    for source in RELEARN_SOURCES:
        curves = evaluate.relearning_summary(results, relearn_kind(source))
        assert curves is not None
        for name, result in results.items():
            result["summary"][relearn_key(source)] = curves["target_p_answer"][name][-1]
    evaluate.add_privleak(results)
    evaluate.add_specific_familiarity(results)
    return results


def test_every_written_summary_key_has_a_figure_and_every_figure_is_written(results):
    literal = part_literal_keys()
    assert {"completion_judge_score", "knowmem_rouge_l", "membership_auc_minkpp"} <= literal  # the parse works
    assert {"paraphrased", "hinted", "fewshot"} <= set(PROBE_SET_NAMES)
    written = set(literal)
    for name in PROBE_SET_NAMES:
        written |= set(probes.summarize(name, [{"p_answer": 0.5, "rank": 2, "hit": True}]))
    written |= {quantization.figure_key(t, s) for t in GGUF_TYPES for s in quantization.PROBE_SETS}
    written |= {relearn_key(source) for source in RELEARN_SOURCES}
    written |= {prompt_key(form) for form in PROMPT_FORMS}
    written |= set(latent_figures([{"p_best": 0.5, "found": True}]))
    for result in results.values():  # stages/evaluate.py's additions: specific familiarity, PrivLeak
        written |= set(result["summary"])
    unknown = sorted(key for key in written if lookup(key) is None)
    assert not unknown, f"summary keys without a Figure in evaluation/figures.py: {unknown}"
    stale = sorted(f.key for f in FIGURES if f.key not in written)
    assert not stale, f"Figures no part writes: {stale}"
    lmeval = lookup("lmeval_arc_easy_acc_norm")
    assert lmeval is not None and lmeval.direction == "keep" and lmeval.label == "lm-eval arc_easy_acc_norm"


def test_each_recipe_reproduces_the_summary_value(results):
    checked = set()
    for name, result in results.items():
        for key, value in result["summary"].items():
            figure = lookup(key)
            assert figure is not None, key
            if figure.resampling is None:
                continue
            estimate = intervals.estimate(result["samples"], key)
            assert estimate is not None and estimate == pytest.approx(value, rel=1e-12), f"{name}: {key}"
            checked.add(key)
    assert {f.key for f in FIGURES if f.resampling} == checked
    # what has no bootstrap interval: PrivLeak (a ratio of two models' AUCs) and a count
    assert {f.key for f in FIGURES if f.resampling is None} == {
        *(f"privleak_{score}" for score in membership.SCORES), "target_specific_probes"}


def test_intervals_follow_the_recipes(results):
    ratios = intervals.add_intervals(results)
    spans = results["unlearned"]["intervals"]
    for key, value in results["unlearned"]["summary"].items():
        if lookup(key).resampling is None:
            assert key not in spans
            continue
        low, high = spans[key]
        assert math.isfinite(low) and low <= value + 1e-5 and value - 1e-5 <= high, key  # stored rounded
    # membership AUCs have intervals, resampled per group, but no paired ratio
    assert "membership_auc_loss" in spans and "unlearned/membership_auc_loss" not in ratios
    assert "unlearned/target_specific_p_answer" in ratios and "unlearned/relearn_target_p_answer" in ratios


def test_the_table_is_consistent():
    keys = [f.key for f in (*FIGURES, *GAP_FIGURES)]
    assert len(keys) == len(set(keys))
    directions = {"lower", "keep", "keep low", "toward 0.5", "toward 0"}
    for figure in (*FIGURES, *GAP_FIGURES):
        assert figure.direction in directions, figure.key
        assert figure.label and figure.unit and figure.source and figure.heading, figure.key
        assert figure.digits >= 0
    ranks = [f.utility for f in figures.utility_figures()]
    assert ranks == sorted(ranks) and len(set(ranks)) == len(ranks)
    assert [f.key for f in figures.utility_figures()][:2] == ["general_p_answer", "related_p_answer"]
    with pytest.raises(AttributeError):
        FIGURES[0].label = "changed"  # type: ignore[misc]
    assert lookup("no_such_figure") is None and figures.label("no_such_figure") == "no_such_figure"
