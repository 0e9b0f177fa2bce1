"""Settings trees of dataclasses: defaults, merged with a YAML file, merged with `key=value` overrides.

Generic over any tree of dataclasses (the run config, the retrain-gap experiment): the dataclasses and
their type hints are the only schema. An unknown key fails with the closest valid key named (or, for a
key listed in a section's `RENAMED`, its new name); a value is coerced to its field's type, a `Literal`
field takes only its choices. Relative paths in a YAML file resolve against that file's folder; paths
given as overrides resolve against the current directory.

After merging, `check_tree` walks the tree and calls each section's own `check(prefix)` method, where
the range checks that no type can express stand beside the fields they check.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import types
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal, get_args

import yaml

from whoharry.core.corpus import HUB
from whoharry.errors import WhoharryError


def require(ok: bool, message: str) -> None:
    """Raise `WhoharryError(message)` unless `ok`: one range check of a section's `check`."""
    if not ok:
        raise WhoharryError(message)


def merge_sources(obj: Any, path: Path | None, overrides: list[str] | None) -> Any:
    """Merge a YAML file, then `key=value` overrides (dotted keys), into a dataclass tree (in place; returned).

    Raises:
        WhoharryError: a missing or malformed file, an unknown key, a value of the wrong type.
    """
    if path is not None:
        _merge(obj, _read_yaml(path), base_dir=path.resolve().parent, prefix="")
    for item in overrides or []:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise WhoharryError(f"--set expects key=value (for example labels.alpha=5), got {item!r}")
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            value = raw
        nested: Any = value
        for part in reversed(key.strip().split(".")):
            nested = {part: nested}
        _merge(obj, nested, base_dir=Path.cwd(), prefix="")
    return obj


def merge_mapping(obj: Any, values: dict[str, Any], base_dir: Path) -> Any:
    """Merge a mapping of settings (nested, as YAML reads them) into a dataclass tree, in place; returned.
    Relative paths resolve against `base_dir`.

    Raises:
        WhoharryError: an unknown key, a value of the wrong type.
    """
    _merge(obj, values, base_dir=base_dir, prefix="")
    return obj


def keys_given(path: Path | None, overrides: list[str] | None) -> frozenset[str]:
    """The dotted keys a user set: every leaf key of the YAML file `path` (None: no file of theirs) and the
    key of every `key=value` override.

    Raises:
        WhoharryError: a missing or malformed file.
    """
    keys = {key for key, _ in leaves(_read_yaml(path))} if path is not None else set()
    keys.update(item.partition("=")[0].strip() for item in overrides or [])
    return frozenset(keys)


def leaves(node: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    """Every leaf of a nested mapping as `(dotted key, value)`, depth first in order (an empty mapping is a
    leaf)."""
    for key, value in node.items():
        if isinstance(value, dict) and value:
            yield from leaves(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def as_overrides(settings: dict[str, Any]) -> list[str]:
    """A mapping of dotted keys to values as `--set key=value` strings (values written as YAML)."""
    return [f"{key}={value if isinstance(value, str) else json.dumps(value)}" for key, value in settings.items()]


def check_tree(obj: Any, prefix: str = "") -> None:
    """Check a merged tree: each section's own `check(prefix)`, then that every `Literal` field (or list
    item) holds one of its choices, section by section, depth first.

    Raises:
        WhoharryError: the first value out of range, named by its dotted key.
    """
    check = getattr(obj, "check", None)
    if callable(check):
        check(prefix)
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            check_tree(value, f"{prefix}{f.name}.")
            continue
        hint = hints[f.name]
        items = value if typing.get_origin(hint) is list and isinstance(value, list) else [value]
        if typing.get_origin(hint) is list:
            (hint,) = get_args(hint)
        if typing.get_origin(hint) is Literal:
            choices = get_args(hint)
            for item in items:
                require(item in choices, f"{prefix}{f.name} must be one of {', '.join(map(str, choices))}, "
                                         f"got {item!r}")


def leaf_keys(obj: Any, prefix: str = "") -> list[str]:
    """Every settable dotted key of a dataclass tree (the sections themselves left out), in field order."""
    keys = []
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        keys += leaf_keys(value, f"{prefix}{f.name}.") if dataclasses.is_dataclass(value) else [f"{prefix}{f.name}"]
    return keys


def to_dict(obj: Any) -> Any:
    """A dataclass tree as plain YAML-able data (paths as strings)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, list):
        return [to_dict(item) for item in obj]
    return obj


def fingerprint(data: Any) -> str:
    """A stable hash of plain data (or a dataclass tree), used to tell whether a stage's settings changed."""
    blob = json.dumps(to_dict(data), sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def without_later_defaults(settings: dict[str, Any], later: dict[str, Any]) -> dict[str, Any]:
    """A section's settings (as `to_dict` gives them) as they enter a fingerprint: those added after its
    results were first made (`later`: name -> default) are left out while they hold their default, so a
    result made before they existed keeps its key."""
    return {name: value for name, value in settings.items() if name not in later or value != later[name]}


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise WhoharryError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise WhoharryError(f"{path}: YAML syntax error{where}: {getattr(exc, 'problem', exc)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise WhoharryError(f"{path}: expected a mapping of config keys at the top level")
    return data


def _unknown_key(obj: Any, key: str, dotted: str, prefix: str, names: list[str]) -> WhoharryError:
    """The error for an unknown key: its new name when the section lists it as renamed, else the closest one."""
    renamed: dict[str, str] = getattr(type(obj), "RENAMED", {})
    if key in renamed:
        return WhoharryError(f"unknown config key {dotted!r}: it is now {prefix + renamed[key]!r}")
    valid = [f"{prefix}{name}" for name in names]
    close = difflib.get_close_matches(dotted, valid, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else f"; valid keys: {', '.join(valid)}"
    return WhoharryError(f"unknown config key {dotted!r}{hint}")


def _merge(obj: Any, values: dict[str, Any], *, base_dir: Path, prefix: str) -> None:
    names = [f.name for f in dataclasses.fields(obj)]
    hints = typing.get_type_hints(type(obj))
    for key, value in values.items():
        dotted = f"{prefix}{key}"
        if key not in names:
            raise _unknown_key(obj, key, dotted, prefix, names)
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                moved = getattr(type(obj), "RENAMED", {}).get(key)
                where = f" (the value it once took is now {prefix + moved!r})" if moved else ""
                raise WhoharryError(f"config key {dotted!r} is a section; give it a mapping of keys{where}")
            _merge(current, value, base_dir=base_dir, prefix=f"{dotted}.")
        elif typing.get_origin(hints[key]) is dict and isinstance(value, dict) and value:
            # a mapping field: a non-empty mapping merges into it key by key (an empty one or null clears it)
            setattr(obj, key, _merged(current, _coerce(value, hints[key], dotted, base_dir)))
        else:
            setattr(obj, key, _coerce(value, hints[key], dotted, base_dir))


def _merged(current: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """`new` merged into a copy of `current`, nested mappings key by key."""
    out = dict(current)
    for key, value in new.items():
        out[key] = _merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _coerce(value: Any, hint: Any, dotted: str, base_dir: Path) -> Any:
    """`value` (as YAML read it) as the type `hint` asks for; relative paths resolve against `base_dir`."""
    if typing.get_origin(hint) is Literal:
        choices = get_args(hint)
        if value in choices:
            return value
        raise WhoharryError(f"{dotted} must be one of {', '.join(map(str, choices))}, got {value!r}")
    if hint is Any:
        return value
    if typing.get_origin(hint) is dict:
        _, item = typing.get_args(hint)
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise WhoharryError(f"config key {dotted!r} must be a mapping, got {value!r}")
        return {str(k): _coerce(v, item, f"{dotted}.{k}", base_dir) for k, v in value.items()}
    if typing.get_origin(hint) is list:
        (item,) = typing.get_args(hint)
        items = [] if value is None else value if isinstance(value, list) else [value]
        return [_coerce(v, item, f"{dotted}[{i}]", base_dir) for i, v in enumerate(items)]
    options = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    if value is None:
        if type(None) in options:
            return None
        raise WhoharryError(f"config key {dotted!r} cannot be empty")
    for kind in options:
        if kind is Path and isinstance(value, str):
            if value.startswith(HUB):  # a hub dataset id, not a file: not resolved against base_dir
                return Path(value)
            path = Path(value).expanduser()
            return path if path.is_absolute() else (base_dir / path).resolve()
        if kind is bool and isinstance(value, bool):
            return value
        if kind is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if kind is float and isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if kind is float and isinstance(value, str):
            # PyYAML reads `3e-5` (no dot) as text; take it as the number it plainly is
            try:
                return float(value)
            except ValueError:
                pass
        if kind is str and isinstance(value, str | int | float) and not isinstance(value, bool):
            return str(value)
    wanted = " or ".join(getattr(k, "__name__", str(k)) for k in options if k is not type(None))
    raise WhoharryError(f"config key {dotted!r} must be {wanted}, got {value!r}")
