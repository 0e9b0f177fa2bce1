"""Resolving model names without the network."""

from __future__ import annotations

import pytest

from whoharry import models
from whoharry.config import ModelConfig
from whoharry.errors import WhoharryError


def test_local_folder_resolves_and_loads(tiny_model_dir):
    source = models.resolve(ModelConfig(name=str(tiny_model_dir)))
    assert source.local and source.path == str(tiny_model_dir.resolve())
    tokenizer = models.load_tokenizer(source, ModelConfig())
    assert tokenizer.is_fast and tokenizer.pad_token_id is not None
    model = models.load_model(source, ModelConfig())
    assert model.config.vocab_size == len(tokenizer)


def test_unknown_name_lists_what_was_tried(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WhoharryError) as info:
        models.resolve(ModelConfig(name="nobody/no-such-model"))
    message = str(info.value)
    assert "not found offline" in message and "local folder" in message and "allow_download" in message


@pytest.mark.parametrize("name", ["missing.gguf", "folder-without-config"])
def test_bad_local_paths(tmp_path, monkeypatch, name):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "folder-without-config").mkdir()
    with pytest.raises(WhoharryError, match="not found|no config.json"):
        models.resolve(ModelConfig(name=name))


def test_autocast_choices():
    import torch

    cpu = torch.device("cpu")
    assert models.autocast_dtype("fp32", cpu) is None
    assert models.autocast_dtype("bf16", cpu) is torch.bfloat16
    assert models.autocast_dtype("auto", cpu) in (None, torch.bfloat16)
