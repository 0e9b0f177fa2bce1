"""Run (or read) a whoharry run and print its quality figures and stage times as one JSON object.

    python scripts/bench_quality.py                       # run configs/default.yaml into runs/default
    python scripts/bench_quality.py --out runs/quick      # score an existing run folder as it is
    python scripts/bench_quality.py --max-steps 4 --out runs/quick

The JSON holds, for base and unlearned models, the evaluation summary of `OUT/eval/report.json`, the
unlearned/base ratio of each figure, and each stage's seconds from its manifest.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("reinforce", "labels", "unlearn", "eval")


def stage_seconds(out: Path) -> dict[str, float | None]:
    seconds: dict[str, float | None] = {}
    for stage in STAGES:
        path = out / stage / "manifest.json"
        seconds[stage] = json.loads(path.read_text())["seconds"] if path.is_file() else None
    return seconds


def figures(out: Path) -> dict:
    report = json.loads((out / "eval" / "report.json").read_text())
    base, unlearned = report["summary"]["base"], report["summary"]["unlearned"]
    ratios = {key: unlearned[key] / base[key] for key in base if key in unlearned and base[key]}
    return {"base": base, "unlearned": unlearned, "unlearned_over_base": ratios}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "default.yaml")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "default")
    parser.add_argument("--max-steps", type=int, default=None)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args(argv)

    from whoharry import pipeline
    from whoharry.cli import _setup
    from whoharry.config import load_config

    _setup(quiet=True)
    cfg = load_config(args.config, args.overrides, max_steps=args.max_steps)
    began = time.perf_counter()
    pipeline.run(cfg, args.out, progress=False)
    result = {
        "run": str(args.out.resolve()),
        "wall_seconds_this_call": round(time.perf_counter() - began, 1),
        "stage_seconds": stage_seconds(args.out),
        **figures(args.out),
    }
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
