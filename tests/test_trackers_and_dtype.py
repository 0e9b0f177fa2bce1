"""Training stages beside the Hugging Face world: accelerate's trackers next to metrics.jsonl, and
final/ folders written in the dtype asked for."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import LlamaForCausalLM

from whoharry.config import Config, TrainConfig, load_config, train_key
from whoharry.core.text import make_blocks
from whoharry.core.train import train
from whoharry.errors import WhoharryError
from whoharry.stages import reinforce

from .conftest import STORY, tiny_config


def _train(tokenizer, stage_dir, **settings):
    torch.manual_seed(0)
    model = LlamaForCausalLM(tiny_config(len(tokenizer)))
    ids = torch.tensor(make_blocks(STORY * 3, tokenizer, 32).ids, dtype=torch.int32)
    cfg = TrainConfig(epochs=1, batch_size=2, precision="fp32", max_steps=3, validation_share=0.25, **settings)
    result = train(model, ids, ids, cfg, seed=0, stage_dir=stage_dir, run_key="k", desc="test", progress=False,
                   final=(stage_dir / "final", tokenizer))
    return model, result


def test_tensorboard_gets_each_step_beside_metrics_jsonl(tokenizer, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _, result = _train(tokenizer, tmp_path / "reinforce", log_with=["tensorboard"])
    events = list((tmp_path / "reinforce" / "trackers").rglob("events.out.tfevents.*"))
    assert events, "no tensorboard event file"
    scalars = EventAccumulator(str(events[0].parent)).Reload()
    losses = scalars.Scalars("loss")
    logged = [json.loads(line) for line in (tmp_path / "reinforce" / "metrics.jsonl").read_text().splitlines()]
    assert [e.step for e in losses] == [r["step"] for r in logged] == [1, 2, 3]
    assert [round(e.value, 4) for e in losses] == [round(r["loss"], 4) for r in logged]
    assert "val_loss" in scalars.Tags()["scalars"]  # the validation figures go too


def test_a_tracker_that_is_not_installed_is_one_error_before_any_stage(tokenizer, tmp_path, monkeypatch):
    import importlib.util

    from accelerate import tracking

    monkeypatch.setattr(tracking, "is_wandb_available", lambda: False)
    monkeypatch.setattr("accelerate.utils.is_wandb_available", lambda: False)
    with pytest.raises(WhoharryError, match="log_with wandb"):  # the loop's own check, if the config's passed
        _train(tokenizer, tmp_path / "w", log_with=["wandb"])
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(WhoharryError, match=r"unlearn.log_with wandb: not installed; pip install wandb"):
        load_config(None, ["unlearn.log_with=[wandb]"])  # at config time, before any stage runs
    assert load_config(None, ["unlearn.log_with=[tensorboard]"]).unlearn.log_with == ["tensorboard"]


def test_save_dtype_writes_bf16_weights_once_each_and_leaves_the_model_in_fp32(tokenizer, tmp_path):
    model, _ = _train(tokenizer, tmp_path / "bf16", save_dtype="bf16")
    weights = load_file(str(tmp_path / "bf16" / "final" / "model.safetensors"))
    assert {t.dtype for t in weights.values()} == {torch.bfloat16}
    assert "lm_head.weight" not in weights  # tied to the embedding: written once
    config = json.loads((tmp_path / "bf16" / "final" / "config.json").read_text())
    assert config.get("dtype", config.get("torch_dtype")) == "bfloat16"
    assert all(p.dtype == torch.float32 for p in model.parameters())
    reloaded = LlamaForCausalLM.from_pretrained(tmp_path / "bf16" / "final", dtype=torch.float32)
    for name, param in model.state_dict().items():
        assert torch.equal(reloaded.state_dict()[name], param.to(torch.bfloat16).float()), name

    _train(tokenizer, tmp_path / "auto")  # auto on a CPU: fp32, as before the setting
    assert {t.dtype for t in load_file(str(tmp_path / "auto" / "final" / "model.safetensors")).values()} == {
        torch.float32}


def test_trackers_leave_stage_keys_alone_and_save_dtype_enters_them_when_set(tmp_path):
    cfg = Config()
    plain = reinforce.key(cfg)
    cfg.reinforce.log_with = ["tensorboard"]
    assert reinforce.key(cfg) == plain
    cfg.reinforce.save_dtype = "bf16"
    assert reinforce.key(cfg) != plain and train_key(cfg.reinforce)["save_dtype"] == "bf16"
    (tmp_path / "c.yaml").write_text("unlearn:\n  log_with: [tensorboard]\n  save_dtype: bf16\n")
    loaded = load_config(tmp_path / "c.yaml")
    assert loaded.unlearn.log_with == ["tensorboard"] and loaded.unlearn.save_dtype == "bf16"
    with pytest.raises(WhoharryError, match="must be one of"):
        load_config(tmp_path / "c.yaml", ["unlearn.log_with=[neptune]"])


def _finished_run(root):
    final = root / "unlearn" / "final"
    final.mkdir(parents=True)
    (final / "config.json").write_text("{}")
    (final / "README.md").write_text("---\nlibrary_name: transformers\n---\n# card\n")
    (root / "unlearn" / "manifest.json").write_text(json.dumps({"status": "complete", "stage": "unlearn"}))
    return final


def test_push_uploads_the_final_folder_with_its_card_and_never_reaches_the_hub_here(tmp_path, monkeypatch):
    from huggingface_hub import HfApi
    from typer.testing import CliRunner

    from whoharry.cli import app

    calls = []

    class Commit:
        commit_url = "https://huggingface.co/me/forgetful/commit/abc"

    monkeypatch.setenv("HF_TOKEN", "hf_test")  # never sent: the upload calls are stubbed
    monkeypatch.setattr(HfApi, "create_repo", lambda self, repo, **kw: calls.append(("create", repo, kw)))
    monkeypatch.setattr(HfApi, "upload_folder", lambda self, **kw: calls.append(("upload", kw)) or Commit())
    final = _finished_run(tmp_path / "run")
    result = CliRunner().invoke(app, ["push", str(tmp_path / "run"), "--repo", "me/forgetful", "--private"])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == Commit.commit_url
    assert calls[0] == ("create", "me/forgetful", {"private": True, "exist_ok": True, "repo_type": "model"})
    assert calls[1][1]["folder_path"] == final and calls[1][1]["repo_id"] == "me/forgetful"

    def refused(self, **kw):
        raise RuntimeError("401 Client Error: Unauthorized\nmore detail")

    monkeypatch.setattr(HfApi, "upload_folder", refused)
    result = CliRunner().invoke(app, ["push", str(tmp_path / "run"), "--repo", "me/forgetful"])
    assert result.exit_code == 2
    assert "error: push to me/forgetful failed: 401 Client Error: Unauthorized" in result.output
    for args, message in [(["--repo", "not an id"], "give OWNER/NAME")]:
        result = CliRunner().invoke(app, ["push", str(tmp_path / "run"), *args])
        assert result.exit_code == 2 and message in result.output
    (final / "README.md").unlink()
    result = CliRunner().invoke(app, ["push", str(tmp_path / "run"), "--repo", "me/forgetful"])
    assert result.exit_code == 2 and "no model card" in result.output
    result = CliRunner().invoke(app, ["push", str(tmp_path / "nothing"), "--repo", "me/forgetful"])
    assert result.exit_code == 2 and "run folder not found" in result.output
    (tmp_path / "unfinished" / "unlearn").mkdir(parents=True)
    result = CliRunner().invoke(app, ["push", str(tmp_path / "unfinished"), "--repo", "me/forgetful"])
    assert result.exit_code == 2 and "holds no finished unlearned model" in result.output
    (final / "README.md").write_text("# card\n")
    monkeypatch.delenv("HF_TOKEN")
    monkeypatch.setattr("huggingface_hub.get_token", lambda: None)
    result = CliRunner().invoke(app, ["push", str(tmp_path / "run"), "--repo", "me/forgetful"])
    assert result.exit_code == 2 and "no Hugging Face token" in result.output
