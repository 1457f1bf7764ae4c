"""The package's own import graph, read from the source (ast): a test asserts it has no cycle."""

from __future__ import annotations

import ast
from functools import lru_cache
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "streamline"
NAME = PACKAGE.name


def module_path(module: str) -> Path | None:
    """streamline.a.b -> its file (a module, or a package's __init__.py); None outside the package."""
    parts = module.split(".")
    if parts[0] != NAME:
        return None
    base = PACKAGE.joinpath(*parts[1:])
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def module_name(path: Path) -> str:
    rel = path.resolve().relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@lru_cache(maxsize=None)
def imports_of(module: str, top_level_only: bool = False) -> frozenset[str]:
    """Package modules that `module` imports (relative imports resolved; `from . import x` gives the module x).

    A package whose __init__ loads every module beside it (the adapter registry) imports them all.
    """
    path = module_path(module)
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    nodes = tree.body if top_level_only else ast.walk(tree)
    found = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.split(".")[0] == NAME}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{base}.{node.module}" if node.module else base
            else:
                base = node.module or ""
            if base.split(".")[0] != NAME:
                continue
            for alias in node.names:  # `from pkg import mod` imports a module; `from mod import name` the module
                found.add(f"{base}.{alias.name}" if module_path(f"{base}.{alias.name}") else base)
    if path.name == "__init__.py" and "iter_modules(__path__)" in path.read_text():  # a registry (adapters/)
        found |= {module_name(f) for f in path.parent.glob("*.py") if f.name != "__init__.py"}
    return frozenset(m for m in found if module_path(m) and m != module)
