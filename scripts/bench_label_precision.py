"""How many generic labels the models' precision changes, against labels computed in fp32 throughout (the
authors' setting), on the same blocks with the same base and reinforced models; one JSON object last.

    python scripts/bench_label_precision.py --out runs/default              # after `whoharry run`
    python scripts/bench_label_precision.py --out runs/default --blocks 64

Each setting labels the first `--blocks` blocks of the target; a figure is the share of the positions
labelled in fp32 whose label differs in that setting (0 to 1):

- `bf16_autocast`: fp32 weights under bf16 autocast (`labels.precision: bf16`, what `auto` means on a GPU
  and on a CPU with fast bf16);
- `bf16_weights`: the models' weights in bf16 (`model.inference_dtype: bf16`), as a 7B model is read on
  one GPU;
- each also `..._bf16_logits`: the same with the output layer left in bf16, as before the labels stage
  computed it in fp32 (`method.whp.fp32_output_layer`), to show what that part is worth.

The formula and its argmax run in fp32 in every setting. The reinforced model is the run's
`reinforce/final` folder.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "default.yaml")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "default", help="a run folder with reinforce/")
    parser.add_argument("--blocks", type=int, default=48, help="blocks labelled in each setting")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="config overrides, as whoharry's --set")
    args = parser.parse_args(argv)
    if args.blocks < 1:
        parser.error("--blocks must be at least 1")

    import torch

    from whoharry.anchors.dictionary import load_anchors
    from whoharry.cli.common import setup as _setup
    from whoharry.config import load_config
    from whoharry.core import models
    from whoharry.core.text import Blocks, make_blocks, read_text
    from whoharry.method.objectives import IGNORE
    from whoharry.stages import labels

    _setup(quiet=True)
    cfg = load_config(args.config, args.overrides)
    final = args.out / "reinforce" / "final"
    if not final.is_dir():
        sys.stderr.write(f"error: {final} does not exist; run `whoharry run` (or `whoharry reinforce`) first\n")
        raise SystemExit(2)
    source = models.resolve(cfg.model)
    tokenizer = models.load_tokenizer(source, cfg.model)
    every = make_blocks(read_text(cfg.data.target), tokenizer, cfg.data.block_length)
    count = min(args.blocks, len(every.ids))
    blocks = Blocks(every.text, every.ids[:count], every.offsets[:count], every.dropped_tokens, every.bos_token_id)
    anchors = load_anchors(cfg.data.anchors)
    anchors = anchors.without(anchors.composite_keys())

    def label(weights: torch.dtype, precision: str, fp32_layer: bool) -> tuple[torch.Tensor, float]:
        device = models.default_device()
        base = models.load_model(source, cfg.model, inference=True).to(weights).requires_grad_(False)
        reinforced = models.load_folder(final, device, cfg.model).to(weights).requires_grad_(False)
        keep = labels.fp32_output_layer
        if not fp32_layer:
            labels.fp32_output_layer = lambda *_: contextlib.nullcontext()
        began = time.perf_counter()
        try:
            result = labels.compute_labels(base, reinforced, tokenizer, blocks, anchors, alpha=cfg.labels.alpha,
                                           seed=cfg.seed, batch_size=cfg.labels.batch_size, precision=precision,
                                           match_order=cfg.labels.match_order, progress=False)
        finally:
            labels.fp32_output_layer = keep
        return result.labels, time.perf_counter() - began

    reference, seconds = label(torch.float32, "fp32", True)
    labelled = reference != IGNORE
    result: dict = {"model": source.description, "blocks": count, "block_length": cfg.data.block_length,
                    "positions_labelled": int(labelled.sum()), "seconds_fp32": round(seconds, 1)}
    settings = {"bf16_autocast": (torch.float32, "bf16"), "bf16_weights": (torch.bfloat16, "fp32")}
    for name, (weights, precision) in settings.items():
        for fp32_layer, suffix in ((True, ""), (False, "_bf16_logits")):
            other, seconds = label(weights, precision, fp32_layer)
            differ = int(((other != reference) & labelled).sum())
            total = int(labelled.sum())
            result[f"{name}{suffix}"] = round(differ / total, 5) if total else float("nan")
            result[f"seconds_{name}{suffix}"] = round(seconds, 1)
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
