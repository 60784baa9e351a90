"""The package's shape holds: layers import one way, the writer child stays on the standard library,
app/ itself stays small, and no module passes on names it only imported."""

from __future__ import annotations

import ast
import importlib.util
import subprocess
import sys
from pathlib import Path

APP = Path(__file__).resolve().parents[1] / "app"
ROOT = APP.parent
MAX_TOP_LEVEL_MODULES = 8


def test_layers_import_one_way() -> None:
    """The import-linter contracts in pyproject.toml (layers top to bottom, settings a leaf)."""
    lint = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run([str(lint)], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_the_sqlite_writer_child_loads_only_the_standard_library_and_app() -> None:
    """It starts with every server and replay, and must not need what the parent has loaded."""

    def loaded(imports: str) -> set[str]:
        probe = f"import sys{imports}; print('\\n'.join(sys.modules))"
        run = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
        return set(run.stdout.split())

    at_start = loaded("")  # what the interpreter's own start-up loads (site, .pth hooks)
    names = loaded(", app.ingest.sqlite_writer") - at_start
    assert "app.ingest.sqlite_writer" in names
    foreign = sorted(name for name in names if name.split(".")[0] not in {*sys.stdlib_module_names, "app"})
    assert foreign == []


def test_app_itself_holds_few_modules_and_every_layer_is_a_package() -> None:
    modules = sorted(path.name for path in APP.glob("*.py") if path.name != "__init__.py")
    assert len(modules) <= MAX_TOP_LEVEL_MODULES, modules
    for folder in APP.iterdir():
        if folder.is_dir() and folder.name != "__pycache__":
            assert (folder / "__init__.py").is_file(), f"{folder} is not a package"


def _defined_names(path: Path) -> set[str]:
    """Names a module defines itself: functions, classes, assignments (not imports)."""
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign | ast.AnnAssign | ast.AugAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                for leaf in ast.walk(target):
                    if isinstance(leaf, ast.Name):
                        names.add(leaf.id)
    return names


def _module_path(module: str) -> Path | None:
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None or not spec.origin.endswith(".py"):
        return None
    return Path(spec.origin)


def test_no_module_re_exports_another_modules_names() -> None:
    """Every ``from app.x import name`` takes a name app.x defines (or a submodule of it), so each
    name has one home; app/__init__ files export nothing."""
    sources = [*APP.rglob("*.py"), *(ROOT / "tests").rglob("*.py"), *(ROOT / "bench").rglob("*.py")]
    sources.append(ROOT / "migrations" / "env.py")
    borrowed: list[str] = []
    for source in sources:
        for node in ast.walk(ast.parse(source.read_text())):
            if not isinstance(node, ast.ImportFrom) or not (node.module or "").startswith("app"):
                continue
            assert node.module is not None
            target = _module_path(node.module)
            if target is None:
                continue
            defined = _defined_names(target)
            package = target.name == "__init__.py"
            for alias in node.names:
                if alias.name in defined or (package and _module_path(f"{node.module}.{alias.name}")):
                    continue
                borrowed.append(f"{source.relative_to(ROOT)}: from {node.module} import {alias.name}")
    assert borrowed == []
    for init in APP.rglob("__init__.py"):
        body = ast.parse(init.read_text()).body
        assert all(isinstance(node, ast.Expr) for node in body), f"{init} should hold only its docstring"
