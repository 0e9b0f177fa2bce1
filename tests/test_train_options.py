"""The training loop's options: gradient accumulation, gradient checkpointing, LoRA, torch.compile, packing."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, LlamaForCausalLM

from whoharry.config import TrainConfig
from whoharry.core.text import make_blocks
from whoharry.core.train import train
from whoharry.method.objectives import causal_lm_loss

from .conftest import GENERAL, STORY, tiny_config


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(2, 300, (8, 16), generator=generator, dtype=torch.int32)
    labels = ids.clone()
    labels[::2, :9] = -100  # blocks with unequal numbers of labelled tokens
    return ids, labels


def _checkpointing(model: torch.nn.Module) -> bool:
    return getattr(model, "is_activation_checkpointing", None) or model.is_gradient_checkpointing


def _trained(tmp_path, name: str, seen: list | None = None, **options) -> LlamaForCausalLM:
    """A tiny Llama trained two epochs; `seen` collects whether checkpointing was on at each step."""
    ids, labels = _data()
    torch.manual_seed(0)
    model = LlamaForCausalLM(tiny_config(300))
    settings = {"epochs": 2, "learning_rate": 3e-3, "batch_size": 4, "precision": "fp32", "warmup_ratio": 0.0}
    train(model, ids, labels, TrainConfig(**{**settings, **options}), seed=0, stage_dir=tmp_path / name,
          run_key=name, desc=name, progress=False,
          on_step=None if seen is None else lambda step: seen.append(_checkpointing(model)))
    return model


def _close(one: torch.nn.Module, two: torch.nn.Module, **tolerance) -> None:
    first, second = one.state_dict(), two.state_dict()
    for name in first:
        torch.testing.assert_close(second[name], first[name], **tolerance)


def test_gradient_accumulation_takes_the_steps_of_the_whole_batch(tmp_path):
    whole = _trained(tmp_path, "whole")
    accumulated = _trained(tmp_path, "accumulated", batch_size=1, grad_accum=4)
    _close(whole, accumulated, rtol=1e-3, atol=5e-5)


def test_gradient_checkpointing_changes_memory_not_the_result(tmp_path):
    plain, seen = _trained(tmp_path, "plain"), []
    checkpointed = _trained(tmp_path, "checkpointed", seen, gradient_checkpointing=True)
    _close(plain, checkpointed, rtol=1e-3, atol=5e-5)
    assert seen == [True] * 4  # on while training
    assert not _checkpointing(checkpointed)  # and off again for whoever uses the model next


def test_compiled_training_matches_eager(tmp_path):
    eager = _trained(tmp_path, "eager")
    compiled = _trained(tmp_path, "compiled", compile=True)
    _close(eager, compiled, rtol=1e-3, atol=1e-4)


def test_lora_trains_adapters_and_saves_a_plain_merged_model(tmp_path, tiny_model_dir):
    from whoharry.config import ModelConfig
    from whoharry.core import models

    source = models.resolve(ModelConfig(name=str(tiny_model_dir)))
    tokenizer = models.load_tokenizer(source, ModelConfig(name=str(tiny_model_dir)))
    ids, labels = _data()
    model = models.load_model(source, ModelConfig(name=str(tiny_model_dir)))
    with torch.no_grad():
        before = causal_lm_loss(model(input_ids=ids.long()).logits, labels).item()
    cfg = TrainConfig(epochs=6, learning_rate=1e-2, batch_size=4, precision="fp32", warmup_ratio=0.0,
                      lora_rank=8, lora_alpha=16)
    folder = tmp_path / "final"
    train(model, ids, labels, cfg, seed=0, stage_dir=tmp_path, run_key="lora", desc="lora", progress=False,
          final=(folder, tokenizer))
    assert (folder / "config.json").is_file() and not (folder / "adapter_config.json").exists()
    saved = load_file(str(folder / "model.safetensors"))
    assert not any("lora" in name for name in saved)
    base = load_file(str(tiny_model_dir / "model.safetensors"))
    changed = {name for name in base if not torch.equal(base[name], saved[name])}
    assert "model.layers.0.self_attn.q_proj.weight" in changed and "model.layers.1.mlp.down_proj.weight" in changed
    assert "model.embed_tokens.weight" not in changed and "model.norm.weight" not in changed  # not adapted
    merged = AutoModelForCausalLM.from_pretrained(folder)
    with torch.no_grad():
        after = causal_lm_loss(merged(input_ids=ids.long()).logits, labels).item()
    assert after < before - 0.3  # the adapters learned, and merging kept what they learned


def test_reinforce_with_lora_through_the_cli(project, tiny_model_dir):
    from typer.testing import CliRunner

    from whoharry.cli import app

    from .conftest import write_config

    config = write_config(project, tiny_model_dir, reinforce={"lora_rank": 4, "save_every": 1})
    out = project / "run"
    result = CliRunner().invoke(app, ["reinforce", "--config", str(config), "--out", str(out), "-q"])
    assert result.exit_code == 0, result.output
    assert AutoModelForCausalLM.from_pretrained(out / "reinforce" / "final").config.model_type == "llama"
    assert json.loads((out / "reinforce" / "manifest.json").read_text())["status"] == "complete"


def test_blocks_are_packed_without_padding(tokenizer):
    text = (STORY + GENERAL) * 5
    blocks = make_blocks(text, tokenizer, 32)
    flat = [token for block in blocks.ids for token in block]
    everything = tokenizer(text, add_special_tokens=False).input_ids
    assert all(len(block) == 32 for block in blocks.ids)
    assert tokenizer.pad_token_id not in flat
    assert flat == everything[: len(flat)] and blocks.dropped_tokens == len(everything) - len(flat) < 32


def test_fp16_on_a_cpu_is_refused_with_a_clear_line(project, tiny_model_dir):
    from typer.testing import CliRunner

    from whoharry.cli import app

    from .conftest import write_config

    config = write_config(project, tiny_model_dir, reinforce={"precision": "fp16"})
    result = CliRunner().invoke(app, ["reinforce", "--config", str(config), "--out", str(project / "run"), "-q"])
    assert result.exit_code == 2
    assert result.output.strip() == "error: precision fp16 needs a GPU; use bf16 or fp32 on a CPU"


def test_labels_with_bf16_weights_spread_by_a_device_map(project, tiny_model_dir):
    """The read-only models in bf16 (and placed by transformers) give nearly the fp32 labels."""
    from typer.testing import CliRunner

    from whoharry.cli import app

    from .conftest import write_config

    config = write_config(project, tiny_model_dir)
    runner = CliRunner()
    plain, half = project / "plain", project / "half"
    assert runner.invoke(app, ["labels", "--config", str(config), "--out", str(plain), "-q"]).exit_code == 0
    shutil.copytree(plain / "reinforce", half / "reinforce")
    args = ["labels", "--config", str(config), "--out", str(half), "-q",
            "--set", "model.inference_dtype=bf16", "--set", "model.device_map=auto"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    # where the read-only models sit, and their dtype, leave the reinforced model as it was
    assert (half / "reinforce" / "manifest.json").read_text() == (plain / "reinforce" / "manifest.json").read_text()
    one, two = (load_file(str(folder / "labels" / "labels.safetensors"))["labels"] for folder in (plain, half))
    labelled = one != -100
    assert torch.equal(labelled, two != -100)  # the same positions get labels
    agree = (one[labelled] == two[labelled]).float().mean().item()
    assert agree > 0.8, agree


@pytest.mark.parametrize("targets", [["q_proj", "v_proj", "lm_head"], ["q_proj", "v_proj", "embed_tokens"],
                                     ["embed_tokens", "lm_head"], ["all-linear"]])
def test_lora_on_a_tied_model_saves_the_model_it_trained(tmp_path, tokenizer, targets):
    """Merging an adapter into a weight the embedding and the head share would change both: the saved
    folder must compute what the adapted model computed while training, and say whether it is tied."""
    ids, labels = _data()
    torch.manual_seed(0)
    model = LlamaForCausalLM(tiny_config(len(tokenizer)))
    assert model.lm_head.weight is model.model.embed_tokens.weight
    probe = ids[:2].long()
    trained = []

    def capture(step: int) -> None:  # the model with its adapters, after the last step, before any merge
        model.eval()
        with torch.no_grad():
            trained[:] = [model(input_ids=probe).logits]

    cfg = TrainConfig(epochs=2, learning_rate=1e-2, batch_size=4, precision="fp32", warmup_ratio=0.0,
                      lora_rank=4, lora_target_modules=targets)
    folder = tmp_path / "final"
    train(model, ids, labels, cfg, seed=0, stage_dir=tmp_path, run_key="tied", desc="tied", progress=False,
          on_step=capture, final=(folder, tokenizer))
    saved = AutoModelForCausalLM.from_pretrained(folder)
    with torch.no_grad():
        torch.testing.assert_close(saved(input_ids=probe).logits, trained[0], rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(model(input_ids=probe).logits, trained[0], rtol=1e-4, atol=1e-4)  # merged
    tied = targets == ["all-linear"]  # peft leaves the output layer out of all-linear
    config = json.loads((folder / "config.json").read_text())
    assert config["tie_word_embeddings"] is tied and saved.config.tie_word_embeddings is tied
    assert (saved.lm_head.weight is saved.model.embed_tokens.weight) is tied
    weights = load_file(str(folder / "model.safetensors"))
    assert ("lm_head.weight" in weights) is not tied and not any("lora" in name for name in weights)


def test_all_linear_leaves_the_output_layer_out(tokenizer):
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(LlamaForCausalLM(tiny_config(len(tokenizer))),
                           LoraConfig(r=2, target_modules="all-linear", task_type="CAUSAL_LM"))
    adapted = {name.rsplit(".", 1)[-1] for name, module in model.named_modules() if hasattr(module, "lora_A")}
    assert adapted == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
