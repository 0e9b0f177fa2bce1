"""Import the paper's published anchor dictionary (GPT-4 answers) into one anchor mapping.

The authors published their dictionary as a NumPy `.npy` file: a 1-D array of unicode strings
(dtype like `<U1029`), one GPT-4 answer per passage of the books, each holding a Python dict literal:

    translations = {
        "Harry": "Jon",
        "Hog's Head": "Boar's Crown",
        "owls": ["ravens", "crows"]
    }

Values are one string or a list of strings. The fixed-width dtype cut some answers off, so the closing
brace may be missing, and an answer may carry stray text around the dict. Each answer is read as a whole
dict literal when it parses; otherwise its complete `"key": "value"` / `"key": ["a", "b"]` entries are
salvaged one by one (an entry whose key or value is not a plain string literal is skipped). A `.json`
file holding a mapping, or a list of mappings and answer strings, is read the same way. All answers are
merged into one mapping (every alternative kept, first-seen order), and the paper's filters then drop the
composite keys that the authors' label script splits into parts. The authors' values are kept as they are,
also those that open with a function word (`the castle`); how many do is reported, and `anchors check`
lists them.

Safety rule: the file and its answers are data, never code. Literals are read with `ast.literal_eval`
only (never `eval`, `exec` or pickle; a dict is split into its pairs with `ast.parse`, which compiles and
runs nothing), and `.npy` files are loaded with `allow_pickle=False`: an object (pickled) array is refused
before anything in it is unpickled.
"""

from __future__ import annotations

import ast
import json
import re
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy

from whoharry.anchors.dictionary import composite_keys, function_word_values, write_dictionary
from whoharry.errors import WhoharryError

SUPPORTED_SUFFIXES = (".npy", ".json")
_NPY_MAGIC = b"\x93NUMPY"

_STRING = r"""(?:"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*')"""
_LIST = rf"\[\s*{_STRING}(?:\s*,\s*{_STRING})*\s*,?\s*\]"
# One complete entry: it starts the text or a line or follows `{` or `,`; it ends a line or meets `,`, `}` or `#`.
_ENTRY = re.compile(
    rf"(?:(?<=[{{,\n])|\A)\s*(?P<key>{_STRING})\s*:\s*(?P<value>{_STRING}|{_LIST})(?=[ \t\r]*(?:[,}}\n#]|\Z))"
)
_LITERAL_ERRORS = (ValueError, SyntaxError, TypeError, MemoryError, RecursionError)


@dataclass
class ImportStats:
    """What reading a dictionary file found."""

    answers: int = 0  # answers (passages) read
    parsed: int = 0  # answers whose whole dict literal parsed
    salvaged: int = 0  # answers parsed entry by entry because the dict was cut off or malformed
    unreadable: int = 0  # answers from which no entry could be read
    entries: int = 0  # key/value pairs read in all (before merging)
    keys: int = 0  # distinct keys after merging (before filters)
    dropped_composite: list[str] = field(default_factory=list)  # keys dropped by the paper's filters
    function_word_values: int = 0  # kept values that open with a function word (`anchors check` lists them)


def _clean_key(key: object) -> str | None:
    """The stripped key, or None when it is not a non-empty string."""
    if not isinstance(key, str):
        return None
    return key.strip() or None


def _clean_values(value: object) -> list[str]:
    """A value as a list of distinct stripped non-empty strings (a single string gives one item)."""
    items = [value] if isinstance(value, str) else value if isinstance(value, list | tuple) else []
    values: list[str] = []
    for item in items:
        if isinstance(item, str) and item.strip() and item.strip() not in values:
            values.append(item.strip())
    return values


def _add(entries: dict[str, list[str]], key: object, value: object) -> None:
    """Add one raw pair to `entries` if both key and value are usable."""
    clean_key, values = _clean_key(key), _clean_values(value)
    if clean_key is None or not values:
        return
    known = entries.setdefault(clean_key, [])
    known.extend(item for item in values if item not in known)


def _clean_mapping(raw: Mapping[object, object]) -> dict[str, list[str]]:
    """A raw mapping's usable entries."""
    entries: dict[str, list[str]] = {}
    for key, value in raw.items():
        _add(entries, key, value)
    return entries


def _ignore_escape_warnings() -> None:
    """Silence the invalid-escape warning (DeprecationWarning before 3.12, SyntaxWarning after)."""
    warnings.simplefilter("ignore", DeprecationWarning)
    warnings.simplefilter("ignore", SyntaxWarning)


def _literal(text: str) -> object:
    """`ast.literal_eval(text)`, or None when the text is not a plain literal."""
    try:
        with warnings.catch_warnings():
            _ignore_escape_warnings()  # an invalid escape such as "\d" is kept as typed
            return ast.literal_eval(text)
    except _LITERAL_ERRORS:
        return None


def _dict_literal(text: str) -> dict[str, list[str]] | None:
    """A whole dict literal's usable entries (a repeated key keeps every value), or None if it is not one.

    The text is only parsed; each key and value is read with `ast.literal_eval`, so nothing is run.
    """
    try:
        with warnings.catch_warnings():
            _ignore_escape_warnings()
            tree = ast.parse(text, mode="eval")
    except _LITERAL_ERRORS:
        return None
    if not isinstance(tree.body, ast.Dict) or any(key is None for key in tree.body.keys):
        return None
    try:
        nodes = zip(tree.body.keys, tree.body.values, strict=True)
        pairs = [(ast.literal_eval(key), ast.literal_eval(value)) for key, value in nodes]
    except _LITERAL_ERRORS:
        return None
    entries: dict[str, list[str]] = {}
    for key, value in pairs:
        _add(entries, key, value)
    return entries


def _salvage(text: str) -> dict[str, list[str]]:
    """The complete entries found one by one in a cut-off or malformed dict literal."""
    entries: dict[str, list[str]] = {}
    for match in _ENTRY.finditer(text):
        _add(entries, _literal(match.group("key")), _literal(match.group("value")))
    return entries


def parse_answer(text: str) -> tuple[dict[str, list[str]], str]:
    """One answer's dictionary and how it was read: 'parsed' (the text from its first `{` to its last `}`,
    or to its end, is a whole dict literal), 'salvaged' (complete entries found one by one) or
    'unreadable' (no usable entry). Nothing in the text is run."""
    start = text.find("{")
    if start >= 0:
        end = text.rfind("}")
        literal = text[start : end + 1] if end > start else text[start:]
        entries = _dict_literal(literal)
        if entries is not None:
            return entries, "parsed" if entries else "unreadable"
    entries = _salvage(text[max(start, 0) :])
    return entries, "salvaged" if entries else "unreadable"


def merge(dicts: Iterable[dict[str, list[str]]]) -> dict[str, list[str]]:
    """One dictionary with every alternative seen for each key, in first-seen order, without duplicates."""
    merged: dict[str, list[str]] = {}
    for entries in dicts:
        for key, values in entries.items():
            known = merged.setdefault(key, [])
            known.extend(value for value in values if value not in known)
    return merged


def _npy_answers(path: Path) -> list[str]:
    """The answer strings of a `.npy` file: a 1-D array of str, loaded without pickle."""
    try:
        with path.open("rb") as handle:
            magic = handle.read(len(_NPY_MAGIC))
    except OSError as error:
        raise WhoharryError(f"cannot read dictionary file {path}: {error.strerror or error}") from error
    if magic != _NPY_MAGIC:
        raise WhoharryError(f"{path} is not a valid .npy file (no NumPy header)")
    try:
        array = numpy.load(path, allow_pickle=False)
    except ValueError as error:
        if "pickle" in str(error).lower():
            raise WhoharryError(f"{path} holds a pickled (object) array; pickled arrays are refused") from error
        raise WhoharryError(f"{path} is not a valid .npy file: {error}") from error
    except (OSError, EOFError) as error:
        raise WhoharryError(f"{path} is not a valid .npy file: {error}") from error
    if not isinstance(array, numpy.ndarray) or array.ndim != 1 or array.dtype.kind != "U":
        shape = getattr(array, "shape", "?")
        dtype = getattr(array, "dtype", type(array).__name__)
        raise WhoharryError(f"{path} must hold a 1-D array of str, not dtype {dtype} with shape {shape}")
    return [str(item) for item in array]


def _json_answers(path: Path) -> list[dict[str, list[str]] | str]:
    """The answers of a `.json` file: one mapping, or a list of mappings and answer strings."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise WhoharryError(f"{path}: invalid JSON at line {error.lineno}: {error.msg}") from error
    except UnicodeDecodeError as error:
        raise WhoharryError(f"{path}: not UTF-8 text ({error.reason})") from error
    except OSError as error:
        raise WhoharryError(f"cannot read dictionary file {path}: {error.strerror or error}") from error
    if isinstance(data, dict):
        return [_clean_mapping(data)]
    if not isinstance(data, list):
        raise WhoharryError(f"{path}: expected a mapping or a list, not {type(data).__name__}")
    answers: list[dict[str, list[str]] | str] = []
    for index, item in enumerate(data):
        if isinstance(item, dict):
            answers.append(_clean_mapping(item))
        elif isinstance(item, str):
            answers.append(item)
        else:
            raise WhoharryError(f"{path}: item {index} is a {type(item).__name__}, not a mapping or a string")
    return answers


def _read_answers(path: Path) -> list[dict[str, list[str]] | str]:
    """The raw answers of a supported file, by suffix."""
    if not path.exists():
        raise WhoharryError(f"dictionary file not found: {path}")
    if not path.is_file():
        raise WhoharryError(f"dictionary path is not a file: {path}")
    suffix = path.suffix.lower()
    if suffix == ".npy":
        return list(_npy_answers(path))
    if suffix == ".json":
        return _json_answers(path)
    raise WhoharryError(f"unsupported dictionary file {path}: use one of {', '.join(SUPPORTED_SUFFIXES)}")


def read_dictionary(path: Path, *, filters: bool = True,
                    salvage: bool = True) -> tuple[dict[str, list[str]], ImportStats]:
    """Read a `.npy` or `.json` dictionary file into one merged mapping, with the paper's filters if asked.

    Args:
        path: the file.
        filters: drop the composite keys the authors' label script splits (`composite_keys`).
        salvage: keep the complete entries of an answer cut off or malformed; without it such an answer
            is dropped whole, as the authors' parser drops it (counted as unreadable).

    Returns:
        (term -> its distinct alternatives in first-seen order, what reading found).

    Raises:
        WhoharryError: the file is missing, not a file, of another suffix, unreadable, or not of the
            expected shape (a `.npy` file that is not a 1-D str array, or a pickled one; a `.json` file
            that is not valid JSON, not UTF-8, or not a mapping or a list of mappings and strings).
    """
    path = Path(path)
    stats = ImportStats()
    dicts: list[dict[str, list[str]]] = []
    for answer in _read_answers(path):
        if isinstance(answer, str):
            entries, how = parse_answer(answer)
            if how == "salvaged" and not salvage:
                entries, how = {}, "unreadable"
        else:
            entries, how = answer, "parsed" if answer else "unreadable"
        stats.answers += 1
        if how == "parsed":
            stats.parsed += 1
        elif how == "salvaged":
            stats.salvaged += 1
        else:
            stats.unreadable += 1
        stats.entries += len(entries)
        dicts.append(entries)
    merged = merge(dicts)
    stats.keys = len(merged)
    if filters:
        stats.dropped_composite = composite_keys(merged)
        drop = set(stats.dropped_composite)
        merged = {key: values for key, values in merged.items() if key not in drop}
    stats.function_word_values = sum(len(values) for values in function_word_values(merged).values())
    return merged, stats


def import_dictionary(source: Path, out: Path, *, filters: bool = True, salvage: bool = True) -> str:
    """`read_dictionary` of `source` written to `out` as YAML; returns a one-line summary of what was read.

    Raises:
        WhoharryError: an unreadable or unsupported file, or one that holds no entries.
    """
    entries, stats = read_dictionary(source, filters=filters, salvage=salvage)
    if not entries:
        raise WhoharryError(f"{source} holds no dictionary entries")
    summary = (f"{stats.answers} answers ({stats.parsed} parsed, {stats.salvaged} salvaged, "
               f"{stats.unreadable} unreadable), {stats.entries} entries, {stats.keys} keys, "
               f"{len(stats.dropped_composite)} composite keys dropped, "
               f"{stats.function_word_values} values open with a function word (kept; `anchors check` lists them)")
    write_dictionary(out, entries, [f"Imported from {source.name} by `whoharry anchors import`: {summary}."])
    return f"wrote {len(entries)} keys to {out}: {summary}"
