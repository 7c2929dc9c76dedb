"""The layering of the packages (DESIGN.md, README "Architecture"), checked on the source.

Every import of a robeflow package, at module level or inside a function, must follow an
allowed arrow; a step in ``components/`` never imports another step; and no source, test
or benchmark file names an absolute path of a particular machine.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
OURS = ("contract", "gpu_ops", "dlrm", "features", "generator", "model_registry", "drift", "serving",
        "components", "pipelines")
# package -> the packages of ours it may import (besides itself)
ALLOWED: dict[str, set[str]] = {
    "contract": set(),
    "gpu_ops": {"contract"},
    "dlrm": {"contract", "gpu_ops"},
    "features": {"contract"},
    "generator": {"contract", "features"},
    "model_registry": {"contract"},
    "drift": {"contract", "features"},
    "serving": {"contract", "features", "dlrm", "gpu_ops", "model_registry"},
    "components": {"contract", "features", "generator", "dlrm", "gpu_ops", "model_registry", "drift", "serving"},
    "pipelines": {"contract", "features", "generator", "dlrm", "gpu_ops", "model_registry", "drift",
                  "serving", "components"},
}


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every import statement in ``path`` (relative imports resolved)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            out.append((node.lineno, module))
    return out


def source_files(package: str) -> list[Path]:
    return sorted(p for p in (ROOT / package).rglob("*.py") if "__pycache__" not in p.parts)


@pytest.mark.parametrize("package", OURS)
def test_imports_follow_the_allowed_arrows(package):
    bad = []
    for path in source_files(package):
        for line, module in imported_modules(path):
            top = module.split(".")[0]
            if top in OURS and top != package and top not in ALLOWED[package]:
                bad.append(f"{path.relative_to(ROOT)}:{line} imports {module}")
    assert not bad, f"{package} may import only {sorted(ALLOWED[package])} of ours:\n" + "\n".join(bad)


def test_steps_do_not_import_each_other():
    bad = []
    for path in source_files("components"):
        for line, module in imported_modules(path):
            parts = module.split(".")
            if parts[0] == "components" and len(parts) > 1 and parts[1] != path.stem:
                bad.append(f"{path.relative_to(ROOT)}:{line} imports {module}")
    assert not bad, "a step imports another step; move what they share down a layer:\n" + "\n".join(bad)


def test_components_holds_only_steps():
    steps = {"generate", "ingest", "validate", "features", "train", "evaluate", "push", "monitor",
             "retrieval"}
    modules = {p.stem for p in (ROOT / "components").glob("*.py")} - {"__init__"}
    assert modules <= steps, f"components/ holds modules that are not pipeline steps: {sorted(modules - steps)}"


# a path that starts at the root of one machine's file system: /work/..., /home/<user>/...,
# /Users/..., /tmp/<something>/... inside a string
MACHINE_PATH = re.compile(r"""["'](/work/|/home/[^/"']+/|/Users/|/root/)""")


def test_no_file_names_an_absolute_machine_path():
    files = [p for d in (*OURS, "tests", "benchmarks") for p in source_files(d)]
    bad = [f"{p.relative_to(ROOT)}:{i}" for p in files
           for i, line in enumerate(p.read_text().splitlines(), 1) if MACHINE_PATH.search(line)]
    assert not bad, "absolute machine paths (use paths relative to the repo or a fixture):\n" + "\n".join(bad)


def test_the_checks_see_a_violation():
    """The import scan finds module-level and function-level imports of ours."""
    f = ROOT / "contract" / "_probe_for_test.py"
    try:
        f.write_text("import os\nfrom dlrm.model import DLRM\n\ndef g():\n    from features import online\n")
        mods = [m for _, m in imported_modules(f)]
        assert mods == ["os", "dlrm.model", "features"]
    finally:
        f.unlink()
    probe = 'x = "/' + 'work/shared/data/a.csv"'   # split so this file does not match itself
    assert MACHINE_PATH.search(probe) and not MACHINE_PATH.search('"tests/data/a.csv"')


def test_every_package_is_installed_and_in_the_image():
    """A new package must reach the wheel (pyproject) and the component image (Dockerfile)."""
    pyproject = (ROOT / "pyproject.toml").read_text()
    dockerfile = (ROOT / "docker" / "Dockerfile").read_text()
    assert [p for p in OURS if f'"{p}*"' not in pyproject] == [], "add them to [tool.setuptools.packages.find]"
    assert [p for p in OURS if f"COPY {p} ./{p}" not in dockerfile] == [], "COPY them in docker/Dockerfile"
