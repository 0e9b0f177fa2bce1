"""Texts and rows from the sources 🤗 `datasets` reads: JSON Lines, JSON, CSV and Parquet files,
`Dataset.save_to_disk` folders, and hub datasets.

A hub dataset is named `hf:OWNER/NAME`, or `hf:OWNER/NAME#SPLIT` for a split other than `train`. Like a
hub model, it is read from the local Hugging Face cache unless downloads are allowed
(`data.allow_download`). Anything else that is a file is a plain UTF-8 text (`core.text.read_text`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from whoharry.errors import WhoharryError

if TYPE_CHECKING:
    from datasets import Dataset

HUB = "hf:"
BUILDERS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}
# the files that make a folder a `save_to_disk` dataset (one split) or dataset dict (several)
DISK_MARKERS = ("state.json", "dataset_dict.json")


def is_hub(path: Path) -> bool:
    """Whether `path` names a hub dataset (`hf:OWNER/NAME[#SPLIT]`), not a file."""
    return not path.is_absolute() and path.as_posix().startswith(HUB)


def is_table(path: Path) -> bool:
    """Whether `path` is read through `datasets` (a hub id, a folder, or a .jsonl/.json/.csv/.parquet file)
    rather than as a plain text file."""
    return is_hub(path) or path.is_dir() or path.suffix.lower() in BUILDERS


def is_saved(path: Path) -> bool:
    """Whether `path` is a `Dataset.save_to_disk` (or `DatasetDict`) folder."""
    return path.is_dir() and any((path / marker).is_file() for marker in DISK_MARKERS)


def hub_name(path: Path) -> tuple[str, str]:
    """(repository id, split) of a hub dataset path; the split defaults to `train`."""
    name, _, split = path.as_posix().removeprefix(HUB).partition("#")
    return name, split or "train"


def _snapshot(name: str, *, allow_download: bool) -> Path | None:
    """The local folder of a hub dataset's newest snapshot: from the local cache, or downloaded when allowed;
    None when it is not cached and downloads are off."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(name, repo_type="dataset", local_files_only=not allow_download))
    except LocalEntryNotFoundError:
        return None
    except Exception as exc:  # noqa: BLE001 - the hub's errors (network, unknown repository) end here
        raise WhoharryError(f"hub dataset {name!r} could not be fetched: {str(exc).splitlines()[0]}") from None


@contextmanager
def quiet() -> Iterator[None]:
    """`datasets` without its own progress bars (restored afterwards)."""
    import datasets
    from datasets.utils import logging as ds_logging

    was_off = datasets.are_progress_bars_disabled()
    level = ds_logging.get_verbosity()
    datasets.disable_progress_bars()
    ds_logging.set_verbosity(ds_logging.CRITICAL)  # its parse errors become ours, in one line
    try:
        yield
    finally:
        ds_logging.set_verbosity(level)
        if not was_off:
            datasets.enable_progress_bars()


def load_table(path: Path, what: str, *, allow_download: bool = False) -> Dataset:
    """The rows of a table source as one `datasets.Dataset`.

    A folder must be a `save_to_disk` dataset, or a dataset dict with a `train` split or a single split.

    Raises:
        WhoharryError: a missing file; a folder that is not a saved dataset; a dataset dict without a
            split to choose; a hub dataset not cached while downloads are off, or not fetchable; a file the
            builder cannot parse (for JSON Lines, the first line that is not a JSON object, by number).
    """
    import datasets

    with quiet():
        if is_hub(path):
            name, split = hub_name(path)
            local = _snapshot(name, allow_download=allow_download)
            if local is None:
                raise WhoharryError(f"{what}: hub dataset {name!r} is not in the local Hugging Face cache; "
                                    "pass data.allow_download=true to fetch it")
            try:
                return datasets.load_dataset(str(local), split=split)
            except Exception as exc:  # noqa: BLE001 - datasets' own errors (no such split, no data files)
                raise WhoharryError(f"{what}: hub dataset {name!r}, split {split!r}: "
                                    f"{str(exc).splitlines()[0]}") from None
        if path.is_dir():
            if not is_saved(path):
                raise WhoharryError(f"{what} {path} is a folder but not a saved dataset (no "
                                    f"{' or '.join(DISK_MARKERS)}); give a text or table file, or a "
                                    "Dataset.save_to_disk folder")
            return _one_split(datasets.load_from_disk(str(path)), path, what)
        if not path.is_file():
            raise WhoharryError(f"{what} not found: {path}")
        if _blank(path):
            raise WhoharryError(f"{what} {path} is empty")
        builder = BUILDERS[path.suffix.lower()]
        try:
            return datasets.load_dataset(builder, data_files=str(path), split="train")
        except Exception as exc:  # noqa: BLE001 - pyarrow's and datasets' parse errors
            if path.suffix.lower() == ".jsonl":
                _first_bad_line(path)
            raise WhoharryError(f"{what} {path} cannot be read as {builder.upper()}: "
                                f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None


def _blank(path: Path) -> bool:
    """Whether a file holds nothing but whitespace, read in 64 KiB chunks up to its first other byte."""
    with open(path, "rb") as handle:
        return not any(chunk.strip() for chunk in iter(lambda: handle.read(1 << 16), b""))


def _one_split(loaded: Any, path: Path, what: str) -> Dataset:
    """A loaded `Dataset`, or the `train` (or only) split of a `DatasetDict`."""
    if not hasattr(loaded, "keys"):
        return loaded
    splits = list(loaded.keys())
    if "train" in splits or len(splits) == 1:
        return loaded["train" if "train" in splits else splits[0]]
    raise WhoharryError(f"{what} {path} holds the splits {', '.join(splits)} and none is 'train'; "
                        "save the one to use on its own")


def json_lines(path: Path, text: str, expected: str) -> Iterator[tuple[int, dict]]:
    """(line number, object) for each non-blank line of a JSON Lines text read from `path`.

    Raises:
        WhoharryError: a line that is not JSON, or not an object (`path:N: expected {expected}`).
    """
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise WhoharryError(f"{path}:{number}: not valid JSON ({exc.msg})") from None
        if not isinstance(row, dict):
            raise WhoharryError(f"{path}:{number}: expected {expected}")
        yield number, row


def _first_bad_line(path: Path) -> None:
    """Raise the line-numbered error of the first line of a JSON Lines file that is not a JSON object."""
    for _ in json_lines(path, path.read_text(encoding="utf-8", errors="replace"), "a JSON object"):
        pass


def table_texts(table: Dataset, column: str, path: Path, what: str) -> list[str]:
    """The non-blank values of a text column, in row order (empty cells skipped like blank ones).

    Raises:
        WhoharryError: no such column (the columns there are named), a value that is not a string (by row
            number, from 1), or no text at all.
    """
    if column not in table.column_names:
        raise WhoharryError(f"{what} {path} has no column {column!r} (its columns: {', '.join(table.column_names)}); "
                            "name the text column with data.text_column")
    texts = []
    for number, value in enumerate(table[column], start=1):
        if value is None:  # an empty cell, as a blank one
            continue
        if not isinstance(value, str):
            raise WhoharryError(f"{what} {path}: row {number} of column {column!r} is not text "
                                f"({type(value).__name__})")
        if value.strip():
            texts.append(value)
    if not texts:
        raise WhoharryError(f"{what} {path} is empty (column {column!r} holds no text)")
    return texts


def table_rows(table: Dataset, path: Path, what: str, check: Callable[[object], bool], expected: str) -> list[dict]:
    """Every row as a dict, each passing `check`.

    Raises:
        WhoharryError: a row that fails `check` (by number, from 1), or no rows.
    """
    rows = []
    for number, row in enumerate(table, start=1):
        if not check(row):
            raise WhoharryError(f"{path}: row {number}: expected {expected}")
        rows.append(dict(row))
    if not rows:
        raise WhoharryError(f"{what} {path} holds no entries")
    return rows


def source_hash(path: Path, *, allow_download: bool = False) -> str:
    """What identifies a source's content, for stage keys (a str): a file's sha256 (16 hex digits); for a
    `save_to_disk` folder, the sha256 of every file's name and content; for a hub dataset, its id, split and snapshot
    commit (`uncached` when it is not cached and downloads are off); `missing` for anything else (nothing
    there, or a folder that is not a saved dataset).

    Raises:
        WhoharryError: a hub dataset that cannot be fetched while downloads are allowed.
    """
    from whoharry.core import artifacts  # not at the top: core.settings reads this module's HUB early

    if is_hub(path):
        name, split = hub_name(path)
        local = _snapshot(name, allow_download=allow_download)
        return f"{name}#{split}@{local.name if local is not None else 'uncached'}"
    if path.is_file():
        return artifacts.file_hash(path)
    if is_saved(path):
        digest = hashlib.sha256()
        for file in sorted(p for p in path.rglob("*") if p.is_file()):
            digest.update(file.relative_to(path).as_posix().encode() + b"\0" + artifacts.file_hash(file).encode())
        return digest.hexdigest()[:16]
    return "missing"


def source_bytes(path: Path) -> int:
    """The size on disk of a source, in bytes: a file's, or the sum of a folder's files; 0 for a hub
    dataset or nothing there."""
    if path.is_file():
        return path.stat().st_size
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return 0
