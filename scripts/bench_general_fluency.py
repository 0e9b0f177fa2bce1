"""Fluency on general prompts of several unlearned models, each beside the base model, as one JSON object.

    python scripts/bench_general_fluency.py --prompts data/general/completions_dev_wide.jsonl \\
        runs/target-sherlock/target-only/unlearn/final runs/trial/unlearn/final

The figure is `general_fluency_perplexity` of `whoharry eval` (README, "Figures"): each model writes greedy
completions of the prompts (`eval.completions.tokens` tokens) and the base model scores them; the pooled
perplexity of a model's completions is divided by that of the base model's own. It is computed here with the
evaluation's own functions (`whoharry.evaluation.completions`) and the shipped config's model and evaluation
settings (`configs/default.yaml`), so that many models are read on a long prompt file in one call without a
run folder each: on the 32 shipped development prompts one model's figure moves by several hundredths with
the seed (docs/OWN_TEXT.md, "Fluency on general prompts").

`--toward-base 0.25,0.5` also scores each model with its weights moved toward the base model's,
`base + t * (model - base)` at each t (t = 1 is the model; the weight-space interpolation of WiSE-FT,
Wortsman et al. 2022, "Robust fine-tuning of zero-shot models", section 2, which `forget.wise_ft` applies to a
run), keyed `FOLDER@t`: a figure that rests on enough prompts moves smoothly with t.

Per model: `ratio` (its perplexity / the base's) with its 95% bootstrap interval over the prompts (paired:
both models' completions of a resampled prompt go together, `whoharry.evaluation.intervals.ratio_interval`),
and `perplexity`. `base_perplexity` is the base model's. A model folder without a model (no `config.json`)
is one `error:` line and exit code 2 before any model is scored; one whose weights cannot be loaded, the
same when its turn comes (nothing is printed before the end).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


FIGURE = "general_fluency_perplexity"


def pooled(scored: list[tuple[float, int]]):
    """(nll, tokens) pairs as the per-prompt `Parts` of the figure, read by its own resampling recipe from
    records shaped as the evaluation writes them (`samples["general_completions"]`)."""
    from whoharry.evaluation.intervals import parts

    return parts({"general_completions": [{"judge_nll": nll, "tokens": n} for nll, n in scored]}, FIGURE)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", type=Path, help="model folders (a stage's final/)")
    parser.add_argument("--prompts", type=Path, default=ROOT / "data" / "general" / "completions_dev_wide.jsonl",
                        help="completion prompts, one JSON object a line with a `prompt` (default: the 239 wide dev "
                             "prompts)")
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "default.yaml",
                        help="the config whose model is the base and whose eval settings are used")
    parser.add_argument("--toward-base", default="", metavar="T,T",
                        help="also score each model moved toward the base: base + t * (model - base), t in [0, 1]")
    args = parser.parse_args(argv)
    try:
        steps = [float(value) for value in args.toward_base.split(",") if value.strip()]
    except ValueError:
        steps = [math.nan]
    if not all(0 <= t <= 1 for t in steps):  # nan too
        print(f"error: --toward-base {args.toward_base}: numbers in [0, 1], comma-separated", file=sys.stderr)
        raise SystemExit(2)

    from whoharry.cli.common import setup as _setup
    from whoharry.config import load_config
    from whoharry.core import models
    from whoharry.errors import WhoharryError
    from whoharry.evaluation import completions
    from whoharry.evaluation.intervals import ratio_interval
    from whoharry.method.wise_ft import interpolate

    _setup(quiet=True)
    try:
        missing = [str(folder) for folder in args.models if not (folder / "config.json").is_file()]
        if missing:
            raise WhoharryError(f"no model in {', '.join(missing)}: name a stage's final/ folder")
        cfg = load_config(args.config, [])
        prompts = [row["prompt"] for row in completions.read_completion_prompts(args.prompts)]
        source = models.resolve(cfg.model)
        tokenizer = models.load_tokenizer(source, cfg.model)
        base = models.load_model(source, cfg.model, inference=True)
    except WhoharryError as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    ev = cfg.eval

    def scored(model) -> list[tuple[float, int]]:
        done = completions.complete(model, tokenizer, prompts, ev.completions.tokens, ev.precision, ev.batch_size,
                                    progress=False)
        return completions.judge_nll(base, tokenizer, done, ev.precision, ev.batch_size)

    reference = pooled(scored(base))
    result: dict = {"prompts": str(args.prompts), "count": len(prompts),
                    "base_perplexity": round(float(reference.value()), 4), "models": {}}
    base_weights = {name: tensor.clone() for name, tensor in base.state_dict().items()}
    for folder in args.models:
        try:
            model = models.load_folder(folder, cfg=cfg.model)
        except (OSError, ValueError, RuntimeError) as error:  # weights missing, corrupt or of another shape
            print(f"error: cannot load the model in {folder}: {str(error).splitlines()[0]}", file=sys.stderr)
            raise SystemExit(2) from None
        weights = {name: tensor.clone() for name, tensor in model.state_dict().items()}
        for t in [None, *steps]:
            if t is not None:
                model.load_state_dict({name: interpolate(base_weights[name], tensor, t)
                                       for name, tensor in weights.items()})
            figure = pooled(scored(model))
            ratio = float(figure.value()) / float(reference.value())
            result["models"][str(folder) if t is None else f"{folder}@{t:g}"] = {
                "perplexity": round(float(figure.value()), 4), "ratio": round(ratio, 4),
                "ratio_interval": [round(value, 4) for value in ratio_interval(figure, reference)],
            }
    return result


if __name__ == "__main__":
    print(json.dumps(main(), indent=2))
