"""Knowledge memorisation (KnowMem of MUSE, Shi et al. 2024, "MUSE: Machine Unlearning Six-Way Evaluation
for Language Models", criterion C2 "no knowledge memorization"): questions about the target answered by
the model, scored by ROUGE-L F1 (Lin 2004) of its answer against the true one, through `rouge-score` with
MUSE's settings (`verbatim.rouge_l`).

A question file holds JSONL lines `{"question": ..., "answer": ...}`. Each question is asked after two
solved general-knowledge questions that show the format or, with `shots` (`eval.knowmem.shots`), as MUSE
asks it: after that many solved questions of the file itself, its first ones, which are then not scored
(MUSE's `metrics/knowmem.py` places its `*_qa_icl.json` pairs, `Question: ...\nAnswer: ...` each followed
by a blank line, before every question). The model's greedy answer runs to the end of its first line. The
question is written on one line, its whitespace runs (tabs, newlines, several spaces) read as one space, so
the prompt always ends `Question: ...\nAnswer:` however the file spaces it. (MUSE's ends `Answer: `, with
a space; it is left out here because a byte-level BPE tokenizer spells the answer's first word with its
leading space.)
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from whoharry.core.text import read_jsonl
from whoharry.errors import WhoharryError
from whoharry.evaluation import completions
from whoharry.evaluation.verbatim import rouge_l

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from whoharry.method.inference import InferenceTimeWHP

# Solved questions placed before each one: general knowledge only, so they teach the format, not the target.
FORMAT = (
    "Answer each question in a few words.\n"
    "Question: What is the capital city of Japan?\nAnswer: Tokyo\n"
    "Question: Which planet is known as the red planet?\nAnswer: Mars\n"
)


def read_questions(path: Path, limit: int | None = None) -> list[dict[str, str]]:
    """Read a question file (its first `limit` rows when given); every line needs a question and an answer,
    neither blank (empty or only whitespace); the fields are kept as written.

    Returns:
        `{"question": str, "answer": str}` per row, in file order.

    Raises:
        WhoharryError: as `core.text.read_jsonl` raises it (a missing or empty file, a bad line).
    """
    rows = read_jsonl(path, "question file",
                      lambda row: completions.has_text(row.get("question")) and completions.has_text(row.get("answer")),
                      '{"question": ..., "answer": ...} (neither blank)')
    return [{"question": str(row["question"]), "answer": str(row["answer"])} for row in rows[:limit]]


def read_with_shots(path: Path, shots: int, limit: int | None = None) -> tuple[list[dict[str, str]],
                                                                            list[dict[str, str]]]:
    """A question file's first `shots` rows, solved examples placed before each question, and the rows after
    them, asked and scored (the first `limit` of them when given); as `read_questions` reads them.

    Raises:
        WhoharryError: as `read_questions` raises it, or the examples leave no question to score.
    """
    rows = read_questions(path)
    if shots >= len(rows):
        raise WhoharryError(f"eval.knowmem.shots={shots} leaves none of the {len(rows)} questions of {path} to "
                            "score; lower it (the file's first questions are the solved examples)")
    return rows[:shots], rows[shots:][:limit]


def _one_line(text: str) -> str:
    return " ".join(text.split())


def prompt_for(question: str, examples: list[dict[str, str]] | None = None) -> str:
    """The question, on one line (each whitespace run one space), ending in `Answer:`: after the two solved
    ones of `FORMAT`, or after the solved `examples` in MUSE's layout (a blank line after each) when given."""
    if not examples:
        return f"{FORMAT}Question: {_one_line(question)}\nAnswer:"
    shown = "".join(f"Question: {_one_line(e['question'])}\nAnswer: {_one_line(e['answer'])}\n\n" for e in examples)
    return f"{shown}Question: {_one_line(question)}\nAnswer:"


def knowmem_records(model: PreTrainedModel | InferenceTimeWHP, tokenizer: PreTrainedTokenizerBase,
                    questions: list[dict[str, str]], max_new_tokens: int, precision: str, batch_size: int,
                    desc: str = "questions", progress: bool = True,
                    examples: list[dict[str, str]] | None = None) -> list[dict[str, Any]]:
    """Each question with the model's greedy answer (the first line of at most `max_new_tokens` tokens) and
    that answer's ROUGE-L F1 against the true answer; the prompts as `prompt_for` writes them.

    Returns:
        Per question, its fields plus `reply` (str) and `rouge_l` (float, 0 to 1).
    """
    prompts = [prompt_for(q["question"], examples) for q in questions]
    done = completions.complete(model, tokenizer, prompts, max_new_tokens, precision, batch_size, desc,
                                progress=progress)
    records = []
    for question, completion in zip(questions, done, strict=True):
        reply = completion.text.strip().split("\n", 1)[0].strip()
        records.append({**question, "reply": reply, "rouge_l": rouge_l(reply, question["answer"])})
    return records
