"""First contact: real MCP clients nobody here wrote, from nothing to a tool call, a step-up and
back, through the gateway, with a real authorization server (oidc-provider) doing DCR + PKCE.

The clients: the official Python SDK (``OAuthClientProvider``, via ``oauth_support``) and the
official TypeScript SDK, 1.x (``@modelcontextprotocol/sdk``) and 2.x (``@modelcontextprotocol/client``),
pinned in ``ts_client/package-lock.json`` and driven by ``ts_client/journey.mjs`` with the SDK's own
OAuth client provider. Both protocol eras where the SDK has them: 2025-11-25 (``initialize``)
and 2026-07-28 (no handshake; Python 2.3 and TypeScript 2.x). TypeScript 1.x speaks 2025 only.

The route is the one a newcomer is told to write ("Your first protected route" in the README):
``scopes: [mcp:access]`` for the route, ``echo`` needs ``demo:read`` (tool A, an everyday tool),
``add`` needs ``demo:write`` (tool B, a rarer one), and ``challenge_scopes: [mcp:access,
demo:read]`` so the first 401 asks for what everyday use needs. The journey: call A (401,
discovery, registration, one authorization), call B (403 ``insufficient_scope``, one more
authorization), call A again (no authorization: the step-up challenge named the scopes the
client already had, so even a client that *replaces* its scopes with the challenged ones, as
TypeScript 1.x does, keeps A). The list-driven host calls only what it saw in ``tools/list``:
with the default ``list_visibility: step_up`` its first list already shows B.

What the SDKs really do, and why the authorization server is configured as it is: every one of
them registers (RFC 7591) with the ``scope`` of the challenge that started its flow, here
``mcp:access demo:read`` (plus ``offline_access`` where the AS offers it), and asks for more
only later, at step-up. oidc-provider, like many authorization servers, then refuses any
authorization for a scope beyond the registered ones (``invalid_scope``): no gateway setting
can fix that without giving up step-up (naming every scope in the first challenge makes every
user consent to everything up front). So the AS here does what an operator has to configure at
theirs: dynamically registered clients may ask for every scope of the resource (``server.js
--registration-scope every``: RFC 7591 §3.2.1 lets the AS replace the registered ``scope``, and
its registration response says so; the tests assert both what the SDK sent and what the AS
answered). ``test_an_as_that_keeps_registered_scopes_refuses_the_step_up`` pins the other
policy (``as-registered``): ``challenge_scopes`` still makes the everyday tools work on first
try, and the step-up is refused by the AS, not by the gateway.

Each journey is proven from the client's records (every HTTP request its SDK sent, every
authorization its user went through) and from the authorization server's log (``GET /__log``),
and the upstream never sees the client's token.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import pytest

from tests.conftest import Gateway, Upstream
from tests.e2e.conftest import AuthorizationServer, TypeScriptHost
from tests.e2e.oauth_support import assert_upstream_never_saw_tokens, jwt_parts, oauth_client
from tests.support.challenge import parse_bearer_challenge
from tests.support.issuer import MINTED_TOKENS

GATEWAY_CONFIG = """
    listen: {host: 127.0.0.1, port: {port}}
    public_url: {public_url}
    issuers:
      - issuer: ISSUER
        algorithms: [RS256]
        jwks: {discover: true}
    routes:
      - path: /mcp
        upstream: UPSTREAM
        scopes: [mcp:access]
        challenge_scopes: [mcp:access, demo:read]
        tools:
          "echo": [demo:read]
          "add": [demo:write]
EXTRA"""

FIRST_SCOPES = {"mcp:access", "demo:read"}
"""What the first 401 names (``challenge_scopes``): enough for tool A."""
ALL_SCOPES = {"mcp:access", "demo:read", "demo:write"}
"""What tool B needs plus what the caller already had: the step-up challenge and the second grant."""
AS_SCOPES = {"openid", "offline_access", "mcp:access", "demo:read", "demo:write"}
"""Every scope the authorization server has (what ``--registration-scope every`` registers)."""

TOOL_A = ("echo", {"text": "first"}, {"result": "first"})
TOOL_B = ("add", {"a": 2, "b": 3}, {"result": 5})
TOOL_A_AGAIN = ("echo", {"text": "again"}, {"result": "again"})
JOURNEY = (TOOL_A, TOOL_B, TOOL_A_AGAIN)

CLIENTS = [
    pytest.param("python", "2025", id="python-2025"),
    pytest.param("python", "2026", id="python-2026"),
    pytest.param("ts-v1", "2025", id="typescript-1.x-2025"),
    pytest.param("ts-v2", "2025", id="typescript-2.x-2025"),
    pytest.param("ts-v2", "2026", id="typescript-2.x-2026"),
]


@dataclass(frozen=True)
class Exchange:
    """One HTTP request a client's SDK sent and what it got back."""

    method: str
    url: str
    status: int
    www_authenticate: str | None
    bearer: str | None


@dataclass
class Journey:
    """What one client did, from its own records: the wire, the authorizations its user went
    through (the authorization URL's parameters), the tokens it stored, its lists and results."""

    wire: list[Exchange] = field(default_factory=list)
    authorizations: list[dict[str, str]] = field(default_factory=list)
    access_tokens: list[str] = field(default_factory=list)
    lists: list[list[str]] = field(default_factory=list)
    authorizations_before_first_list: int | None = None
    results: list[tuple[str, Any]] = field(default_factory=list)


NOT_LISTED = "not listed"


async def start_journey_gateway(
    start_public_gateway: Any, authorization_server: AuthorizationServer, upstream: Upstream, extra: str = ""
) -> Gateway:
    """The newcomer's route in front of the SDK upstream, trusting ``authorization_server``."""
    config = (
        GATEWAY_CONFIG.replace("ISSUER", authorization_server.issuer)
        .replace("UPSTREAM", upstream.mcp_url)
        .replace("EXTRA", extra)
    )
    gateway: Gateway = await start_public_gateway(config)
    await authorization_server.clear_log()  # only what the client does from here on
    return gateway


async def python_journey(route: str, era: str, *, list_driven: bool) -> Journey:
    """The Python SDK host: (list,) A, B, A; a list-driven host calls only tools it has listed."""
    journey = Journey()
    async with oauth_client(route, era=era) as session:  # type: ignore[arg-type]
        if list_driven:
            journey.lists.append([tool.name for tool in (await session.client.list_tools()).tools])
            journey.authorizations_before_first_list = len(session.user.authorizations)
        for name, arguments, _ in JOURNEY:
            if list_driven and name not in journey.lists[-1]:
                journey.results.append((name, NOT_LISTED))
                break
            result = await session.client.call_tool(name, arguments)
            journey.results.append((name, None if result.is_error else result.structured_content))
    journey.wire = [
        Exchange(
            record.method,
            record.url,
            record.status,
            record.www_authenticate,
            record.request_headers.get("authorization", "").removeprefix("Bearer ") or None,
        )
        for record in session.wire.records
    ]
    journey.authorizations = [authorization.params for authorization in session.user.authorizations]
    journey.access_tokens = session.storage.access_tokens
    return journey


async def typescript_journey(
    ts_host: TypeScriptHost, route: str, sdk: str, era: str, *, list_driven: bool
) -> Journey:
    """The TypeScript SDK host (``journey.mjs``), its events folded into a ``Journey``."""
    steps = ["list"] if list_driven else []
    steps += [f"call:{name}:{_json(arguments)}" for name, arguments, _ in JOURNEY]
    events = await ts_host.run(route, *steps, sdk=sdk.removeprefix("ts-"), era=era, list_driven=list_driven)
    journey = Journey()
    for event in events:
        kind = event["event"]
        if kind == "http":
            journey.wire.append(
                Exchange(
                    event["method"], event["url"], event["status"], event["www_authenticate"], event["bearer"]
                )
            )
        elif kind == "authorization":
            journey.authorizations.append(event["params"])
        elif kind == "tokens":
            journey.access_tokens.append(event["access_token"])
            MINTED_TOKENS.append(event["access_token"])  # the session-wide check: in no gateway log
        elif kind == "list":
            journey.lists.append(event["tools"])
            if journey.authorizations_before_first_list is None:
                journey.authorizations_before_first_list = len(journey.authorizations)
        elif kind == "result":
            journey.results.append((event["tool"], None if event["is_error"] else event["structured"]))
        elif kind == "not_listed":
            journey.results.append((event["tool"], NOT_LISTED))
    return journey


def _json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


async def run_journey(
    client: str, era: str, route: str, ts_host: TypeScriptHost | None, *, list_driven: bool = False
) -> Journey:
    if client == "python":
        return await python_journey(route, era, list_driven=list_driven)
    assert ts_host is not None
    return await typescript_journey(ts_host, route, client, era, list_driven=list_driven)


def scope_set(scope: str) -> set[str]:
    """A scope string as a set, without ``offline_access`` (which SDKs add where the AS offers it)."""
    return set(scope.split()) - {"offline_access"}


def http_records(log: list[dict[str, Any]], route: str) -> list[dict[str, Any]]:
    return [record for record in log if record.get("route") == route]


def assert_first_contact_journey(
    journey: Journey, log: list[dict[str, Any]], gateway: Gateway, authorization_server: AuthorizationServer
) -> None:
    """A, B, A went through with one registration, exactly two authorizations (first contact and
    the step-up), one 401 naming ``challenge_scopes`` and one 403 naming what B needs plus what
    the client had; nothing was asked of the user for the second A."""
    route = gateway.route_url("/mcp")
    prm_url = gateway.url + "/.well-known/oauth-protected-resource/mcp"
    assert journey.results == [(name, expected) for name, _, expected in JOURNEY]

    # -- the gateway's answers, as the client saw them ------------------------------------------
    mcp = [exchange for exchange in journey.wire if exchange.url == route]
    assert [exchange.status for exchange in mcp if exchange.status >= 400] == [401, 403]
    assert mcp[0].status == 401 and mcp[0].bearer is None
    first = parse_bearer_challenge(mcp[0].www_authenticate or "")
    assert set(first["scope"].split()) == FIRST_SCOPES
    assert first["resource_metadata"] == prm_url
    [denied] = [exchange for exchange in mcp if exchange.status == 403]
    step_up = parse_bearer_challenge(denied.www_authenticate or "")
    assert step_up["error"] == "insufficient_scope"
    assert set(step_up["scope"].split()) == ALL_SCOPES  # demo:write, and the demo:read it had

    # -- the client's side: two authorizations, the second for everything -----------------------
    assert [scope_set(params["scope"]) for params in journey.authorizations] == [FIRST_SCOPES, ALL_SCOPES]
    assert all(params["resource"] == route for params in journey.authorizations)
    assert all(params["code_challenge_method"] == "S256" for params in journey.authorizations)
    after_step_up = journey.wire[journey.wire.index(denied) + 1 :]
    token_requests = [
        exchange for exchange in after_step_up if exchange.url == authorization_server.url("/token")
    ]
    assert len(token_requests) == 1  # the step-up's code; then nothing but MCP requests
    assert all(
        exchange.url == route for exchange in after_step_up[after_step_up.index(token_requests[0]) + 1 :]
    )
    last_call = [exchange for exchange in mcp if exchange.method == "POST"][-1]
    assert last_call.status == 200 and last_call.bearer == journey.access_tokens[-1]
    _, claims = jwt_parts(journey.access_tokens[-1])
    assert set(claims["scope"].split()) == ALL_SCOPES and claims["aud"] == route

    # -- the authorization server's side ---------------------------------------------------------
    [registration] = http_records(log, "registration")
    assert registration["status"] == 201
    assert scope_set(registration["body"]["scope"]) == FIRST_SCOPES  # what the SDK registered with
    assert set(registration["response"]["scope"].split()) == AS_SCOPES  # what the AS made of it
    client_id = registration["client_id"]
    authorizations = http_records(log, "authorization")
    assert [scope_set(record["query"]["scope"]) for record in authorizations] == [FIRST_SCOPES, ALL_SCOPES]
    assert all(record["query"]["client_id"] == client_id for record in authorizations)
    code_grants = [r for r in http_records(log, "token") if r["params"]["grant_type"] == "authorization_code"]
    assert [record["status"] for record in code_grants] == [200, 200]


@pytest.mark.parametrize(("client", "era"), CLIENTS)
async def test_first_call_step_up_and_back_without_reauthorizing(
    client: str,
    era: str,
    authorization_server_log: AuthorizationServer,
    upstream: Upstream,
    start_public_gateway: Any,
    ts_host: TypeScriptHost,
) -> None:
    """From nothing: tool A works after one authorization (the 401 named ``challenge_scopes``),
    tool B after one step-up authorization, tool A again with no authorization at all."""
    gateway = await start_journey_gateway(start_public_gateway, authorization_server_log, upstream)
    journey = await run_journey(client, era, gateway.route_url("/mcp"), ts_host)
    assert_first_contact_journey(
        journey, await authorization_server_log.log(), gateway, authorization_server_log
    )
    await assert_upstream_never_saw_tokens(upstream, journey.access_tokens)


@pytest.mark.parametrize(("client", "era"), CLIENTS)
async def test_a_list_driven_host_finds_the_step_up_tool_in_its_first_list(
    client: str,
    era: str,
    authorization_server_log: AuthorizationServer,
    upstream: Upstream,
    start_public_gateway: Any,
    ts_host: TypeScriptHost,
) -> None:
    """A host that calls only tools it saw in ``tools/list``: with the default ``list_visibility``
    its first list (first token, no ``demo:write``) shows A and B, B's call steps up, A still
    works; tools no rule allows stay hidden."""
    gateway = await start_journey_gateway(start_public_gateway, authorization_server_log, upstream)
    journey = await run_journey(client, era, gateway.route_url("/mcp"), ts_host, list_driven=True)
    assert journey.authorizations_before_first_list == 1  # listed with the first token
    assert sorted(journey.lists[0]) == ["add", "echo"]  # not whoami, slow_stream, ...: no rule
    assert_first_contact_journey(
        journey, await authorization_server_log.log(), gateway, authorization_server_log
    )
    await assert_upstream_never_saw_tokens(upstream, journey.access_tokens)


@pytest.mark.parametrize(("client", "era"), [CLIENTS[0], CLIENTS[3]])
async def test_with_list_visibility_usable_a_list_driven_host_never_steps_up(
    client: str,
    era: str,
    authorization_server_log: AuthorizationServer,
    upstream: Upstream,
    start_public_gateway: Any,
    ts_host: TypeScriptHost,
) -> None:
    """``list_visibility: usable`` hides B from a token without ``demo:write``: the list-driven host
    uses A and never sends the call that would step up (why ``step_up`` is the default)."""
    gateway = await start_journey_gateway(
        start_public_gateway, authorization_server_log, upstream, extra="        list_visibility: usable\n"
    )
    journey = await run_journey(client, era, gateway.route_url("/mcp"), ts_host, list_driven=True)
    assert journey.lists == [["echo"]]
    assert journey.results == [("echo", {"result": "first"}), ("add", NOT_LISTED)]
    assert [exchange.status for exchange in journey.wire if exchange.status >= 400] == [401]
    assert len(journey.authorizations) == 1
    assert len(http_records(await authorization_server_log.log(), "authorization")) == 1
    await assert_upstream_never_saw_tokens(upstream, journey.access_tokens)


async def test_an_as_that_keeps_registered_scopes_refuses_the_step_up(
    strict_authorization_server: AuthorizationServer, upstream: Upstream, start_public_gateway: Any
) -> None:
    """With an AS that limits a client to the scopes it registered with (oidc-provider's own
    behaviour), ``challenge_scopes`` still makes the everyday tool work on first try; the step-up
    for ``demo:write`` is refused by the AS with ``invalid_scope`` (the gateway asked correctly),
    which is what an operator must allow at their AS for step-up to work."""
    gateway = await start_journey_gateway(start_public_gateway, strict_authorization_server, upstream)
    route = gateway.route_url("/mcp")
    echoed: list[Any] = []
    with pytest.raises(BaseExceptionGroup) as step_up:  # the SDK's flow fails inside its task group
        async with oauth_client(route, era="2025") as session:
            echoed.append((await session.client.call_tool("echo", {"text": "first"})).structured_content)
            await session.client.call_tool("add", {"a": 2, "b": 3})
    assert echoed == [{"result": "first"}]
    # the user came back from the AS with an error instead of a code
    assert step_up.group_contains(AssertionError, match="'error': 'invalid_scope'")

    log = await strict_authorization_server.log()
    [registration] = http_records(log, "registration")
    assert scope_set(registration["body"]["scope"]) == FIRST_SCOPES
    assert scope_set(registration["response"]["scope"]) == FIRST_SCOPES  # kept as registered
    first, refused = http_records(log, "authorization")
    assert scope_set(first["query"]["scope"]) == FIRST_SCOPES
    assert scope_set(refused["query"]["scope"]) == ALL_SCOPES
    assert refused["location_params"]["error"] == "invalid_scope"
    denied = [record for record in session.wire.records if record.status == 403]
    assert [set(parse_bearer_challenge(r.www_authenticate or "")["scope"].split()) for r in denied] == [
        ALL_SCOPES
    ]
    await assert_upstream_never_saw_tokens(upstream, session.storage.access_tokens)
