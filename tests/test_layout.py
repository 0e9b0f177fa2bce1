"""The folder tree is the architecture: a folder imports only from the layers before it, and no module
grows past about 400 lines."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "whoharry"
# each layer may import from itself and the layers before it
LAYERS = ["errors", "method", "config", "core", "anchors", "evaluation", "stages", "experiments", "cli", "__init__"]
RANK = {name: index for index, name in enumerate(LAYERS)}
MAX_LINES = 425


def layer_of(module: str) -> str:
    """The layer of `whoharry.x.y` (core and config stand together: the settings parser is core's)."""
    parts = module.split(".")
    if len(parts) == 1:
        return "__init__"
    return "core" if parts[1] == "config" else parts[1].removesuffix(".py")


def imports(path: Path) -> list[tuple[int, str, list[str]]]:
    """(line, module, names) of every `whoharry` import in a file, however deep in the code."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "whoharry":
            found.append((node.lineno, node.module, [alias.name for alias in node.names]))
        elif isinstance(node, ast.Import):
            found += [(node.lineno, alias.name, []) for alias in node.names if alias.name.startswith("whoharry.")]
    return found


def modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_a_module_imports_only_from_its_layer_and_the_ones_before(path):
    relative = path.relative_to(PACKAGE)
    own = "__init__" if relative == Path("__init__.py") else (
        relative.parts[0].removesuffix(".py") if relative.parts[0] not in ("config.py", "config") else "core")
    if own == "__main__":
        return
    for line, module, names in imports(path):
        if module == "whoharry" and names in (["__version__"], ["__version__", "Config"]):
            continue  # the version string lives in the package root
        target = layer_of(module)
        if module == "whoharry":
            target = "__init__"
        assert RANK[target] <= RANK[own], f"{relative}:{line} imports {module} ({target}) from layer {own}"


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_module_is_longer_than_about_400_lines(path):
    assert len(path.read_text(encoding="utf-8").splitlines()) <= MAX_LINES


def test_the_layers_name_every_folder():
    folders = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").is_file()}
    assert folders <= set(LAYERS)
