"""Forget a book with nothing but `--target`, beside the same book with hand-written files, and judge both on
the hand-written probes; print one JSON object.

    python scripts/bench_target.py --book ../shared/corpora/sherlock_holmes_adventures_pg1661.txt \\
        --tokens 20000 --probes data/sherlock/probes_test.jsonl --anchors data/sherlock/anchors.yaml \\
        --out runs/target-sherlock

1. The book's first `--tokens` tokens (whole paragraphs, hard line wraps joined) go to OUT/book.txt.
2. `target-only`: `whoharry run --target OUT/book.txt` with the shipped config: the split, dictionary and
   probes are made from the book. Its wall time is timed here.
3. `hand-written` (with `--anchors`): the same, with the hand-written dictionary and probes named; or
   (with `--reference FOLDER`) a finished run of the book with its hand-written files, such as the demo's
   default run.
4. Each run's base, reinforced and unlearned models are scored on the hand-written probes (`--probes`),
   which the generated files never saw, and on the target-only run's generated test probes.

`--seed N` runs both with seed N (the split, the fine-tunes' order, the dictionary's and the labels' draws,
the probes' dev/test halves), to see how far the comparison moves with the draws alone.

The JSON holds, per run: wall and stage seconds, the base-model evaluation parts read from the shared cache
(`base_parts_read`: figures of general text that an earlier run of the same model computed), the general
figures of the run's report (unlearned/base) against the default run's targets (`scripts/bench_quality.py`),
familiarity (mean P(answer)) of the three models on both probe sets, the unlearned/base ratios, the
familiarity reduction (1 - ratio) on the hand-written probes and the target-only run's share of the
hand-written run's reduction (nan when that run forgets nothing), with its 95% bootstrap interval over the
probes (`share_interval`; the three models resampled alike); the generated probes' checks: the share the
base ranks in its top 10, and whether generated-probe and hand-written-probe familiarity order the three
models alike (Spearman's rank correlation over base, reinforced, unlearned of both runs).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GENERAL = ("general_p_answer", "related_p_answer", "general_perplexity", "completion_fluency_generic_perplexity",
           "general_fluency_perplexity")


def cut_book(book: Path, tokens: int, out: Path) -> Path:
    """The book's first `tokens` tokens of whole paragraphs (the default model's tokenizer) as OUT/book.txt."""
    from whoharry.config import load_config
    from whoharry.core import models
    from whoharry.experiments.retrain_gap import unwrap

    cfg = load_config(ROOT / "configs" / "default.yaml")
    tokenizer = models.load_tokenizer(models.resolve(cfg.model), cfg.model)
    kept, count = [], 0
    for paragraph in unwrap(book.read_text(encoding="utf-8")).split("\n\n"):
        size = len(tokenizer(paragraph, add_special_tokens=False).input_ids)
        if count + size > tokens and kept:
            break
        kept.append(paragraph.strip())
        count += size
    path = out / "book.txt"
    out.mkdir(parents=True, exist_ok=True)
    path.write_text("\n\n".join(p for p in kept if p) + "\n", encoding="utf-8")
    return path


def run(name: str, overrides: list[str], out: Path) -> dict:
    """One `whoharry run` into out/name, timed; its manifests' stage seconds."""
    from whoharry.config import load_config
    from whoharry.core.settings import keys_given
    from whoharry.stages import pipeline

    folder = out / name
    began = time.perf_counter()
    cfg = load_config(ROOT / "configs" / "default.yaml", overrides)
    fresh = not folder.exists()
    pipeline.run(cfg, folder, progress=False, explicit=keys_given(None, overrides))
    return {"folder": str(folder), "wall_seconds": round(time.perf_counter() - began, 1) if fresh else None,
            "stage_seconds": stage_seconds(folder), "config": cfg}


def run_seed(folder: Path) -> int | None:
    """The seed a finished run was made with, from its evaluation's config.yaml."""
    import yaml

    return yaml.safe_load((folder / "eval" / "config.yaml").read_text(encoding="utf-8")).get("seed")


def stage_seconds(folder: Path) -> dict[str, float]:
    """Each finished stage's seconds, from its manifest."""
    return {manifest.parent.name: round(json.loads(manifest.read_text())["seconds"], 1)
            for manifest in sorted(folder.glob("*/manifest.json"))}


def report_ratios(folder: Path) -> tuple[dict[str, float], dict[str, float]]:
    """The unlearned model's figures in the run's report, and each one's ratio to the base's."""
    summary = json.loads((folder / "eval" / "report.json").read_text())["summary"]
    base, unlearned = summary["base"], summary["unlearned"]
    return unlearned, {key: unlearned[key] / base[key] if base.get(key) else float("nan")
                       for key in unlearned if key in base and isinstance(unlearned[key], float)}


def general_figures(unlearned: dict[str, float], ratios: dict[str, float]) -> dict[str, dict]:
    """The run's general figures (`report_ratios`) against the default run's targets."""
    sys.path.insert(0, str(ROOT / "scripts"))
    from bench_quality import verdicts

    return {key: verdict for key, verdict in verdicts(unlearned, ratios).items() if key in GENERAL}


def familiarity(cfg, folder: Path, probe_file: Path, which: tuple[str, ...] = ("base", "reinforced", "unlearned")
                ) -> tuple[dict[str, float], dict[str, list[float]]]:
    """Mean P(answer) of the base, reinforced and unlearned models (those named in `which`) on `probe_file`,
    and each probe's."""
    from whoharry.core import models
    from whoharry.evaluation.probes import read_probes, score_probes

    probes = read_probes(probe_file)
    source = models.resolve(cfg.model)
    tokenizer = models.load_tokenizer(source, cfg.model)
    result, each = {}, {}
    loaders = {"base": lambda: models.load_model(source, cfg.model, inference=True),
               "reinforced": lambda: models.load_folder(folder / "reinforce" / "final", cfg=cfg.model),
               "unlearned": lambda: models.load_folder(folder / "unlearn" / "final", cfg=cfg.model)}
    for name in which:
        model = loaders[name]().requires_grad_(False)
        records = score_probes(model, tokenizer, probes, cfg.eval, name, greedy=False, progress=False)
        each[name] = [r["p_answer"] for r in records]
        result[name] = sum(each[name]) / len(records)
        del model
    return result, each


def share(ours: float, theirs: float) -> float:
    """The target-only run's reduction over the hand-written run's; nan when the hand-written reduction is not
    above 0 (no reduction to take a share of)."""
    return ours / theirs if theirs > 0 else float("nan")


def share_interval(base: list[float], ours: list, theirs: list) -> list[float]:
    """95% bootstrap interval of sum(base - ours) / sum(base - theirs), the probes resampled with the same
    indices for all three models (`whoharry.evaluation.intervals.ratio_interval`: a resample whose denominator
    is not above 0, where `theirs` forgets nothing, has no share). Nan when the share itself has no value
    (the denominator over all probes not above 0), or no resample has one. `base` holds one
    P(answer) a probe; `ours` and `theirs` the same, or one such row a seed ([seeds, probes]). With rows the
    sums run over the seeds and the probes: each probe's differences are summed over the seeds, then the
    probes are resampled."""
    import numpy as np

    from whoharry.evaluation.intervals import Parts, ratio_interval

    ones = np.ones(len(base))
    numer = Parts((np.asarray(base) - np.atleast_2d(ours)).sum(axis=0), ones)
    denom = Parts((np.asarray(base) - np.atleast_2d(theirs)).sum(axis=0), ones)
    if not denom.value() > 0:
        return [float("nan"), float("nan")]
    return [round(value, 4) for value in ratio_interval(numer, denom)]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--book", type=Path, required=True)
    parser.add_argument("--tokens", type=int, default=20000)
    parser.add_argument("--probes", type=Path, required=True, help="hand-written probes of the book")
    parser.add_argument("--anchors", type=Path, default=None, help="hand-written dictionary of the book")
    parser.add_argument("--reference", type=Path, default=None,
                        help="instead of --anchors: a finished run folder of the book with its hand-written files "
                             "(e.g. runs/default for the demo), judged the same way")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "target-bench")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a setting of the target-only run, as `whoharry run --set` (repeatable)")
    parser.add_argument("--seed", type=int, default=None,
                        help="the seed of both runs (split, fine-tunes, dictionary, probes); the config's when absent")
    args = parser.parse_args(argv)

    import pandas  # installed with datasets

    from whoharry.cli.common import setup

    setup(quiet=True)
    book = cut_book(args.book, args.tokens, args.out)
    seed = [] if args.seed is None else [f"seed={args.seed}"]
    runs = {"target-only": run("target-only", [f"data.target={book}", *seed, *args.set], args.out)}
    if args.anchors is not None:
        runs["hand-written"] = run("hand-written", [f"data.target={book}", f"data.anchors={args.anchors.resolve()}",
                                                     f"eval.probes.target={args.probes.resolve()}", *seed], args.out)
    if args.reference is not None:
        if args.seed is not None:
            parser.error("--seed sets both runs' seed; a --reference run has its own: leave one out")
        if not (args.reference / "eval" / "report.json").is_file():
            parser.error(f"--reference {args.reference}: not a finished run folder")
        from whoharry.config import load_config

        runs["hand-written"] = {"folder": str(args.reference), "wall_seconds": None,
                                "stage_seconds": stage_seconds(args.reference),
                                "config": load_config(ROOT / "configs" / "default.yaml")}
    generated = args.out / "target-only" / "probes" / "probes_test.jsonl"
    result: dict = {"book": str(args.book), "tokens": args.tokens, "runs": {}}
    pairs, per_probe = [], {}
    for name, info in runs.items():
        cfg = info.pop("config")
        folder = Path(info["folder"])
        hand, per_probe[name] = familiarity(cfg, folder, args.probes)
        made, _ = familiarity(cfg, folder, generated)
        pairs += [(made[m], hand[m]) for m in hand]
        manifest = json.loads((folder / "eval" / "manifest.json").read_text())
        unlearned, ratios = report_ratios(folder)
        result["runs"][name] = {**info, "seed": run_seed(folder), "base_parts_read": manifest["inputs"].get(
                                    "base_parts_read"),
                                "general": general_figures(unlearned, ratios),
                                "target_ratio_in_report": ratios.get("target_p_answer", float("nan")),
                                "hand_written_probes": hand, "generated_probes": made,
                                "hand_written_ratio": hand["unlearned"] / hand["base"],
                                "generated_ratio": made["unlearned"] / made["base"],
                                "hand_written_reduction": 1 - hand["unlearned"] / hand["base"]}
    stats = json.loads((args.out / "target-only" / "probes" / "stats.json").read_text())
    result["generated_probes"] = {"base_top10_share": stats["base_top10_share"],
                                  "count": stats["probes_dev"] + stats["probes_test"],
                                  # Spearman's rho: Pearson's r of the average ranks
                                  "spearman_with_hand_written": float(pandas.Series([m for m, _ in pairs]).rank().corr(
                                      pandas.Series([h for _, h in pairs]).rank()))}
    if "hand-written" in result["runs"]:
        ours, theirs = (result["runs"][n]["hand_written_reduction"] for n in ("target-only", "hand-written"))
        result["target_only_share_of_reduction"] = share(ours, theirs)
        mine, other = per_probe["target-only"], per_probe["hand-written"]
        result["share_interval"] = share_interval(mine["base"], mine["unlearned"], other["unlearned"])
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
