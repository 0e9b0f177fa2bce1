"""The Python face: what `from whoharry import ...` gives, run on a tiny model built in the test."""

from __future__ import annotations

import subprocess
import sys

import torch
from safetensors.torch import load_file

import whoharry
from whoharry import Config, WhoharryError, generic_labels, labels, load_anchors, load_config, whp_logits

from .conftest import write_config


def test_the_public_face_names_what_it_exports():
    for name in whoharry.__all__:
        assert getattr(whoharry, name) is not None, name
    assert issubclass(WhoharryError, Exception)


def test_importing_whoharry_does_not_load_torch():
    code = "import sys, whoharry; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() \
        == "False"


def test_the_formula_is_the_papers(tokenizer):
    base = torch.tensor([[1.0, 2.0, 0.0]])
    reinforced = torch.tensor([[1.0, 4.0, 0.5]])
    # 2 - 5 * relu(4 - 2) = -8 and 0 - 5 * 0.5 = -2.5: the token the reinforced model raised loses
    assert torch.equal(whp_logits(base, reinforced, 5.0), torch.tensor([[1.0, -8.0, -2.5]]))
    assert generic_labels(base, reinforced, 5.0).tolist() == [0]


def test_a_stage_runs_through_the_public_face(project, copy_model_dir):
    cfg = load_config(write_config(project, copy_model_dir, reinforce={"learning_rate": 1e-9}))
    assert isinstance(cfg, Config)
    folder = labels(cfg, project / "run", progress=False)  # reinforces first: its folder is missing
    assert (project / "run" / "reinforce" / "manifest.json").is_file()
    tensors = load_file(str(folder / "labels.safetensors"))
    ids, out = tensors["input_ids"], tensors["labels"]
    assert ids.shape == out.shape and ids.dtype == torch.int32
    labelled = out != -100
    assert labelled.any() and (out[labelled] != ids[labelled]).any()  # anchors changed some labels
    assert len(load_anchors(project / "anchors.yaml")) > 0
    # a finished stage is skipped: the labels file is not rewritten
    before = (folder / "labels.safetensors").stat().st_mtime_ns
    labels(cfg, project / "run", progress=False)
    assert (folder / "labels.safetensors").stat().st_mtime_ns == before
