"""The official MCP conformance suite, directly against the fixture and through the gateway.

Runs ``python -m tests.conformance.run`` (see its docstring) as a subprocess, so its logging
setup and Node processes stay out of the test session. About 20 s once ``node_modules`` is
installed; the first run adds an ``npm ci`` (Node 22 and the suite, ~20 s with a warm npm cache).
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.support.processes import REPO_ROOT


@pytest.mark.timeout(900)
def test_conformance_suite_is_transparent_through_the_gateway(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The suite's checks through the gateway match a direct run, bar baseline.yml; tokenless runs fail."""
    result = subprocess.run(
        [sys.executable, "-m", "tests.conformance.run", "--keep", str(tmp_path / "results")],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=850,
        check=False,
    )
    assert result.returncode == 0, f"conformance run failed:\n{result.stdout}\n{result.stderr[-5000:]}"
