"""Read bench_target.py folders of several seeds together: the pooled share of the reduction, as JSON.

Each finished `bench_target.py --anchors` folder is one seed; the share of the hand-written run's familiarity
reduction that the target-only run reaches is pooled over them and printed as one JSON object.

    python scripts/bench_target_seeds.py --probes data/sherlock/probes_test.jsonl --split-line 20 \\
        runs/target-sherlock runs/target-sherlock-seed1 runs/target-sherlock-seed2

One draw of the comparison is decided by a few probes (docs/OWN_TEXT.md, "Other draws of the same
comparison"); several draws are read together here. Each folder holds the two runs of `bench_target.py
--anchors` (`target-only` and `hand-written`); their base and unlearned models are scored on the hand-written
probes (`--probes`) as `bench_target.py` scores them.

- Per folder: the seed it was made with, each run's reduction (1 - unlearned/base, mean P(answer)), the share
  (target-only reduction / hand-written reduction) and its 95% bootstrap interval over the probes.
- `pooled`: the target-only run's reduction averaged over the seeds, the hand-written run's, and their
  ratio, which is the sum over seeds and probes of (base - target-only) over the same sum of
  (base - hand-written). Its interval resamples the probes with the same indices for every seed and model
  (`bench_target.share_interval`): it holds the probes' sampling error, not the seeds'; the per-folder shares
  show the seeds' spread. A share is nan when the hand-written run forgets nothing or raises familiarity (no
  reduction to take a share of), and so is its interval; otherwise the interval leaves out the resamples in
  which it does (`ratio_interval`), so a share whose hand-written reduction is near 0 has a wide interval
  that may not hold it.
- `--split-line N`: the pooled reductions of probes 1..N and of the rest, for a probe file whose first lines
  ask one kind of fact (the Sherlock test probes: 1-20 the book's own facts, 21-40 the canon).
- `general_fluency`: each run's fluency on general prompts (unlearned / base), per seed and pooled over the
  seeds (`general_fluency`).
- `largest_gaps`: the five probes with the largest mean gap over the seeds between the two unlearned models'
  P(answer), ranked by its size whichever run is above; each gives the base's P(answer) and both means.

Every model is scored with the shipped config's model and evaluation settings (`configs/default.yaml`), as
`bench_target.py` scores runs made without `--set model...` or `--set eval...`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import bench_target

RUNS = ("target-only", "hand-written")
FINISHED = ("eval/report.json", "eval/config.yaml", "unlearn/final")  # what is read of each run


def reduction(base: list[float], unlearned: list[list[float]]) -> float:
    """1 - mean unlearned P(answer) / mean base P(answer), the unlearned models of every seed together; nan
    when the base gives the answers nothing."""
    total = sum(base)
    return 1 - sum(map(sum, unlearned)) / (len(unlearned) * total) if total > 0 else float("nan")


def pool(base: list[float], ours: list[list[float]], theirs: list[list[float]]) -> dict:
    """The pooled reductions, share and interval of per-probe P(answer): `base` [probes], `ours` and
    `theirs` [seeds, probes]."""
    mine, other = reduction(base, ours), reduction(base, theirs)
    return {"target_only_reduction": mine, "hand_written_reduction": other, "share": bench_target.share(mine, other),
            "share_interval": bench_target.share_interval(base, ours, theirs)}


def pool_lines(base: list[float], ours: list[list[float]], theirs: list[list[float]], cut: int) -> dict:
    """`pool` of probes 1..cut and of probes cut+1.. apart, keyed by their line ranges."""
    def rows(runs: list[list[float]], part: slice) -> list[list[float]]:
        return [row[part] for row in runs]

    head, tail = slice(None, cut), slice(cut, None)
    return {f"1-{cut}": pool(base[head], rows(ours, head), rows(theirs, head)),
            f"{cut + 1}-{len(base)}": pool(base[tail], rows(ours, tail), rows(theirs, tail))}


def largest_gaps(probes: list[dict], base: list[float], ours: list[list[float]], theirs: list[list[float]],
                 count: int = 5) -> list[dict]:
    """The `count` probes whose mean unlearned P(answer) over the seeds differs most between the runs."""
    mine = [sum(column) / len(ours) for column in zip(*ours, strict=True)]
    other = [sum(column) / len(theirs) for column in zip(*theirs, strict=True)]
    order = sorted(range(len(base)), key=lambda i: -abs(mine[i] - other[i]))[:count]
    return [{"line": i + 1, "answer": probes[i]["answer"], "base": base[i], "target_only": mine[i],
             "hand_written": other[i]} for i in order]


def general_fluency(runs: list[Path]) -> dict:
    """Fluency on general prompts (`general_fluency_perplexity`) of the same run at several seeds: each seed's
    ratio to the base model, and the ratio pooled over the seeds (every seed's completions together: their
    summed negative log-likelihood under the base model over their summed tokens, exponentiated, over the base
    model's own figure). The base model is the same model at every seed and its completions are greedy, so
    its figure is read once. One seed's figure rests on its prompts' 24-token completions (32 test prompts);
    the pooled figure reads every seed's. Nan where a run's evaluation has no general prompts."""
    def parts(run: Path, model: str) -> list[dict]:
        path = run / "eval" / "parts" / model / "completions.json"
        samples = json.loads(path.read_text()).get("samples", {}) if path.is_file() else {}
        return samples.get("general_completions") or []

    def perplexity(rows: list[dict]) -> float:
        from whoharry.evaluation.completions import pooled_perplexity

        return pooled_perplexity([(row["judge_nll"], row["tokens"]) for row in rows])

    base = perplexity(parts(runs[0], "base"))
    seeds = [perplexity(parts(run, "unlearned")) / base for run in runs]
    pooled = perplexity([row for run in runs for row in parts(run, "unlearned")]) / base
    return {"seeds": [round(value, 4) for value in seeds], "pooled": round(pooled, 4)}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", type=Path, nargs="+", help="finished bench_target.py --anchors folders")
    parser.add_argument("--probes", type=Path, required=True, help="hand-written probes of the book")
    parser.add_argument("--split-line", type=int, default=None,
                        help="also pool probes 1..N and N+1.. apart")
    args = parser.parse_args(argv)
    if len({folder.resolve() for folder in args.folders}) < len(args.folders):
        parser.error("a folder is named twice: each is one seed")
    made_with: dict = {}  # seed -> the folder made with it
    for folder in args.folders:
        missing = [name for name in RUNS if not all((folder / name / part).exists() for part in FINISHED)]
        if missing:
            parser.error(f"{folder}: no finished {' or '.join(missing)} run (bench_target.py --anchors)")
        seeds = {bench_target.run_seed(folder / name) for name in RUNS}
        if len(seeds) > 1:
            parser.error(f"{folder}: its two runs were made with different seeds ({sorted(seeds, key=str)})")
        seed = seeds.pop()
        if seed in made_with:
            parser.error(f"{made_with[seed]} and {folder} were both made with seed {seed}: one folder a seed")
        made_with[seed] = folder

    from whoharry.cli.common import setup
    from whoharry.config import load_config
    from whoharry.errors import WhoharryError
    from whoharry.evaluation.probes import read_probes

    setup(quiet=True)
    try:
        probes = read_probes(args.probes)
    except WhoharryError as error:
        parser.error(str(error))
    if args.split_line is not None and not 0 < args.split_line < len(probes):
        parser.error(f"--split-line {args.split_line}: needs 1 to {len(probes) - 1} for {len(probes)} probes")
    cfg = load_config(bench_target.ROOT / "configs" / "default.yaml")
    base = bench_target.familiarity(cfg, args.folders[0] / RUNS[0], args.probes, which=("base",))[1]["base"]
    unlearned: dict[str, list[list[float]]] = {name: [] for name in RUNS}
    result: dict = {"probes": str(args.probes), "base_familiarity": sum(base) / len(base), "seeds": []}
    for seed, folder in made_with.items():
        for name in RUNS:
            scores = bench_target.familiarity(cfg, folder / name, args.probes, which=("unlearned",))[1]
            unlearned[name].append(scores["unlearned"])
        one = pool(base, [unlearned[RUNS[0]][-1]], [unlearned[RUNS[1]][-1]])
        result["seeds"].append({"folder": str(folder), "seed": seed, **one})
    result["pooled"] = pool(base, unlearned[RUNS[0]], unlearned[RUNS[1]])
    if args.split_line is not None:
        result["pooled_by_lines"] = pool_lines(base, unlearned[RUNS[0]], unlearned[RUNS[1]], args.split_line)
    result["largest_gaps"] = largest_gaps(probes, base, unlearned[RUNS[0]], unlearned[RUNS[1]])
    result["general_fluency"] = {name: general_fluency([folder / name for folder in made_with.values()])
                                 for name in RUNS}
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
