"""Every stage on a GPU with a randomly initialised ~1B Llama: tokens/s, model FLOPs utilisation and peak
memory per stage, one JSON object last. Nothing is downloaded: the tokenizer is trained here on the
repository's texts, and the model is built from a config.

    python scripts/gpu_check.py                      # ~1.1B parameters, 512-token blocks, bf16
    python scripts/gpu_check.py --steps 40 --layers 16

MFU counts 6 N + 12 L d T FLOPs a trained token (N parameters, L layers, width d, block T; the
attention term as in the PaLM paper) and 2 N + 4 L d T a token read by one forward pass, against the
GPU's dense bf16 peak (989 TFLOP/s for an H100 or H200 SXM, 756 for an H100 PCIe).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PEAK_BF16 = {"H100 PCIe": 756e12, "H100": 989e12, "H200": 989e12, "H800": 989e12, "A100": 312e12}


def peak_flops(name: str) -> float | None:
    for key, value in PEAK_BF16.items():  # the more specific names first
        if key in name:
            return value
    return None


def build_model(folder: Path, layers: int, width: int, vocab: int) -> int:
    """A random Llama (SmolLM2/Llama-2 proportions) and a BPE tokenizer trained on the repository's texts;
    returns the parameter count."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    texts = [path.read_text(encoding="utf-8") for path in sorted((ROOT / "data").rglob("*.txt"))]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(texts, trainers.BpeTrainer(
        vocab_size=vocab, special_tokens=["<s>", "</s>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<s>", eos_token="</s>", pad_token="</s>")
    config = LlamaConfig(
        vocab_size=vocab, hidden_size=width, intermediate_size=int(width * 8 / 3 / 64 + 1) * 64,
        num_hidden_layers=layers, num_attention_heads=width // 64, num_key_value_heads=width // 64,
        max_position_embeddings=2048, tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return sum(p.numel() for p in model.parameters())


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=18)
    parser.add_argument("--width", type=int, default=2048)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--block", type=int, default=512)
    parser.add_argument("--batch", type=int, default=8, help="blocks per training step and per labels batch")
    parser.add_argument("--steps", type=int, default=30, help="optimizer steps of each training stage")
    parser.add_argument("--work", type=Path, default=None, help="folder for the model and the run (default: temporary)")
    parser.add_argument("--repeat", type=int, default=8, help="copies of the example target text to label")
    parser.add_argument("--cpu", action="store_true", help="run on the CPU (a smoke test of this script; no MFU)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="extra config overrides, e.g. unlearn.gradient_checkpointing=true")
    args = parser.parse_args(argv)

    import torch

    from whoharry.cli.common import setup as _setup
    from whoharry.config import load_config
    from whoharry.stages import labels, reinforce, unlearn

    gpu = torch.cuda.is_available() and not args.cpu
    if not gpu and not args.cpu:
        raise SystemExit("gpu_check needs a GPU (torch.cuda.is_available() is False); --cpu runs it as a smoke test")
    _setup(quiet=True)
    work = args.work or Path(tempfile.mkdtemp(prefix="whoharry-gpu-check-"))
    model_dir, out = work / "model", work / "run"
    began = time.perf_counter()
    params = build_model(model_dir, args.layers, args.width, args.vocab)
    target = work / "target.txt"  # the example target, repeated so the labels stage has a few hundred blocks
    target.write_text((ROOT / "data" / "harry_potter" / "target.txt").read_text(encoding="utf-8") * args.repeat,
                      encoding="utf-8")
    precision = "bf16" if gpu else "fp32"
    training = {"batch_size": args.batch, "max_steps": args.steps, "epochs": 100, "precision": precision,
                "save_every": 0, "learning_rate": 1e-5}
    overrides = [
        f"model.name={model_dir}", f"data.target={target}", f"data.block_length={args.block}", "data.retain=null",
        f"model.inference_dtype={precision}", f"labels.batch_size={args.batch}", f"labels.precision={precision}",
        *[f"{stage}.{key}={value}" for stage in ("reinforce", "unlearn") for key, value in training.items()],
        *args.overrides,
    ]
    cfg = load_config(ROOT / "configs" / "default.yaml", overrides)
    device = torch.cuda.get_device_name() if gpu else "cpu"
    peak = peak_flops(device)
    layers, width, block = args.layers, args.width, args.block
    train_flops = 6 * params + 12 * layers * width * block
    forward_flops = 2 * params + 4 * layers * width * block
    result: dict = {"device": device, "parameters": params, "block_length": block, "batch_size": args.batch,
                    "setup_seconds": round(time.perf_counter() - began, 1), "stages": {}}
    for name, stage in (("reinforce", reinforce), ("labels", labels), ("unlearn", unlearn)):
        if gpu:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        stage.run(cfg, out, progress=False)
        if gpu:
            torch.cuda.synchronize()
        summary = json.loads((out / name / "manifest.json").read_text())["summary"]
        if name == "labels":  # the labelling loop's own clock, without loading the models
            last = (out / name / "metrics.jsonl").read_text(encoding="utf-8").splitlines()[-1]
            seconds, tokens = json.loads(last)["seconds"], summary["tokens"]
            flops = 2 * forward_flops * tokens  # two models read every token
        else:
            seconds, tokens = summary["train_seconds"], summary["tokens"]
            flops = train_flops * tokens
        rate = tokens / seconds
        result["stages"][name] = {
            "tokens": tokens,
            "seconds": round(seconds, 2),
            "tokens_per_second": round(rate, 1),
            "tflops_per_second": round(flops / seconds / 1e12, 1),
            "mfu": round(flops / seconds / peak, 3) if peak else None,
            "peak_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if gpu else None,
        }
    result["seconds"] = round(time.perf_counter() - began, 1)
    result["mfu_target"] = ">= 0.40 for the training stages"
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
