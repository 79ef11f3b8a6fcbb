"""Property: for random rule sets, scope sets and requests, the upstream never receives a call the
rules deny, and a list result never shows a denied item.

Tested through the real gateway (config text → parse → listener → forward → list filter) in front
of a tiny recording upstream, against an oracle written here from the documented semantics, not
from ``gateway.mcp.policy``:

* ``tools`` / ``prompts`` / ``resources`` rules decide ``tools/call`` / ``prompts/get`` /
  ``resources/read`` and ``resources/subscribe`` (in every era) by name or URI; ``methods``
  rules decide every other method by its name;
* a URI is matched in its one reading (``READINGS``, written out by hand: scheme and host in
  lowercase, escapes of unreserved characters decoded); a URI that decoders or resolvers read
  differently (an escaped ``/``, a dot segment, ``%25``, a fragment…) is refused with 400;
* the first pattern (in file order) that matches wins; its scopes plus the route's scopes must
  all be held; globs are case-sensitive, ``*`` spans anything (``/`` too), ``?`` one character;
* no rule matches: the route's ``default`` (allowed with the route's scopes alone, or denied);
  without one, tools/call, prompts/get and resources/read are denied (allowed with the route's
  scopes when the route has no tools, prompts or resources rule at all) and other methods allowed;
* a ``*/list`` result shows exactly the items the caller could call / get / read (templates by
  their URI template) with ``list_visibility: usable``, and with ``step_up`` (the default) every
  item some scopes would allow; in 2026-07-28 it is marked ``cacheScope: private``;
* one denied message refuses the whole POST (a 2025-03-26 batch included).

The semantics are those of README "Per-tool authorization". Hypothesis drives its own event loop
here (``asyncio.Runner``): one issuer, one upstream (cleared before every request) and one client
serve the whole test; a gateway is started for each rule set (see ``Harness``) and every server is
stopped at the end.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from hypothesis import HealthCheck, Phase, event, given, note, settings
from hypothesis import strategies as st

from gateway.config import parse_config_text
from gateway.server import start_gateway
from tests.support.issuer import TestIssuer, serving
from tests.support.tiny_upstream import (
    NOTIFICATION_EVENT,
    PROMPTS,
    RESOURCES,
    TEMPLATES,
    TOOLS,
    Received,
    TinyUpstream,
)

ROUTE_SCOPE = "mcp:access"
SCOPES = ("r", "w", "x", "admin")
PUBLIC_URL = "http://127.0.0.1:8080"
RESOURCE = PUBLIC_URL + "/mcp"
MODERN = "2026-07-28"

# Small vocabularies, so that patterns, names and near-misses collide often.
PATTERNS = {
    "tools": (
        "*", "get_*", "get_?", "get_a", "set_a", "[gs]et_a", "[!g]et_a", "admin", "Get_*", "*_a",
        "del_?", "get_a ", "g\u0435t_*", "*a*",
    ),
    "prompts": ("*", "get_*", "summary", "[Ss]ummary", "admin", "*_?", "s*"),
    "resources": (
        "*", "file:///*", "file:///pub/*", "file:///pub/?.txt", "file:///pub/{name}", "*.txt",
        "demo://?", "demo://[ab]", "demo://*", "file:///secret/*", "*{*}",
    ),
    "methods": (
        "*", "tools/list", "*/list", "resources/*", "prompts/list", "tools/*",
        "resources/templates/list", "logging/*",
    ),
}  # fmt: skip
SECTIONS = tuple(PATTERNS)

# What a request names: catalogue items plus near-misses (case, whitespace, homoglyph, traversal).
NEAR_MISSES = {
    "tools/call": (
        "get_c",
        "GET_A",
        "get_a_",
        "set_a ",
        " get_a",
        "get_a\u00a0",
        "get_a\u200b",
        "admin ",
        "admin/x",
        "",
    ),
    "prompts/get": ("summary ", " summary", "SUMMARY", "get_b"),
    "resources/read": ("file:///pub/../secret/key", "file:///PUB/a.txt", "demo://c", *TEMPLATES),
}
# How the gateway reads a URI whose spelling is not its normal form; None: it has no one reading,
# refused with 400. Every other URI reads as it is spelled.
READINGS: dict[str, str | None] = {
    "Demo://a": "demo://a",
    "DEMO://A": "demo://a",
    "demo://%61": "demo://a",
    "FILE:///secret/key": "file:///secret/key",
    "file:///%73ecret/key": "file:///secret/key",
    "file:///secret/%6B%65%79": "file:///secret/key",
    "file:///pub/%61.txt": "file:///pub/a.txt",
    "file:///pub/../secret/key": None,
    "file:///pub/%2e%2e/secret/key": None,
    "file:///pub%2F..%2Fsecret/key": None,
    "file:///secret%2Fkey": None,
    "file:///%2573ecret/key": None,
    "file:///pub/a.txt#x": None,
    "file:///pub//a.txt": None,
    "file:///pub/a%zz.txt": None,
}
NEAR_MISSES["resources/read"] += tuple(uri for uri in READINGS if uri not in RESOURCES)
TARGETS = {
    "tools/call": TOOLS + NEAR_MISSES["tools/call"],
    "prompts/get": PROMPTS + NEAR_MISSES["prompts/get"],
    "resources/read": RESOURCES + NEAR_MISSES["resources/read"],
    "resources/subscribe": RESOURCES + NEAR_MISSES["resources/read"],
}
USE_SECTION = {
    "tools/call": "tools",
    "prompts/get": "prompts",
    "resources/read": "resources",
    "resources/subscribe": "resources",
}
LISTS = {
    "tools/list": ("tools", "name", "tools/call", TOOLS),
    "prompts/list": ("prompts", "name", "prompts/get", PROMPTS),
    "resources/list": ("resources", "uri", "resources/read", RESOURCES),
    "resources/templates/list": ("resourceTemplates", "uriTemplate", "resources/read", TEMPLATES),
}
METHODS = (*TARGETS, *LISTS, "logging/setLevel")


# --- The oracle ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rules:
    tools: tuple[tuple[str, tuple[str, ...]], ...]
    prompts: tuple[tuple[str, tuple[str, ...]], ...]
    resources: tuple[tuple[str, tuple[str, ...]], ...]
    methods: tuple[tuple[str, tuple[str, ...]], ...]
    default: str | None  # "deny", "allow" or None (the default default)
    route_scopes: tuple[str, ...]
    list_visibility: str | None = None  # "step_up", "usable" or None (step_up)


def reading(method: str, target: str | None) -> str | None:
    """What the rules match: a URI in its one reading, a name as spelled."""
    if USE_SECTION.get(method) == "resources" and target is not None:
        return READINGS.get(target, target)
    return target


def refused(message: Message) -> bool:
    """A URI without one reading: 400 before any decision."""
    return USE_SECTION.get(message.method) == "resources" and reading(message.method, message.target) is None


def needs(rules: Rules, method: str, target: str | None) -> set[str] | None:
    """The scopes that would allow the operation, or None when no scopes would."""
    section = USE_SECTION.get(method)
    name = reading(method, target) if section is not None else method
    for pattern, scopes in getattr(rules, section or "methods"):
        if fnmatchcase(name or "", pattern):
            return set(rules.route_scopes) | set(scopes)
    restricted = bool(rules.tools or rules.prompts or rules.resources)
    default = rules.default or ("deny" if section is not None and restricted else "allow")
    return set(rules.route_scopes) if default == "allow" else None


def allows(rules: Rules, method: str, target: str | None, granted: frozenset[str]) -> bool:
    needed = needs(rules, method, target)
    return needed is not None and needed <= granted


def visible(rules: Rules, list_method: str, granted: frozenset[str]) -> list[str]:
    _, _, use_method, catalogue = LISTS[list_method]
    # Items are shown as they are spelled, and judged by their reading (Demo://a as demo://a).
    if rules.list_visibility == "usable":
        return [name for name in catalogue if allows(rules, use_method, name, granted)]
    return [name for name in catalogue if needs(rules, use_method, name) is not None]


# --- Strategies ------------------------------------------------------------------------------

_SPECIAL = re.compile(r"[*?\[]")


def _plain_head(pattern: str) -> str:
    match = _SPECIAL.search(pattern)
    return pattern if match is None else pattern[: match.start()]


def _obviously_covered(later: str, earlier: str) -> bool:
    """The config refuses a pattern that an earlier ``*``, or an earlier ``text*`` whose text
    the later pattern starts with literally, would always win over (it could never apply)."""
    if earlier == "*":
        return True
    prefix = earlier[:-1]
    return earlier.endswith("*") and _plain_head(earlier) == prefix and _plain_head(later).startswith(prefix)


def _drop_covered(entries: list[tuple[str, tuple[str, ...]]]) -> tuple[tuple[str, tuple[str, ...]], ...]:
    kept: list[tuple[str, tuple[str, ...]]] = []
    for pattern, scopes in entries:
        if not any(_obviously_covered(pattern, earlier) for earlier, _ in kept):
            kept.append((pattern, scopes))
    return tuple(kept)


scope_lists = st.lists(st.sampled_from(SCOPES), unique=True, max_size=2).map(tuple)


def rule_maps(section: str) -> st.SearchStrategy[tuple[tuple[str, tuple[str, ...]], ...]]:
    entries = st.tuples(st.sampled_from(PATTERNS[section]), scope_lists)
    return st.lists(entries, unique_by=lambda entry: entry[0], min_size=1, max_size=5).map(_drop_covered)


rule_sets = st.builds(
    Rules,
    tools=st.one_of(st.just(()), rule_maps("tools"), rule_maps("tools")),
    prompts=st.one_of(st.just(()), rule_maps("prompts"), rule_maps("prompts")),
    resources=st.one_of(st.just(()), rule_maps("resources"), rule_maps("resources")),
    methods=st.one_of(st.just(()), rule_maps("methods")),
    default=st.sampled_from((None, "deny", "allow")),
    route_scopes=st.sampled_from(((ROUTE_SCOPE,), (ROUTE_SCOPE,), ())),
    list_visibility=st.sampled_from((None, "step_up", "usable")),
)


@dataclass(frozen=True)
class Message:
    method: str
    target: str | None
    id: int | str


@dataclass(frozen=True)
class Exchange:
    era: str  # "2025-03-26" (no version header; batches allowed), "2025-11-25" or MODERN
    messages: tuple[Message, ...]
    batch: bool
    granted: frozenset[str]
    ascii_body: bool


@st.composite
def one_message(draw: st.DrawFn, rpc_id: int | str) -> Message:
    method = draw(st.sampled_from(METHODS))
    target = draw(st.sampled_from(TARGETS[method])) if method in TARGETS else None
    return Message(method, target, rpc_id)


@st.composite
def exchanges(draw: st.DrawFn) -> Exchange:
    era = draw(st.sampled_from(("2025-03-26", "2025-11-25", MODERN)))
    batch = era == "2025-03-26" and draw(st.booleans())
    if batch:
        size = draw(st.integers(2, 3))
        messages = tuple(draw(one_message(index + 1)) for index in range(size))
    else:
        rpc_id = draw(st.one_of(st.integers(0, 2**31), st.text("ab1-", min_size=1, max_size=4)))
        messages = (draw(one_message(rpc_id)),)
    # Each scope held two times in three, so that both outcomes stay common.
    held = draw(st.lists(st.sampled_from((True, True, False)), min_size=5, max_size=5))
    granted = {scope for scope, has in zip((*SCOPES, ROUTE_SCOPE), held, strict=True) if has}
    return Exchange(era, messages, batch, frozenset(granted), draw(st.booleans()))


# --- Building requests -----------------------------------------------------------------------


def config_yaml(rules: Rules, issuer: str, upstream: str) -> str:
    lines = [
        f"public_url: {PUBLIC_URL}",
        "issuers:",
        f"  - issuer: {issuer}",
        "    algorithms: [RS256]",
        f"    jwks: {{url: {issuer}/jwks}}",
        "routes:",
        "  - path: /mcp",
        f"    upstream: {upstream}",
        f"    scopes: {json.dumps(list(rules.route_scopes))}",
    ]
    for section in SECTIONS:
        entries = getattr(rules, section)
        if entries:
            mapping = ", ".join(
                f"{json.dumps(pattern)}: {json.dumps(list(scopes))}" for pattern, scopes in entries
            )
            lines.append(f"    {section}: {{{mapping}}}")
    if rules.default is not None:
        lines.append(f"    default: {rules.default}")
    if rules.list_visibility is not None:
        lines.append(f"    list_visibility: {rules.list_visibility}")
    return "\n".join(lines) + "\n"


def message_json(message: Message, era: str) -> dict[str, Any]:
    params: dict[str, Any]
    if message.method in ("tools/call", "prompts/get"):
        params = {"name": message.target}
        if message.method == "tools/call":
            params["arguments"] = {}
    elif message.method in ("resources/read", "resources/subscribe"):
        params = {"uri": message.target}
    elif message.method == "logging/setLevel":
        params = {"level": "info"}
    else:
        params = {}
    if era == MODERN:
        params["_meta"] = {
            "io.modelcontextprotocol/protocolVersion": MODERN,
            "io.modelcontextprotocol/clientCapabilities": {},
        }
    return {"jsonrpc": "2.0", "id": message.id, "method": message.method, "params": params}


def header_value(value: str) -> str:
    """MCP 2026-07-28: a value that would not survive as a header field travels as base64."""
    if value and value == value.strip() and all(" " <= char <= "~" for char in value):
        return value
    return f"=?base64?{base64.b64encode(value.encode()).decode()}?="


def request_for(exchange: Exchange, token: str) -> tuple[bytes, dict[str, str]]:
    documents = [message_json(message, exchange.era) for message in exchange.messages]
    document: Any = documents if exchange.batch else documents[0]
    body = json.dumps(document, ensure_ascii=exchange.ascii_body).encode()
    headers = {
        "Authorization": f"Bearer {token}",
        "Content-Type": "application/json",
        "Accept": "application/json, text/event-stream",
    }
    if exchange.era != "2025-03-26":
        headers["MCP-Protocol-Version"] = exchange.era
    if exchange.era == MODERN:
        (message,) = exchange.messages
        headers["Mcp-Method"] = message.method
        if message.target is not None and message.method != "resources/subscribe":
            headers["Mcp-Name"] = header_value(message.target)
    return body, headers


# --- Reading answers -------------------------------------------------------------------------


def answers_in(raw: bytes, content_type: str) -> list[Any]:
    """The JSON-RPC messages the client got; for SSE, after the notification checked unchanged."""
    if content_type.startswith("application/json"):
        document = json.loads(raw)
        return document if isinstance(document, list) else [document]
    assert content_type.startswith("text/event-stream"), content_type
    assert raw.startswith(NOTIFICATION_EVENT), f"the unrelated notification event changed: {raw[:300]!r}"
    rest = raw[len(NOTIFICATION_EVENT) :]
    assert rest.endswith(b"\n\n"), rest
    messages = []
    for block in rest[:-2].split(b"\n\n"):
        lines = block.split(b"\n")
        assert b"event: message" in lines, block
        data = b"\n".join(line[len(b"data: ") :] for line in lines if line.startswith(b"data: "))
        messages.append(json.loads(data))
    return messages


def check_answer(rules: Rules, exchange: Exchange, raw: bytes, content_type: str, record: Received) -> None:
    by_id = {message.id: message for message in exchange.messages}
    if not any(message.method in LISTS for message in exchange.messages):
        assert raw == record.answer, "a non-list answer must pass unchanged"
        return
    upstream_answers = answers_in(record.answer, content_type)
    got = answers_in(raw, content_type)
    assert [answer["id"] for answer in got] == [answer["id"] for answer in upstream_answers]
    for answer, original in zip(got, upstream_answers, strict=True):
        message = by_id[answer["id"]]
        if message.method not in LISTS:
            assert answer == original
            continue
        list_key, name_key, _, _ = LISTS[message.method]
        shown = [item[name_key] for item in answer["result"][list_key]]
        expected = visible(rules, message.method, exchange.granted)
        assert shown == expected, f"{message.method} showed {shown}, the rules allow {expected}"
        everything = len(original["result"][list_key])
        event(f"list shows {'none' if not shown else 'all' if len(shown) == everything else 'some'}")
        rest = {key: value for key, value in answer["result"].items() if key != list_key}
        original_rest = {key: value for key, value in original["result"].items() if key != list_key}
        if exchange.era == MODERN:
            assert rest.pop("cacheScope", None) == "private", "a 2026 list result must be private"
            original_rest.pop("cacheScope")
        assert rest == original_rest, "keys other than the list must pass unchanged"
        assert {key: answer[key] for key in answer if key != "result"} == {
            key: original[key] for key in original if key != "result"
        }


# --- The harness -----------------------------------------------------------------------------


class Harness:
    """One event loop, issuer, recording upstream and client for the whole test; gateways by config.

    A gateway is started for each rule set and kept while later examples (shrinking, mostly) use
    the same config text, the few most recent ones at a time: a failing example then shrinks in
    seconds rather than minutes, with nothing shared between configs but the upstream.
    Not a dataclass, so that Hypothesis's report shows ``Harness(...)``, not tokens and runners.
    """

    def __init__(
        self,
        loop: asyncio.Runner,
        issuer: TestIssuer,
        upstream: TinyUpstream,
        http: aiohttp.ClientSession,
        folder: Path,
    ) -> None:
        self.loop = loop
        self.issuer = issuer
        self.upstream = upstream
        self.http = http
        self.folder = folder
        self.gateways: dict[str, tuple[web.AppRunner, str]] = {}
        self.tokens: dict[str, str] = {}

    def __repr__(self) -> str:
        return "Harness(...)"

    async def gateway_for(self, text: str) -> str:
        if text in self.gateways:
            self.gateways[text] = self.gateways.pop(text)  # most recently used last
            return self.gateways[text][1]
        while len(self.gateways) >= 4:
            runner, _ = self.gateways.pop(next(iter(self.gateways)))
            await runner.cleanup()
        # Parsing a config is start-up work: off the loop the running gateways share.
        config = await asyncio.to_thread(parse_config_text, text, self.folder / "gateway.yaml", {})
        runner, port = await start_gateway(config, host="127.0.0.1", port=0)
        url = f"http://127.0.0.1:{port}"
        self.gateways[text] = (runner, url)
        for _ in range(1000):
            async with self.http.get(url + "/readyz") as response:
                if response.status == 200:
                    return url
            await asyncio.sleep(0.005)
        raise AssertionError("gateway never became ready")

    def token(self, granted: frozenset[str]) -> str:
        scope = " ".join(sorted(granted))
        if scope not in self.tokens:
            self.tokens[scope] = self.issuer.mint(audience=RESOURCE, scope=scope, lifetime_s=3600)
        return self.tokens[scope]

    async def aclose(self) -> None:
        for runner, _ in self.gateways.values():
            await runner.cleanup()
        self.gateways.clear()
        await self.http.close()


async def _client() -> aiohttp.ClientSession:
    return aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Harness]:
    with asyncio.Runner(loop_factory=asyncio.new_event_loop) as loop:
        stack = contextlib.AsyncExitStack()
        try:
            issuer = loop.run(stack.enter_async_context(serving()))
            upstream = TinyUpstream()
            loop.run(upstream.start())
            stack.push_async_callback(upstream.stop)
            harness = Harness(loop, issuer, upstream, loop.run(_client()), tmp_path)
            stack.push_async_callback(harness.aclose)
            yield harness
        finally:
            loop.run(stack.aclose())


async def run_example(harness: Harness, rules: Rules, sse: bool, cases: list[Exchange]) -> None:
    upstream = harness.upstream
    text = config_yaml(rules, harness.issuer.issuer, upstream.url(sse=sse))
    note(text)
    url = await harness.gateway_for(text)
    for exchange in cases:
        upstream.clear()
        body, headers = request_for(exchange, harness.token(exchange.granted))
        async with harness.http.post(url + "/mcp", data=body, headers=headers) as response:
            status, content_type, raw = response.status, response.content_type, await response.read()
        decisions = [allows(rules, m.method, m.target, exchange.granted) for m in exchange.messages]
        note(f"{exchange} -> oracle {decisions}, gateway {status} {raw[:400]!r}")
        kind = "batch" if exchange.batch else exchange.messages[0].method
        if any(refused(message) for message in exchange.messages):
            event(f"refused: {kind}")
            assert status == 400, f"a URI without one reading, yet {status}"
            assert upstream.records == [], "the upstream received a URI it may read differently"
            continue
        event(f"{'allowed' if all(decisions) else 'denied'}: {kind}")
        if not all(decisions):
            assert status == 403, f"denied by the rules, yet {status}"
            assert upstream.records == [], "the upstream received a call the rules deny"
            continue
        assert status == 200, f"allowed by the rules, yet {status}"
        assert [record.body for record in upstream.records] == [body], "body not forwarded as sent"
        check_answer(rules, exchange, raw, content_type, upstream.records[0])


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    # No explain phase: after a first failure it traces every run (sys.settrace on 3.11), event
    # loop and gateway included, which makes shrinking minutes instead of seconds.
    phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink],
)
@given(rules=rule_sets, sse=st.booleans(), cases=st.lists(exchanges(), min_size=1, max_size=6))
def test_upstream_never_sees_a_denied_call_and_lists_show_only_allowed_items(
    harness: Harness, rules: Rules, sse: bool, cases: list[Exchange]
) -> None:
    """Per the oracle: a denied POST is 403 and never reaches the upstream; an allowed one goes as sent."""
    harness.loop.run(run_example(harness, rules, sse, cases))
