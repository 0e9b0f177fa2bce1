"""How good are suggested anchor dictionaries? One JSON object last.

    python scripts/bench_anchors.py                  # Harry Potter default: suggest, score, run with it
    python scripts/bench_anchors.py --no-run         # the ranking figures only
    python scripts/bench_anchors.py --oz ../shared/corpora/wizard_of_oz_pg55.txt
    python scripts/bench_anchors.py --scored --no-run --oz ...   # score the dictionaries suggested before

- **recall@200**: the share of the answer key's terms (the hand-written `data/harry_potter/anchors.yaml`,
  counting the terms that occur in the target) among the top 200 suggestions; also weighted by how
  often each term occurs, counting a multi-word key whose words are all suggested (the labels stage
  leaves such a key to its parts), and the ceiling that 200 suggestions allow;
- **precision@100**: the share of the top 100 that are in the answer key or are name-like terms of
  the target (≥ 90% of their mid-sentence occurrences capitalised);
- **the run**: `whoharry run` with the suggested dictionary in place of the hand-written one (the
  same reinforced model), against the default run: the share of the familiarity reduction it keeps
  (target ≥ 0.80) and the general figures of the default run's targets;
- **--oz BOOK**: the recall figure again on the first 80,000 characters of The Wonderful Wizard of
  Oz, with `data/wizard_of_oz/anchors_key.yaml` as the answer key (the book is not in the repository).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

GENERAL_TARGETS = ("general_p_answer", "related_p_answer", "general_perplexity", "completion_fluency_perplexity")
OZ_CHARS = 80_000


def unwrap(text: str) -> str:
    """Join the lines of each paragraph (a hard-wrapped book writes names across line ends)."""
    return re.sub(r"(?<!\n)\n(?!\n)", " ", text)


def suggestions_of(path: Path) -> list[str]:
    """The terms of a suggested dictionary, best first (the file's order)."""
    from whoharry.anchors.dictionary import load_anchors

    return list(load_anchors(path).entries)


def ranking_figures(suggested: list[str], answer_key: Path, text: str, general: str) -> dict:
    from whoharry.anchors import candidates as suggest
    from whoharry.anchors.check import check
    from whoharry.anchors.dictionary import Anchors, load_anchors

    key = load_anchors(answer_key)
    occurring = {term: count for term, count in _whole_word_counts(key, text).items() if count}
    top200, top100 = suggested[:200], suggested[:100]
    hits = [term for term in top200 if term in occurring]
    chosen = set(top200)
    # a key of several words, each suggested (or a connector), is covered through its parts
    by_parts = [term for term in occurring if term in chosen or (
        " " in term and all(word in chosen or word in suggest.CONNECTORS for word in term.split()))]
    candidates = suggest.find_candidates(text, general, min_count=1)
    name_like = {term for term, c in candidates.items() if c.name_like}
    good = [term for term in top100 if term in key.entries or term in name_like]
    matched = check(Anchors({t: key.entries[t] for t in occurring}), text).occurrences
    return {
        "answer_key_terms": len(key),
        "answer_key_terms_in_text": len(occurring),
        "recall_at_200": round(len(hits) / len(occurring), 3),
        "recall_at_200_ceiling": round(min(200, len(occurring)) / len(occurring), 3),
        "recall_at_200_by_occurrence": round(sum(matched.get(t, 0) for t in hits) / max(sum(matched.values()), 1), 3),
        "recall_at_200_with_parts": round(len(by_parts) / len(occurring), 3),
        "precision_at_100": round(len(good) / len(top100), 3),
        "precision_at_100_in_answer_key": round(sum(t in key.entries for t in top100) / len(top100), 3),
        "missed_most_frequent": sorted((t for t in occurring if t not in top200), key=lambda t: -occurring[t])[:15],
        "top_20": suggested[:20],
    }


def _whole_word_counts(anchors, text: str) -> dict[str, int]:
    return {term: len(re.findall(r"(?<!\w)" + re.escape(term) + r"(?!\w)", text)) for term in anchors.entries}


def suggest_into(cfg, run_dir: Path, out: Path) -> None:
    """`whoharry anchors suggest` with the config, the reinforced model of `run_dir` (trained if missing)."""
    import yaml
    from typer.testing import CliRunner

    from whoharry.cli import app
    from whoharry.config import to_dict

    config = run_dir.parent / f"{run_dir.name}-bench-config.yaml"
    run_dir.mkdir(parents=True, exist_ok=True)
    config.write_text(yaml.safe_dump(to_dict(cfg)), encoding="utf-8")
    result = CliRunner().invoke(app, ["anchors", "suggest", "--config", str(config), "--out", str(out),
                                      "--run", str(run_dir), "--overwrite", "-q"])
    config.unlink()
    if result.exit_code != 0:
        raise SystemExit(f"anchors suggest failed: {result.output}")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "default.yaml")
    parser.add_argument("--run", type=Path, default=ROOT / "runs" / "default", help="the default run (hand-written)")
    parser.add_argument("--generated-run", type=Path, default=ROOT / "runs" / "generated-anchors")
    parser.add_argument("--no-run", action="store_true", help="skip the run with the suggested dictionary")
    parser.add_argument("--oz", type=Path, default=None, help="The Wonderful Wizard of Oz (Gutenberg pg55 text)")
    parser.add_argument("--scored", action="store_true",
                        help="score the dictionaries already suggested into --generated-run instead of suggesting")
    args = parser.parse_args(argv)

    from bench_quality import verdicts
    from whoharry.cli.common import setup as _setup
    from whoharry.config import load_config
    from whoharry.core.text import read_text
    from whoharry.stages import evaluate, pipeline

    _setup(quiet=True)
    cfg = load_config(args.config)
    general = "\n\n".join(read_text(p) for p in [*cfg.data.retain, cfg.eval.utility.general_text] if p and p.is_file())
    suggested_path = args.generated_run / "anchors-suggested.yaml"
    pipeline.run(cfg, args.run, progress=False)  # the hand-written run (skipped when complete)
    if not args.scored:
        suggest_into(cfg, args.run, suggested_path)
    target = read_text(cfg.data.target)
    result: dict = {"dictionary": str(suggested_path),
                    "harry_potter": ranking_figures(suggestions_of(suggested_path), cfg.data.anchors, target, general)}

    if not args.no_run:
        generated = load_config(args.config, [f"data.anchors={suggested_path}"])
        if not (args.generated_run / "reinforce").exists():  # the same reinforced model, not trained again
            shutil.copytree(args.run / "reinforce", args.generated_run / "reinforce")
        pipeline.run(generated, args.generated_run, progress=False)
        hand = evaluate.load_report(args.run / "eval")["summary"]
        made = evaluate.load_report(args.generated_run / "eval")["summary"]
        base = hand["base"]["target_p_answer"]
        kept = (base - made["unlearned"]["target_p_answer"]) / (base - hand["unlearned"]["target_p_answer"])
        ratios = {k: made["unlearned"][k] / made["base"][k] for k in made["base"] if made["base"][k]}
        general_verdicts = {k: v for k, v in verdicts(made["unlearned"], ratios).items() if k in GENERAL_TARGETS}
        result["run"] = {
            "base_target_p_answer": round(base, 4),
            "hand_written_target_p_answer": round(hand["unlearned"]["target_p_answer"], 4),
            "generated_target_p_answer": round(made["unlearned"]["target_p_answer"], 4),
            "familiarity_reduction_kept": round(kept, 3),
            "target": ">= 0.80",
            "general_figures": general_verdicts,
        }

    if args.oz is not None:
        book = read_text(args.oz)
        if "*** START OF" in book:
            book = book.split("*** START OF", 1)[1].split("\n", 1)[1].split("*** END OF", 1)[0]
        oz_text = unwrap(book[:OZ_CHARS])
        oz_dir = args.generated_run / "oz"
        oz_dir.mkdir(parents=True, exist_ok=True)
        (oz_dir / "target.txt").write_text(oz_text, encoding="utf-8")
        oz_cfg = load_config(args.config, [f"data.target={oz_dir / 'target.txt'}"])
        if not args.scored:
            suggest_into(oz_cfg, oz_dir / "run", oz_dir / "anchors-suggested.yaml")
        result["wizard_of_oz"] = ranking_figures(suggestions_of(oz_dir / "anchors-suggested.yaml"),
                                                 ROOT / "data" / "wizard_of_oz" / "anchors_key.yaml", oz_text, general)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
