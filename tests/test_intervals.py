"""Bootstrap intervals: they hold the estimate, shrink to a point for constant samples, pair models."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
import torch

from whoharry.evaluation.intervals import Parts, add_intervals, interval, parts, percentiles, ratio_interval


def test_interval_holds_the_mean_and_is_a_point_for_constant_samples():
    values = Parts(np.linspace(0, 1, 41), np.ones(41))
    lo, hi = interval(values)
    assert lo < 0.5 < hi and hi - lo < 0.4
    assert interval(Parts(np.full(10, 0.3), np.ones(10))) == pytest.approx((0.3, 0.3))


def test_perplexity_parts_are_exp_of_pooled_loss():
    figure = Parts(np.array([20.0, 40.0]), np.array([10.0, 10.0]), exp=True)
    assert figure.value() == pytest.approx(math.exp(3.0))


def test_paired_ratio_interval_is_tight_when_models_move_together():
    rng = np.random.default_rng(1)
    base = rng.uniform(0.1, 0.9, 60)
    # the other model halves every probe: the paired ratio is exactly 0.5 whatever the resample
    lo, hi = ratio_interval(Parts(base / 2, np.ones(60)), Parts(base, np.ones(60)))
    assert lo == pytest.approx(0.5) and hi == pytest.approx(0.5)
    with pytest.raises(ValueError):
        ratio_interval(Parts(base[:5], np.ones(5)), Parts(base, np.ones(60)))


def test_add_intervals_covers_every_figure_with_samples():
    def result(scale: float) -> dict:
        target = [{"p_answer": scale * p, "hit": p > 0.5, "specific": p > 0.2} for p in (0.1, 0.4, 0.6, 0.9)]
        completions = [{"references_named": ["x"] if i % 2 else [], "judge_nll": 3.0 * scale, "tokens": 3}
                       for i in range(4)]
        samples = {"target": target, "completions": completions,
                   "general_text": [{"nll": 30.0, "tokens": 10}, {"nll": 20.0, "tokens": 10}]}
        summary = {"target_p_answer": 0.5 * scale, "target_hit_rate": 0.5, "target_specific_p_answer": 0.6 * scale,
                   "target_specific_probes": 3, "completion_reference_rate": 0.5,
                   "completion_fluency_perplexity": math.exp(scale), "general_perplexity": math.exp(2.5)}
        return {"summary": summary, "samples": samples}

    results = {"base": result(1.0), "unlearned": result(0.5)}
    ratios = add_intervals(results)
    spans = results["unlearned"]["intervals"]
    assert set(spans) == set(results["unlearned"]["summary"]) - {"target_specific_probes"}
    for key, (lo, hi) in spans.items():
        value = results["unlearned"]["summary"][key]
        assert lo <= value + 1e-5 and value - 1e-5 <= hi, key  # intervals are stored rounded
    assert ratios["unlearned/target_p_answer"] == pytest.approx([0.5, 0.5])
    assert parts({}, "target_p_answer") is None


def test_ratio_interval_skips_resamples_whose_base_is_zero():
    from whoharry.evaluation.intervals import mean_parts

    base = mean_parts([0.0, 0.0, 0.0, 0.5])  # most resamples of the base figure are 0
    unlearned = mean_parts([0.1, 0.0, 0.0, 0.5])
    low, high = ratio_interval(unlearned, base)
    assert 1.0 <= low <= high < 10.0
    assert all(math.isnan(v) for v in ratio_interval(unlearned, mean_parts([0.0, 0.0, 0.0, 0.0])))


def test_parts_follow_the_figure_table():
    from whoharry.evaluation.intervals import auc_groups, estimate

    samples = {"general": [{"p_answer": 0.2, "rank": 4, "hit": True}, {"p_answer": 0.4, "rank": 1, "hit": False}],
               "mystery": [{"p_answer": 0.5}],
               "membership": [{"member": True, "loss": -1.0}, {"member": False, "loss": -2.0},
                              {"member": False, "loss": -0.5}]}
    assert estimate(samples, "general_reciprocal_rank") == pytest.approx((1 / 4 + 1) / 2)
    assert estimate(samples, "general_hit_rate") == pytest.approx(0.5)
    assert parts(samples, "mystery_p_answer") is None  # no Figure, no recipe
    assert parts(samples, "membership_auc_loss") is None  # an AUC is not a ratio of sums
    assert auc_groups(samples, "membership_auc_loss") == ([-1.0], [-2.0, -0.5])
    assert estimate(samples, "membership_auc_loss") == pytest.approx(0.5)
    assert estimate(samples, "target_p_answer") is None and estimate(samples, "privleak_loss") is None


@pytest.fixture()
def no_warnings():
    """Overflow, inf - inf and inf / inf warnings raise: none may turn a figure into a silent nan."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        yield


def test_a_perplexity_past_exps_range_is_inf_and_its_interval_too(no_warnings):
    collapsed = Parts(np.array([9000.0, 8000.0, 7500.0]), np.array([10.0, 10.0, 10.0]), exp=True)
    assert collapsed.value() == math.inf
    assert interval(collapsed) == (math.inf, math.inf)  # numpy's interpolation would make inf - inf = nan
    base = Parts(np.array([30.0, 20.0, 25.0]), np.ones(3) * 10, exp=True)
    assert ratio_interval(collapsed, base) == (math.inf, math.inf)
    assert all(math.isnan(v) for v in ratio_interval(collapsed, collapsed))  # inf / inf
    # some resamples overflow, some do not: the interval runs from a number to inf
    mixed = Parts(np.array([20.0, 90000.0, 25.0, 30.0]), np.ones(4) * 10, exp=True)
    low, high = interval(mixed)
    assert math.isfinite(low) and high == math.inf


def test_percentiles_of_infinite_and_nan_values(no_warnings):
    assert percentiles(np.array([1.0, 2.0, 3.0])) == pytest.approx(tuple(np.percentile([1.0, 2.0, 3.0], [2.5, 97.5])))
    assert percentiles(np.full(5, -math.inf)) == (-math.inf, -math.inf)
    assert all(math.isnan(v) for v in percentiles(np.array([1.0, math.nan, math.inf])))


def test_add_intervals_of_a_destroyed_model(no_warnings):
    def result(nll: float) -> dict:
        return {"summary": {"general_perplexity": math.exp(min(nll / 10, 700)) if nll < 7000 else math.inf},
                "samples": {"general_text": [{"nll": nll, "tokens": 10}, {"nll": nll * 1.1, "tokens": 10}]}}

    results = {"base": result(30.0), "unlearned": result(9000.0)}
    ratios = add_intervals(results)
    assert results["unlearned"]["intervals"]["general_perplexity"] == [math.inf, math.inf]
    assert ratios["unlearned/general_perplexity"] == [math.inf, math.inf]
    both = {"base": result(9000.0), "unlearned": result(9000.0)}
    assert "unlearned/general_perplexity" not in add_intervals(both)  # inf / inf: no ratio interval


def _bench_script(name: str):
    """A benchmark script as a module, its folder on the path as when it runs (scripts import each other)."""
    import importlib.util
    import sys
    from pathlib import Path

    folder = Path(__file__).resolve().parents[1] / "scripts"
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))
    spec = importlib.util.spec_from_file_location(name, folder / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_pooled_share_is_the_ratio_of_mean_reductions_not_the_mean_of_shares():
    seeds = _bench_script("bench_target_seeds")
    rng = np.random.default_rng(3)
    base = rng.uniform(0.2, 0.8, 30)
    # seed 1: both runs halve every probe (share 1); seed 2: ours forgets a tenth, theirs nine tenths
    ours, theirs = [base * 0.5, base * 0.9], [base * 0.5, base * 0.1]
    one = seeds.pool(base, ours[:1], theirs[:1])
    assert one["share"] == pytest.approx(1.0) and one["share_interval"] == pytest.approx([1.0, 1.0])
    pooled = seeds.pool(base, ours, theirs)
    assert pooled["target_only_reduction"] == pytest.approx(0.3)
    assert pooled["hand_written_reduction"] == pytest.approx(0.7)
    assert pooled["share"] == pytest.approx(0.3 / 0.7)  # the mean of the two shares would be (1 + 1/9) / 2
    # every probe moves by the same fraction in both seeds: the pooled share does not depend on the resample
    assert pooled["share_interval"] == pytest.approx([0.3 / 0.7] * 2, abs=1e-4)


def test_pooled_reduction_is_of_the_mean_familiarity_not_the_mean_of_each_probes_ratio():
    seeds = _bench_script("bench_target_seeds")
    base = np.array([0.9, 0.1])
    # the large probe keeps everything, the small one loses everything: familiarity falls by 0.1 of 1.0,
    # where the mean of the probes' ratios would say a half
    ours, theirs = [np.array([0.9, 0.0])], [np.array([0.45, 0.05])]
    result = seeds.pool(base, ours, theirs)
    assert result["target_only_reduction"] == pytest.approx(0.1)
    assert result["hand_written_reduction"] == pytest.approx(0.5)
    assert result["share"] == pytest.approx(0.2)


@pytest.mark.parametrize("forgotten", [0.0, -0.2])
def test_pooled_share_of_a_run_that_forgets_nothing_is_nan(forgotten):
    seeds = _bench_script("bench_target_seeds")
    base = np.linspace(0.1, 0.5, 10)
    result = seeds.pool(base, [base * 0.5], [base * (1 - forgotten)])
    assert result["hand_written_reduction"] == pytest.approx(forgotten) and math.isnan(result["share"])
    assert all(math.isnan(value) for value in result["share_interval"])


def test_the_halves_and_the_largest_gaps_of_pooled_seeds():
    seeds = _bench_script("bench_target_seeds")
    probes = [{"prompt": f"p{i}", "answer": f" a{i}"} for i in range(6)]
    base = [0.5] * 6
    # probes 1-3: ours forgets all, theirs a fifth; probes 4-6: ours almost nothing, theirs almost all
    ours = [[0.0, 0.0, 0.0, 0.5, 0.5, 0.5], [0.0, 0.0, 0.0, 0.5, 0.4, 0.5]]
    theirs = [[0.4, 0.4, 0.4, 0.0, 0.0, 0.0], [0.4, 0.4, 0.4, 0.0, 0.0, 0.2]]
    halves = seeds.pool_lines(base, ours, theirs, 3)
    assert set(halves) == {"1-3", "4-6"}
    assert halves["1-3"]["target_only_reduction"] == 1.0 and halves["1-3"]["share"] == pytest.approx(5.0)
    assert halves["4-6"]["target_only_reduction"] == pytest.approx(1 - 2.9 / 3.0)
    assert halves["4-6"]["hand_written_reduction"] == pytest.approx(1 - 0.2 / 3.0)
    # mean gaps over the seeds: -0.4 on probes 1-3, then 0.5, 0.45, 0.4
    gaps = seeds.largest_gaps(probes, base, ours, theirs, count=2)
    assert [gap["line"] for gap in gaps] == [4, 5]
    assert gaps[1]["answer"] == " a4" and gaps[1]["target_only"] == pytest.approx(0.45)


def test_a_share_without_a_value_has_no_interval_though_some_resamples_have_one():
    seeds = _bench_script("bench_target_seeds")
    base = np.full(10, 0.5)
    theirs = base.copy()
    theirs[0], theirs[1] = 0.4, 0.7  # forgets 0.1 on one probe, learns 0.2 on another: no reduction in all
    result = seeds.pool(base, [base * 0.5], [theirs])
    assert result["hand_written_reduction"] < 0 and math.isnan(result["share"])
    assert all(math.isnan(value) for value in result["share_interval"])


def _bench_folder(root, seeds: dict[str, int]):
    """A folder shaped as bench_target.py --anchors leaves it, each run made with its seed (no models)."""
    for name, seed in seeds.items():
        run = root / name
        (run / "eval").mkdir(parents=True)
        (run / "unlearn" / "final").mkdir(parents=True)
        (run / "eval" / "report.json").write_text("{}")
        (run / "eval" / "config.yaml").write_text(f"seed: {seed}\n")
    return root


@pytest.mark.parametrize("second, message", [
    ({"target-only": 0, "hand-written": 0}, "were both made with seed 0"),
    ({"target-only": 1, "hand-written": 2}, "made with different seeds"),
])
def test_folders_of_one_seed_are_refused_before_any_model_loads(tmp_path, capsys, second, message):
    seeds = _bench_script("bench_target_seeds")
    first = _bench_folder(tmp_path / "a", {"target-only": 0, "hand-written": 0})
    other = _bench_folder(tmp_path / "b", second)
    with pytest.raises(SystemExit) as stop:
        seeds.main(["--probes", str(tmp_path / "none.jsonl"), str(first), str(other)])
    assert stop.value.code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(errors) == 1 and message in errors[0]


def test_general_fluency_of_several_models_beside_the_base(project, tiny_model_dir, tmp_path, capsys):
    from transformers import AutoModelForCausalLM

    from .conftest import write_config

    script = _bench_script("bench_general_fluency")
    config = write_config(project, tiny_model_dir, eval={"completions": {"tokens": 5}, "precision": "fp32"})
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p, "references": []}) + "\n" for p in
                               ("The village held a fair", "To make a good soup, you need", "The captain said that")))
    moved = tmp_path / "moved"
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    torch.manual_seed(1)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.5)
    model.save_pretrained(moved)
    result = script.main(["--prompts", str(prompts), "--config", str(config), "--toward-base", "0,1",
                          str(tiny_model_dir), str(moved)])
    assert result["count"] == 3 and result["base_perplexity"] > 1
    same, other = result["models"][str(tiny_model_dir)], result["models"][str(moved)]
    assert same["ratio"] == 1.0 and same["ratio_interval"] == [1.0, 1.0]  # the base read as a model of its own
    assert other["ratio"] != 1.0 and other["ratio_interval"][0] <= other["ratio"] <= other["ratio_interval"][1]
    # moved all the way back it is the base; not moved at all, the model
    assert result["models"][f"{moved}@0"]["ratio"] == 1.0 and result["models"][f"{moved}@1"] == other
    for steps in ("2", "x"):
        capsys.readouterr()
        with pytest.raises(SystemExit) as refused:
            script.main(["--toward-base", steps, str(moved)])
        assert refused.value.code == 2 and capsys.readouterr().err.strip().splitlines() == [
            f"error: --toward-base {steps}: numbers in [0, 1], comma-separated"]
    for weights in moved.glob("*.safetensors"):  # a folder whose weights are gone
        weights.unlink()
    capsys.readouterr()
    with pytest.raises(SystemExit) as broken:
        script.main(["--prompts", str(prompts), "--config", str(config), str(moved)])
    assert broken.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith(f"error: cannot load the model in {moved}")
    capsys.readouterr()
    with pytest.raises(SystemExit) as stopped:
        script.main(["--prompts", str(prompts), "--config", str(config), str(tmp_path / "nowhere")])
    assert stopped.value.code == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"error: no model in {tmp_path / 'nowhere'}: name a stage's final/ folder"]


def test_general_fluency_pooled_over_seeds_reads_every_seeds_completions_together(tmp_path):
    seeds = _bench_script("bench_target_seeds")

    def run(name: str, base: list[tuple[float, int]], unlearned: list[tuple[float, int]]):
        for model, rows in (("base", base), ("unlearned", unlearned)):
            folder = tmp_path / name / "eval" / "parts" / model
            folder.mkdir(parents=True)
            samples = {"general_completions": [{"judge_nll": nll, "tokens": n} for nll, n in rows]}
            (folder / "completions.json").write_text(json.dumps({"samples": samples}))
        return tmp_path / name

    base = [(10.0, 10), (10.0, 10)]  # perplexity e
    # seed 0: 2 nats a token over 20 tokens; seed 1: 1 nat a token over 20 (one prompt's completion is longer)
    runs = [run("s0", base, [(20.0, 10), (20.0, 10)]), run("s1", base, [(5.0, 5), (15.0, 15)])]
    result = seeds.general_fluency(runs)
    assert result["seeds"] == pytest.approx([math.e, 1.0], abs=1e-4)
    assert result["pooled"] == pytest.approx(math.exp(60 / 40) / math.e, abs=1e-4)  # not the mean of the ratios
    assert math.isnan(seeds.general_fluency([run("none", [], [])])["pooled"])
