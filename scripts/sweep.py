"""Tune on the dev probes: run a list of settings, each in its own run folder, and tabulate the figures.

    python scripts/sweep.py --trials configs/sweeps/default.yaml --from runs/default --out runs/sweep

The trials file maps a trial name to its `--set` overrides (a mapping of dotted keys to values; a name
starting with `_` holds shared settings that trials merge in with `<<: *anchor`, and is not run). Every
trial is evaluated on the dev probe files (the test files are never seen here). Finished stages of the
`--from` run are hard-linked into each trial folder first, so a trial that only changes the unlearn
settings reuses the reinforced model and labels; a stage whose settings differ is redone as usual.
Prints one JSON object per trial as it finishes, then a markdown table, then one JSON object with all.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
DEV = {
    "eval.probes.target": "data/harry_potter/probes_dev.jsonl",
    "eval.probes.general": "data/general/probes_dev.jsonl",
    "eval.probes.related": "data/related/probes_dev.jsonl",
    "eval.completions.prompts": "data/harry_potter/completions_dev.jsonl",
    "eval.completions.general_prompts": "data/general/completions_dev_wide.jsonl",
}
COLUMNS = (
    ("target_p_answer", "HP P"),
    ("target_specific_p_answer", "HP P specific"),
    ("target_hit_rate", "HP hit"),
    ("completion_reference_rate", "compl. refs"),
    ("general_p_answer", "gen P"),
    ("related_p_answer", "rel P"),
    ("general_perplexity", "ppl"),
    ("completion_fluency_generic_perplexity", "fluency like-with-like"),
    ("general_fluency_perplexity", "fluency general"),
    ("completion_fluency_perplexity", "fluency HP prompts"),
)

RATIOS = {key for key, _ in COLUMNS} | {"target_hit_rate", "general_hit_rate", "related_hit_rate"}


def link_stages(source: Path, target: Path) -> None:
    """Hard-link the finished stage folders of `source` into `target` (artifacts are replaced by rename,
    never written in place, so the links cannot alter the source run)."""
    for stage in ("reinforce", "augment", "labels", "unlearn"):
        src = source / stage
        if (src / "manifest.json").is_file() and not (target / stage).exists():
            shutil.copytree(src, target / stage, copy_function=os.link)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=Path, required=True)
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "default.yaml")
    parser.add_argument("--from", dest="source", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "sweep")
    parser.add_argument("--only", action="append", default=[], help="Run only these trials (repeatable).")
    parser.add_argument("--eval-only", action="store_true",
                        help="Only (re)evaluate each trial's existing unlearned model on the dev probes.")
    args = parser.parse_args(argv)

    from whoharry.cli.common import setup as _setup
    from whoharry.config import as_overrides, load_config
    from whoharry.stages import evaluate, pipeline

    _setup(quiet=True)
    trials = yaml.safe_load(args.trials.read_text(encoding="utf-8"))
    results = []
    for name, overrides in trials.items():
        if name.startswith("_") or (args.only and name not in args.only):
            continue  # `_name`: shared settings for YAML merge keys, not a trial
        settings = {**DEV, **{key: value for key, value in (overrides or {}).items()}}
        cfg = load_config(args.config, as_overrides(settings))
        out = args.out / name
        out.mkdir(parents=True, exist_ok=True)
        if args.source is not None:
            link_stages(args.source, out)
        began = time.perf_counter()
        if args.eval_only:
            summary = evaluate.load_report(evaluate.run(cfg, out, progress=False))["summary"]
        else:
            summary = pipeline.run(cfg, out, progress=False)
        base, tuned = summary["base"], summary["unlearned"]
        row = {
            "trial": name,
            "settings": overrides or {},
            "seconds": round(time.perf_counter() - began, 1),
            "base": base,
            "unlearned": tuned,
            "ratio": {key: tuned[key] / base[key] for key in base if key in tuned and base[key] and key in RATIOS},
        }
        results.append(row)
        print(json.dumps(row), flush=True)
    print(markdown(results))
    print(json.dumps(results))
    return results


def markdown(results: list[dict]) -> str:
    head = "| trial | settings | " + " | ".join(label for _, label in COLUMNS) + " |"
    lines = [head, "|" + " --- |" * (len(COLUMNS) + 2)]
    for row in results:
        cells = []
        for key, _ in COLUMNS:
            value, ratio = row["unlearned"].get(key), row["ratio"].get(key)
            cells.append("" if value is None else f"{value:.3f} ({ratio:.2f}×)" if ratio else f"{value:.3f}")
        settings = ", ".join(f"{k}={v}" for k, v in row["settings"].items()) or "default"
        lines.append(f"| {row['trial']} | {settings} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
