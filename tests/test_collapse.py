"""A destroyed model is a normal thing to evaluate: its figures print finite, `inf` or `nan`, never dozens
of digits, and the report says that utility collapsed instead of reading privacy verdicts off noise."""

from __future__ import annotations

import json
import math
import re
import warnings

import pytest
from typer.testing import CliRunner

from whoharry.cli import app
from whoharry.evaluation.report import (
    NOT_READ,
    UNDEFINED,
    number,
    render_markdown,
    render_table,
    utility_collapse,
    verdict,
)

from .conftest import write_config

runner = CliRunner()
INF, NAN = math.inf, math.nan
LONG_NUMBER = re.compile(r"\d{13,}")  # a figure printed with its every digit


def summary(**unlearned: float) -> dict[str, dict[str, float]]:
    """A base model with sane figures and an unlearned model with these (the rest as the base's)."""
    base = {"target_p_answer": 0.4, "general_p_answer": 0.5, "general_perplexity": 20.0,
            "completion_fluency_generic_perplexity": 3.5, "general_fluency_perplexity": 4.0,
            "completion_fluency_perplexity": 3.5, "membership_auc_loss": 0.8, "membership_auc_minkpp": 0.7}
    return {"base": base, "unlearned": {**base, "target_p_answer": 0.1, "membership_auc_loss": 0.55,
                                         "privleak_loss": 0.01, **unlearned}}


def report_of(figures: dict[str, dict[str, float]], **extra) -> dict:
    return {"models": {"base": "tiny", "unlearned": "u"}, "summary": figures, **extra}


def test_numbers_print_finite_compact_inf_or_nan():
    assert number(19.60961) == "19.6096" and number(0.5491, 3) == "0.549"  # as before
    assert number(INF) == "inf" and number(-INF) == "-inf" and number(NAN) == "nan"
    assert number(6.557e170) == "6.56e+170" and number(1.2e30, 3) == "1.2e+30"
    assert number(999_999.0) == "999999.0000"


@pytest.mark.parametrize(("unlearned", "reason"), [
    ({"general_perplexity": 250.0}, "perplexity on general text is 250, above 10×"),
    ({"general_perplexity": INF}, "perplexity on general text is inf"),
    ({"general_perplexity": NAN}, "perplexity on general text is nan where the base model's is 20"),
    ({"completion_fluency_generic_perplexity": 40.0}, "completions after the translated prompts is 40, above 10×"),
    ({"general_fluency_perplexity": 45.0}, "completions is 45, above 10×"),
    ({"general_p_answer": 0.04}, "mean P(answer) is 0.04, below 0.1×"),
])
def test_utility_collapse_follows_the_rule(unlearned, reason):
    reasons = utility_collapse(summary(**unlearned))
    assert len(reasons) == 1 and reason in reasons[0]


def test_no_collapse_within_the_rule_or_without_the_figures():
    assert utility_collapse(summary(general_perplexity=190.0, completion_fluency_generic_perplexity=30.0,
                                    general_p_answer=0.06)) == []
    # forgetting alone raises the fluency after the target prompts: it is not a sign of collapse
    assert utility_collapse(summary(completion_fluency_perplexity=400.0)) == []
    assert utility_collapse({"base": {"general_p_answer": 0.0}, "unlearned": {"general_p_answer": 0.0}}) == []
    assert utility_collapse({"unlearned": {"general_perplexity": INF}}) == []  # no base model to compare with


def test_a_collapsed_model_has_a_notice_and_no_privacy_verdicts():
    figures = summary(general_perplexity=6.557e170, general_p_answer=1e-9)
    text = render_markdown(report_of(figures, intervals={"unlearned": {"general_perplexity": [6.0e165, 5.8e169]}},
                                     ratio_intervals={"unlearned/general_perplexity": [3.0e164, 2.9e168]}))
    assert "**Utility collapsed**" in text and "perplexity on general text is 6.557e+170" in text
    assert not LONG_NUMBER.search(text)
    rows = {line.split(" | ")[0][2:]: line for line in text.splitlines() if line.startswith("| ")}
    assert rows["perplexity on general text"].endswith(
        "| 20.0000 | 6.56e+170 [6e+165, 5.8e+169] | 3.28e+169 [3e+164, 2.9e+168] | worse (×3.28e+169) |")
    for label in ("membership inference AUC, target vs. held-out: loss", "PrivLeak against the reference: loss"):
        assert rows[label].endswith(f"| {NOT_READ} |"), rows[label]
    assert "like the reference" not in text and "closer to 0.5" not in text
    table = render_table(figures)
    assert "6.56e+170" in table and "utility collapsed: perplexity on general text" in table
    assert not LONG_NUMBER.search(table)


def test_a_healthy_model_has_no_notice_and_its_verdicts():
    figures = summary(general_perplexity=18.0)
    text = render_markdown(report_of(figures))
    assert "Utility collapsed" not in text and NOT_READ not in text
    assert "| closer to 0.5 |" in text and "| like the reference |" in text
    assert "utility collapsed" not in render_table(figures)


def test_inf_over_inf_is_nan_and_a_nan_figure_has_no_verdict():
    figures = {"base": {"general_perplexity": INF, "membership_auc_loss": 0.8},
               "unlearned": {"general_perplexity": INF, "membership_auc_loss": NAN, "privleak_loss": NAN}}
    text = render_markdown(report_of(figures, intervals={"unlearned": {"general_perplexity": [INF, INF]}}))
    row = next(line for line in text.splitlines() if line.startswith("| perplexity on general text |"))
    assert row == f"| perplexity on general text | inf | inf [inf, inf] | nan | {UNDEFINED} |"
    assert verdict("membership_auc_loss", "toward 0.5", figures, {}, None) == UNDEFINED
    assert verdict("privleak_loss", "toward 0", figures, {}, None) == UNDEFINED
    assert verdict("membership_auc_loss", "toward 0.5", figures, {}, None, collapsed=True) == NOT_READ
    destroyed = {"base": {"general_perplexity": 20.0}, "unlearned": {"general_perplexity": INF}}
    assert verdict("general_perplexity", "keep low", destroyed, {}, None) == "worse (×inf)"


def test_gradient_ascent_that_destroys_the_model_is_evaluated(project, tiny_model_dir):
    """GA at a learning rate of 1.0 drives the tiny model's general-text loss past exp's range: the
    evaluation still ends with a report whose figures are finite or inf and a collapse notice."""
    config = write_config(project, tiny_model_dir, unlearn={"epochs": 2, "learning_rate": 1.0},
                          eval={"parts": ["probes", "completions", "membership", "utility"]})
    out = project / "run"
    args = ["--config", str(config), "--out", str(out), "-q"]
    assert runner.invoke(app, ["unlearn", *args, "--method", "ga"]).exit_code == 0
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no overflow or inf - inf on the way
        result = runner.invoke(app, ["eval", *args])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "eval" / "report.json").read_text(encoding="utf-8"))
    assert report["summary"]["unlearned"]["general_perplexity"] == INF
    for name, figures in report["summary"].items():
        assert all(not math.isnan(value) for value in figures.values()), name
    for spans in (*report["intervals"].values(), report["ratio_intervals"]):
        assert all(not math.isnan(bound) for span in spans.values() for bound in span)
    assert report["intervals"]["unlearned"]["general_perplexity"] == [INF, INF]
    assert any("perplexity on general text is inf" in reason for reason in report["utility_collapse"])
    text = (out / "eval" / "report.md").read_text(encoding="utf-8")
    assert "**Utility collapsed**" in text and f"| {NOT_READ} |" in text and "| inf [inf, inf] |" in text
    assert not LONG_NUMBER.search(text)
    assert "utility collapsed: perplexity on general text is inf" in " ".join(result.output.split())


def test_the_retrain_gap_keeps_a_seeds_inf_and_nan_and_marks_a_collapse():
    from whoharry.experiments import gap_report
    from whoharry.experiments.retrain_gap import ExperimentConfig

    def seed(ga_perplexity: float, ga_auc: float) -> dict[str, dict[str, float]]:
        gold = {"general_perplexity": 30.0, "general_p_answer": 0.5, "membership_auc_minkpp": 0.6}
        ga = {"general_perplexity": ga_perplexity, "general_p_answer": 0.01, "membership_auc_minkpp": ga_auc}
        return {"gold": gold, "ga": ga}

    results = gap_report.summarise({0: seed(40.0, 0.6), 1: seed(math.inf, math.nan), 2: seed(1.5e70, 0.7)},
                                   ExperimentConfig())
    ga = results["table"]["ga"]
    assert ga["general_perplexity"]["mean"] == math.inf and ga["general_perplexity"]["n"] == 3
    assert math.isnan(ga["membership_auc_minkpp"]["mean"]) and math.isnan(ga["privleak"]["mean"])
    assert ga["utility_collapse"] and "utility_collapse" not in results["table"]["gold"]
    text = gap_report.render(results)
    row = next(line for line in text.splitlines() if line.startswith("| gradient ascent |"))
    assert "inf" in row and "not read" in row and len(row) < 400  # no 70-digit number
    assert "gradient ascent: utility collapsed" in text
