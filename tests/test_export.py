"""`whoharry export`: a model folder written as GGUF in each type, read back through transformers with the
weights the type's quantizer gives and logits within its tolerance; a source GGUF's metadata kept."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from whoharry.cli import app
from whoharry.core import export
from whoharry.errors import WhoharryError

from .conftest import tiny_config

runner = CliRunner()
TEXT = "Harry Potter went to Hogwarts with Ron Weasley, and the train ran past the river and the mill."
# the largest logit difference each type may leave on the tiny model, and its least top-1 agreement
TOLERANCE = {"f32": (1e-4, 1.0), "f16": (5e-3, 1.0), "q8_0": (0.05, 1.0), "q5_0": (0.3, 0.9), "q5_1": (0.3, 0.9),
             "q4_0": (0.6, 0.8), "q4_1": (0.6, 0.8)}


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory, tokenizer) -> Path:
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(tiny_config(len(tokenizer)))
    folder = tmp_path_factory.mktemp("export") / "tiny"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def read_back(path: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)


@pytest.mark.parametrize("gguf_type", list(export.TYPES))
def test_each_type_reads_back_with_its_quantizers_weights_and_close_logits(model_folder, tmp_path, gguf_type):
    from gguf import quants
    from transformers import AutoModelForCausalLM

    path = tmp_path / f"tiny-{gguf_type}.gguf"
    done = export.export_gguf(model_folder, path, gguf_type)
    assert done.route == "built" and path.is_file() and not done.fallback_f16
    original = AutoModelForCausalLM.from_pretrained(model_folder, dtype=torch.float32)
    loaded = read_back(path)
    weight = original.model.layers[0].mlp.up_proj.weight.detach().numpy()
    expected = weight if gguf_type == "f32" else weight.astype(np.float16).astype(np.float32) \
        if gguf_type == "f16" else quants.dequantize(quants.quantize(weight, export.ggml_type(gguf_type)),
                                                      export.ggml_type(gguf_type))
    assert np.array_equal(loaded.model.layers[0].mlp.up_proj.weight.detach().numpy(), expected)
    assert torch.equal(loaded.model.norm.weight, original.model.norm.weight)  # norms stay F32
    check = export.check_logits(model_folder, path, TEXT)
    bound, agreement = TOLERANCE[gguf_type]
    assert check["max_abs_logit_diff"] <= bound and check["top1_agreement"] >= agreement, check
    assert check["mean_kl"] >= 0.0


def test_query_and_key_rows_are_permuted_to_llama_cpp_layout_and_back(model_folder, tmp_path):
    from transformers import AutoModelForCausalLM

    path = tmp_path / "tiny.gguf"
    export.export_gguf(model_folder, path, "f32")
    original = AutoModelForCausalLM.from_pretrained(model_folder, dtype=torch.float32)
    loaded = read_back(path)
    for name in ("q_proj", "k_proj"):
        ours = getattr(original.model.layers[1].self_attn, name).weight
        assert torch.equal(getattr(loaded.model.layers[1].self_attn, name).weight, ours)
    from gguf import GGUFReader

    stored = {t.name: t for t in GGUFReader(path).tensors}
    q = original.model.layers[1].self_attn.q_proj.weight.detach().numpy()
    assert not np.array_equal(np.asarray(stored["blk.1.attn_q.weight"].data).reshape(q.shape), q)  # permuted
    assert "output.weight" not in stored  # the tied head is the token embedding


def test_a_source_gguf_keeps_its_metadata_and_takes_the_new_weights(model_folder, tmp_path):
    from gguf import GGUFReader
    from transformers import AutoModelForCausalLM

    source = tmp_path / "source.gguf"
    export.export_gguf(model_folder, source, "q8_0")
    changed = AutoModelForCausalLM.from_pretrained(model_folder, dtype=torch.float32)
    with torch.no_grad():
        changed.model.layers[0].mlp.down_proj.weight.mul_(-1.0)
    other = tmp_path / "changed"
    changed.save_pretrained(other)
    path = tmp_path / "out.gguf"
    done = export.export_gguf(other, path, "f16", source=source)
    assert done.route == "source"
    fields = GGUFReader(path).fields
    assert fields["general.name"].contents() == "tiny"  # the source's, not this folder's name
    assert fields["tokenizer.ggml.merges"].contents() == GGUFReader(source).fields["tokenizer.ggml.merges"].contents()
    assert fields["general.file_type"].contents() == 1  # MOSTLY_F16, not the source's Q8_0
    loaded = read_back(path)
    expected = changed.model.layers[0].mlp.down_proj.weight.detach().numpy().astype(np.float16).astype(np.float32)
    assert np.array_equal(loaded.model.layers[0].mlp.down_proj.weight.detach().numpy(), expected)


def test_a_source_of_another_model_and_an_architecture_it_cannot_build_are_refused(model_folder, tmp_path,
                                                                                   tokenizer):
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaForCausalLM

    config = tiny_config(len(tokenizer))
    config.num_hidden_layers = 3
    deeper = tmp_path / "deeper"
    LlamaForCausalLM(config).save_pretrained(deeper)
    source = tmp_path / "source.gguf"
    export.export_gguf(model_folder, source, "f16")
    with pytest.raises(WhoharryError, match="is not the folder's model"):
        export.export_gguf(deeper, tmp_path / "x.gguf", "f16", source=source)
    gpt2 = tmp_path / "gpt2"
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=len(tokenizer))).save_pretrained(gpt2)
    with pytest.raises(WhoharryError, match="needs a source GGUF"):
        export.export_gguf(gpt2, tmp_path / "y.gguf", "f16")
    with pytest.raises(WhoharryError, match="unknown type 'q3_k'"):
        export.export_gguf(model_folder, tmp_path / "z.gguf", "q3_k")  # type: ignore[arg-type]
    assert not list(tmp_path.glob("*.gguf.tmp")) and not (tmp_path / "x.gguf").exists()


def test_the_export_command_writes_the_file_and_its_record_and_refuses_bad_input(model_folder, tmp_path):
    out = tmp_path / "model.gguf"
    result = runner.invoke(app, ["export", "--model", str(model_folder), "--out", str(out), "--type", "q4_0"])
    assert result.exit_code == 0, result.output
    record = json.loads((tmp_path / "model.gguf.json").read_text())
    assert record["type"] == "q4_0" and record["route"] == "built" and record["bytes"] == out.stat().st_size
    assert record["check"]["top1_agreement"] >= TOLERANCE["q4_0"][1]
    before = out.read_bytes()
    for args, message in (([], "exists; pass --overwrite"), (["--type", "q2"], "unknown type 'q2'"),
                          (["--out", str(tmp_path / "m.bin")], "written as .gguf"),
                          (["--source", str(tmp_path / "none.gguf")], "no such file")):
        extra = ["--overwrite"] if "--type" in args or "--source" in args else []
        given = ["export", "--model", str(model_folder), "--out", str(out), *extra, *args]
        bad = runner.invoke(app, given)
        assert bad.exit_code == 2 and "error: " in bad.output and message in bad.output, (args, bad.output)
        assert "Traceback" not in bad.output
    assert out.read_bytes() == before  # nothing already written is lost
    missing = runner.invoke(app, ["export", "--run", str(tmp_path / "no-run"), "--out", str(tmp_path / "a.gguf")])
    assert missing.exit_code == 2 and "finish the run first" in missing.output
