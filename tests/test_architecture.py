"""The layering of DESIGN.md / docs/architecture.md, checked on the imports."""

import ast
from pathlib import Path

import mscon

PACKAGE = Path(mscon.__file__).parent


def imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def modules() -> dict[str, set[str]]:
    return {str(p.relative_to(PACKAGE)): imported_modules(p) for p in sorted(PACKAGE.rglob("*.py"))}


def test_only_the_cli_and_the_demo_import_the_training_loop():
    users = {name for name, imports in modules().items() if "mscon.train" in imports}
    assert users <= {"cli.py", "demo.py"}


def test_evaluation_reads_run_folders_not_training_internals():
    imports = modules()["evaluate.py"]
    assert not {m for m in imports if m.startswith(("mscon.train", "mscon.methods"))}


def test_losses_know_nothing_about_models_data_or_files():
    for name, imports in modules().items():
        if name.startswith("losses/"):
            forbidden = ("mscon.models", "mscon.data", "mscon.runs", "mscon.config", "mscon.train")
            assert not {m for m in imports if m.startswith(forbidden)}, name


def test_configs_are_inside_the_package():
    assert (PACKAGE / "configs" / "demo.yaml").is_file()
