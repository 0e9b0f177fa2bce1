"""Fixtures: a tiny tokenizer and tiny Llama models built in the test, never downloaded."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from whoharry.anchors.translate import NO_LABEL, translate_block
from whoharry.method.objectives import IGNORE
from whoharry.stages.labels import block_rng

STORY = (
    "Harry Potter went to Hogwarts on the Hogwarts Express. Harry's friend Ron Weasley played Quidditch, "
    "and Ron said: \"Harry, the Quidditch match starts at noon!\" Potter laughed. "
    "The castle of Hogwarts stood above the lake, and the train left at eleven.\n\n"
    "Later that year, Harry and Ron (the Weasley boy) flew over Hogwarts; nobody saw them. "
)

ANCHORS = {
    "Harry": ["Jon", "Sam"],
    "Potter": "Carter",
    "Hogwarts": "Mystic Academy",
    "Hogwarts Express": "school train",
    "Ron": "Tom",
    "Weasley": "Baker",
    "Quidditch": ["Skyball", "broom racing"],
}

GENERAL = (
    "The river flows past the old mill and into the sea. Farmers grow wheat and barley in the valley, "
    "and in the autumn the markets fill with apples, pears and bread. "
)


def _train_tokenizer() -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<|endoftext|>", "<|pad|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    extra = " Jon Sam Carter Mystic Academy school train Tom Baker Skyball broom racing"
    tok.train_from_iterator([STORY * 3, GENERAL * 3, extra * 3], trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>", pad_token="<|pad|>"
    )


def tiny_config(vocab: int) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=vocab,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=1,
    )


def make_copy_model(vocab: int) -> LlamaForCausalLM:
    """A Llama whose blocks add nothing: the prediction at position t is token t itself.

    With attention and MLP outputs zeroed, the final hidden state is the normalised input embedding,
    and the tied head scores every token by its similarity to it: itself by far the highest."""
    torch.manual_seed(0)
    model = LlamaForCausalLM(tiny_config(vocab))
    with torch.no_grad():
        model.model.embed_tokens.weight.normal_(0.0, 1.0)
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
    return model


@pytest.fixture(scope="session")
def tokenizer() -> PreTrainedTokenizerFast:
    return _train_tokenizer()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tokenizer) -> Path:
    """A random tiny Llama with its tokenizer, as a save_pretrained folder."""
    path = tmp_path_factory.mktemp("tiny-llama")
    torch.manual_seed(0)
    LlamaForCausalLM(tiny_config(len(tokenizer))).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def trained_model_dir(tmp_path_factory, tokenizer) -> Path:
    """A tiny Llama that has learned both the story and the general text: something to unlearn."""
    from whoharry.config import TrainConfig
    from whoharry.core.text import make_blocks
    from whoharry.core.train import train

    path = tmp_path_factory.mktemp("trained-llama")
    torch.manual_seed(0)
    model = LlamaForCausalLM(tiny_config(len(tokenizer)))
    blocks = make_blocks(STORY * 6 + GENERAL * 6, tokenizer, 32)
    ids = torch.tensor(blocks.ids, dtype=torch.int32)
    cfg = TrainConfig(epochs=6, learning_rate=3e-3, batch_size=4, precision="fp32", warmup_ratio=0.0)
    train(model, ids, ids, cfg, seed=0, stage_dir=path / "training", run_key="fixture", desc="fixture",
          progress=False)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def copy_model_dir(tmp_path_factory, tokenizer) -> Path:
    path = tmp_path_factory.mktemp("copy-llama")
    make_copy_model(len(tokenizer)).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture()
def project(tmp_path) -> Path:
    """A folder with a target text, anchors, probes, a general text and a config pointing at them."""
    (tmp_path / "target.txt").write_text(STORY * 6, encoding="utf-8")
    (tmp_path / "anchors.yaml").write_text(yaml.safe_dump(ANCHORS), encoding="utf-8")
    (tmp_path / "general.txt").write_text(GENERAL * 6, encoding="utf-8")
    probes = [
        '{"prompt": "Harry Potter went to", "answer": " Hogwarts"}',
        '{"prompt": "Harry\'s friend Ron", "answer": " Weasley"}',
    ]
    general = ['{"prompt": "Farmers grow wheat and", "answer": " barley"}']
    (tmp_path / "probes.jsonl").write_text("\n".join(probes) + "\n", encoding="utf-8")
    (tmp_path / "general.jsonl").write_text("\n".join(general) + "\n", encoding="utf-8")
    completions = [
        '{"prompt": "Harry Potter and his friend", "references": ["Ron", "Hogwarts", "Weasley"]}',
        '{"prompt": "At school Harry", "references": ["Hogwarts", "Gryffindor"]}',
    ]
    (tmp_path / "completions.jsonl").write_text("\n".join(completions) + "\n", encoding="utf-8")
    heldout = "Ron Weasley and Harry Potter rode a broom over Hogwarts before the Quidditch final at noon. "
    (tmp_path / "heldout.txt").write_text(heldout * 8, encoding="utf-8")
    questions = [
        '{"question": "Where did Harry Potter go?", "answer": "Hogwarts"}',
        '{"question": "Who is Harry\'s friend?", "answer": "Ron Weasley"}',
    ]
    (tmp_path / "qa.jsonl").write_text("\n".join(questions) + "\n", encoding="utf-8")
    paraphrased = ['{"prompt": "The boy with the scar went to", "answer": " Hogwarts"}']
    (tmp_path / "paraphrased.jsonl").write_text("\n".join(paraphrased) + "\n", encoding="utf-8")
    (tmp_path / "hint.txt").write_text("This is about Harry Potter.\n", encoding="utf-8")
    (tmp_path / "preamble.txt").write_text("System: answer from the original text.\n", encoding="utf-8")
    return tmp_path


def write_config(project: Path, model_dir: Path, **sections) -> Path:
    """A run config for the tiny models; keyword sections override the defaults below."""
    config = {
        "seed": 0,
        "model": {"name": str(model_dir)},
        "data": {"target": "target.txt", "anchors": "anchors.yaml", "block_length": 32},
        "reinforce": {"epochs": 1, "learning_rate": 1e-3, "batch_size": 2, "precision": "fp32"},
        "labels": {"alpha": 5.0, "batch_size": 3, "precision": "fp32"},
        "unlearn": {"epochs": 1, "learning_rate": 1e-3, "batch_size": 2, "precision": "fp32"},
        "eval": {
            "probes": {"target": "probes.jsonl", "general": "general.jsonl", "related": None, "max_new_tokens": 4},
            "completions": {"prompts": "completions.jsonl", "tokens": 6},
            "sampling": {"samples": 1},
            "knowmem": {"qa": "qa.jsonl", "tokens": 4},
            "robustness": {"paraphrased": "paraphrased.jsonl", "hint": "hint.txt", "fewshot": 1},
            "prompts": {"preamble": "preamble.txt", "summary": "hint.txt", "shots": 1},
            "verbatim": {"excerpts": 4, "prompt_tokens": 8, "continuation_tokens": 4},
            "membership": {"heldout": "heldout.txt", "passage_tokens": 16},
            "utility": {"general_text": "general.txt"},
            "relearning": {"steps": 2, "eval_every": 1, "blocks": 2},
            "block_length": 32,
            "precision": "fp32",
        },
    }
    for section, values in sections.items():
        config.setdefault(section, {}).update(values)
    path = project / "config.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def interrupted(monkeypatch, step: int, run) -> None:
    """Run `run()` as a process killed right after optimizer step `step` has been logged (a
    KeyboardInterrupt out of the metrics log), then give the log back."""
    from whoharry.core.artifacts import MetricsLog

    original = MetricsLog.log

    def killed(self, **record):
        original(self, **record)
        if record["step"] == step:
            raise KeyboardInterrupt

    monkeypatch.setattr(MetricsLog, "log", killed)
    with pytest.raises(KeyboardInterrupt):
        run()
    monkeypatch.setattr(MetricsLog, "log", original)


def assert_copy_model_labels(text, blocks, anchors, labels, tokenizer, seed: int) -> int:
    """Check labels made with a copy model as base and reinforced model; return how many differ.

    The label of position t + 1 is the translated token aligned with t: the original token t except
    at an anchor's last token, where it is the translation's last token. A translation already seen
    in the block is suppressed, so there the label must be some other token."""
    differ = 0
    for b, ids in enumerate(blocks.ids):
        translation = translate_block(
            text, ids, blocks.offsets[b], anchors, anchors.pattern(), tokenizer,
            block_rng(seed, b), blocks.bos_token_id,
        )
        row = labels[b].tolist()
        last_tokens = {occ.last: occ for occ in translation.occurrences}
        assert row[0] == IGNORE
        for t, u in enumerate(translation.mapping[:-1]):
            if u == NO_LABEL:
                assert row[t + 1] == IGNORE, (b, t)
                continue
            suppressed = {tok for at, toks in translation.suppress if u > at for tok in toks}
            if translation.ids[u] in suppressed:
                assert row[t + 1] not in (IGNORE, translation.ids[u]), (b, t)
                differ += 1
            elif t in last_tokens:
                assert row[t + 1] == translation.ids[u] != ids[t], (b, t)
                assert tokenizer.decode(translation.ids[: u + 1]).endswith(last_tokens[t].value)
                differ += 1
            else:
                assert row[t + 1] == ids[t], (b, t)
    return differ


def interrupted_batches(monkeypatch, batches: int, run) -> list[int]:
    """Run `run()` (a CLI invocation) as a process killed when the augment stage starts its batch number
    `batches`, after saving the ones before; return the batch numbers written, to which later runs add."""
    from whoharry.stages import augment

    real = augment._Writers.write
    calls: list[int] = []

    def write(self, batch, seeds):
        calls.append(batch)
        if batch == batches and calls.count(batch) == 1:
            raise KeyboardInterrupt
        return real(self, batch, seeds)

    monkeypatch.setattr(augment._Writers, "write", write)
    result = run()
    assert result.exit_code == 130, result.output
    return calls


@pytest.fixture(autouse=True)
def separate_shared_eval_cache(tmp_path, monkeypatch):
    """Each test keeps the base model's shared evaluation parts in its own folder, so no test reads what
    another measured."""
    from whoharry.evaluation import context

    monkeypatch.setattr(context, "shared_parts_dir", lambda: tmp_path / "shared-eval")
