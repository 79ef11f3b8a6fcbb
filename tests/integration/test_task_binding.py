"""Task ids belong to the principal and route they were given to (MCP 2025-11-25 tasks).

The upstream (``upstream_server --tasks``, the official SDK with task methods added through its
extension hooks) keeps one global task table and cannot tell users apart. So the gateway seals
every ``taskId`` it passes to a client (CreateTaskResult, tasks/get, tasks/cancel, tasks/list,
tasks/result ``_meta``, ``notifications/tasks/status``), in JSON bodies and SSE streams alike,
and opens every ``taskId`` a client sends: one that does not open for the caller is answered
400 -32602 "Invalid params: unknown task" and the upstream receives nothing. ``tasks/list``
cannot be sealed to its owner (the upstream lists everyone's), so it needs an explicit rule.

Each test runs against an SSE-answering and a JSON-answering upstream. The upstream's own
task ids are read from the upstream directly (``tasks/list`` on a session of the test's own,
not through the gateway) or from what it recorded.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any, Final

import aiohttp
import pytest

from tests.conftest import (
    Gateway,
    GatewayFactory,
    Upstream,
    fresh_upstream,
    single_route_config,
    spawn_upstream,
)
from tests.integration.test_authentication import INITIALIZE, MCP_HEADERS
from tests.support.issuer import TestIssuer
from tests.support.processes import record_json
from tests.support.sse import parse_sse_events
from tests.support.upstream_tasks import RELATED_TASK_META_KEY

PUBLIC_URL: Final = "http://127.0.0.1:8080"
VERSION: Final = {"MCP-Protocol-Version": "2025-11-25"}
SEALED: Final = re.compile(r"ephemeral\.[A-Za-z0-9_-]+")
UNKNOWN_TASK: Final = {"code": -32602, "message": "Invalid params: unknown task"}
LIST_RULE: Final = {"tasks/list": ["mcp:access"]}


@pytest.fixture(scope="session")
def tasks_upstream_process() -> Iterator[str]:
    yield from spawn_upstream("--tasks")


@pytest.fixture(scope="session")
def tasks_json_upstream_process() -> Iterator[str]:
    yield from spawn_upstream("--tasks", "--json-response")


@pytest.fixture(params=["sse", "json"])
def tasks_upstream_url(request: pytest.FixtureRequest) -> str:
    """The base URL of the SDK upstream with tasks answering POSTs with SSE, or with JSON."""
    # A sync fixture: starting the session's process blocks, which is fine off the event loop.
    process = "tasks_upstream_process" if request.param == "sse" else "tasks_json_upstream_process"
    url: str = request.getfixturevalue(process)
    return url


@pytest.fixture
async def tasks_upstream(tasks_upstream_url: str) -> AsyncIterator[Upstream]:
    """That upstream, with its records cleared for this test."""
    async for fresh in fresh_upstream(tasks_upstream_url):
        yield fresh


@dataclass
class Reply:
    """An answer: its status, its JSON-RPC messages (JSON or SSE alike) and its bytes."""

    status: int
    messages: list[dict[str, Any]]
    raw: bytes

    @property
    def result(self) -> dict[str, Any]:
        assert self.status == 200, (self.status, self.raw)
        [message] = self.messages
        assert "result" in message, message
        result: dict[str, Any] = message["result"]
        return result

    @property
    def error(self) -> dict[str, Any]:
        [message] = self.messages
        error: dict[str, Any] = message["error"]
        return error


def messages_of(content_type: str, body: bytes) -> list[dict[str, Any]]:
    """The JSON-RPC messages of a JSON or SSE response body."""
    if not body:
        return []
    if content_type.startswith("text/event-stream"):
        return [json.loads(event["data"]) for event in parse_sse_events(body) if event.get("data")]
    document = json.loads(body)
    return document if isinstance(document, list) else [document]


@dataclass
class Caller:
    """One user's 2025-11-25 session through the gateway, on one route."""

    http: aiohttp.ClientSession
    url: str
    auth: dict[str, str]
    session_id: str = ""

    def headers(self) -> dict[str, str]:
        return {**MCP_HEADERS, **self.auth, **VERSION, "Mcp-Session-Id": self.session_id}

    async def initialize(self) -> Caller:
        async with self.http.post(
            self.url, json=INITIALIZE, headers={**MCP_HEADERS, **self.auth}
        ) as response:
            assert response.status == 200, await response.text()
            await response.read()
            self.session_id = response.headers["Mcp-Session-Id"]
        return self

    async def post(self, message: dict[str, Any]) -> Reply:
        async with self.http.post(self.url, json=message, headers=self.headers()) as response:
            body = await response.read()
            return Reply(response.status, messages_of(response.content_type, body), body)

    async def rpc(self, method: str, params: dict[str, Any], request_id: int = 9) -> Reply:
        return await self.post({"jsonrpc": "2.0", "id": request_id, "method": method, "params": params})

    async def create_task(self, tool: str = "echo", arguments: dict[str, Any] | None = None) -> str:
        """Call ``tool`` as a task; the task id the caller was given."""
        params = {"name": tool, "arguments": arguments or {"text": "tasked"}, "task": {"ttl": 60000}}
        task: dict[str, Any] = (await self.rpc("tools/call", params)).result["task"]
        assert task["status"] == "working", task
        task_id: str = task["taskId"]
        return task_id


def bearer(issuer: TestIssuer, subject: str = "alice", path: str = "/mcp") -> dict[str, str]:
    return {"Authorization": f"Bearer {issuer.mint(audience=PUBLIC_URL + path, subject=subject)}"}


async def caller(
    http: aiohttp.ClientSession, gateway: Gateway, issuer: TestIssuer, subject: str, path: str = "/mcp"
) -> Caller:
    return await Caller(http, gateway.route_url(path), bearer(issuer, subject, path)).initialize()


async def upstream_tasks(upstream: Upstream) -> list[dict[str, Any]]:
    """Every task the upstream holds, with its own ids: asked directly, on a session of our own."""
    direct = Caller(upstream.http, upstream.mcp_url, {})
    await direct.initialize()
    tasks: list[dict[str, Any]] = (await direct.rpc("tasks/list", {})).result["tasks"]
    return tasks


def forwarded_task_ids(records: list[dict[str, Any]], method: str) -> list[str]:
    """The ``params.taskId`` of each ``method`` request the upstream received."""
    bodies = [record_json(record) for record in records if record["method"] == "POST" and record["body"]]
    return [body["params"]["taskId"] for body in bodies if body.get("method") == method]


def status_notes(stream: bytes) -> list[dict[str, Any]]:
    """The ``notifications/tasks/status`` among the complete events of an SSE stream so far."""
    messages = [json.loads(event["data"]) for event in parse_sse_events(stream) if event.get("data")]
    return [message for message in messages if message.get("method") == "notifications/tasks/status"]


def assert_sealed(task_id: str, upstream_id: str) -> None:
    assert SEALED.fullmatch(task_id), task_id
    assert task_id != upstream_id and upstream_id not in task_id


async def test_the_tasks_upstream_serves_tasks_by_itself(tasks_upstream: Upstream) -> None:
    """Without the gateway, the fixture does what the tests below rely on: a task-augmented call
    answers a working task, tasks/get and tasks/result follow it, tasks/cancel stops a running one,
    tasks/list shows them, and an unknown id is -32602."""
    direct = await Caller(tasks_upstream.http, tasks_upstream.mcp_url, {}).initialize()
    task_id = await direct.create_task(arguments={"text": "direct"})
    result = await direct.rpc("tasks/result", {"taskId": task_id})
    status = await direct.rpc("tasks/get", {"taskId": task_id})
    sleeper = await direct.create_task("sleep", {"seconds": 30})
    cancelled = await direct.rpc("tasks/cancel", {"taskId": sleeper})
    listed = await direct.rpc("tasks/list", {})
    unknown = await direct.rpc("tasks/get", {"taskId": "no-such-task"})
    assert result.result["content"] == [{"type": "text", "text": "direct"}]
    assert result.result["_meta"][RELATED_TASK_META_KEY] == {"taskId": task_id}
    assert (status.result["taskId"], status.result["status"]) == (task_id, "completed")
    assert (cancelled.result["taskId"], cancelled.result["status"]) == (sleeper, "cancelled")
    assert {task_id, sleeper} <= {task["taskId"] for task in listed.result["tasks"]}
    assert unknown.error["code"] == -32602


async def test_the_client_holds_a_sealed_task_id_and_its_owner_can_use_it(
    issuer: TestIssuer, tasks_upstream: Upstream, start_gateway_with: GatewayFactory
) -> None:
    """Alice's task id is `<key id>.<base64url>`, not the upstream's; tasks/get and tasks/result
    with it reach the upstream with the upstream's own id; the answers show the same sealed id."""
    gateway = await start_gateway_with(single_route_config(issuer, tasks_upstream.mcp_url))
    async with aiohttp.ClientSession() as http:
        alice = await caller(http, gateway, issuer, "alice")
        sealed = await alice.create_task(arguments={"text": "tasked"})
        upstream_id = (await upstream_tasks(tasks_upstream))[-1]["taskId"]
        assert_sealed(sealed, upstream_id)

        status = await alice.rpc("tasks/get", {"taskId": sealed})
        result = await alice.rpc("tasks/result", {"taskId": sealed})
    assert status.result["taskId"] == sealed
    assert status.result["status"] in {"working", "completed"}
    assert result.result["content"] == [{"type": "text", "text": "tasked"}]
    assert result.result["_meta"][RELATED_TASK_META_KEY] == {"taskId": sealed}
    assert upstream_id.encode() not in status.raw + result.raw
    records = await tasks_upstream.requests()
    assert forwarded_task_ids(records, "tasks/get") == [upstream_id]
    assert forwarded_task_ids(records, "tasks/result") == [upstream_id]


async def test_its_owner_cancels_a_running_task(
    issuer: TestIssuer, tasks_upstream: Upstream, start_gateway_with: GatewayFactory
) -> None:
    """tasks/cancel with the sealed id cancels the upstream's task; the answer carries the sealed id."""
    gateway = await start_gateway_with(single_route_config(issuer, tasks_upstream.mcp_url))
    async with aiohttp.ClientSession() as http:
        alice = await caller(http, gateway, issuer, "alice")
        sealed = await alice.create_task("sleep", {"seconds": 30})
        cancelled = await alice.rpc("tasks/cancel", {"taskId": sealed})
        after = await alice.rpc("tasks/get", {"taskId": sealed})
    assert cancelled.result["taskId"] == sealed and cancelled.result["status"] == "cancelled"
    assert after.result["status"] == "cancelled"
    [upstream_id] = forwarded_task_ids(await tasks_upstream.requests(), "tasks/cancel")
    assert_sealed(sealed, upstream_id)
    upstream_task = (await upstream_tasks(tasks_upstream))[-1]
    assert (upstream_task["taskId"], upstream_task["status"]) == (upstream_id, "cancelled")


@pytest.mark.parametrize("method", ["tasks/get", "tasks/result", "tasks/cancel"])
async def test_another_user_with_the_sealed_task_id_gets_400_and_the_upstream_nothing(
    method: str, issuer: TestIssuer, tasks_upstream: Upstream, start_gateway_with: GatewayFactory
) -> None:
    """Bob, on his own session, with Alice's task id: 400 -32602 "unknown task", the very answer a
    made-up id gets; the upstream records no request; Alice's task is untouched."""
    gateway = await start_gateway_with(single_route_config(issuer, tasks_upstream.mcp_url))
    async with aiohttp.ClientSession() as http:
        alice = await caller(http, gateway, issuer, "alice")
        bob = await caller(http, gateway, issuer, "bob")
        sealed = await alice.create_task("sleep", {"seconds": 30})
        await tasks_upstream.clear()
        stolen = await bob.rpc(method, {"taskId": sealed}, request_id=5)
        tampered = sealed[:-1] + ("B" if sealed.endswith("A") else "A")
        forged = await bob.rpc(method, {"taskId": tampered}, request_id=5)
        assert await tasks_upstream.requests() == []
        still_mine = await alice.rpc("tasks/get", {"taskId": sealed})
    assert stolen.status == forged.status == 400
    assert stolen.messages == [{"jsonrpc": "2.0", "id": 5, "error": UNKNOWN_TASK}]
    assert stolen.raw == forged.raw
    assert still_mine.result["status"] == "working"


FORGERIES: Final[dict[str, Callable[[str, str], str]]] = {
    "the upstream's own id": lambda sealed, upstream_id: upstream_id,
    "a truncated seal": lambda sealed, upstream_id: sealed[:-4],
    "the seal under another key id": lambda sealed, upstream_id: "other." + sealed.partition(".")[2],
    "the seal without its key id": lambda sealed, upstream_id: sealed.partition(".")[2],
    "the seal with a dot appended": lambda sealed, upstream_id: sealed + ".",
}


@pytest.mark.parametrize("forgery", FORGERIES)
async def test_a_raw_or_forged_task_id_is_refused(
    forgery: str, issuer: TestIssuer, tasks_upstream: Upstream, start_gateway_with: GatewayFactory
) -> None:
    """The upstream's own id (leaked, guessed) or a tampered seal, from the task's owner herself:
    400 -32602 "unknown task", and the upstream sees nothing."""
    gateway = await start_gateway_with(single_route_config(issuer, tasks_upstream.mcp_url))
    async with aiohttp.ClientSession() as http:
        alice = await caller(http, gateway, issuer, "alice")
        sealed = await alice.create_task()
        upstream_id = (await upstream_tasks(tasks_upstream))[-1]["taskId"]
        await tasks_upstream.clear()
        reply = await alice.rpc(
            "tasks/get", {"taskId": FORGERIES[forgery](sealed, upstream_id)}, request_id=3
        )
    assert reply.status == 400
    assert reply.messages == [{"jsonrpc": "2.0", "id": 3, "error": UNKNOWN_TASK}]
    assert await tasks_upstream.requests() == []


@pytest.mark.parametrize("task_id", [7, None, True, ["x"], {"taskId": "x"}])
async def test_a_non_string_task_id_is_refused(
    task_id: Any, issuer: TestIssuer, tasks_upstream: Upstream, start_gateway_with: GatewayFactory
) -> None:
    """A taskId that is not a string (no SDK reads it as an id): 400 -32602, nothing forwarded."""
    gateway = await start_gateway_with(single_route_config(issuer, tasks_upstream.mcp_url))
    async with aiohttp.ClientSession() as http:
        alice = await caller(http, gateway, issuer, "alice")
        await tasks_upstream.clear()
        reply = await alice.rpc("tasks/get", {"taskId": task_id}, request_id=3)
    assert reply.status == 400
    assert reply.error["code"] == -32602
    assert await tasks_upstream.requests() == []


@pytest.mark.parametrize("route_default", [None, "allow"])
async def test_tasks_list_is_refused_without_an_explicit_rule(
    route_default: str | None,
    issuer: TestIssuer,
    tasks_upstream: Upstream,
    start_gateway_with: GatewayFactory,
) -> None:
    """The upstream lists everyone's tasks: without a `methods` rule naming tasks/list it is a
    policy 403 (even with `default: allow`), and the upstream receives nothing."""
    extra = {"default": route_default} if route_default else {}
    gateway = await start_gateway_with(single_route_config(issuer, tasks_upstream.mcp_url, **extra))
    async with aiohttp.ClientSession() as http:
        alice = await caller(http, gateway, issuer, "alice")
        await tasks_upstream.clear()
        reply = await alice.rpc("tasks/list", {})
    assert reply.status == 403
    assert reply.error["code"] == -32003
    assert await tasks_upstream.requests() == []


async def test_tasks_list_with_a_rule_shows_ids_sealed_to_the_caller(
    issuer: TestIssuer, tasks_upstream: Upstream, start_gateway_with: GatewayFactory
) -> None:
    """With `methods: {tasks/list: [mcp:access]}` the list passes; every id in it is sealed to the
    caller (none is the upstream's), Alice's own task is there, and each id works in her tasks/get."""
    config = single_route_config(issuer, tasks_upstream.mcp_url, methods=LIST_RULE)
    gateway = await start_gateway_with(config)
    async with aiohttp.ClientSession() as http:
        alice = await caller(http, gateway, issuer, "alice")
        sealed = await alice.create_task()
        listed = await alice.rpc("tasks/list", {})
        upstream_ids = {task["taskId"] for task in await upstream_tasks(tasks_upstream)}
        ids = [task["taskId"] for task in listed.result["tasks"]]
        statuses = [await alice.rpc("tasks/get", {"taskId": task_id}) for task_id in ids]
    assert sealed in ids
    assert all(SEALED.fullmatch(task_id) for task_id in ids), ids
    assert not upstream_ids & set(ids)
    assert not any(upstream_id.encode() in listed.raw for upstream_id in upstream_ids)
    assert [reply.result["taskId"] for reply in statuses] == ids


async def test_a_related_task_id_in_meta_is_opened_for_its_owner_only(
    issuer: TestIssuer, tasks_upstream: Upstream, start_gateway_with: GatewayFactory
) -> None:
    """A client message tied to a task (`_meta` related-task) reaches the upstream with the
    upstream's id; the same message from Bob is 400 -32602 and never sent."""
    gateway = await start_gateway_with(single_route_config(issuer, tasks_upstream.mcp_url))
    async with aiohttp.ClientSession() as http:
        alice = await caller(http, gateway, issuer, "alice")
        bob = await caller(http, gateway, issuer, "bob")
        sealed = await alice.create_task()
        upstream_id = (await upstream_tasks(tasks_upstream))[-1]["taskId"]
        await tasks_upstream.clear()
        params = {
            "name": "echo",
            "arguments": {"text": "related"},
            "_meta": {RELATED_TASK_META_KEY: {"taskId": sealed}},
        }
        refused = await bob.rpc("tools/call", params)
        assert refused.status == 400 and refused.error == UNKNOWN_TASK
        assert await tasks_upstream.requests() == []
        served = await alice.rpc("tools/call", params)
    assert served.result["content"] == [{"type": "text", "text": "related"}]
    [record] = await tasks_upstream.requests()
    assert record_json(record)["params"]["_meta"][RELATED_TASK_META_KEY] == {"taskId": upstream_id}


async def test_a_task_status_notification_on_the_get_stream_carries_the_sealed_id(
    issuer: TestIssuer, tasks_upstream: Upstream, start_gateway_with: GatewayFactory
) -> None:
    """The upstream's notifications/tasks/status on Alice's standalone GET stream reaches her with
    the id she was given, not the upstream's."""
    gateway = await start_gateway_with(single_route_config(issuer, tasks_upstream.mcp_url))
    async with aiohttp.ClientSession() as http:
        alice = await caller(http, gateway, issuer, "alice")
        stream_headers = {**alice.headers(), "Accept": "text/event-stream"}
        async with http.get(alice.url, headers=stream_headers) as stream:
            assert stream.status == 200
            sealed = await alice.create_task()
            received = b""
            async with asyncio.timeout(5):
                while not (notes := status_notes(received)):
                    received += await stream.content.readany()
    upstream_id = (await upstream_tasks(tasks_upstream))[-1]["taskId"]
    [note] = notes
    assert note["params"]["taskId"] == sealed and note["params"]["status"] == "completed"
    assert upstream_id.encode() not in received


async def test_a_task_id_given_on_one_route_does_not_open_on_another(
    issuer: TestIssuer, tasks_upstream: Upstream, start_gateway_with: GatewayFactory
) -> None:
    """The route is part of the seal: Alice's task from /mcp, sent on /other (same upstream, her
    own session there), is 400 -32602 and not forwarded."""
    config = single_route_config(issuer, tasks_upstream.mcp_url) + (
        f"""  - path: /other
            upstream: {tasks_upstream.mcp_url}
            scopes: [mcp:access]
            tools: {{"*": []}}
        """
    )
    gateway = await start_gateway_with(config)
    async with aiohttp.ClientSession() as http:
        on_mcp = await caller(http, gateway, issuer, "alice")
        on_other = await caller(http, gateway, issuer, "alice", "/other")
        sealed = await on_mcp.create_task()
        await tasks_upstream.clear()
        reply = await on_other.rpc("tasks/get", {"taskId": sealed})
        assert reply.status == 400 and reply.error == UNKNOWN_TASK
        assert await tasks_upstream.requests() == []
        assert (await on_mcp.rpc("tasks/get", {"taskId": sealed})).result["taskId"] == sealed


async def test_a_2026_request_with_a_task_id_is_opened_too(
    issuer: TestIssuer, tasks_upstream: Upstream, start_gateway_with: GatewayFactory
) -> None:
    """Task ids are bound to the caller, not the session: a 2026-07-28 message tied to Alice's
    task reaches the upstream with the upstream's id; Bob's is refused before the upstream."""
    gateway = await start_gateway_with(single_route_config(issuer, tasks_upstream.mcp_url))
    async with aiohttp.ClientSession() as http:
        alice = await caller(http, gateway, issuer, "alice")
        sealed = await alice.create_task()
        upstream_id = (await upstream_tasks(tasks_upstream))[-1]["taskId"]
        await tasks_upstream.clear()
        modern = {
            "jsonrpc": "2.0",
            "id": 4,
            "method": "tools/call",
            "params": {
                "name": "echo",
                "arguments": {"text": "modern"},
                "_meta": {
                    "io.modelcontextprotocol/protocolVersion": "2026-07-28",
                    "io.modelcontextprotocol/clientCapabilities": {},
                    RELATED_TASK_META_KEY: {"taskId": sealed},
                },
            },
        }
        headers = {**MCP_HEADERS, "MCP-Protocol-Version": "2026-07-28", "Mcp-Method": "tools/call"}
        headers["Mcp-Name"] = "echo"
        for subject, expected in (("bob", 400), ("alice", 200)):
            async with http.post(
                gateway.route_url(), json=modern, headers={**headers, **bearer(issuer, subject)}
            ) as response:
                assert response.status == expected, await response.text()
                await response.read()
            if subject == "bob":
                assert await tasks_upstream.requests() == []
    [record] = await tasks_upstream.requests()
    assert record_json(record)["params"]["_meta"][RELATED_TASK_META_KEY] == {"taskId": upstream_id}
