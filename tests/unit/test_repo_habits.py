"""Habits of the repository itself: every test says what it checks, and the metadata agrees.

Docstrings are required of the functions pytest collects (``test*`` in ``test_*.py`` and
``*_test.py`` modules). ``tests/conformance/fixture_server.py`` is not such a module: its
``test_*`` functions are MCP tools and prompts named by the conformance suite.
"""

from __future__ import annotations

import ast
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gateway

ROOT = Path(__file__).resolve().parents[2]
TESTS = ROOT / "tests"


def pyproject() -> dict[str, Any]:
    project: dict[str, Any] = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    return project


def collected_modules() -> Iterator[Path]:
    """The modules pytest collects under tests/ (its default ``python_files``)."""
    for path in sorted(TESTS.rglob("*.py")):
        if "node_modules" in path.relative_to(TESTS).parts:
            continue
        if path.name.startswith("test_") or path.stem.endswith("_test"):
            yield path


def undocumented_tests(path: Path) -> Iterator[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
            and node.name.startswith("test")
            and ast.get_docstring(node) is None
        ):
            yield f"{path.relative_to(ROOT)}:{node.lineno} {node.name}"


def test_every_test_has_a_docstring() -> None:
    """A test function without a docstring saying what it checks is named, with its file and line."""
    modules = list(collected_modules())
    assert Path(__file__) in modules  # the walk finds test modules at all
    missing = [name for path in modules for name in undocumented_tests(path)]
    assert not missing, "tests without a docstring:\n" + "\n".join(missing)


def test_the_license_file_is_the_apache_license_pyproject_declares() -> None:
    """LICENSE opens with the Apache License 2.0 heading, the license pyproject.toml declares."""
    assert pyproject()["license"] == {"text": "Apache-2.0"}
    lines = (ROOT / "LICENSE").read_text(encoding="utf-8").splitlines()
    heading = [line.strip() for line in lines[:5] if line.strip()]
    assert heading[:3] == ["Apache License", "Version 2.0, January 2004", "http://www.apache.org/licenses/"]


def test_the_package_version_is_the_one_in_pyproject() -> None:
    """`gateway.__version__` is the version pyproject.toml declares (read from installed metadata)."""
    assert gateway.__version__ == pyproject()["version"]
