"""Run (or read) a whoharry run and print its quality figures, stage times and targets as one JSON object.

    python scripts/bench_quality.py                       # run configs/default.yaml into runs/default
    python scripts/bench_quality.py --out runs/quick      # score an existing run folder as it is
    python scripts/bench_quality.py --max-steps 4 --out runs/quick

Stages already complete with the same settings are skipped: `run_wall_seconds` is the wall time of
this call when the run folder started empty, else the sum of the stages' seconds from their manifests.
The reinforced model is evaluated too (into OUT/eval-reinforced, not part of the run's wall time)
unless `--no-reinforced`, and the unlearned model's robustness part (paraphrased, hinted and few-shot
probes, into OUT/eval-robustness) unless `--no-robustness`. The JSON holds, for base, reinforced and unlearned
models, the evaluation summaries, the unlearned/base ratio of each figure, and each target's verdict.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("reinforce", "augment", "labels", "unlearn", "eval")

# (figure, how it is measured, comparison, bound): the quality targets of the default run.
TARGETS = (
    ("target_p_answer", "ratio", "<=", 0.25),
    ("target_specific_p_answer", "ratio", "<=", 0.10),
    ("paraphrased_p_answer", "ratio", "<=", 0.35),
    ("hinted_p_answer", "ratio", "<=", 0.35),
    ("fewshot_p_answer", "ratio", "<=", 0.35),
    ("completion_reference_rate", "value", "<=", 0.06),
    ("general_p_answer", "ratio", ">=", 0.95),
    ("related_p_answer", "ratio", ">=", 0.90),
    ("general_perplexity", "ratio", "<=", 1.05),
    ("completion_fluency_generic_perplexity", "ratio", "<=", 1.3),
    ("general_fluency_perplexity", "ratio", "<=", 1.1),
    ("run_wall_seconds", "value", "<=", 600.0),
)


def stage_seconds(out: Path) -> dict[str, float | None]:
    seconds: dict[str, float | None] = {}
    for stage in STAGES:
        path = out / stage / "manifest.json"
        seconds[stage] = round(json.loads(path.read_text())["seconds"], 1) if path.is_file() else None
    return seconds


def verdicts(unlearned: dict[str, float], ratios: dict[str, float]) -> dict[str, dict]:
    result = {}
    for key, kind, op, bound in TARGETS:
        value = (ratios if kind == "ratio" else unlearned).get(key)
        met = None if value is None else (value <= bound if op == "<=" else value >= bound)
        result[key] = {"measured": kind, "value": value, "target": f"{op} {bound}", "met": met}
    return result


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "default.yaml")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "default")
    parser.add_argument("--max-steps", type=int, default=None)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--no-reinforced", action="store_true", help="Do not evaluate the reinforced model.")
    parser.add_argument("--no-robustness", action="store_true",
                        help="Do not evaluate the paraphrased, hinted and few-shot probes (OUT/eval-robustness).")
    args = parser.parse_args(argv)

    from whoharry.cli.common import setup as _setup
    from whoharry.config import load_config
    from whoharry.stages import evaluate, pipeline

    _setup(quiet=True)
    cfg = load_config(args.config, args.overrides, max_steps=args.max_steps)
    fresh = not any((args.out / stage / "manifest.json").is_file() for stage in STAGES)
    began = time.perf_counter()
    pipeline.run(cfg, args.out, progress=False)
    wall = time.perf_counter() - began
    seconds = stage_seconds(args.out)
    report = evaluate.load_report(args.out / "eval")
    base, unlearned = report["summary"]["base"], dict(report["summary"]["unlearned"])
    # the wall time of the whole run when this call ran every stage, else the stages' own seconds
    unlearned["run_wall_seconds"] = round(wall if fresh else sum(value or 0.0 for value in seconds.values()), 1)
    if not args.no_robustness:  # the target facts asked indirectly: evaluated apart, outside the run's time
        robust_cfg = load_config(args.config, [*args.overrides, "eval.parts=[robustness]"], max_steps=args.max_steps)
        robust = evaluate.load_report(evaluate.run(robust_cfg, args.out, args.out / "unlearn" / "final",
                                                   stage_dir=args.out / "eval-robustness", progress=False))
        base = {**base, **robust["summary"]["base"]}
        unlearned.update(robust["summary"]["unlearned"])
    ratios = {key: unlearned[key] / base[key] for key in base if key in unlearned and base[key]}
    result = {
        "run": str(args.out.resolve()),
        "wall_seconds_this_call": round(wall, 1),
        "stage_seconds": seconds,
        "base": base,
        "unlearned": unlearned,
        "unlearned_over_base": ratios,
        "targets": verdicts(unlearned, ratios),
    }
    if not args.no_reinforced:
        reinforced = args.out / "reinforce" / "final"
        stage_dir = evaluate.run(cfg, args.out, reinforced, stage_dir=args.out / "eval-reinforced")
        result["reinforced"] = evaluate.load_report(stage_dir)["summary"]["unlearned"]
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
