"""The report's figures, drawn from synthetic reports."""

from __future__ import annotations

import json
import logging
import struct
from pathlib import Path
from typing import Any

import pytest

from whoharry.errors import WhoharryError
from whoharry.evaluation.compare import compare, plot_comparison
from whoharry.evaluation.plots import (
    plot_familiarity_vs_utility,
    plot_probe_shift,
    plot_relearning,
    write_plots,
)


def probes(values: list[float], specific: list[bool] | None = None) -> list[dict[str, Any]]:
    records = [{"prompt": f"prompt {i}", "answer": f" answer {i}", "p_answer": p, "hit": p > 0.5}
               for i, p in enumerate(values)]
    for record, flag in zip(records, specific or [], strict=False):
        record["specific"] = flag
    return records


def make_report(*, reference: bool = False, related: bool = False, specific: bool = False,
                relearning: bool = False, intervals: bool = True) -> dict[str, Any]:
    flags = [True, False, True, False] if specific else None
    target = {"base": [0.6, 0.3, 0.05, 0.9], "unlearned": [1e-4, 0.2, 0.0, 0.01], "reference": [1e-3, 0.1, 1e-5, 0.02]}
    general = {"base": [0.4, 0.2, 0.7], "unlearned": [0.35, 0.22, 0.6], "reference": [0.3, 0.25, 0.5]}
    names = ["base", "unlearned"] + (["reference"] if reference else [])
    report: dict[str, Any] = {
        "models": {"base": "tiny", "unlearned": "runs/x/unlearn/final", **({"reference": "ref"} if reference else {})},
        "summary": {},
        "intervals": {},
        "ratio_intervals": {},
        "samples": {},
    }
    for name in names:
        samples: dict[str, list] = {"target": probes(target[name], flags), "general": probes(general[name])}
        if related:
            samples["related"] = probes([p / 2 for p in general[name]])
        summary = {f"{probe_set}_p_answer": sum(r["p_answer"] for r in records) / len(records)
                   for probe_set, records in samples.items()}
        report["samples"][name] = {**samples, "general_text": [{"nll": 30.0, "tokens": 10}]}
        report["summary"][name] = summary
        if intervals:
            report["intervals"][name] = {key: [0.8 * value, 1.2 * value] for key, value in summary.items()}
    if relearning:
        report["relearning"] = {
            "steps": [0, 5, 10, 20],
            "target_p_answer": {"base": [0.5, 0.52, 0.55, 0.56], "unlearned": [0.01, 0.05, 0.2, 0.4]},
            "intervals": {"unlearned": [[0.005, 0.02], [0.03, 0.07], [0.1, 0.3], [0.3, 0.5]]},
        }
    return report


def png_size(path: Path) -> tuple[int, int]:
    """Width and height of a PNG file, after checking its signature and header chunk."""
    data = path.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n"), path
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"reference": True, "related": True, "specific": True, "relearning": True},
        {"specific": True, "intervals": False},
        {"reference": True, "relearning": True, "intervals": False},
    ],
)
def test_write_plots(tmp_path, options):
    paths = write_plots(make_report(**options), tmp_path / "plots")
    expected = ["familiarity_vs_utility.png", "probe_shift.png"] + (["relearning.png"] if options.get("relearning")
                                                                    else [])
    assert [path.name for path in paths] == expected
    assert sorted(path.name for path in (tmp_path / "plots").iterdir()) == sorted(expected)
    for path in paths:
        width, height = png_size(path)
        assert width > 100 and height > 100


def test_panels_follow_the_data(tmp_path):
    """A probe set adds a panel to a figure: the image grows wider."""
    narrow = make_report()
    wide = make_report(related=True)
    one = png_size(plot_familiarity_vs_utility(narrow, tmp_path / "one.png"))[0]
    two = png_size(plot_familiarity_vs_utility(wide, tmp_path / "two.png"))[0]
    assert two > 1.5 * one
    # a panel per probe set; the text-block samples (no p_answer) get none
    target_only = make_report()
    for samples in target_only["samples"].values():
        del samples["general"]
    widths = [png_size(plot_probe_shift(report, tmp_path / f"shift{i}.png"))[0]
              for i, report in enumerate((target_only, narrow, wide))]
    assert widths[1] > 1.6 * widths[0]
    assert 1.3 * widths[1] < widths[2] < 1.7 * widths[1]


def test_relearning_without_data_is_none(tmp_path):
    assert plot_relearning(make_report(), tmp_path / "relearning.png") is None
    assert not (tmp_path / "relearning.png").exists()
    report = make_report(relearning=True)
    report["relearning"]["target_p_answer"]["unlearned"].pop()
    with pytest.raises(WhoharryError, match="3 values of unlearned for 4 steps"):
        plot_relearning(report, tmp_path / "relearning.png")


def test_missing_data_is_skipped_with_a_log_line(tmp_path, caplog):
    report = {"models": {"base": "tiny", "unlearned": "u"}, "samples": {},
              "summary": {"base": {"general_perplexity": 20.0}, "unlearned": {"general_perplexity": 21.0}}}
    with caplog.at_level(logging.INFO, logger="whoharry.evaluation.plots"):
        assert write_plots(report, tmp_path) == []
    assert list(tmp_path.iterdir()) == []
    for name in ("familiarity_vs_utility.png", "probe_shift.png", "relearning.png"):
        assert name in caplog.text
    with pytest.raises(WhoharryError, match="target_p_answer"):
        plot_familiarity_vs_utility(report, tmp_path / "f.png")


def test_probe_shift_needs_matching_records(tmp_path):
    report = make_report()
    report["samples"]["unlearned"]["target"].pop()
    with pytest.raises(WhoharryError, match="target probes: 4 base records but 3 unlearned"):
        plot_probe_shift(report, tmp_path / "shift.png")


def write_runs(folder, utility: str, base_utility: float, rows: list[tuple[str, float, float]]) -> list:
    """Run folders whose reports hold target P(answer) 0.4 → `target` and `utility` `base_utility` → the row's."""
    runs = []
    for name, target, value in rows:
        report = make_report()
        report["summary"]["base"] = {"target_p_answer": 0.4, utility: base_utility}
        report["summary"]["unlearned"] = {"target_p_answer": target, utility: value}
        (folder / name / "eval").mkdir(parents=True)
        (folder / name / "eval" / "report.json").write_text(json.dumps(report), encoding="utf-8")
        runs.append(folder / name)
    return runs


def test_plot_comparison(tmp_path):
    runs = write_runs(tmp_path, "general_p_answer", 0.2,
                      [("gentle", 0.3, 0.19), ("strong", 0.02, 0.15), ("no-utility", 0.1, 0.0)])
    path = plot_comparison(compare(runs), tmp_path / "comparison.png")
    one_panel = png_size(path)[0]
    assert one_panel > 100
    # a second utility figure in the runs adds a panel
    for run in runs:
        report = json.loads((run / "eval" / "report.json").read_text(encoding="utf-8"))
        report["summary"]["base"]["related_p_answer"] = 0.5
        report["summary"]["unlearned"]["related_p_answer"] = 0.45
        (run / "eval" / "report.json").write_text(json.dumps(report), encoding="utf-8")
    assert png_size(plot_comparison(compare(runs), tmp_path / "two.png"))[0] > 1.5 * one_panel
    lacking = compare([runs[0]])
    for key in ("general_p_answer", "related_p_answer"):
        lacking["runs"][0]["ratio"].pop(key)
    with pytest.raises(WhoharryError, match="no run has target_p_answer with a utility figure"):
        plot_comparison(lacking, tmp_path / "none.png")


def test_points_that_are_not_finite_are_left_out_with_a_log_line(tmp_path, caplog):
    """A destroyed model's nan probabilities and an infinite perplexity ratio do not stop the plots."""
    report = make_report(relearning=True)
    report["summary"]["unlearned"]["target_p_answer"] = float("nan")
    report["intervals"]["base"]["general_p_answer"] = [float("nan"), float("inf")]
    report["samples"]["unlearned"]["target"][1]["p_answer"] = float("nan")
    report["relearning"]["target_p_answer"]["unlearned"][2] = float("nan")
    report["relearning"]["intervals"]["unlearned"][2] = [float("nan"), float("nan")]
    with caplog.at_level(logging.INFO, logger="whoharry.evaluation.plots"):
        paths = write_plots(report, tmp_path)
    assert [path.name for path in paths] == ["familiarity_vs_utility.png", "probe_shift.png", "relearning.png"]
    assert "unlearned's target_p_answer or general_p_answer is not finite" in caplog.text
    assert "1 target probes with a P(answer) that is not finite" in caplog.text
    assert "relearning: 1 values of unlearned are not finite" in caplog.text


def test_comparison_leaves_out_runs_whose_ratios_are_not_finite(tmp_path, caplog):
    from whoharry.evaluation.compare import write_comparison

    runs = write_runs(tmp_path, "general_perplexity", 20.0,
                      [("gentle", 0.3, 21.0), ("destroyed", 0.0, float("inf")), ("broken", float("nan"), float("nan"))])
    with caplog.at_level(logging.INFO, logger="whoharry.evaluation.compare"):
        assert png_size(plot_comparison(compare(runs), tmp_path / "comparison.png"))[0] > 100
    assert "destroyed's ratios" in caplog.text and "broken's ratios" in caplog.text
    # no run left to draw: compare.md and compare.json are written, the plot is skipped with a log line
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="whoharry.evaluation.compare"):
        write_comparison(compare(runs[1:]), tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["compare.json", "compare.md"]
    assert "compare.png skipped" in caplog.text
