"""Config merging: defaults < YAML < --set, with loud failures on unknown keys and bad values."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from whoharry.config import Config, as_overrides, load_config
from whoharry.errors import WhoharryError

ROOT = Path(__file__).resolve().parents[1]


def test_defaults_validate():
    cfg = load_config()
    assert cfg.labels.alpha == 5.0
    assert cfg.model.allow_download is False and cfg.model.trust_remote_code is False


def test_yaml_then_overrides_then_shortcuts(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("labels:\n  alpha: 3\nreinforce:\n  epochs: 4\ndata:\n  target: text/t.txt\n")
    cfg = load_config(path, ["labels.alpha=2.5", "unlearn.max_steps=7"], max_steps=3, seed=11)
    assert cfg.labels.alpha == 2.5
    assert cfg.reinforce.epochs == 4.0
    assert cfg.reinforce.max_steps == 3 and cfg.unlearn.max_steps == 3
    assert cfg.seed == 11
    assert cfg.data.target == (tmp_path / "text" / "t.txt").resolve(), "YAML paths resolve beside the file"


def test_set_paths_resolve_against_the_current_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = load_config(None, ["data.anchors=a.yaml", "eval.related_probes=null"])
    assert cfg.data.anchors == tmp_path / "a.yaml"
    assert cfg.eval.related_probes is None


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("labels.alpah=3", "did you mean 'labels.alpha'"),
        ("lables.alpha=3", "did you mean 'labels'"),
        ("labels.alpha=high", "must be float"),
        ("labels.alpha=-1", "labels.alpha must be >= 0"),
        ("unlearn.learning_rate=0", "unlearn.learning_rate must be > 0"),
        ("reinforce.batch_size=2.5", "must be int"),
        ("labels=3", "is a section"),
        ("reinforce.precision=fp8", "precision must be one of"),
        ("noequals", "expects key=value"),
    ],
)
def test_bad_overrides_fail_with_one_clear_message(override, message):
    with pytest.raises(WhoharryError, match=message):
        load_config(None, [override])


def test_yaml_syntax_error_names_line_and_column(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("labels:\n  alpha: [1, 2\n")
    with pytest.raises(WhoharryError, match=r"line \d+, column \d+"):
        load_config(path)


def test_every_shipped_config_loads():
    shipped = sorted((ROOT / "configs").glob("*.yaml"))
    assert shipped, "configs/ should ship at least the default"
    for path in shipped:
        cfg = load_config(path)
        assert isinstance(cfg, Config)
        assert cfg.data.target.is_file(), f"{path}: {cfg.data.target} is missing"
        assert cfg.data.anchors.is_file(), f"{path}: {cfg.data.anchors} is missing"


def test_every_shipped_sweep_trial_loads():
    for path in sorted((ROOT / "configs" / "sweeps").glob("*.yaml")):
        trials = yaml.safe_load(path.read_text(encoding="utf-8"))
        assert trials, path
        for name, settings in trials.items():
            cfg = load_config(ROOT / "configs" / "default.yaml", as_overrides(settings or {}))
            assert cfg.model.name, (path, name)


def test_retain_takes_one_path_or_a_list(tmp_path):
    (tmp_path / "c.yaml").write_text("data:\n  retain: [a.txt, sub/b.txt]\n")
    cfg = load_config(tmp_path / "c.yaml")
    assert cfg.data.retain == [tmp_path / "a.txt", tmp_path / "sub" / "b.txt"]
    assert load_config(None, ["data.retain=one.txt"]).data.retain == [Path.cwd() / "one.txt"]
    assert load_config(None, ["data.retain=null"]).data.retain == []
    with pytest.raises(WhoharryError, match=r"data.retain\[1\]"):
        load_config(None, ["data.retain=[a.txt, 3]"])


def test_exponent_without_a_dot_is_a_number(tmp_path):
    (tmp_path / "c.yaml").write_text("unlearn:\n  learning_rate: 3e-5\n")
    assert load_config(tmp_path / "c.yaml").unlearn.learning_rate == 3e-5
    assert load_config(None, ["labels.alpha=1e1"]).labels.alpha == 10.0
    with pytest.raises(WhoharryError, match="labels.alpha' must be float"):
        load_config(None, ["labels.alpha=five"])


def test_the_paper_config_with_the_paper_scripts_settings():
    """configs/llama2-7b.yaml with what scripts/paper_run.sh sets: one step sees 16 blocks of 512."""
    script = (ROOT / "scripts" / "paper_run.sh").read_text(encoding="utf-8")
    keys = set(re.findall(r'--set "([a-z_.]+)=', script))
    assert {"data.target", "reinforce.grad_accum", "unlearn.grad_accum", "reinforce.lora_rank"} <= keys
    cfg = load_config(ROOT / "configs" / "llama2-7b.yaml", [
        "data.target=README.md", "reinforce.grad_accum=4", "unlearn.grad_accum=4", "reinforce.lora_rank=64",
        "unlearn.lora_rank=64", "reinforce.learning_rate=1e-4", "unlearn.learning_rate=3e-5"])
    assert cfg.model.name == "meta-llama/Llama-2-7b-chat-hf" and cfg.data.block_length == 512
    assert cfg.labels.alpha == 5.0 and cfg.data.retain == []
    assert cfg.unlearn.batch_size * cfg.unlearn.grad_accum == 16 and cfg.unlearn.max_steps == 512
    assert cfg.reinforce.lora_rank == 64 and cfg.model.inference_dtype == "bf16"


def test_the_accelerate_configs_name_their_engines():
    engines = {path.stem: yaml.safe_load(path.read_text(encoding="utf-8"))
               for path in (ROOT / "configs" / "accelerate").glob("*.yaml")}
    assert engines["ddp"]["distributed_type"] == "MULTI_GPU"
    assert engines["fsdp"]["distributed_type"] == "FSDP" and engines["fsdp"]["fsdp_config"]["fsdp_version"] == 2
    assert engines["zero3"]["distributed_type"] == "DEEPSPEED"
    assert engines["zero3"]["deepspeed_config"]["zero_stage"] == 3


def test_training_options_are_checked():
    with pytest.raises(WhoharryError, match="unlearn.lora_rank must be >= 0"):
        load_config(None, ["unlearn.lora_rank=-1"])
    with pytest.raises(WhoharryError, match="model.inference_dtype must be one of fp32, bf16, fp16"):
        load_config(None, ["model.inference_dtype=int8"])
    assert load_config(None, ["reinforce.gradient_checkpointing=true"]).reinforce.gradient_checkpointing
