"""Time the evaluation suite on a finished run: `whoharry eval --quick` and `--full`, from nothing (every
part recomputed), and print one JSON object with the wall times, each part's seconds and the targets.

    python scripts/bench_eval.py --out runs/default                 # quick, then full
    python scripts/bench_eval.py --out runs/default --mode quick

The reports land where the command line puts them: OUT/eval-quick/ and OUT/eval/ (the full report).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGET_SECONDS = {"quick": 300.0, "full": 1200.0}


def part_seconds(stage_dir: Path) -> dict[str, float]:
    """Seconds of each model's parts, from the part cache files."""
    seconds = {}
    for path in sorted((stage_dir / "parts").glob("*/*.json")):
        seconds[f"{path.parent.name}/{path.stem}"] = json.loads(path.read_text(encoding="utf-8")).get("seconds")
    return seconds


def unlearned_model(parser: argparse.ArgumentParser, out: Path) -> Path:
    """The run's unlearned model folder; the parser's error (exit 2) when the run has none."""
    model_path = out / "unlearn" / "final"
    if not (model_path / "config.json").is_file():
        parser.error(f"no unlearned model at {model_path}: run `whoharry run --out {out}` first")
    return model_path


def timed(cfg, out: Path, model_path: Path, stage_dir: Path, mode: str, target: Path | None = None) -> dict:
    """One evaluation from nothing (every part recomputed) into `stage_dir`: its wall seconds against the
    mode's target, where the report is, and each part's seconds."""
    from whoharry.stages import evaluate

    began = time.perf_counter()
    evaluate.run(cfg, out, model_path, progress=False, stage_dir=stage_dir, overwrite=True, target=target)
    seconds = time.perf_counter() - began
    return {"wall_seconds": round(seconds, 1), "target_seconds": TARGET_SECONDS[mode],
            "met": seconds <= TARGET_SECONDS[mode], "report": str(stage_dir / "report.md"),
            "part_seconds": part_seconds(stage_dir)}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "default.yaml")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "default")
    parser.add_argument("--mode", choices=("quick", "full", "both"), default="both")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args(argv)

    from whoharry.cli.common import setup as _setup
    from whoharry.config import EVAL_PARTS, QUICK, as_overrides, load_config

    _setup(quiet=True)
    model_path = unlearned_model(parser, args.out)
    result: dict = {"run": str(args.out)}
    for mode in ("quick", "full") if args.mode == "both" else (args.mode,):
        overrides = [*(as_overrides(QUICK) if mode == "quick" else []), *args.overrides,
                     f"eval.parts={list(EVAL_PARTS)}"]
        cfg = load_config(args.config, overrides)
        stage_dir = args.out / ("eval-quick" if mode == "quick" else "eval")
        result[mode] = timed(cfg, args.out, model_path, stage_dir, mode)
        print(json.dumps({mode: result[mode]}), flush=True)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
