"""Completion prompts: what a model writes after a prompt, which target terms it names, and how fluent it is.

A completion file holds JSONL lines `{"prompt": ..., "references": [...]}`: a prompt that invites the
target's knowledge and the terms whose appearance in the completion shows it. A completion *names* a
reference when the term appears in it (case-insensitive, as whole words) and not already in the prompt.

Fluency is the perplexity of the completion tokens given the prompt, scored by a fixed judge model
(the base model): an unlearned model that forgets by writing gibberish gets a high figure.

A text prompt is generated from without its trailing spaces and tabs (`generation_prompt`; a final
newline stays): a prompt ending in a lone space token makes the first generated token one the model
never writes there. A continuation ends at the first end token the model or tokenizer declares, or at
padding (`end_token_ids`), so no padding is judged.
"""

from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from tqdm.auto import tqdm

from whoharry.anchors.dictionary import term_pattern
from whoharry.core import models
from whoharry.core.text import pad, read_jsonl
from whoharry.method.objectives import token_log_probs

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from whoharry.method.inference import InferenceTimeWHP


@dataclass
class Completion:
    """A prompt (as given), the token ids the model read (its `generation_prompt`, as the tokenizer encodes
    it, special tokens included), the generated ids and their decoded text (special tokens skipped)."""

    prompt: str
    prompt_ids: list[int]
    ids: list[int]  # generated tokens, before the first end token or padding (`end_token_ids`)
    text: str


def has_text(value: object) -> bool:
    """Whether a file's field holds something besides whitespace (what every prompt, answer and question
    needs: a blank one would be scored or generated from as nothing)."""
    return bool(value) and bool(str(value).strip())


def read_completion_prompts(path: Path) -> list[dict]:
    """Read a completion file; every line needs a prompt and a list of reference terms, none of them blank
    (empty or only whitespace); the prompt is kept as written.

    Returns:
        `{"prompt": str, "references": [str, ...]}` per line, in file order; the terms without surrounding
        whitespace (a term is matched as whole words, so a space around it would only hide it).

    Raises:
        WhoharryError: as `core.text.read_jsonl` raises it (a missing or empty file, a bad line).
    """
    def valid(row: dict) -> bool:
        refs, prompt = row.get("references"), row.get("prompt")
        return has_text(prompt) and isinstance(refs, list) and all(isinstance(r, str) and has_text(r) for r in refs)

    rows = read_jsonl(path, "completion prompt file", valid,
                      '{"prompt": ..., "references": [terms...]} (none blank)')
    return [{"prompt": str(row["prompt"]), "references": [term.strip() for term in row["references"]]}
            for row in rows]


def mentions(term: str, text: str, ignore_case: bool = True) -> bool:
    """Whether the text holds the term as whole words (not inside a longer word), by the one rule the anchors
    are matched with (`anchors.dictionary.term_pattern`: in scripts written without spaces, no boundary)."""
    return _term_regex(term, ignore_case).search(text) is not None


@functools.cache
def _term_regex(term: str, ignore_case: bool) -> re.Pattern[str]:
    """The compiled whole-word pattern of one term (compiled once: the judge asks about every anchor key
    for every completion, more patterns than `re`'s own cache holds)."""
    return re.compile(term_pattern([term]), flags=re.IGNORECASE if ignore_case else 0)


def named_references(prompt: str, completion: str, references: list[str]) -> list[str]:
    """The reference terms the completion names that the prompt does not already hold."""
    return [term for term in references if mentions(term, completion) and not mentions(term, prompt)]


# Whitespace at a line's end that is not a line break: what `generation_prompt` strips.
_TRAILING_BLANKS = re.compile(r"[^\S\n\r\v\f\x1c-\x1e\x85\u2028\u2029]+\Z")


def generation_prompt(text: str) -> str:
    """The text a prompt is generated from: without trailing horizontal whitespace (spaces, tabs and their
    Unicode kin); a line break at the end, and anything before it, stays."""
    return _TRAILING_BLANKS.sub("", text)


def prompt_ids(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    """The token ids a text prompt is read as: its `generation_prompt`, encoded with the tokenizer's special
    tokens."""
    return tokenizer(generation_prompt(text)).input_ids


def _token_ids(value: object) -> set[int]:
    """The token ids of a declared end token: an int, a list or tuple of ints, or None (no ids)."""
    values = value if isinstance(value, list | tuple) else [value]
    return {v for v in values if isinstance(v, int) and not isinstance(v, bool) and v >= 0}


def end_token_ids(model: PreTrainedModel | InferenceTimeWHP, tokenizer: PreTrainedTokenizerBase) -> set[int]:
    """Every token that ends a generated continuation: the tokenizer's EOS and padding token, and the end
    tokens the model declares, `generation_config.eos_token_id` (an int or a list: models with several end
    tokens) and `config.eos_token_id`. A model pair without a config of its own (`InferenceTimeWHP`) is
    looked up through its `base` model."""
    ids = _token_ids(tokenizer.eos_token_id) | _token_ids(tokenizer.pad_token_id)
    for source in (model, getattr(model, "base", None)):
        ids |= _token_ids(getattr(getattr(source, "generation_config", None), "eos_token_id", None))
        ids |= _token_ids(getattr(getattr(source, "config", None), "eos_token_id", None))
    return ids


@torch.no_grad()
def generate(model: PreTrainedModel | InferenceTimeWHP, tokenizer: PreTrainedTokenizerBase, prompts: list[list[int]],
             max_new_tokens: int, precision: str, temperature: float | None = None,
             top_p: float = 1.0) -> list[list[int]]:
    """Greedy continuations of token-id prompts (one left-padded batch), cut at the first end token; with a
    `temperature`, sampled ones instead, from the full distribution (top-k 0) or its nucleus `top_p` (seed
    torch's generator first for repeatable samples).

    Returns:
        Per prompt, the generated token ids (at most `max_new_tokens`), the prompt and everything from the
        first end token or padding (`end_token_ids`) on left out.
    """
    device = next(model.parameters()).device
    model.eval()
    ids, mask = pad(prompts, tokenizer.pad_token_id, left=True)
    sampling = {"do_sample": True, "temperature": temperature, "top_k": 0, "top_p": top_p} if temperature else {
        "do_sample": False}
    with models.autocast(precision, device):
        generated = model.generate(
            ids.to(device),
            attention_mask=mask.to(device),
            max_new_tokens=max_new_tokens,
            pad_token_id=tokenizer.pad_token_id,
            **sampling,
        )
    ends = end_token_ids(model, tokenizer)
    out = []
    for row in generated[:, ids.shape[1] :].tolist():
        cut = next((i for i, token in enumerate(row) if token in ends), len(row))
        out.append(row[:cut])
    return out


def complete(model: PreTrainedModel | InferenceTimeWHP, tokenizer: PreTrainedTokenizerBase, prompts: list[str],
             max_new_tokens: int, precision: str, batch_size: int, desc: str = "completions",
             temperature: float | None = None, seed: int = 0, progress: bool = True) -> list[Completion]:
    """Greedy (or, with a temperature, sampled) completions of text prompts, in batches of `batch_size`
    (`generate`), each prompt read as its `generation_prompt`; with a temperature, torch's generator is
    seeded with `seed` first.

    Returns:
        One `Completion` per prompt, in order.
    """
    if temperature:
        torch.manual_seed(seed)
    results = []
    for start in tqdm(range(0, len(prompts), batch_size), desc=desc, unit="batch", leave=False, disable=not progress):
        texts = prompts[start : start + batch_size]
        read = [prompt_ids(tokenizer, text) for text in texts]
        done = generate(model, tokenizer, read, max_new_tokens, precision, temperature)
        for text, p_ids, ids in zip(texts, read, done, strict=True):
            results.append(Completion(text, p_ids, ids, tokenizer.decode(ids, skip_special_tokens=True)))
    return results


@torch.no_grad()
def continuation_scores(model: PreTrainedModel | InferenceTimeWHP, pairs: list[tuple[list[int], list[int]]],
                        pad_id: int, precision: str, batch_size: int) -> list[tuple[list[float], int]]:
    """Per-token log P(continuation | prompt) for each (prompt ids, continuation ids) pair, and the rank of
    the continuation's first token among all next tokens (1: the most likely; 0 for an empty one).

    Each pair is scored as one right-padded sequence; the prompt must hold at least one token.

    Returns:
        Per pair, (one float32 log-probability in nats per continuation token, that rank).
    """
    device = next(model.parameters()).device
    model.eval()
    out: list[tuple[list[float], int]] = []
    for start in range(0, len(pairs), batch_size):
        batch = pairs[start : start + batch_size]
        ids, mask = pad([prompt + cont for prompt, cont in batch], pad_id)
        with models.autocast(precision, device):
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float()
        for row, (prompt, cont) in enumerate(batch):
            if not cont:
                out.append(([], 0))
                continue
            picked, ranks = token_log_probs(logits[row, len(prompt) - 1 : len(prompt) + len(cont) - 1],
                                            torch.tensor(cont, device=device), ranks=True)
            # a NaN log-probability (a broken model) has no rank: NaN, not the 1 that no comparison beats
            rank = float("nan") if torch.isnan(picked[0]) else int(ranks[0])
            out.append((picked.tolist(), rank))
    return out


def continuation_logprobs(model: PreTrainedModel | InferenceTimeWHP, pairs: list[tuple[list[int], list[int]]],
                          pad_id: int, precision: str, batch_size: int) -> list[list[float]]:
    """Per-token log P(continuation | prompt), in nats, for each (prompt ids, continuation ids) pair."""
    return [logprobs for logprobs, _ in continuation_scores(model, pairs, pad_id, precision, batch_size)]


def judge_nll(judge: PreTrainedModel | InferenceTimeWHP, tokenizer: PreTrainedTokenizerBase,
              completions: list[Completion], precision: str, batch_size: int) -> list[tuple[float, int]]:
    """(summed negative log-likelihood in nats, token count) of each completion's generated tokens given
    its prompt, under the judge model (the base model in `whoharry eval`)."""
    scored = continuation_logprobs(judge, [(c.prompt_ids, c.ids) for c in completions], tokenizer.pad_token_id,
                                   precision, batch_size)
    return [(-sum(row), len(row)) for row in scored]


def pooled_perplexity(scored: list[tuple[float, int]]) -> float:
    """exp(total negative log-likelihood / total tokens) of (nll in nats, token count) pairs: the pooled
    perplexity per token; inf when that overflows a float (a collapsed model, above ~709 nats a token),
    nan when a loss is nan or there are no tokens."""
    tokens = sum(count for _, count in scored)
    if not tokens:
        return math.nan
    try:
        return math.exp(sum(nll for nll, _ in scored) / tokens)
    except OverflowError:
        return math.inf
