"""The package's import structure: a light CLI entry point and no import cycles between modules."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {
    "robustlab": ROOT / "robustlab",
    "robustlab.attacks": ROOT / "attacks",
    "robustlab.defenses": ROOT / "defenses",
}


def _modules() -> dict[str, Path]:
    found = {}
    for package, folder in PACKAGES.items():
        for path in folder.rglob("*.py"):
            parts = path.relative_to(folder).with_suffix("").parts
            name = ".".join((package, *parts)).removesuffix(".__init__")
            found[name] = path
    return found


def _imports(path: Path, name: str, known: set[str]) -> set[str]:
    """Modules of the package that ``name`` imports, deferred ones inside functions included.

    A package importing its own submodules counts too (that is how registries fill, ``robustlab.attacks``): so a
    submodule must import what it shares with its siblings from a sibling, never from the package.
    """
    imported = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
        imported |= {n for n in names if n in known and n != name}
    return imported


def test_no_import_cycles() -> None:
    modules = _modules()
    graph = {name: _imports(path, name, set(modules)) for name, path in modules.items()}

    def cycle_from(start: str) -> list[str] | None:
        stack = [(start, [start])]
        while stack:
            node, path = stack.pop()
            for nxt in graph[node]:
                if nxt == start:
                    return [*path, start]
                if nxt not in path:
                    stack.append((nxt, [*path, nxt]))
        return None

    cycles = [cycle for name in sorted(graph) if (cycle := cycle_from(name))]
    assert not cycles, f"import cycle: {' -> '.join(cycles[0])}"


def test_the_core_reaches_attacks_only_through_their_registry() -> None:
    """The core imports the ``robustlab.attacks`` package (it fills the registry), never one attack's module:
    what an attack provides (APGD for the convergence check, fooling's writer) it finds by name."""
    modules = _modules()
    core = {name: path for name, path in modules.items() if path.is_relative_to(PACKAGES["robustlab"])}
    reached = {
        f"{name} imports {imported}"
        for name, path in core.items()
        for imported in _imports(path, name, set(modules))
        if imported.startswith("robustlab.attacks.")
    }
    assert not reached, sorted(reached)


def test_cli_entry_point_does_not_import_torch() -> None:
    code = "import sys, robustlab.cli; print(sorted(m for m in ('torch', 'robustlab.evaluate') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_registering_the_attacks_does_not_import_torchmetrics() -> None:
    # torchmetrics took 3.4 s of a 14 s `robustlab eval`; only caption scoring needs it
    code = "import sys, attacks; print('torchmetrics' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_help_and_list_do_not_import_the_evaluator() -> None:
    code = (
        "import sys; from click.testing import CliRunner; from robustlab.cli import cli\n"
        "for args in (['--help'], ['list']): assert CliRunner().invoke(cli, args).exit_code == 0\n"
        "print('robustlab.evaluate' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_an_empty_hub_cache_fails_before_torch_is_imported(tmp_path: Path) -> None:
    code = (
        "import sys; from click.testing import CliRunner; from robustlab.cli import cli\n"
        "result = CliRunner().invoke(cli, ['eval', '--model', 'timm:resnet18', '--weights', 'hub'])\n"
        "print(result.exit_code, 'torch' in sys.modules)"
    )
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env).stdout
    assert out.split() == ["2", "False"]
