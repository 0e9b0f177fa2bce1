"""Reading a target text and cutting its tokens into fixed-length blocks with character offsets."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from whoharry.core import corpus
from whoharry.errors import WhoharryError

if TYPE_CHECKING:
    from whoharry.config import DataConfig


@dataclass
class Blocks:
    """Token blocks of one text, all of the same length (tokens). `offsets[b][i]` is the (start, end)
    character span of token i of block b; a BOS token that the tokenizer adds gets the empty span at the
    block's start. `dropped_tokens` counts the tokens of the tail left out (shorter than one block)."""

    text: str
    ids: list[list[int]]
    offsets: list[list[tuple[int, int]]]
    dropped_tokens: int  # the tail shorter than one block
    bos_token_id: int | None


def read_jsonl(path: Path, what: str, check: Callable[[object], bool], expected: str, *,
               allow_download: bool = False) -> list[dict]:
    """The rows of a JSONL file, blank lines skipped; or of any other table source `core.corpus` reads
    (JSON, CSV, Parquet, a `save_to_disk` folder, a hub dataset), the row's columns as its fields.

    Args:
        path: the file (UTF-8), folder or `hf:` hub id.
        what: what the file is, for messages ("question file").
        check: whether a row (a JSON object) has the fields it needs.
        expected: the shape of a good row, for messages.
        allow_download: fetch a hub dataset that is not cached.

    Raises:
        WhoharryError: as `read_text` raises it; a line that is not JSON, not an object, or fails `check`
            (with its line number; a row number for other sources); or a source with no rows.
    """
    if corpus.is_table(path) and path.suffix.lower() != ".jsonl":
        return corpus.table_rows(corpus.load_table(path, what, allow_download=allow_download), path, what, check,
                                 expected)
    rows = []
    for number, row in corpus.json_lines(path, _read_plain(path, what), expected):
        if not check(row):
            raise WhoharryError(f"{path}:{number}: expected {expected}")
        rows.append(row)
    if not rows:
        raise WhoharryError(f"{what} {path} holds no entries")
    return rows


def read_text(path: Path, what: str = "target text", *, column: str = "text", allow_download: bool = False) -> str:
    """Read a UTF-8 text file (a leading byte-order mark removed), or fail with one line saying what is
    wrong with it. A table source (`core.corpus.is_table`: a .jsonl/.json/.csv/.parquet file, a
    `save_to_disk` folder or an `hf:` hub id) gives the non-blank values of its `column`, one document a
    row, joined by blank lines (so that paragraph-wise splits see each row as a paragraph at least).

    Raises:
        WhoharryError: the file is missing or a folder, holds NUL bytes (binary), is not UTF-8, or is empty
            or blank; for a table source, as `corpus.load_table` and `corpus.table_texts` raise it.
    """
    if corpus.is_table(path):
        table = corpus.load_table(path, what, allow_download=allow_download)
        return "\n\n".join(corpus.table_texts(table, column, path, what))
    return _read_plain(path, what)


def _read_plain(path: Path, what: str) -> str:
    """A UTF-8 text file's text, as `read_text` checks it."""
    if path.is_dir():
        raise WhoharryError(f"{what} {path} is a folder; give a UTF-8 text file")
    if not path.is_file():
        raise WhoharryError(f"{what} not found: {path}")
    raw = path.read_bytes()
    if b"\x00" in raw:
        raise WhoharryError(f"{what} {path} looks binary (it holds NUL bytes); give a UTF-8 text file")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise WhoharryError(
            f"{what} {path} is not UTF-8 (byte {exc.start}); convert it, e.g. iconv -t UTF-8"
        ) from None
    if not text.strip():
        raise WhoharryError(f"{what} {path} is empty")
    return text.removeprefix("\ufeff")


def read_target(data: DataConfig, path: Path | None = None, what: str = "target text") -> str:
    """The text of `data.target` (or of `path`, a retain text), read with the data section's text column
    and download setting; raises as `read_text` does."""
    return read_text(data.target if path is None else path, what, column=data.text_column,
                     allow_download=data.allow_download)


def target_hash(data: DataConfig, path: Path | None = None) -> str:
    """What identifies the content of `data.target` (or of `path`, a retain text) for stage keys:
    `corpus.source_hash` under the data section's download setting."""
    return corpus.source_hash(data.target if path is None else path, allow_download=data.allow_download)


def adds_bos(tokenizer: PreTrainedTokenizerBase) -> int | None:
    """The BOS id when the tokenizer puts one before every sequence (Llama-style), else None (checked by
    tokenizing "a")."""
    bos = tokenizer.bos_token_id
    if bos is None:
        return None
    ids = tokenizer("a").input_ids
    return bos if ids and ids[0] == bos else None


def make_blocks(text: str, tokenizer: PreTrainedTokenizerBase, block_length: int) -> Blocks:
    """Tokenize the whole text once (no special tokens) and cut it into consecutive blocks of
    `block_length` tokens, BOS included when the tokenizer adds one (`adds_bos`); the tail shorter than a
    block is dropped.

    Raises:
        WhoharryError: the text holds fewer tokens than one block.
    """
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
    ids: list[int] = encoded["input_ids"]
    offsets: list[tuple[int, int]] = [tuple(span) for span in encoded["offset_mapping"]]
    bos = adds_bos(tokenizer)
    body = block_length - (1 if bos is not None else 0)
    count = len(ids) // body
    if count == 0:
        raise WhoharryError(
            f"the text has {len(ids)} tokens, fewer than one block of {block_length}; "
            "give a longer text or a smaller data.block_length"
        )
    block_ids: list[list[int]] = []
    block_offsets: list[list[tuple[int, int]]] = []
    for b in range(count):
        chunk_ids = ids[b * body : (b + 1) * body]
        chunk_offsets = offsets[b * body : (b + 1) * body]
        if bos is not None:
            start = chunk_offsets[0][0]
            chunk_ids = [bos, *chunk_ids]
            chunk_offsets = [(start, start), *chunk_offsets]
        block_ids.append(chunk_ids)
        block_offsets.append(chunk_offsets)
    return Blocks(text, block_ids, block_offsets, len(ids) - count * body, bos)


def heldout_split(text: str, share: float, pieces: int) -> tuple[str, str]:
    """Cut a text into what is trained on and what is held out: runs of whole paragraphs (blank-line
    separated), spread evenly over the text, together about `share` of its characters. Spread, not one
    slice at the end, so that the held-out text comes from every part of the book (its later names, its
    later plot) and membership inference compares like with like. There are `pieces` runs, fewer when the
    text has too few paragraphs for that many at this share (at most share × paragraphs, at least one); a
    run stops before a paragraph that would take it past its length by more than half that paragraph.

    Returns:
        (training text, held-out text), each paragraph kept whole, paragraphs joined by blank lines; every
        paragraph is in exactly one of them.

    Raises:
        WhoharryError: `share` is not in (0, 0.5], or the text has fewer than two paragraphs.
    """
    if not 0 < share <= 0.5:
        raise WhoharryError(f"the held-out share must be in (0, 0.5], got {share}")
    paragraphs = [p.strip() for p in re.split(r"\n\s*\n", text.replace("\r\n", "\n")) if p.strip()]
    if len(paragraphs) < 2:
        raise WhoharryError(f"the text has {len(paragraphs)} paragraph (blank-line separated); holding some out "
                            "of training needs at least two")
    runs = max(1, min(pieces, int(share * len(paragraphs))))
    per_run = share * sum(map(len, paragraphs)) / runs
    held: set[int] = set()
    for start in (i * len(paragraphs) // runs for i in range(runs)):
        # a run starts in the middle of its stretch of the text and takes paragraphs until it is long enough
        index, length = start + (len(paragraphs) // runs) // 2, 0
        while index < len(paragraphs) and len(held) < len(paragraphs) - 1:
            size = len(paragraphs[index])
            if length and (length >= per_run or length + size / 2 > per_run):
                break
            held.add(index)
            length += size
            index += 1
    train = "\n\n".join(p for i, p in enumerate(paragraphs) if i not in held)
    heldout = "\n\n".join(p for i, p in enumerate(paragraphs) if i in held)
    return train + "\n", heldout + "\n"


def evenly_spread(n: int, k: int) -> list[int]:
    """`k` indices spread evenly over `range(n)`, from 0 (`i * n // k`); all of them when n <= k."""
    return list(range(n)) if n <= k else [i * n // k for i in range(k)]


def pad(sequences: list[list[int]], pad_id: int, *, left: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Token sequences of different lengths as one batch and its attention mask, both [n, longest] int64
    (mask 1 on tokens, 0 on padding); padding goes on the right (for scoring) or, with `left`, on the left
    (for generation). `sequences` must not be empty (`ValueError`)."""
    width = max(len(seq) for seq in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, seq in enumerate(sequences):
        span = slice(width - len(seq), width) if left else slice(0, len(seq))
        ids[row, span] = torch.tensor(seq, dtype=torch.long)
        mask[row, span] = 1
    return ids, mask
