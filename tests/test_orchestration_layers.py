"""`dcflow.orchestration` is layered: shared primitives below the verbs that use them.

Only the CLI imports the orchestration; inside it a module imports only from lower layers, so
no verb module reaches up into another verb's (an import at function level counts too).
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "dcflow.orchestration"

LAYERS = (
    {"campaign_files", "snakemake_main"},
    {"profiles", "catalogs", "settle"},
    {"snakemake_cli", "prepare", "cancel"},
    {"run", "plan_status", "ping"},
    {"rerun", "pictures", "sharded", "serve"},
    {"report"},
)
"""Orchestration modules, lowest first; a module imports only from layers below its own."""


def _imports(path: Path) -> set[str]:
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
    return out


def test_every_orchestration_module_has_a_layer():
    modules = {p.stem for p in (SRC / "dcflow" / "orchestration").glob("*.py")} - {"__init__"}
    assert modules == set().union(*LAYERS)


def test_orchestration_imports_only_downwards():
    level = {m: i for i, layer in enumerate(LAYERS) for m in layer}
    upward = []
    for module, mine in level.items():
        for name in _imports(SRC / "dcflow" / "orchestration" / f"{module}.py"):
            if name == PACKAGE or name.startswith(PACKAGE + "."):
                other = name.removeprefix(PACKAGE).lstrip(".")
                if not other or level[other] >= mine:
                    upward.append((module, name))
    assert upward == []


def test_only_the_cli_imports_the_orchestration():
    users = []
    for path in (SRC / "dcflow").rglob("*.py"):
        if "orchestration" in path.parts or path.name == "cli.py":
            continue
        if any(n == PACKAGE or n.startswith(PACKAGE + ".") for n in _imports(path)):
            users.append(str(path.relative_to(SRC)))
    assert users == []
