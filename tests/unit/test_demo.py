"""``mcp-auth-gateway demo`` refuses a busy port with one line that says what to do."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from gateway.cli import main
from gateway.demo.run import DEMO_HOST


@pytest.fixture
def occupied() -> Iterator[int]:
    """A port on the demo's host that a listening socket holds for the test."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as holder:
        holder.bind((DEMO_HOST, 0))
        holder.listen()
        yield holder.getsockname()[1]


@pytest.mark.parametrize(
    ("offset", "role"), [(0, "gateway"), (1, "demo upstream"), (2, "development issuer")]
)
def test_a_busy_demo_port_is_one_line_naming_it_and_port(
    occupied: int, offset: int, role: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Whichever of its three ports is taken (gateway, upstream, issuer), the demo exits 1 before
    starting anything, with one line that names that port and --port, and no traceback."""
    base = occupied - offset
    assert main(["demo", "--port", str(base)]) == 1
    captured = capsys.readouterr()
    [line] = captured.err.splitlines()
    assert f"{occupied} ({role})" in line and "already in use" in line and "--port" in line
    assert "Traceback" not in captured.err and captured.out == ""


def test_a_demo_port_whose_neighbours_do_not_exist_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    """--port 65535 would need ports past 65535 for the upstream and issuer: one line, exit 1."""
    assert main(["demo", "--port", "65535"]) == 1
    [line] = capsys.readouterr().err.splitlines()
    assert "--port must be 1..65533" in line
