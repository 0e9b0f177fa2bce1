"""Comparing runs from their evaluation reports, written by hand here."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from whoharry.errors import WhoharryError
from whoharry.evaluation.compare import compare, render_compare, run_labels
from whoharry.evaluation.figures import FIGURES, label


def write_run(run_dir: Path, base: dict[str, float], unlearned: dict[str, float], base_model: str = "tiny") -> Path:
    report = {
        "models": {"base": base_model, "unlearned": str(run_dir / "unlearn" / "final")},
        "summary": {"base": base, "unlearned": unlearned},
        "intervals": {},
        "ratio_intervals": {},
        "samples": {},
    }
    (run_dir / "eval").mkdir(parents=True)
    (run_dir / "eval" / "report.json").write_text(json.dumps(report), encoding="utf-8")
    return run_dir


def table_row(text: str, key: str) -> list[str] | None:
    """The cells of the figure's row, the label left out; None when the table has no such row."""
    for line in text.splitlines():
        if line.startswith(f"| {label(key)} |"):
            return [cell.strip() for cell in line.strip().strip("|").split("|")][1:]
    return None


def test_compare_ratios_and_table(tmp_path):
    first = write_run(tmp_path / "alpha", {"target_p_answer": 0.4, "general_p_answer": 0.2},
                      {"target_p_answer": 0.1, "general_p_answer": 0.18})
    second = write_run(tmp_path / "beta", {"target_p_answer": 0.5, "general_p_answer": 0.25, "verbmem_rouge_l": 0.6},
                       {"target_p_answer": 0.05, "general_p_answer": 0.25, "verbmem_rouge_l": 0.3})
    data = compare([first, second])
    assert data["warnings"] == []
    assert [run["run"] for run in data["runs"]] == [str(first), str(second)]
    assert data["runs"][0]["ratio"] == pytest.approx({"target_p_answer": 0.25, "general_p_answer": 0.9})
    assert data["runs"][1]["ratio"] == pytest.approx(
        {"target_p_answer": 0.1, "general_p_answer": 1.0, "verbmem_rouge_l": 0.5})
    assert data["runs"][1]["base"]["target_p_answer"] == 0.5
    assert data["runs"][1]["summary"]["target_p_answer"] == 0.05

    text = render_compare(data)
    assert "| figure | base (alpha) | alpha | beta |" in text
    assert table_row(text, "target_p_answer") == ["0.4", "0.1 (0.25×)", "0.05 (0.1×)"]
    assert table_row(text, "general_p_answer") == ["0.2", "0.18 (0.9×)", "0.25 (1×)"]
    # only the second run has the figure: the first run's cells (and its base) stay empty
    assert table_row(text, "verbmem_rouge_l") == ["", "", "0.3 (0.5×)"]
    assert table_row(text, "general_perplexity") is None
    rows = [line for line in text.splitlines() if line.startswith("| ") and "figure" not in line and "---" not in line]
    shown = {"target_p_answer", "general_p_answer", "verbmem_rouge_l"}
    assert [row.split(" | ")[0][2:] for row in rows] == [f.label for f in FIGURES if f.key in shown]
    assert "Warnings" not in text


def test_unlisted_figures_have_no_row(tmp_path):
    run = write_run(tmp_path / "run", {"target_p_answer": 0.4, "general_reciprocal_rank": 0.5},
                    {"target_p_answer": 0.1, "general_reciprocal_rank": 0.5})
    text = render_compare(compare([run]))
    assert table_row(text, "target_p_answer") == ["0.4", "0.1 (0.25×)"]
    assert table_row(text, "general_reciprocal_rank") is None


def test_zero_base_value_has_no_ratio(tmp_path):
    run = write_run(tmp_path / "run", {"target_hit_rate": 0.0}, {"target_hit_rate": 0.0})
    data = compare([run])
    assert data["runs"][0]["ratio"] == {}
    assert table_row(render_compare(data), "target_hit_rate") == ["0", "0"]


def test_missing_report_names_the_folder(tmp_path):
    present = write_run(tmp_path / "present", {"target_p_answer": 0.4}, {"target_p_answer": 0.1})
    missing = tmp_path / "never-evaluated"
    missing.mkdir()
    with pytest.raises(WhoharryError, match="never-evaluated"):
        compare([present, missing])
    with pytest.raises(WhoharryError, match="no runs"):
        compare([])


def test_different_base_models_are_kept_and_flagged(tmp_path):
    first = write_run(tmp_path / "a", {"target_p_answer": 0.4}, {"target_p_answer": 0.2}, base_model="model-one")
    second = write_run(tmp_path / "b", {"target_p_answer": 0.8}, {"target_p_answer": 0.2}, base_model="model-two")
    third = write_run(tmp_path / "c", {"target_p_answer": 0.4}, {"target_p_answer": 0.1}, base_model="model-one")
    data = compare([first, second, third])
    assert len(data["runs"]) == 3
    assert len(data["warnings"]) == 1
    assert "model-two" in data["warnings"][0] and "model-one" in data["warnings"][0]
    assert str(second) in data["warnings"][0]
    assert data["runs"][1]["ratio"]["target_p_answer"] == pytest.approx(0.25)
    text = render_compare(data)
    assert text.index("Warnings") > text.index(f"| {label('target_p_answer')} |")
    assert data["warnings"][0] in text


def test_duplicate_folder_names_are_told_apart(tmp_path):
    runs = [write_run(tmp_path / parent / "final", {"target_p_answer": 0.4}, {"target_p_answer": 0.2})
            for parent in ("sweep-a", "sweep-b")]
    runs.append(write_run(tmp_path / "other", {"target_p_answer": 0.4}, {"target_p_answer": 0.2}))
    data = compare(runs)
    assert run_labels(data["runs"]) == ["sweep-a/final", "sweep-b/final", "other"]
    assert "| figure | base (sweep-a/final) | sweep-a/final | sweep-b/final | other |" in render_compare(data)
    same = [{"run": "x/runs/final"}, {"run": "y/runs/final"}]
    assert run_labels(same) == ["x/runs/final", "y/runs/final"]


def test_a_collapsed_run_is_flagged_and_its_figures_print_as_inf_or_nan(tmp_path):
    healthy = write_run(tmp_path / "whp", {"target_p_answer": 0.4, "general_perplexity": 20.0},
                        {"target_p_answer": 0.2, "general_perplexity": 21.0})
    destroyed = write_run(tmp_path / "ga", {"target_p_answer": 0.4, "general_perplexity": float("inf")},
                          {"target_p_answer": 0.0, "general_perplexity": float("inf")})
    huge = write_run(tmp_path / "npo", {"target_p_answer": 0.4, "general_perplexity": 20.0},
                     {"target_p_answer": 0.1, "general_perplexity": 6.557e170})
    data = compare([healthy, destroyed, huge])
    assert "utility_collapse" not in data["runs"][0] and "utility_collapse" not in data["runs"][1]  # inf base
    assert "perplexity on general text is 6.557e+170" in data["runs"][2]["utility_collapse"][0]
    assert len(data["warnings"]) == 1
    assert str(huge) in data["warnings"][0] and "utility collapsed" in data["warnings"][0]
    text = render_compare(data)
    assert table_row(text, "general_perplexity") == ["20", "21 (1.05×)", "inf (nan×)", "6.557e+170 (3.28e+169×)"]
    assert data["warnings"][0] in text
