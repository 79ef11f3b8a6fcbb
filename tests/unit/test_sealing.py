"""Sealed state handles (gateway.sealing): only the caller they were sealed for opens them."""

from __future__ import annotations

import base64
import os
import subprocess
import sys

import pytest

from gateway.mcp.handles import NotAHandle, TaskIdSealer, rewrite_body_task_ids, rewrite_task_ids
from gateway.sealing import PROCESS_KEY_ENV, StateSealer, process_sealer

ALICE = ("/mcp", "https://as.example", "alice")
SEALER = StateSealer([("k1", b"a" * 32)], "k1")


def test_a_handle_opens_for_its_caller_only() -> None:
    """Round trip for the same binding; any other route, issuer, subject or kind: None."""
    sealed = SEALER.seal("session", "upstream-123", ALICE)
    assert SEALER.open("session", sealed, ALICE) == "upstream-123"
    for other in (
        ("/other", *ALICE[1:]),
        ("/mcp", "https://evil.example", "alice"),
        ("/mcp", ALICE[1], "bob"),
    ):
        assert SEALER.open("session", sealed, other) is None
    assert SEALER.open("task", sealed, ALICE) is None


def test_binding_parts_do_not_run_into_each_other() -> None:
    """("ab", "c") and ("a", "bc") are different callers: no concatenation ambiguity."""
    sealed = SEALER.seal("session", "s", ("/mcp", "ab", "c"))
    assert SEALER.open("session", sealed, ("/mcp", "a", "bc")) is None


def test_sealing_is_deterministic_and_hides_the_handle() -> None:
    """One upstream session is one id for its owner; the upstream's id does not show."""
    first = SEALER.seal("session", "0123456789abcdef", ALICE)
    assert first == SEALER.seal("session", "0123456789abcdef", ALICE)
    assert "0123456789abcdef" not in first
    assert first.startswith("k1.") and all(0x21 <= ord(char) <= 0x7E for char in first)


def test_tampered_truncated_and_non_canonical_handles_do_not_open() -> None:
    """Every altered spelling fails, including base64url with other unused bits or padding."""
    sealed = SEALER.seal("session", "upstream-123", ALICE)
    key_id, _, payload = sealed.partition(".")
    raw = base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
    flipped = bytes([raw[0] ^ 1]) + raw[1:]
    variants = [
        sealed[:-1],
        sealed + "A",
        f"{key_id}.{base64.urlsafe_b64encode(flipped).rstrip(b'=').decode()}",
        sealed + "=",
        f"{key_id}.{base64.b64encode(raw).decode()}",  # standard alphabet, padded
        f"k2.{payload}",
        payload,
        "",
        "k1.",
        "k1." + "A" * 5000,
    ]
    # A last character whose unused bits are set decodes to the same bytes: a second spelling.
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    if len(payload) % 4:
        index = alphabet.index(payload[-1])
        variants.append(f"{key_id}.{payload[:-1]}{alphabet[index | 1]}")
        variants.append(f"{key_id}.{payload[:-1]}{alphabet[index | 3]}")
    for variant in variants:
        if variant != sealed:
            assert SEALER.open("session", variant, ALICE) is None, variant


def test_rotation_opens_with_any_key_and_seals_with_the_active_one() -> None:
    """Old handles still open after a rotation; new ones carry the active key id."""
    old = SEALER.seal("session", "s1", ALICE)
    rotated = StateSealer([("k2", b"b" * 32), ("k1", b"a" * 32)], "k2")
    assert rotated.open("session", old, ALICE) == "s1"
    assert rotated.seal("session", "s1", ALICE).startswith("k2.")
    assert StateSealer([("k1", b"c" * 32)], "k1").open("session", old, ALICE) is None  # same id, other secret


def test_bad_key_sets_are_refused() -> None:
    """Short secrets, odd ids, repeated ids and an unknown active id never make a sealer."""
    for keys, active in (
        ([("k1", b"short")], "k1"),
        ([("bad.id", b"a" * 32)], "bad.id"),
        ([("k1", b"a" * 32), ("k1", b"b" * 32)], "k1"),
        ([("k1", b"a" * 32)], "k2"),
    ):
        with pytest.raises(ValueError):
            StateSealer(keys, active)


def test_lone_surrogates_and_non_ascii_still_seal() -> None:
    """Header values and JSON strings may hold lone surrogates: they seal and open unchanged."""
    odd = "s\udcff\ud800é"
    sealed = SEALER.seal("task", odd, ("/mcp", "iss", "sub\ud800"))
    assert SEALER.open("task", sealed, ("/mcp", "iss", "sub\ud800")) == odd


def test_workers_of_one_supervisor_share_the_process_key() -> None:
    """The key handed down in the environment is the one used; without it, each process has its own."""
    sealed = process_sealer().seal("session", "s", ALICE)
    assert process_sealer().open("session", sealed, ALICE) == "s"  # stable within the process
    key = os.urandom(32).hex()
    script = (
        "from gateway.sealing import process_sealer as p;print(p().seal('session', 's', ('/mcp', 'i', 'u')))"
    )
    env = {**os.environ, PROCESS_KEY_ENV: key}
    one, two = (
        subprocess.run(
            [sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True
        ).stdout
        for _ in range(2)
    )
    assert one == two
    fresh = subprocess.run(
        [sys.executable, "-c", script],
        env={k: v for k, v in os.environ.items() if k != PROCESS_KEY_ENV},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert fresh != one


def test_task_ids_are_found_where_the_protocol_puts_them_and_nowhere_else() -> None:
    """taskId, task.taskId, tasks[].taskId and _meta related-task are handles; a tool's own
    taskId (in arguments, in structured content) is data and stays."""
    document = {
        "result": {
            "task": {"taskId": "t1", "status": "working"},
            "tasks": [{"taskId": "t2"}, "odd"],
            "taskId": "t3",
            "_meta": {"io.modelcontextprotocol/related-task": {"taskId": "t4"}},
            "structuredContent": {"taskId": "JIRA-1"},
        },
        "params": {"arguments": {"taskId": "JIRA-2"}},
    }
    assert rewrite_task_ids(document, str.upper)
    result = document["result"]
    assert result["task"]["taskId"] == "T1"  # type: ignore[index]
    assert result["tasks"] == [{"taskId": "T2"}, "odd"]  # type: ignore[index]
    assert result["taskId"] == "T3"  # type: ignore[index]
    assert result["_meta"]["io.modelcontextprotocol/related-task"]["taskId"] == "T4"  # type: ignore[index]
    assert result["structuredContent"] == {"taskId": "JIRA-1"}  # type: ignore[index]
    assert document["params"] == {"arguments": {"taskId": "JIRA-2"}}
    assert not rewrite_task_ids({"params": {"name": "x", "arguments": {"taskId": "JIRA-3"}}}, str.upper)
    with pytest.raises(NotAHandle):
        rewrite_task_ids({"params": {"taskId": 5}}, str.upper)
    # The SDK's models accept Python field names too: those spellings are handles as well.
    aliased = {
        "params": {"task_id": "t5", "meta": {"io.modelcontextprotocol/related-task": {"task_id": "t6"}}}
    }
    assert rewrite_task_ids(aliased, str.upper)
    assert aliased == {
        "params": {"task_id": "T5", "meta": {"io.modelcontextprotocol/related-task": {"task_id": "T6"}}}
    }


def test_bodies_without_task_ids_are_left_byte_for_byte() -> None:
    """No taskId (and no escape that could spell one): the very same bytes, not re-encoded."""
    body = b'{"jsonrpc": "2.0", "id": 1, "method": "tools/call"}'
    assert rewrite_body_task_ids(body, str.upper) is body
    escaped = b'{"params": {"task\\u0049d": "t1"}}'
    assert rewrite_body_task_ids(escaped, str.upper) == b'{"params":{"taskId":"T1"}}'


def test_the_answer_sealer_copies_only_a_message_that_holds_a_task_id() -> None:
    """A chain runs every rewriter once any one's markers occur (tracing watches ``isError``):
    the sealer leaves a message without a task id alone, and seals a copy of one with a task id
    (the original unchanged); a task id that is not a string becomes an error, not a relay."""
    sealer = TaskIdSealer(str.upper)
    result = {"jsonrpc": "2.0", "id": 1, "result": {"content": [], "isError": False}}
    assert sealer.rewrite(result) is None
    assert result == {"jsonrpc": "2.0", "id": 1, "result": {"content": [], "isError": False}}
    tool_data = {"jsonrpc": "2.0", "id": 2, "result": {"structuredContent": {"taskId": "JIRA-1"}}}
    assert sealer.rewrite(tool_data) is None
    created = {"jsonrpc": "2.0", "id": 3, "result": {"task": {"taskId": "t1", "status": "working"}}}
    sealed = sealer.rewrite(created)
    assert sealed == {"jsonrpc": "2.0", "id": 3, "result": {"task": {"taskId": "T1", "status": "working"}}}
    assert created["result"]["task"]["taskId"] == "t1"  # type: ignore[index]
    unbound = sealer.rewrite({"jsonrpc": "2.0", "id": 4, "result": {"taskId": 7}})
    assert unbound is not None and unbound["id"] == 4 and unbound["error"]["code"] == -32603
