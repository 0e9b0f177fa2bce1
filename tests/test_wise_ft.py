"""`forget.wise_ft`: the unlearned model mixed with the base in weight space after training (WiSE-FT)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from whoharry.cli import app
from whoharry.method.wise_ft import interpolate, mix_state

from .conftest import write_config

runner = CliRunner()


def test_interpolate_runs_from_the_base_to_the_trained_weights_in_the_trained_dtype():
    base = torch.tensor([[1.0, -2.0], [0.5, 4.0]])
    trained = torch.tensor([[3.0, 2.0], [0.5, 0.0]], dtype=torch.bfloat16)
    assert torch.equal(interpolate(base, trained, 1.0), trained)
    assert torch.equal(interpolate(base, trained, 0.0), base.to(torch.bfloat16))
    half = interpolate(base, trained, 0.5)
    assert half.dtype == torch.bfloat16 and half.tolist() == [[2.0, 0.0], [0.5, 2.0]]
    assert torch.allclose(interpolate(base, trained.float(), 0.75), base + 0.75 * (trained.float() - base))
    for alpha in (-0.1, 1.5, math.nan):
        with pytest.raises(ValueError, match="mixing coefficient"):
            interpolate(base, trained, alpha)
    with pytest.raises(ValueError, match="cannot be mixed"):
        interpolate(base, trained[:1], 0.5)


def test_mix_state_mixes_tied_weights_once_and_keeps_them_tied():
    embed = torch.tensor([[0.0, 2.0], [4.0, -4.0]])
    base = {"embed.weight": embed, "head.weight": embed, "norm.weight": torch.ones(2)}
    trained_embed = torch.tensor([[2.0, 2.0], [0.0, 0.0]])
    trained = {"embed.weight": trained_embed, "head.weight": trained_embed, "norm.weight": torch.full((2,), 3.0),
               "position_ids": torch.arange(2)}
    mixed = mix_state(base, trained, 0.5)
    assert mixed["embed.weight"].tolist() == [[1.0, 2.0], [2.0, -2.0]]  # mixed once, not twice in place
    assert mixed["head.weight"] is mixed["embed.weight"] and mixed["embed.weight"] is embed  # no second copy
    assert mixed["norm.weight"].tolist() == [2.0, 2.0] and mixed["position_ids"] is trained["position_ids"]
    with pytest.raises(ValueError, match="no counterpart"):
        mix_state({"embed.weight": torch.zeros(2, 2)}, {"embed.weight": torch.zeros(3, 2)}, 0.5)
    with pytest.raises(ValueError, match="no counterpart"):
        mix_state({}, {"lm_head.weight": torch.zeros(2)}, 0.5)
    with pytest.raises(ValueError, match="in fp32"):
        mix_state({"w": torch.zeros(2, dtype=torch.bfloat16)}, {"w": torch.ones(2)}, 0.5)


def _weights(folder) -> dict[str, torch.Tensor]:
    return {name: t for path in sorted(folder.glob("*.safetensors")) for name, t in load_file(path).items()}


def test_the_unlearned_model_is_the_mix_of_the_trained_one_and_the_base(project, tiny_model_dir):
    """The same unlearning with forget.wise_ft 0.5 ends halfway between the base and the weights it ends with
    at 1, mixed in fp32 and rounded once when written in bf16; only the unlearn stage is made again, its key
    and summary name the coefficient, and the model card says so."""
    config = write_config(project, tiny_model_dir, unlearn={"epochs": 2, "learning_rate": 3e-3, "batch_size": 2,
                                                            "precision": "fp32"})
    runs = {}
    for alpha in ("1", "0.5", "0.3"):
        out = project / f"run-{alpha}"
        result = runner.invoke(app, ["unlearn", "--config", str(config), "--out", str(out), "-q",
                                     "--set", f"forget.wise_ft={alpha}",
                                     "--set", f"unlearn.save_dtype={'bf16' if alpha == '0.3' else 'fp32'}"])
        assert result.exit_code == 0, result.output
        runs[alpha] = {stage: json.loads((out / stage / "manifest.json").read_text())
                       for stage in ("labels", "unlearn")}
    assert runs["1"]["labels"]["fingerprint"] == runs["0.5"]["labels"]["fingerprint"]
    assert runs["1"]["unlearn"]["fingerprint"] != runs["0.5"]["unlearn"]["fingerprint"]
    assert "wise_ft" not in runs["1"]["unlearn"]["summary"] and runs["0.5"]["unlearn"]["summary"]["wise_ft"] == 0.5
    base, trained = _weights(tiny_model_dir), _weights(project / "run-1" / "unlearn" / "final")
    mixed = _weights(project / "run-0.5" / "unlearn" / "final")
    assert mixed.keys() == trained.keys()
    moved = [name for name in trained if not torch.equal(trained[name], base[name])]
    assert moved  # training changed the weights, so the mix is not trivially the base or the trained model
    for name, tensor in mixed.items():
        assert torch.allclose(tensor, (base[name] + trained[name]) / 2, atol=1e-6), name
    rounded = _weights(project / "run-0.3" / "unlearn" / "final")
    for name, tensor in rounded.items():  # from the fp32 weights, not from trained weights rounded first
        assert tensor.dtype == torch.bfloat16 and torch.equal(tensor, torch.lerp(base[name], trained[name], 0.3)
                                                              .to(torch.bfloat16)), name
    card = (project / "run-0.5" / "unlearn" / "final" / "README.md").read_text()
    assert "mixed with the base, base + 0.5 × (trained − base) (WiSE-FT)" in card


def test_a_run_stopped_while_mixing_resumes_its_training_under_another_coefficient(project, tiny_model_dir,
                                                                                   monkeypatch):
    """The coefficient changes what final/ holds, not the training: a run stopped after its last step, while
    loading the base to mix with, and started again with another coefficient resumes from its last
    checkpoint instead of training again."""
    from whoharry.stages import unlearn

    config = write_config(project, tiny_model_dir, unlearn={"epochs": 2, "learning_rate": 3e-3, "batch_size": 2,
                                                            "precision": "fp32", "save_every": 1})
    out = project / "run"
    args = ["unlearn", "--config", str(config), "--out", str(out), "-q"]

    def stopped(*_):
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(unlearn, "base_weights", stopped)
        assert runner.invoke(app, [*args, "--set", "forget.wise_ft=0.5"]).exit_code == 130
    assert not (out / "unlearn" / "manifest.json").exists()
    result = runner.invoke(app, [*args, "--set", "forget.wise_ft=1"])
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "unlearn" / "manifest.json").read_text())["summary"]
    assert summary["resumed_from"] == summary["steps"] - 1 > 0  # the last checkpoint: the step before the last
    trained, base = _weights(out / "unlearn" / "final"), _weights(tiny_model_dir)
    result = runner.invoke(app, [*args, "--set", "forget.wise_ft=0.5"])  # trained again (no checkpoints left)
    assert result.exit_code == 0, result.output
    mixed = _weights(out / "unlearn" / "final")
    assert all(torch.allclose(mixed[name], (base[name] + trained[name]) / 2, atol=1e-6) for name in trained)


@pytest.mark.parametrize("value", ["0", "1.5", "nan"])
def test_a_mixing_coefficient_outside_0_to_1_is_one_error_line(project, tiny_model_dir, value):
    config = write_config(project, tiny_model_dir)
    out = project / "run"
    result = runner.invoke(app, ["unlearn", "--config", str(config), "--out", str(out), "--set",
                                 f"forget.wise_ft={value}"])
    assert result.exit_code == 2, result.output
    assert result.output.count("error:") == 1 and "wise_ft" in result.output and "Traceback" not in result.output
    assert not out.exists()
