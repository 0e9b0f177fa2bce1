"""Token-probability probes: how likely a model finds the answer after a prompt, and its variants.

A probe file holds JSONL lines `{"prompt": ..., "answer": ...}`. For each probe: the probability of the
answer continuation given the prompt, the rank of its first token among all next tokens, and whether
a greedy completion contains the answer. The robustness variants (Lynch et al. 2024) ask the same
facts after a hint text and after a few solved probes; paraphrased probes are a file of their own.

The seam between prompt and answer is read the way probes are meant, however it is written (`seam`):
whitespace at the prompt's end and at the answer's start, any mix of spaces, tabs and newlines, counts
as the one space that starts the answer, and whitespace at the answer's end is dropped. So
`"Harry Potter went to "` + `"Hogwarts"` scores as `"Harry Potter went to"` + `" Hogwarts"`, the
canonical form: a prompt ending in a lone space token would make the model predict the answer in pieces
it never writes there. (lm-eval moves a context's trailing whitespace into the continuation as it is;
here it is also made one space, so that every way of writing the seam gives one figure.) Where the
prompt ends or the answer starts in a script written without spaces (Chinese, Japanese, Thai, ...),
whitespace at the seam is no word break and is dropped: `"哈利的朋友是 "` + `"罗恩"` scores as `"罗恩"`
right after the prompt.
The greedy completion starts from the same canonical prompt. Records keep `prompt` and `answer` as the
file wrote them.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

from tqdm.auto import tqdm

from whoharry.anchors.dictionary import Anchors, is_unspaced
from whoharry.config import EvalConfig
from whoharry.core.text import read_jsonl
from whoharry.evaluation import completions

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from whoharry.method.inference import CausalLM

PROBE_SETS = ("target", "general", "related")  # the probe files of the config: eval.probes.{set}


def read_probes(path: Path, limit: int | None = None) -> list[dict[str, str]]:
    """Read a probe file (its first `limit` lines when given); every line needs a prompt and an answer,
    each with some text besides whitespace. The fields are kept as written (`seam` reads them).

    Raises:
        WhoharryError: as `core.text.read_jsonl` raises it (a missing or empty file, a bad line).
    """
    def valid(row: dict) -> bool:
        return completions.has_text(row.get("prompt")) and completions.has_text(row.get("answer"))

    rows = read_jsonl(path, "probe file", valid, '{"prompt": ..., "answer": ...} (neither blank)')
    return [{"prompt": str(row["prompt"]), "answer": str(row["answer"])} for row in rows[:limit]]


def seam(prompt: str, answer: str) -> tuple[str, str]:
    """The probe in its canonical form: the prompt without trailing whitespace and the answer without
    trailing whitespace, starting with one space when the seam held any whitespace (on either side, of
    any kind or length) — none next to a script written without spaces; a seam without whitespace
    (`"Harry Pot"` + `"ter"`), and a blank answer (which the readers refuse), are kept as they are."""
    head, body = prompt.rstrip(), answer.rstrip()
    stripped = body.lstrip()
    if not stripped:
        return prompt, answer
    if len(head) < len(prompt) or len(stripped) < len(body):
        if (head and is_unspaced(head[-1])) or is_unspaced(stripped[0]):
            return head, stripped  # no space between words in that script
        return head, f" {stripped}"
    return head, body


def answer_ids(tokenizer: PreTrainedTokenizerBase, prompt: str, answer: str) -> tuple[list[int], list[int]]:
    """Prompt ids and answer ids of the probe's canonical form (`seam`), split where the prompt's own
    tokenization ends (so a merge across the seam is handled)."""
    prompt, answer = seam(prompt, answer)
    prompt_ids = tokenizer(prompt).input_ids
    full = tokenizer(prompt + answer).input_ids
    if full[: len(prompt_ids)] == prompt_ids and len(full) > len(prompt_ids):
        return prompt_ids, full[len(prompt_ids) :]
    return prompt_ids, tokenizer(answer, add_special_tokens=False).input_ids


def with_hint(probes: list[dict[str, str]], hint: str) -> list[dict[str, str]]:
    """The probes with a hint text (a paragraph naming the target's world), stripped, on its own line before
    each prompt; the seam of each probe is left to `answer_ids`."""
    return [{**probe, "prompt": f"{hint.strip()}\n{probe['prompt']}"} for probe in probes]


def few_shot(probes: list[dict[str, str]], shots: int) -> list[dict[str, str]]:
    """Each probe after `shots` other probes of the set written out with their answers (the next ones,
    wrapping around), one per line, each solved probe written in its canonical form (`seam`) and ended
    by `.`: the format primes the model to answer from the target."""
    shots = min(shots, len(probes) - 1)
    out = []
    for i, probe in enumerate(probes):
        solved = [probes[(i + k) % len(probes)] for k in range(1, shots + 1)]
        context = "".join("{}{}.\n".format(*seam(p["prompt"], p["answer"])) for p in solved)
        out.append({**probe, "prompt": context + probe["prompt"]})
    return out


def score_probes(model: CausalLM, tokenizer: PreTrainedTokenizerBase, probes: list[dict[str, str]], cfg: EvalConfig,
                 desc: str,
                 control: Anchors | None = None, greedy: bool = True, progress: bool = True) -> list[dict]:
    """Per-probe answer probability, first-token rank and (with `greedy`) greedy completion of
    `cfg.probes.max_new_tokens` tokens, in batches of `cfg.batch_size`. With `control` anchors, also the
    answer's probability after the prompt's target terms are replaced by their generic translations
    (`p_control`)."""
    records = []
    bar = tqdm(total=len(probes), desc=desc, unit="probe", leave=False, disable=not progress)
    for start in range(0, len(probes), cfg.batch_size):
        batch = probes[start : start + cfg.batch_size]
        pairs = [answer_ids(tokenizer, probe["prompt"], probe["answer"]) for probe in batch]
        scored = completions.continuation_scores(model, pairs, tokenizer.pad_token_id, cfg.precision,
                                                 cfg.batch_size)
        generated = (completions.generate(model, tokenizer, [prompt for prompt, _ in pairs],
                                          cfg.probes.max_new_tokens, cfg.precision) if greedy else [None] * len(batch))
        controls = [None] * len(batch)
        if control is not None:
            control_pairs = [answer_ids(tokenizer, control.translate_text(p["prompt"]), p["answer"]) for p in batch]
            controls = completions.continuation_logprobs(model, control_pairs, tokenizer.pad_token_id,
                                                         cfg.precision, cfg.batch_size)
        for probe, (logprob, rank), ids, control_logprob in zip(batch, scored, generated, controls, strict=True):
            record = {"prompt": probe["prompt"], "answer": probe["answer"], "p_answer": math.exp(sum(logprob)),
                      "rank": rank}
            if ids is not None:
                completion = tokenizer.decode(ids, skip_special_tokens=True)
                record["completion"] = completion
                record["hit"] = probe["answer"].strip().lower() in completion.lower()
            if control_logprob is not None:
                record["p_control"] = math.exp(sum(control_logprob))
            records.append(record)
        bar.update(len(batch))
    bar.close()
    return records


def summarize(name: str, records: list[dict]) -> dict[str, float]:
    """`{name}_p_answer`, `{name}_reciprocal_rank` and, with greedy completions, `{name}_hit_rate`."""
    summary = {
        f"{name}_p_answer": sum(r["p_answer"] for r in records) / len(records),
        f"{name}_reciprocal_rank": sum(1 / r["rank"] for r in records) / len(records),
    }
    if all("hit" in r for r in records):
        summary[f"{name}_hit_rate"] = sum(r["hit"] for r in records) / len(records)
    return summary
