"""Fine-tuning updates fp32 master weights: the training loop refuses weights in bf16 (updates below their
rounding step would be lost), and the evaluation's relearning fine-tunes an fp32 model whatever the
inference dtype it was loaded in."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaForCausalLM

from whoharry.config import EvalConfig, RelearningEval, TrainConfig
from whoharry.core.train import train
from whoharry.errors import WhoharryError
from whoharry.evaluation import relearning

from .conftest import STORY, tiny_config

ROWS = [{"prompt": "Harry Potter went to", "answer": " Hogwarts"},
        {"prompt": "Harry's friend Ron", "answer": " Weasley"}]


def _model(vocab: int, dtype: torch.dtype) -> LlamaForCausalLM:
    torch.manual_seed(0)
    return LlamaForCausalLM(tiny_config(vocab)).to(dtype)


def test_training_refuses_weights_that_are_not_fp32(tmp_path, tokenizer):
    model = _model(len(tokenizer), torch.bfloat16)
    before = {name: value.clone() for name, value in model.state_dict().items()}
    ids = torch.randint(2, 300, (4, 16), generator=torch.Generator().manual_seed(1), dtype=torch.int32)
    cfg = TrainConfig(epochs=1, learning_rate=1e-3, batch_size=2, precision="fp32")
    with pytest.raises(WhoharryError) as info:
        train(model, ids, ids, cfg, seed=0, stage_dir=tmp_path, run_key="bf16", desc="reinforce", progress=False,
              final=(tmp_path / "final", tokenizer))
    assert str(info.value) == ("reinforce: training needs fp32 weights, this model's are bfloat16 "
                               "(precision sets the compute dtype; load the model in fp32)")
    assert "\n" not in str(info.value)
    assert all(torch.equal(before[name], value) for name, value in model.state_dict().items())
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_relearning_a_bf16_model_regains_what_the_fp32_model_regains(tmp_path, tokenizer):
    """At a small learning rate most updates are below a bf16 weight's rounding step: trained in bf16,
    most weights would never move and the regained familiarity would be a fraction of the fp32 one."""
    cfg = EvalConfig(relearning=RelearningEval(steps=4, eval_every=2, blocks=4, learning_rate=3e-5),
                     block_length=32, precision="fp32")
    regained, moved, fp32 = {}, {}, {}
    for dtype in (torch.float32, torch.bfloat16):
        model = _model(len(tokenizer), dtype)
        before = {name: value.float().clone() for name, value in model.named_parameters()}
        ids = relearning.relearn_blocks(STORY * 6, tokenizer, cfg.block_length, cfg.relearning.blocks)
        curve = relearning.relearn_curve(model, tokenizer, ids, ROWS, cfg, seed=0,
                                         work_dir=tmp_path / str(dtype), desc=str(dtype))
        assert [point["step"] for point in curve] == [0, 2, 4]
        regained[dtype] = sum(curve[-1]["p_answer"]) - sum(curve[0]["p_answer"])
        fp32[dtype] = all(param.dtype == torch.float32 for param in model.parameters())
        changed = sum(int((param != before[name]).sum()) for name, param in model.named_parameters())
        moved[dtype] = changed / sum(param.numel() for param in model.parameters())
    assert regained[torch.float32] > 0
    assert regained[torch.bfloat16] == pytest.approx(regained[torch.float32], rel=0.05), regained
    assert moved[torch.bfloat16] == moved[torch.float32] == 1.0, moved  # every trainable weight moved
    assert fp32[torch.bfloat16]  # the model was fine-tuned, and is left, in fp32


def test_eval_relearning_with_bf16_inference_weights(project, tiny_model_dir):
    """`model.inference_dtype: bf16` loads the evaluated models in bf16; their relearning still runs, on fp32."""
    import json

    from typer.testing import CliRunner

    from whoharry.cli import app

    from .conftest import write_config

    config = write_config(project, tiny_model_dir, eval={"relearning": {"steps": 4, "eval_every": 2, "blocks": 4,
                                                                       "learning_rate": 3e-5}})
    out = project / "run"
    regained = {}
    for dtype in ("fp32", "bf16"):
        args = ["eval", "--config", str(config), "--out", str(out / dtype), "--model", str(tiny_model_dir),
                "--parts", "relearning", "--set", f"model.inference_dtype={dtype}", "-q"]
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 0, result.output
        curve = json.loads((out / dtype / "eval" / "report.json").read_text())["relearning"]["target_p_answer"]
        regained[dtype] = curve["base"][-1] - curve["base"][0]
    assert regained["fp32"] > 0
    assert regained["bf16"] == pytest.approx(regained["fp32"], rel=0.1), regained
