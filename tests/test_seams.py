"""Whitespace where a prompt meets its answer or its continuation: every way of writing the seam scores as
the canonical form (prompt without trailing whitespace, answer with its leading space), in every file the
evaluation reads; blank fields are refused."""

from __future__ import annotations

import json

import pytest

from whoharry.anchors.dictionary import parse_anchors
from whoharry.config import EvalConfig, ModelConfig, ProbesEval
from whoharry.core import models
from whoharry.errors import WhoharryError
from whoharry.evaluation import completions, knowmem, probes

from .conftest import make_copy_model

CANONICAL = ("the river flows past the", " the")
# (prompt, answer) pairs that mean the canonical probe: whitespace of every kind on either side of the seam
SEAMS = [
    ("the river flows past the ", "the"),  # the natural way: the prompt ends in a space
    ("the river flows past the\t", "the"),  # a tab
    ("the river flows past the\n", "the"),  # a newline
    ("the river flows past the   ", "the"),  # several spaces
    ("the river flows past the \n\t", "the"),  # a mix
    ("the river flows past the ", " the"),  # both sides carry whitespace
    ("the river flows past the", "  the"),  # two spaces before the answer
    ("the river flows past the", "\tthe"),  # a tab before the answer
    ("the river flows past the", " the "),  # whitespace after the answer
]


QUESTIONS = ["Who is  Harry's friend?", "  Who is Harry's friend?\n", "Who is\tHarry's friend?",
             "Who is\nHarry's friend?", "Who is Harry's friend? "]


@pytest.mark.parametrize(("prompt", "answer"), SEAMS)
def test_every_seam_tokenizes_as_the_canonical_probe(tokenizer, prompt, answer):
    assert probes.answer_ids(tokenizer, prompt, answer) == probes.answer_ids(tokenizer, *CANONICAL)
    assert probes.seam(prompt, answer) == CANONICAL


@pytest.mark.slow  # the first use of the default model converts its GGUF file (tokenizer and weights)
def test_smollm2_reads_every_seam_as_the_canonical_one():
    """The reported case: `"... went to "` + `"Hogwarts"` was split into pieces the model never predicts."""
    smol = models.load_tokenizer(models.resolve(ModelConfig()), ModelConfig())
    canonical = probes.answer_ids(smol, "Harry Potter went to", " Hogwarts")
    assert smol.decode(canonical[1][:1]).startswith(" H")
    for prompt, answer in SEAMS:  # the same seams around this probe
        written = (prompt.replace(CANONICAL[0], "Harry Potter went to"), answer.replace("the", "Hogwarts"))
        assert probes.answer_ids(smol, *written) == canonical, written
    for prompt, answer in SEAMS:
        assert probes.answer_ids(smol, prompt, answer) == probes.answer_ids(smol, *CANONICAL)
    for question in QUESTIONS:
        assert smol(knowmem.prompt_for(question)).input_ids == smol(knowmem.prompt_for(QUESTIONS[-1])).input_ids


def test_a_seam_without_whitespace_is_kept(tokenizer):
    assert probes.seam("Harry Pot", "ter") == ("Harry Pot", "ter")
    assert probes.seam("Harry Potter ", " ") == ("Harry Potter ", " ")  # blank answers: refused on reading


def test_every_seam_gives_the_canonical_figures_and_keeps_the_fields(tokenizer):
    """A copy model finds " the" after "... the" near-certain: every spelling of that probe must too, with
    the same rank, greedy completion and control probability; records keep the fields as written."""
    model = make_copy_model(len(tokenizer)).eval()
    rows = [{"prompt": CANONICAL[0], "answer": CANONICAL[1]}] + [{"prompt": p, "answer": a} for p, a in SEAMS]
    cfg = EvalConfig(probes=ProbesEval(max_new_tokens=3), precision="fp32", batch_size=4)
    records = probes.score_probes(model, tokenizer, rows, cfg, "t", control=parse_anchors({"river": "stream"}),
                                  progress=False)
    first = records[0]
    assert first["p_answer"] > 0.9 and first["rank"] == 1 and first["hit"]
    for row, record in zip(rows, records, strict=True):
        assert (record["prompt"], record["answer"]) == (row["prompt"], row["answer"])
        assert record["p_answer"] == pytest.approx(first["p_answer"], rel=1e-5)
        assert record["p_control"] == pytest.approx(first["p_control"], rel=1e-5)
        assert (record["rank"], record["completion"], record["hit"]) == (first["rank"], first["completion"], True)


def test_hinted_and_few_shot_prompts_read_every_seam_as_the_canonical_one(tokenizer):
    canonical = [{"prompt": "A is", "answer": " 1"}, {"prompt": "B is", "answer": " 2"},
                 {"prompt": "C is", "answer": " 3"}]
    written = [{"prompt": "A is ", "answer": "1"}, {"prompt": "B is\t", "answer": " 2 "},
               {"prompt": "C is\n", "answer": "\n3"}]

    def ids(rows):
        return [probes.answer_ids(tokenizer, r["prompt"], r["answer"]) for r in rows]

    assert ids(probes.few_shot(written, 2)) == ids(probes.few_shot(canonical, 2))
    assert probes.few_shot(written, 2)[0]["prompt"] == "B is 2.\nC is 3.\nA is "
    assert ids(probes.with_hint(written, "Letters.\n")) == ids(probes.with_hint(canonical, "Letters.\n"))


@pytest.mark.parametrize("ending", [" ", "\t", "   ", " \t "])
def test_completion_prompts_are_generated_from_without_trailing_spaces(tokenizer, ending):
    model = make_copy_model(len(tokenizer)).eval()
    canonical, written = completions.complete(model, tokenizer, [CANONICAL[0], CANONICAL[0] + ending], 3, "fp32", 2,
                                              progress=False)
    assert written.prompt == CANONICAL[0] + ending  # kept as given
    assert (written.prompt_ids, written.ids, written.text) == (canonical.prompt_ids, canonical.ids, canonical.text)
    assert written.text.startswith(" the the")


def test_generation_prompt_keeps_a_final_line_break():
    assert completions.generation_prompt("Chapter One\n") == "Chapter One\n"
    assert completions.generation_prompt("Chapter One\n \t") == "Chapter One\n"
    assert completions.generation_prompt("Harry went to \u00a0\t") == "Harry went to"
    assert completions.generation_prompt("Harry went to") == "Harry went to"


@pytest.mark.parametrize("question", QUESTIONS)
def test_knowmem_prompt_is_one_line_however_the_question_is_spaced(tokenizer, question):
    canonical = knowmem.prompt_for("Who is Harry's friend?")
    assert canonical.endswith("\nQuestion: Who is Harry's friend?\nAnswer:")
    assert knowmem.prompt_for(question) == canonical
    assert tokenizer(knowmem.prompt_for(question)).input_ids == tokenizer(canonical).input_ids


@pytest.mark.parametrize(
    ("reader", "row"),
    [
        (probes.read_probes, {"prompt": "   ", "answer": " Hogwarts"}),
        (probes.read_probes, {"prompt": "Harry went to", "answer": " \t"}),
        (completions.read_completion_prompts, {"prompt": " \n", "references": ["Hogwarts"]}),
        (completions.read_completion_prompts, {"prompt": "Harry went to", "references": ["Hogwarts", "  "]}),
        (knowmem.read_questions, {"question": "\n", "answer": "Hogwarts"}),
        (knowmem.read_questions, {"question": "Where?", "answer": " "}),
    ],
)
def test_blank_fields_are_refused(tmp_path, reader, row):
    """A blank prompt would be generated from or scored as nothing (SmolLM2 adds no BOS token)."""
    path = tmp_path / "f.jsonl"
    path.write_text(json.dumps(row) + "\n")
    with pytest.raises(WhoharryError, match=r"f.jsonl:1: expected"):
        reader(path)


def test_reference_terms_are_read_without_surrounding_whitespace(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text(json.dumps({"prompt": "Harry went to ", "references": [" Hogwarts ", "Ron\t"]}) + "\n")
    (row,) = completions.read_completion_prompts(path)
    assert row == {"prompt": "Harry went to ", "references": ["Hogwarts", "Ron"]}
    assert completions.named_references(row["prompt"], " Hogwarts. Ron!", row["references"]) == ["Hogwarts", "Ron"]


@pytest.mark.parametrize(("prompt", "answer"), [("哈利的朋友是 ", "罗恩"), ("哈利的朋友是", " 罗恩"),
                                                ("ハリーの友達は\t", "ロン")])
def test_a_seam_in_a_script_without_spaces_has_no_space(prompt, answer):
    assert probes.seam(prompt, answer) == (prompt.rstrip(), answer.strip())


def test_a_nan_log_probability_has_no_rank():
    import torch

    from whoharry.evaluation.completions import continuation_scores

    class Broken(torch.nn.Module):
        """A model whose logits are all NaN."""

        def __init__(self) -> None:
            super().__init__()
            self.weight = torch.nn.Parameter(torch.zeros(1))

        def forward(self, input_ids, attention_mask=None):
            return type("Out", (), {"logits": torch.full((*input_ids.shape, 8), float("nan"))})()

    (logprobs, rank), = continuation_scores(Broken(), [([1, 2], [3])], 0, "fp32", 1)
    assert logprobs[0] != logprobs[0] and rank != rank  # both NaN: no figure made from NaN

