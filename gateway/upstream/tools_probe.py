"""Ask a route's upstream for its tools, as an MCP client would: ``check-config --upstream``.

One short Streamable HTTP session: ``initialize``, ``notifications/initialized``, then
``tools/list`` (every page), with the route's own credential when it needs no caller (none, or
a static header). A minted or exchanged credential is made for a caller, and there is none here.
An answer may be JSON or an SSE stream (MCP 2025-03-26 §Streamable HTTP: the server chooses);
of a stream, the first event that answers the request is read. Every call has a timeout.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import aiohttp

from ..config import NoCredential, RouteConfig, StaticCredential

TIMEOUT_S: Final = 5.0  # for the whole conversation with one upstream
PROBE_VERSION: Final = "2025-06-18"  # an initialize version every current SDK server accepts
MAX_PAGES: Final = 50  # of tools/list; a cursor loop past this is the upstream's bug
_SESSION_HEADER: Final = "Mcp-Session-Id"


class ProbeError(Exception):
    """The upstream could not be asked (unreachable, an error answer, an unreadable answer)."""


@dataclass(frozen=True, slots=True)
class NeedsCaller:
    """The route's credential is made per caller (minted, token exchange): nothing was asked."""

    reason: str = "credential needs a caller"


def credential_headers(route: RouteConfig) -> dict[str, str] | NeedsCaller:
    """What the probe sends to authenticate, or NeedsCaller when the credential has no caller."""
    credential = route.credential
    if isinstance(credential, NoCredential):
        return {}
    if isinstance(credential, StaticCredential):
        return {credential.header: credential.value.reveal()}
    return NeedsCaller()


async def list_tools(route: RouteConfig, timeout_s: float = TIMEOUT_S) -> list[object] | NeedsCaller:
    """Every tool the route's upstream lists; ProbeError when it cannot be asked."""
    headers = credential_headers(route)
    if isinstance(headers, NeedsCaller):
        return headers
    try:
        async with aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=timeout_s),
            cookie_jar=aiohttp.DummyCookieJar(),
            headers={"User-Agent": "mcp-auth-gateway check-config"},
        ) as http:
            return await _conversation(http, route.upstream, headers)
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise ProbeError(_reason(exc)) from None


def _reason(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "no answer within the timeout"
    return str(exc) or type(exc).__name__


async def _conversation(http: aiohttp.ClientSession, url: str, headers: dict[str, str]) -> list[object]:
    initialize = {
        "protocolVersion": PROBE_VERSION,
        "capabilities": {},
        "clientInfo": {"name": "mcp-auth-gateway check-config", "version": "1"},
    }
    result, answer_headers = await _request(http, url, headers, 1, "initialize", initialize)
    session = answer_headers.get(_SESSION_HEADER)
    version = result.get("protocolVersion")
    headers = {
        **headers,
        **({_SESSION_HEADER: session} if session else {}),
        **({"MCP-Protocol-Version": version} if isinstance(version, str) else {}),
    }
    await _notify(http, url, headers, "notifications/initialized")
    tools: list[object] = []
    params: dict[str, Any] = {}
    for page in range(MAX_PAGES):
        result, _ = await _request(http, url, headers, 2 + page, "tools/list", params)
        listed = result.get("tools")
        if not isinstance(listed, list):
            raise ProbeError("the tools/list result has no tools list")
        tools.extend(listed)
        cursor = result.get("nextCursor")
        if not isinstance(cursor, str) or not cursor:
            break
        params = {"cursor": cursor}
    if session:  # end the session it opened, as a client should (a refusal changes nothing)
        async with http.delete(url, headers=headers, allow_redirects=False) as answer:
            await answer.read()
    return tools


_ACCEPT: Final = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}


async def _request(
    http: aiohttp.ClientSession, url: str, headers: Mapping[str, str], rpc_id: int, method: str, params: Any
) -> tuple[Mapping[str, Any], Mapping[str, str]]:
    """One JSON-RPC request: its result and the answer's headers; ProbeError for anything else."""
    body = {"jsonrpc": "2.0", "id": rpc_id, "method": method, "params": params}
    async with http.post(url, json=body, headers={**headers, **_ACCEPT}, allow_redirects=False) as answer:
        if answer.status != 200:
            raise ProbeError(f"{method}: HTTP {answer.status}")
        if answer.content_type == "text/event-stream":
            message = await _first_answer_event(answer, rpc_id)
        elif answer.content_type == "application/json":
            message = _json(await answer.read())
        else:
            raise ProbeError(f"{method}: unexpected Content-Type {answer.content_type!r}")
        answer_headers = {_SESSION_HEADER: answer.headers.get(_SESSION_HEADER, "")}
    if isinstance(message, list):  # a 2025-03-26 batch answer to one request
        message = next(
            (item for item in message if isinstance(item, Mapping) and item.get("id") == rpc_id), None
        )
    if not isinstance(message, Mapping):
        raise ProbeError(f"{method}: the answer is not a JSON-RPC response")
    if "error" in message:
        raise ProbeError(f"{method}: JSON-RPC error {json.dumps(message['error'])[:200]}")
    result = message.get("result")
    if not isinstance(result, Mapping):
        raise ProbeError(f"{method}: the answer has no result object")
    return result, answer_headers


async def _notify(http: aiohttp.ClientSession, url: str, headers: Mapping[str, str], method: str) -> None:
    body = {"jsonrpc": "2.0", "method": method}
    async with http.post(url, json=body, headers={**headers, **_ACCEPT}, allow_redirects=False) as answer:
        if answer.status >= 300:
            raise ProbeError(f"{method}: HTTP {answer.status}")
        await answer.read()


def _json(data: bytes) -> Any:
    try:
        return json.loads(data)
    except ValueError:
        raise ProbeError("the answer is not JSON") from None


async def _first_answer_event(answer: aiohttp.ClientResponse, rpc_id: int) -> Any:
    """The data of the first SSE event that answers ``rpc_id`` (events before it, such as
    notifications or pings, are skipped); the stream may stay open after it."""
    data: list[str] = []
    async for raw in answer.content:
        line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
        if line.startswith("data:"):
            data.append(line[5:].removeprefix(" "))
        elif not line and data:  # the end of an event (SSE: a blank line dispatches it)
            message = _json("\n".join(data).encode())
            data = []
            if isinstance(message, list) or (isinstance(message, Mapping) and message.get("id") == rpc_id):
                return message
    if data:
        return _json("\n".join(data).encode())
    raise ProbeError("the event stream ended without an answer")
