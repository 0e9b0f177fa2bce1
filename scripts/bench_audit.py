"""Time the attack audit on a finished run: `whoharry eval --audit --quick` and `--audit`, from nothing (every
part of both models recomputed), and print one JSON object with the wall times, each part's seconds, the
targets, and the audit table.

    python scripts/bench_audit.py --out runs/default                 # quick, then full
    python scripts/bench_audit.py --out runs/npo --mode full

The reports land where the command line puts them: OUT/eval-audit-quick/ and OUT/eval-audit/.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "default.yaml")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "default")
    parser.add_argument("--mode", choices=("quick", "full", "both"), default="both")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        help="a setting, as `whoharry eval --set` (repeatable); data.target=FILE for a run of a "
                             "text of one's own")
    args = parser.parse_args(argv)

    sys.path.insert(0, str(ROOT / "scripts"))
    from bench_eval import timed, unlearned_model
    from whoharry.cli.common import setup as _setup
    from whoharry.config import AUDIT, QUICK, as_overrides, load_config
    from whoharry.core.settings import keys_given
    from whoharry.stages import evaluate, pipeline

    _setup(quiet=True)
    model_path = unlearned_model(parser, args.out)
    result: dict = {"run": str(args.out)}
    for mode in ("quick", "full") if args.mode == "both" else (args.mode,):
        quick = mode == "quick"
        overrides = [*(as_overrides(QUICK) if quick else []), *as_overrides(AUDIT), *args.overrides]
        cfg = load_config(args.config, overrides)
        # a run of one's own text is scored on the files it made (as `whoharry eval --target`)
        shipped = args.config.resolve() == (ROOT / "configs" / "default.yaml").resolve()  # names nothing of its own
        made = pipeline.made_config(cfg, args.out, keys_given(None if shipped else args.config, overrides))
        stage_dir = evaluate.stage_dir_for(args.out, quick=quick, audit=True)
        result[mode] = timed(made, args.out, model_path, stage_dir, mode, target=cfg.data.target)
        table = evaluate.load_report(stage_dir).get("audit") or {"rows": [], "worst": None}
        result[mode]["audit"] = [{key: row[key] for key in ("attack", "figure", "base", "unlearned", "recovery",
                                                            "interval")} for row in table["rows"]]
        result[mode]["worst"] = table["worst"] and {key: table["worst"][key] for key in ("attack", "recovery",
                                                                                          "interval")}
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
