"""The process limits as numbers (``gateway.web.limits``) and the listener's own 503."""

from __future__ import annotations

import json

import pytest

from gateway.config import LimitsConfig
from gateway.errors import Overloaded
from gateway.web.limits import FD_RESERVE, Admission, connection_cap, process_limits
from gateway.web.listener import overloaded_answer


def test_the_connection_cap_leaves_a_reserve_and_two_descriptors_per_connection() -> None:
    """1 024 descriptors carry (1 024 - reserve) / 2 connections; a tiny limit still gets 16."""
    assert connection_cap(1024) == (1024 - FD_RESERVE) // 2
    assert connection_cap(65536) == (65536 - FD_RESERVE) // 2
    assert connection_cap(40) == 16


def test_automatic_limits_follow_the_open_file_limit() -> None:
    """Unset max_connections and max_streams: both the cap the descriptors carry."""
    limits = process_limits(LimitsConfig(), 4096)
    assert limits.max_connections == limits.max_streams == connection_cap(4096)
    assert not limits.capped_by_open_files
    assert limits.open_files == 4096


def test_a_configured_cap_the_descriptors_cannot_carry_is_lowered_and_said() -> None:
    """max_connections 10 000 with 1 024 descriptors: lowered to what they carry, flagged for the
    start-up warning; a smaller one is kept as configured, and so are explicit streams."""
    lowered = process_limits(LimitsConfig(max_connections=10_000), 1024)
    assert lowered.max_connections == connection_cap(1024) and lowered.capped_by_open_files
    kept = process_limits(LimitsConfig(max_connections=100, max_streams=7), 1024)
    assert (kept.max_connections, kept.max_streams, kept.capped_by_open_files) == (100, 7, False)


def admission(**config: int) -> Admission:
    return Admission(process_limits(LimitsConfig(**config), 4096))


def test_streams_are_held_until_the_request_ends_and_refused_past_the_limit() -> None:
    """Two streams allowed: a third request is refused (too_many_streams); once one ends, a new
    one is admitted. Holding twice in one request counts once."""
    budget = admission(max_streams=2)
    with budget.hold() as first, budget.hold() as second:
        first.stream()
        first.stream()
        second.stream()
        with budget.hold() as third, pytest.raises(Overloaded) as refused:
            third.stream()
        assert refused.value.reason == "too_many_streams" and refused.value.status == 503
    assert budget.streams == 0
    with budget.hold() as fourth:
        fourth.stream()
        assert budget.streams == 1


def test_body_bytes_are_shared_by_all_requests_and_released_however_they_end() -> None:
    """Budget 1 000: 900 held by one request, 200 more refused (body_budget_exhausted); an error
    in the holding request still releases its bytes."""
    budget = admission(max_buffered_body_bytes=1000)
    with pytest.raises(RuntimeError), budget.hold() as slow:
        slow.body_bytes(900)
        with budget.hold() as other, pytest.raises(Overloaded) as refused:
            other.body_bytes(200)
        assert str(refused.value.reason) == "body_budget_exhausted"
        assert budget.body_bytes == 900
        raise RuntimeError("the request failed")
    assert budget.body_bytes == 0
    with budget.hold() as later:
        later.body_bytes(1000)


def test_the_listeners_own_503_is_complete_http_with_a_json_rpc_error() -> None:
    """Written before a request is read: status line, Retry-After, a Content-Length that is the
    body's, Connection: close, and a JSON-RPC error an MCP client can show."""
    answer = overloaded_answer("too many connections")
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    assert lines[0] == "HTTP/1.1 503 Service Unavailable"
    fields = dict(line.split(": ", 1) for line in lines[1:])
    assert fields["Retry-After"] == "1" and fields["Connection"] == "close"
    assert int(fields["Content-Length"]) == len(body)
    assert json.loads(body) == {
        "jsonrpc": "2.0",
        "id": None,
        "error": {"code": -32000, "message": "too many connections"},
    }
