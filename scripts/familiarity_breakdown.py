"""Where the remaining familiarity of a run sits: its target probes split by kind, with each kind's
share of the mean answer probability, for the base and the unlearned model.

    python scripts/familiarity_breakdown.py --out runs/default

Kinds, in this order:
- `inside-anchor`: the answer finishes an anchor term that the prompt begins ("... Order of the" ->
  " Phoenix" with the key "Order of the Phoenix"). The method gives predictions inside an anchor no
  label, so it leaves these untouched by design;
- `not-specific`: the base model gives the answer at least half its probability even when the prompt's
  target terms are replaced by generic ones (the answer rests on the wording, not on the target);
- `specific`: the rest.
Reads OUT/eval/report.json and the run's anchor dictionary; runs no model. Prints a markdown table,
then one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
KINDS = ("inside-anchor", "not-specific", "specific")


def kind_of(record: dict, pattern) -> str:
    prompt, text = record["prompt"], record["prompt"] + record["answer"]
    if any(match.start() < len(prompt) < match.end() for match in pattern.finditer(text)):
        return "inside-anchor"
    return "specific" if record.get("specific", True) else "not-specific"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "default.yaml")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "default")
    args = parser.parse_args(argv)

    from whoharry.anchors.dictionary import load_anchors
    from whoharry.config import load_config
    from whoharry.stages.evaluate import load_report

    cfg = load_config(args.config)
    pattern = load_anchors(cfg.data.anchors).pattern()
    report = load_report(args.out / "eval")
    base, unlearned = report["samples"]["base"]["target"], report["samples"]["unlearned"]["target"]
    total = len(base)
    rows = {}
    for kind in KINDS:
        picked = [i for i, record in enumerate(base) if kind_of(record, pattern) == kind]
        rows[kind] = {
            "probes": len(picked),
            # each kind's contribution to the mean P(answer) over all probes
            "base_share": sum(base[i]["p_answer"] for i in picked) / total,
            "unlearned_share": sum(unlearned[i]["p_answer"] for i in picked) / total,
        }
    print("| probes | count | base: share of mean P | unlearned: share of mean P |")
    print("| --- | ---: | ---: | ---: |")
    for kind, row in rows.items():
        print(f"| {kind} | {row['probes']} | {row['base_share']:.4f} | {row['unlearned_share']:.4f} |")
    result = {"run": str(args.out.resolve()), "kinds": rows}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
