"""Verbatim memorisation (VerbMem of MUSE, Shi et al. 2024, "MUSE: Machine Unlearning Six-Way Evaluation
for Language Models", criterion C1 "no verbatim memorization"): how closely a model's greedy continuation
of an excerpt of the target text follows the text's true continuation, by ROUGE-L F1 (Lin 2004) over
lower-cased words (`words`).

What a word is: a run of letters, digits, underscores and combining marks of a script written with spaces
(Latin, Cyrillic, Hangul, Devanagari...), and, in a script written without spaces (Han, kana, Thai...,
`anchors.dictionary.UNSPACED_SCRIPTS`), each character with the combining marks drawn on it: such text has
no word boundaries to find without a dictionary-based segmenter, and character-level ROUGE is common for
Chinese. A CJK sentence is thus not one word, as a `\\w+` run would make it (two sentences sharing 8 of
10 characters scored 0). MUSE reports ROUGE through Google's `rouge-score`, whose default tokenizer
(`rouge/tokenize.py`) lower-cases and turns every character outside [a-z0-9] into a space: it scores such
text as if it were empty and drops any non-ASCII letter; on plain ASCII text the two agree but at
underscores."""

from __future__ import annotations

import re
from functools import cache
from typing import TYPE_CHECKING, Any

from tqdm.auto import tqdm

from whoharry.anchors.dictionary import script_classes
from whoharry.core.text import evenly_spread, make_blocks
from whoharry.evaluation import completions

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from whoharry.method.inference import InferenceTimeWHP


@cache
def _word_pattern() -> re.Pattern[str]:
    """One character of a script without spaces (a letter, with its marks), or a run of word characters and
    combining marks of the other scripts."""
    unspaced, marks, spaced_marks = script_classes()
    return re.compile(rf"(?=\w)[{unspaced}][{marks}]*|(?:[^\W{unspaced}]|[{spaced_marks}])+")


def words(text: str) -> list[str]:
    """The lower-cased words of a text, for ROUGE-L, as the module docstring defines them: `\\w+` runs
    in scripts written with spaces (combining marks kept in the word), one character a word in the others."""
    return _word_pattern().findall(text.lower())


def rouge_l_f1(candidate: list[str], reference: list[str]) -> float:
    """ROUGE-L F1 (Lin 2004, "ROUGE: A package for automatic evaluation of summaries", section 3, with
    beta = 1): the harmonic mean of LCS / len(candidate) and LCS / len(reference), where LCS is the length
    of the longest common subsequence of the two word lists.

    Returns:
        A float from 0 to 1 (0 when either list is empty or they share no word).
    """
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


def verbatim_records(model: PreTrainedModel | InferenceTimeWHP, tokenizer: PreTrainedTokenizerBase, text: str,
                     prompt_tokens: int, continuation_tokens: int, excerpts: int, precision: str,
                     batch_size: int, *, desc: str = "verbatim", progress: bool = False) -> list[dict[str, Any]]:
    """Greedy continuations of `excerpts` evenly spread excerpts of the text, each scored against the
    text's own next `continuation_tokens` tokens (a progress bar named `desc` with `progress`).

    The text is cut into blocks of `prompt_tokens + continuation_tokens` tokens (`core.text.make_blocks`);
    each chosen block's first part is the prompt (a BOS included when the tokenizer adds one), its last
    `continuation_tokens` tokens the truth.

    Returns:
        Per excerpt, `continuation` and `truth` (decoded text) and `rouge_l` (float, 0 to 1).

    Raises:
        WhoharryError: the text is shorter than one block.
    """
    blocks = make_blocks(text, tokenizer, prompt_tokens + continuation_tokens)
    chosen = evenly_spread(len(blocks.ids), excerpts)
    prompts = [blocks.ids[b][:-continuation_tokens] for b in chosen]
    truths = [tokenizer.decode(blocks.ids[b][-continuation_tokens:]) for b in chosen]
    records = []
    bar = tqdm(total=len(prompts), desc=desc, unit="excerpt", leave=False, disable=not progress)
    for start in range(0, len(prompts), batch_size):
        batch = prompts[start : start + batch_size]
        generated = completions.generate(model, tokenizer, batch, continuation_tokens, precision)
        bar.update(len(batch))
        for ids, truth in zip(generated, truths[start : start + batch_size], strict=True):
            text_out = tokenizer.decode(ids, skip_special_tokens=True)
            records.append({"continuation": text_out, "truth": truth,
                            "rouge_l": rouge_l_f1(words(text_out), words(truth))})
    bar.close()
    return records
