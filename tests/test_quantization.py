"""The quantization attack: weights rounded exactly as `whoharry export` writes them, the probes scored
again, and a forgetting that sits below the 4-bit grid undone by it."""

from __future__ import annotations

import json

import numpy as np
import torch
from typer.testing import CliRunner

from whoharry.cli import app
from whoharry.config import EvalConfig
from whoharry.core import export
from whoharry.evaluation import probes
from whoharry.evaluation.quantization import round_trip

from .conftest import make_copy_model, write_config

runner = CliRunner()


def test_the_round_trip_is_what_the_exported_file_reads_back_as(tmp_path, tokenizer):
    from transformers import AutoModelForCausalLM

    model = make_copy_model(len(tokenizer))
    folder = tmp_path / "m"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    for gguf_type in ("q8_0", "q4_0"):
        export.export_gguf(folder, tmp_path / f"{gguf_type}.gguf", gguf_type)
        read = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file=f"{gguf_type}.gguf", dtype=torch.float32)
        rounded = round_trip(model, gguf_type)
        for name, parameter in rounded.named_parameters():
            assert torch.equal(parameter, read.get_parameter(name)), (gguf_type, name)
        assert rounded.lm_head.weight is rounded.model.embed_tokens.weight  # still tied
        assert not torch.equal(rounded.model.embed_tokens.weight, model.model.embed_tokens.weight)
    assert torch.equal(model.model.embed_tokens.weight, make_copy_model(len(tokenizer)).model.embed_tokens.weight)


def _below_the_grid(weight: torch.Tensor, seed: int) -> torch.Tensor:
    """A change of a q4_0-rounded weight that the q4_0 round trip takes back: under half a grid step on each
    value, and none on each block's largest value, which sets the block's step."""
    values = weight.detach().numpy().reshape(-1, 32)
    step = np.abs(values).max(axis=1, keepdims=True) / 8
    rng = np.random.default_rng(seed)
    change = step * 0.4 * rng.choice([-1.0, 1.0], size=values.shape)
    change[np.arange(len(values)), np.abs(values).argmax(axis=1)] = 0.0
    return torch.from_numpy(change.reshape(weight.shape).astype(np.float32))


def test_forgetting_below_the_four_bit_grid_comes_back_after_quantization(tokenizer):
    torch.manual_seed(0)
    base = round_trip(make_copy_model(len(tokenizer)), "q4_0")  # weights on the q4_0 grid
    cfg = EvalConfig()
    rows = [{"prompt": "Harry Potter went to Hogwarts and", "answer": " Hogwarts"},
            {"prompt": "Ron Weasley and Harry", "answer": " Harry"}]
    unlearned = round_trip(base, "f32")
    with torch.no_grad():
        for index, parameter in enumerate(unlearned.parameters()):
            if parameter.ndim == 2:
                parameter.add_(_below_the_grid(parameter, index))

    def p(model) -> list[float]:
        return [r["p_answer"] for r in probes.score_probes(model, tokenizer, rows, cfg, "p", greedy=False,
                                                            progress=False)]

    assert p(unlearned) != p(base)  # the change moved the answers
    assert p(round_trip(unlearned, "q4_0")) == p(base)  # and 4-bit rounding takes it back exactly


def test_the_quantization_part_reports_each_type_with_intervals(project, tiny_model_dir):
    config = write_config(project, tiny_model_dir, eval={"parts": ["probes"], "quantization": {"types": ["q8_0",
                                                                                                   "q4_0"]}})
    out = project / "run"
    args = ["--config", str(config), "--out", str(out), "--max-steps", "1", "-q"]
    assert runner.invoke(app, ["run", *args]).exit_code == 0
    result = runner.invoke(app, ["eval", *args, "--parts", "probes,quantization"])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "eval" / "report.json").read_text())
    for model in ("base", "unlearned"):
        summary = report["summary"][model]
        for gguf_type in ("q8_0", "q4_0"):
            for probe_set in ("target", "general"):
                assert 0.0 <= summary[f"quant_{gguf_type}_{probe_set}_p_answer"] <= 1.0
        assert abs(summary["quant_q8_0_target_p_answer"] - summary["target_p_answer"]) < 0.05  # 8 bits: close
    assert "quant_q4_0_target_p_answer" in report["intervals"]["unlearned"]
    assert "after q4_0 quantization" in (out / "eval" / "report.md").read_text()
    bad = runner.invoke(app, ["eval", *args, "--parts", "quantization", "--set", "eval.quantization.types=[q3_k]"])
    assert bad.exit_code == 2 and "error:" in bad.output and "Traceback" not in bad.output
