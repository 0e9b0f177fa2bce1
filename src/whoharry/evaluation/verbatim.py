"""Verbatim memorisation (VerbMem of MUSE, Shi et al. 2024, "MUSE: Machine Unlearning Six-Way Evaluation
for Language Models", criterion C1 "no verbatim memorization"): how closely a model's greedy continuation
of an excerpt of the target text follows the text's true continuation, by ROUGE-L F1 (Lin 2004).

ROUGE is scored as MUSE scores it: Google's `rouge-score` (`rouge_scorer.RougeScorer`), type `rougeL` (the
LCS over the whole text, not `rougeLsum`'s per-line union), `use_stemmer=False`, and the F-measure of the
LCS precision and recall, for both VerbMem and KnowMem (MUSE's `metrics/logger.py`, `RougeEvalLogger`,
whose `mean_rougeL` is the default `verbmem_agg_key` and `knowmem_agg_key` of its `eval.py`; repository
swj0419/muse_bench). Its tokenizer lower-cases the text and keeps runs of [a-z0-9], so on English text
the scores are MUSE's. It drops every other letter: a text holding letters outside ASCII (accents,
Cyrillic, Han...) would lose them, a CJK text score 0 whatever the model wrote. Such a text is split by
`words` instead: runs of letters, digits, underscores and combining marks in a script written with
spaces, and, in a script written without spaces (Han, kana, Thai..., `anchors.dictionary.UNSPACED_SCRIPTS`),
each character with the combining marks drawn on it (character-level ROUGE is common for Chinese).
"""

from __future__ import annotations

import re
import unicodedata
from functools import cache
from typing import TYPE_CHECKING, Any

from rouge_score import rouge_scorer, tokenizers
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
    """The lower-cased words of a text that holds letters outside ASCII, as the module docstring defines
    them: `\\w+` runs in scripts written with spaces (combining marks kept in the word), one character a word
    in the others."""
    return _word_pattern().findall(text.lower())


class _Tokenizer(tokenizers.Tokenizer):
    """rouge-score's own tokenizer (MUSE's), or `words` for a text holding a letter it would drop."""

    def __init__(self) -> None:
        self.default = tokenizers.DefaultTokenizer(use_stemmer=False)

    def tokenize(self, text: str) -> list[str]:
        foreign = any(not c.isascii() and (c.isalnum() or unicodedata.category(c).startswith("M")) for c in text)
        return words(text) if foreign else self.default.tokenize(text)


@cache
def _scorer() -> rouge_scorer.RougeScorer:
    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False, tokenizer=_Tokenizer())


def rouge_l(prediction: str, truth: str) -> float:
    """ROUGE-L F1 of a model's text against the true text (Lin 2004, "ROUGE: A package for automatic
    evaluation of summaries", section 3, beta = 1), through `rouge-score` with MUSE's settings (the module
    docstring): the harmonic mean of LCS / len(prediction) and LCS / len(truth) in words.

    Returns:
        A float from 0 to 1 (0 when either text has no word or they share none).
    """
    return _scorer().score(truth, prediction)["rougeL"].fmeasure


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
                            "rouge_l": rouge_l(text_out, truth)})
    bar.close()
    return records
