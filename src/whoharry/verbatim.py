"""Verbatim memorisation (MUSE's VerbMem): how closely a model's greedy continuation of an excerpt of
the target text follows the text's true continuation, by ROUGE-L F1 over words."""

from __future__ import annotations

import re

from whoharry import completions
from whoharry.text import make_blocks


def words(text: str) -> list[str]:
    return re.findall(r"\w+", text.lower())


def rouge_l_f1(candidate: list[str], reference: list[str]) -> float:
    """F1 of the longest common subsequence of two word lists (0 when either is empty)."""
    if not candidate or not reference:
        return 0.0
    previous = [0] * (len(reference) + 1)
    for word in candidate:
        current = [0]
        for j, other in enumerate(reference, start=1):
            current.append(previous[j - 1] + 1 if word == other else max(previous[j], current[j - 1]))
        previous = current
    common = previous[-1]
    if common == 0:
        return 0.0
    precision, recall = common / len(candidate), common / len(reference)
    return 2 * precision * recall / (precision + recall)


def verbatim_records(model, tokenizer, text: str, prompt_tokens: int, continuation_tokens: int, excerpts: int,
                     precision: str, batch_size: int) -> list[dict]:
    """Greedy continuations of `excerpts` evenly spread excerpts of the text, each scored against the
    text's own next `continuation_tokens` tokens."""
    blocks = make_blocks(text, tokenizer, prompt_tokens + continuation_tokens)
    count = len(blocks.ids)
    chosen = [int(i * count / excerpts) for i in range(min(excerpts, count))]
    prompts = [blocks.ids[b][:-continuation_tokens] for b in chosen]
    truths = [tokenizer.decode(blocks.ids[b][-continuation_tokens:]) for b in chosen]
    records = []
    for start in range(0, len(prompts), batch_size):
        batch = prompts[start : start + batch_size]
        generated = completions.generate(model, tokenizer, batch, continuation_tokens, precision)
        for ids, truth in zip(generated, truths[start : start + batch_size], strict=True):
            text_out = tokenizer.decode(ids, skip_special_tokens=True)
            records.append({"continuation": text_out, "truth": truth,
                            "rouge_l": rouge_l_f1(words(text_out), words(truth))})
    return records
