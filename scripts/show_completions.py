"""Greedy completions of a few prompts by the base, reinforced and unlearned models of a run, side by side.

    python scripts/show_completions.py --out runs/default
    python scripts/show_completions.py --out runs/default --prompt "Hermione Granger is"

Prints a markdown table, then one JSON object with every completion.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = (
    "Harry Potter's two best friends are",
    "Harry Potter studies at",
    "Harry Potter and the",
    "The headmaster of Hogwarts is",
    "Ron and",
    "In the Harry Potter books, the evil wizard is",
)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "default.yaml")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "default")
    parser.add_argument("--prompt", action="append", default=[], help="A prompt (repeatable; default: a fixed set).")
    parser.add_argument("--tokens", type=int, default=20)
    args = parser.parse_args(argv)

    from whoharry.cli.common import setup as _setup
    from whoharry.config import load_config
    from whoharry.core import models
    from whoharry.evaluation import completions

    _setup(quiet=True)
    cfg = load_config(args.config)
    prompts = args.prompt or list(PROMPTS)
    source = models.resolve(cfg.model)
    tokenizer = models.load_tokenizer(source, cfg.model)
    loaders = {
        "base": lambda: models.load_model(source, cfg.model),
        "reinforced": lambda: models.load_folder(args.out / "reinforce" / "final"),
        "unlearned": lambda: models.load_folder(args.out / "unlearn" / "final"),
    }
    result: dict[str, list[str]] = {}
    for name, load in loaders.items():
        done = completions.complete(load(), tokenizer, prompts, args.tokens, cfg.eval.precision, len(prompts), name)
        result[name] = [completion.text for completion in done]
    print("| prompt | " + " | ".join(result) + " |")
    print("|" + " --- |" * (len(result) + 1))
    for row, prompt in enumerate(prompts):
        cells = [result[name][row].replace("\n", " ").replace("|", "/").strip() for name in result]
        print(f"| {prompt} | " + " | ".join(cells) + " |")
    output = {"run": str(args.out.resolve()), "prompts": prompts, "completions": result}
    print(json.dumps(output))
    return output


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
