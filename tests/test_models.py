"""Resolving model names without the network."""

from __future__ import annotations

import pytest

from whoharry.config import ModelConfig
from whoharry.core import models
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


def _parts_package(root, name: str, content: bytes) -> None:
    """A package that ships a model file in parts and joins them with `assemble()`, checking a hash."""
    import hashlib

    package = root / name
    package.mkdir()
    (package / "__init__.py").write_text(
        "import hashlib, pathlib\n"
        "MODEL_NAME = 'joined.gguf'\n"
        f"EXPECTED_SHA256 = {hashlib.sha256(content).hexdigest()!r}\n"
        f"PARTS = [{content[:3]!r}, {content[3:]!r}]\n"
        "CALLS = []\n"
        "def assemble(output_path=None, overwrite=False):\n"
        "    CALLS.append(output_path)\n"
        "    path = pathlib.Path(output_path)\n"
        "    path.write_bytes(b''.join(PARTS))\n"
        "    if hashlib.sha256(path.read_bytes()).hexdigest() != EXPECTED_SHA256:\n"
        "        raise ValueError('Assembled file sha256 did not match expected value')\n"
        "    return path\n"
    )


def test_an_alias_shipped_in_parts_is_joined_once_into_the_cache(tmp_path, monkeypatch):
    import importlib
    import sys

    from whoharry.core import models

    _parts_package(tmp_path, "fake_parts_pkg", b"GGUFdata")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("WHOHARRY_CACHE", str(tmp_path / "cache"))
    monkeypatch.setitem(models.ALIASES, "fake-270m", ("fake_parts_pkg", None))
    converted = []
    monkeypatch.setattr(models, "gguf_to_folder", lambda gguf: converted.append(gguf) or tmp_path / "folder")
    source = models.resolve(ModelConfig(name="fake-270m"))
    assert source.path == str(tmp_path / "folder") and source.description == "fake-270m (joined.gguf)"
    assert converted[0] == tmp_path / "cache" / "gguf" / "joined.gguf" and converted[0].read_bytes() == b"GGUFdata"
    models.resolve(ModelConfig(name="fake-270m"))
    assert len(importlib.import_module("fake_parts_pkg").CALLS) == 1  # joined and checked once
    sys.modules.pop("fake_parts_pkg")


def test_an_alias_whose_parts_do_not_check_out_is_one_error(tmp_path, monkeypatch):
    import sys

    from whoharry.core import models

    _parts_package(tmp_path, "bad_parts_pkg", b"GGUFdata")
    (tmp_path / "bad_parts_pkg" / "__init__.py").write_text(
        (tmp_path / "bad_parts_pkg" / "__init__.py").read_text().replace("PARTS = [", "PARTS = [b'x', "))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("WHOHARRY_CACHE", str(tmp_path / "cache"))
    monkeypatch.setitem(models.ALIASES, "bad-270m", ("bad_parts_pkg", None))
    with pytest.raises(WhoharryError, match="sha256 did not match.*-part1"):
        models.resolve(ModelConfig(name="bad-270m"))
    sys.modules.pop("bad_parts_pkg")


def test_a_gguf_conversion_is_cached_per_converter_version(tmp_path, monkeypatch, tokenizer, tiny_model_dir):
    """A dequantised GGUF is reused only by the transformers and gguf versions that made it: a conversion
    by a converter since fixed is not read again."""
    from importlib import metadata

    from transformers import AutoModelForCausalLM

    gguf = tmp_path / "tiny.gguf"
    gguf.write_bytes(b"GGUF tiny")
    monkeypatch.setenv("WHOHARRY_CACHE", str(tmp_path / "cache"))
    versions, real = {"transformers": "5.0.0", "gguf": "0.1.0"}, metadata.version
    monkeypatch.setattr(metadata, "version", lambda name: versions.get(name) or real(name))
    conversions = []

    class Converter:  # stands for transformers reading the GGUF file: gives the tiny model
        from_config = staticmethod(AutoModelForCausalLM.from_config)

        @staticmethod
        def from_pretrained(folder, gguf_file, **kwargs):
            conversions.append(dict(versions))
            return AutoModelForCausalLM.from_pretrained(tiny_model_dir, **kwargs)

    class Tokenizers:
        @staticmethod
        def from_pretrained(folder, gguf_file, **kwargs):
            return tokenizer

    monkeypatch.setattr(models, "AutoModelForCausalLM", Converter)
    monkeypatch.setattr(models, "AutoTokenizer", Tokenizers)
    first = models.gguf_to_folder(gguf)
    assert models.gguf_to_folder(gguf) == first and len(conversions) == 1  # cached
    assert first.name.endswith("-transformers-5.0.0-gguf-0.1.0")
    assert models.resolve(ModelConfig(name=str(gguf))).path == str(first)
    folders = {first}
    for package, version in (("gguf", "0.2.0"), ("transformers", "5.1.0")):
        versions[package] = version
        folder = models.gguf_to_folder(gguf)
        assert folder not in folders and (folder / "config.json").is_file(), folder
        folders.add(folder)
    assert len(conversions) == 3 and all((folder / "config.json").is_file() for folder in folders)  # old ones kept
    monkeypatch.setattr(metadata, "version", real)
    assert models.converter_versions() == f"transformers-{real('transformers')}-gguf-{real('gguf')}"
