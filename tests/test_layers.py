"""The layer rule of docs/ARCHITECTURE.md, checked on the source: every import of the package
points downwards (mathematics <- components <- application)."""

from __future__ import annotations

import ast
from pathlib import Path

import discrete_diffusion

PACKAGE = Path(discrete_diffusion.__file__).parent
COMPONENTS = ("data", "networks", "methods", "evaluation", "figures")
APPLICATION = ("training", "cli")
CONTRACTS = ("data.base", "methods.base")  # the interfaces components may share
STANDALONE = ("files", "progress", "extras")  # helpers: import nothing of the package


def _module(path: Path) -> str:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(p for p in parts if p != "__init__")


def _imports(path: Path) -> set[str]:
    """Package modules imported by a file, relative to `discrete_diffusion` ("" = the top)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        for name in names:
            if name == "discrete_diffusion" or name.startswith("discrete_diffusion."):
                found.add(name.removeprefix("discrete_diffusion").lstrip("."))
    return found


def _layer(name: str) -> str:
    top = name.split(".")[0]
    if top in STANDALONE:
        return "files"
    if top in COMPONENTS:
        return "component"
    if top in APPLICATION:
        return "application"
    return "maths"


def _is_module(name: str) -> bool:
    """Whether `name` is a module or package (rather than an attribute imported from one)."""
    path = PACKAGE.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def _allowed(importer: str, imported: str) -> bool:
    if imported == "" or not _is_module(imported):
        return True  # `from discrete_diffusion.x import name`: the module x is checked too
    layer, target = _layer(importer), _layer(imported)
    if layer == "files":
        return False
    if layer == "maths":
        return target == "maths"
    if layer == "component":
        own = importer.split(".")[0] == imported.split(".")[0]
        return target in ("maths", "files") or own or imported in CONTRACTS
    if layer == "application":
        return importer.split(".")[0] == "cli" or not imported.startswith("cli")
    return True


def test_every_import_points_downwards() -> None:
    wrong = []
    for path in sorted(PACKAGE.rglob("*.py")):
        importer = _module(path)
        for imported in sorted(_imports(path)):
            if not _allowed(importer, imported):
                wrong.append(f"{importer} imports {imported}")
    assert not wrong, "layer rule broken:\n" + "\n".join(wrong)


def test_the_checker_sees_a_broken_rule() -> None:
    assert not _allowed("process", "data.base")
    assert not _allowed("transitions.uniform", "training.trainer")
    assert not _allowed("data.images", "figures.grid")
    assert not _allowed("networks.mlp", "training.config")
    assert not _allowed("files", "data.base")
    assert not _allowed("training.trainer", "cli.main")
    assert _allowed("networks.mlp", "data.base")
    assert _allowed("evaluation.bound", "methods.base")
    assert _allowed("cli.eval", "training.builders")
