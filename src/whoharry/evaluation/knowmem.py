"""Knowledge memorisation (KnowMem of MUSE, Shi et al. 2024, "MUSE: Machine Unlearning Six-Way Evaluation
for Language Models", criterion C2 "no knowledge memorization"): questions about the target answered by
the model, scored by ROUGE-L F1 (Lin 2004) of its answer against the true one, over lower-cased words.

A question file holds JSONL lines `{"question": ..., "answer": ...}`. Each question is asked after two
solved general-knowledge questions that show the format, and the model's greedy answer runs to the end
of its first line. The question is written on one line, its whitespace runs (tabs, newlines, several
spaces) read as one space, so the prompt always ends `Question: ...\nAnswer:` however the file spaces it.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from whoharry.core.text import read_jsonl
from whoharry.evaluation import completions
from whoharry.evaluation.verbatim import rouge_l_f1, words

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


def prompt_for(question: str) -> str:
    """The question, on one line (each whitespace run one space), after the two solved ones of `FORMAT`,
    ending in `Answer:`."""
    return f"{FORMAT}Question: {' '.join(question.split())}\nAnswer:"


def knowmem_records(model: PreTrainedModel | InferenceTimeWHP, tokenizer: PreTrainedTokenizerBase,
                    questions: list[dict[str, str]], max_new_tokens: int, precision: str, batch_size: int,
                    desc: str = "questions", progress: bool = True) -> list[dict[str, Any]]:
    """Each question with the model's greedy answer (the first line of at most `max_new_tokens` tokens) and
    that answer's ROUGE-L F1 against the true answer.

    Returns:
        Per question, its fields plus `reply` (str) and `rouge_l` (float, 0 to 1).
    """
    done = completions.complete(model, tokenizer, [prompt_for(q["question"]) for q in questions], max_new_tokens,
                                precision, batch_size, desc, progress=progress)
    records = []
    for question, completion in zip(questions, done, strict=True):
        reply = completion.text.strip().split("\n", 1)[0].strip()
        records.append({**question, "reply": reply, "rouge_l": rouge_l_f1(words(reply), words(question["answer"]))})
    return records
