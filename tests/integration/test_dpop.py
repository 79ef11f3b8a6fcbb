"""DPoP through the real gateway in front of the SDK upstream: proofs accepted in both protocol
eras, every bad one refused with the DPoP challenge before the upstream hears anything, and the
``DPoP`` header never forwarded."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from multidict import CIMultiDict

from gateway.auth.dpop import DpopNonces
from gateway.sealing import StateSealer
from tests.conftest import Gateway, GatewayFactory, LogSink, Upstream
from tests.integration.test_authentication import INITIALIZE
from tests.support.challenge import parse_bearer_challenge
from tests.support.dpop import ProofKey, ath_of, b64url, compact
from tests.support.fake_as import FakeAuthorizationServer, serving_fake_as
from tests.support.issuer import TestIssuer

PUBLIC = "http://127.0.0.1:8080"  # public_url: what htu must name, whatever the Host header says
MCP = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
MODERN = "2026-07-28"
META = {"io.modelcontextprotocol/protocolVersion": MODERN, "io.modelcontextprotocol/clientCapabilities": {}}
ALGS = "RS256 ES256"
KEY = ProofKey.generate("ES256")
OTHER = ProofKey.generate("ES256")
RSA_KEY = ProofKey.generate("RS256")


def config(issuer: TestIssuer, upstream_url: str) -> str:
    """Three routes on one upstream: /mcp (dpop default, allowed), /strict (required), /plain (off)."""
    routes = "".join(
        f"""
          - path: {path}
            upstream: {upstream_url}
            scopes: [mcp:access]
            tools: {{"*": []}}{mode}"""
        for path, mode in (
            ("/mcp", ""),
            ("/strict", "\n            dpop: required"),
            ("/plain", '\n            dpop: "off"'),  # quoted: a bare off is YAML false
        )
    )
    return f"""
        listen: {{host: 127.0.0.1, port: 0}}
        public_url: {PUBLIC}
        issuers:
          - issuer: {issuer.issuer}
            algorithms: [RS256, ES256]
            jwks: {{discover: true}}
            dpop_iat_window_s: 60
        routes:{routes}
        """


@pytest.fixture
async def gateway(issuer: TestIssuer, upstream: Upstream, start_gateway_with: GatewayFactory) -> Gateway:
    """The gateway with an allowed, a required and an off route, in front of the SDK upstream."""
    return await start_gateway_with(config(issuer, upstream.mcp_url))


def bound_token(issuer: TestIssuer, route: str = "/mcp", key: ProofKey = KEY) -> str:
    return issuer.mint(audience=PUBLIC + route, claims={"cnf": {"jkt": key.jkt}})


def dpop_headers(token: str, *proofs: str) -> dict[str, Any]:
    return {"Authorization": f"DPoP {token}", **({"DPoP": proofs[0]} if len(proofs) == 1 else {})}


def modern_call(tool: str, arguments: dict[str, Any]) -> tuple[bytes, dict[str, str]]:
    body = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "tools/call",
        "params": {"name": tool, "arguments": arguments, "_meta": META},
    }
    headers = {**MCP, "MCP-Protocol-Version": MODERN, "Mcp-Method": "tools/call", "Mcp-Name": tool}
    return json.dumps(body).encode(), headers


@dataclass
class Answer:
    status: int
    headers: Any
    message: Any


async def post(url: str, body: bytes, headers: Any) -> Answer:
    """Status, headers and JSON-RPC message of a POST (the first SSE event's data for an SSE answer)."""
    async with aiohttp.ClientSession() as http, http.post(url, data=body, headers=headers) as response:
        raw = await response.read()
        if response.content_type == "text/event-stream":
            data = [line[6:] for line in raw.decode().splitlines() if line.startswith("data: ")]
            return Answer(response.status, response.headers, json.loads(data[0]))
        return Answer(response.status, response.headers, json.loads(raw) if raw else None)


def upstream_saw_no_dpop(records: list[dict[str, Any]], token: str) -> bool:
    names = {name.lower() for record in records for name, _value in record["headers"]}
    return "dpop" not in names and not any(token in value for r in records for _n, value in r["headers"])


@pytest.mark.parametrize("route", ["/mcp", "/strict"])
async def test_a_dpop_call_succeeds_in_the_2026_era(
    issuer: TestIssuer, gateway: Gateway, upstream: Upstream, route: str
) -> None:
    """A 2026-07-28 tools/call with a DPoP token and proof is answered; the upstream sees no DPoP
    header and no token."""
    token = bound_token(issuer, route)
    body, headers = modern_call("add", {"a": 1, "b": 2})
    proof = KEY.proof("POST", PUBLIC + route, token)
    answer = await post(gateway.route_url(route), body, {**headers, **dpop_headers(token, proof)})
    assert answer.status == 200, answer.message
    assert answer.message["result"]["content"][0]["text"] == "3"
    records = await upstream.requests()
    assert len(records) == 1 and upstream_saw_no_dpop(records, token)


@pytest.mark.parametrize("route", ["/mcp", "/strict"])
async def test_a_dpop_session_succeeds_in_the_2025_era(
    issuer: TestIssuer, gateway: Gateway, upstream: Upstream, route: str
) -> None:
    """initialize, then tools/call in its session, each with a fresh proof (RS256 key this time)."""
    token = bound_token(issuer, route, RSA_KEY)
    url = gateway.route_url(route)
    proof = RSA_KEY.proof("POST", PUBLIC + route, token)
    answer = await post(url, json.dumps(INITIALIZE).encode(), {**MCP, **dpop_headers(token, proof)})
    assert answer.status == 200, answer.message
    session = {
        **MCP,
        "Mcp-Session-Id": answer.headers["Mcp-Session-Id"],
        "MCP-Protocol-Version": "2025-11-25",
    }
    initialized = json.dumps({"jsonrpc": "2.0", "method": "notifications/initialized"}).encode()
    proof = RSA_KEY.proof("POST", PUBLIC + route, token)
    assert (await post(url, initialized, {**session, **dpop_headers(token, proof)})).status == 202
    call = {
        "jsonrpc": "2.0",
        "id": 2,
        "method": "tools/call",
        "params": {"name": "add", "arguments": {"a": 2, "b": 2}},
    }
    proof = RSA_KEY.proof("POST", PUBLIC + route, token)
    answer = await post(url, json.dumps(call).encode(), {**session, **dpop_headers(token, proof)})
    assert answer.status == 200, answer.message
    assert answer.message["result"]["content"][0]["text"] == "4"
    records = await upstream.requests()
    assert len(records) == 3 and upstream_saw_no_dpop(records, token)


def hs256_proof(token: str) -> str:
    header = {"typ": "dpop+jwt", "alg": "HS256", "jwk": KEY.public_jwk}
    claims = {"jti": "j1", "htm": "POST", "htu": PUBLIC + "/mcp", "iat": 0, "ath": ath_of(token)}
    unsigned = compact(header, claims).rsplit(".", 1)[0]
    return f"{unsigned}.{b64url(hmac.new(b'k', unsigned.encode(), hashlib.sha256).digest())}"


def none_proof(token: str) -> str:
    header = {"typ": "dpop+jwt", "alg": "none", "jwk": KEY.public_jwk}
    return compact(header, {"jti": "j2", "htm": "POST", "htu": PUBLIC + "/mcp", "ath": ath_of(token)})


HTU = PUBLIC + "/mcp"
Request = Callable[[str, str], dict[str, Any]]  # (token, the gateway's own URL) -> headers
REFUSALS: list[tuple[str, Request, str]] = [
    ("missing proof", lambda t, _u: dpop_headers(t), "dpop_proof_missing"),
    (
        "wrong typ",
        lambda t, _u: dpop_headers(t, KEY.proof("POST", HTU, t, header={"typ": "JWT"})),
        "dpop_bad_typ",
    ),
    ("alg none", lambda t, _u: dpop_headers(t, none_proof(t)), "dpop_alg_not_allowed"),
    ("alg HS256", lambda t, _u: dpop_headers(t, hs256_proof(t)), "dpop_alg_not_allowed"),
    (
        "alg not pinned",
        lambda t, _u: dpop_headers(t, RSA_KEY.proof("POST", HTU, t, header={"alg": "PS256"})),
        "dpop_alg_not_allowed",
    ),
    (
        "private key in jwk",
        lambda t, _u: dpop_headers(t, KEY.proof("POST", HTU, t, header={"jwk": KEY.private_jwk})),
        "dpop_private_key",
    ),
    (
        "bad signature",
        lambda t, _u: dpop_headers(t, KEY.proof("POST", HTU, t, signer=OTHER)),
        "dpop_bad_signature",
    ),
    ("htm mismatch", lambda t, _u: dpop_headers(t, KEY.proof("GET", HTU, t)), "dpop_htm_mismatch"),
    (
        "htu of the Host the client used",
        lambda t, u: dpop_headers(t, KEY.proof("POST", u, t)),
        "dpop_htu_mismatch",
    ),
    (
        "htu of a forged Host header",
        lambda t, _u: {
            "Host": "evil.example",
            **dpop_headers(t, KEY.proof("POST", "http://evil.example/mcp", t)),
        },
        "dpop_htu_mismatch",
    ),
    (
        "htu with a query",
        lambda t, _u: dpop_headers(t, KEY.proof("POST", HTU + "?x=1", t)),
        "dpop_htu_mismatch",
    ),
    (
        "proof for another route",
        lambda t, _u: dpop_headers(t, KEY.proof("POST", PUBLIC + "/strict", t)),
        "dpop_htu_mismatch",
    ),
    (
        "iat outside the window",
        lambda t, _u: dpop_headers(t, KEY.proof("POST", HTU, t, iat=time.time() - 61)),
        "dpop_iat_out_of_window",
    ),
    (
        "ath mismatch",
        lambda t, _u: dpop_headers(t, KEY.proof("POST", HTU, "another-token")),
        "dpop_ath_mismatch",
    ),
    ("thumbprint mismatch", lambda t, _u: dpop_headers(t, OTHER.proof("POST", HTU, t)), "dpop_jkt_mismatch"),
    (
        "bound token as Bearer",
        lambda t, _u: {"Authorization": f"Bearer {t}", "DPoP": KEY.proof("POST", HTU, t)},
        "dpop_bound_token_as_bearer",
    ),
]


async def refused(gateway: Gateway, route: str, headers: Any) -> Answer:
    """A 2026-07-28 tools/call add(1, 2) on ``route`` with ``headers`` (repeated names kept)."""
    body, call_headers = modern_call("add", {"a": 1, "b": 2})
    merged = CIMultiDict(call_headers)
    merged.extend(headers)
    return await post(gateway.route_url(route), body, merged)


def dpop_challenge_of(header: str) -> tuple[dict[str, str], str | None]:
    """The DPoP challenge's parameters, and the Bearer challenge that follows it, if any."""
    assert header.startswith("DPoP "), header
    dpop, _, bearer = header.partition(", Bearer ")
    return parse_bearer_challenge("Bearer " + dpop.removeprefix("DPoP ")), (
        "Bearer " + bearer if bearer else None
    )


async def logged_reason(logs: LogSink, before: int) -> str | None:
    """The reason on the first request line for /mcp logged after line ``before`` (polled: the
    line is written as the answer goes out)."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        events = [json.loads(line) for line in logs.lines()[before:]]
        lines = [e for e in events if e.get("event") == "request" and e.get("route") == "/mcp"]
        if lines:
            return lines[0].get("reason")  # type: ignore[no-any-return]
        await asyncio.sleep(0.02)
    return None


@pytest.mark.parametrize(("case", "request_headers", "reason"), REFUSALS, ids=[case[0] for case in REFUSALS])
async def test_each_bad_proof_is_refused_before_the_upstream(
    issuer: TestIssuer,
    gateway: Gateway,
    upstream: Upstream,
    gateway_logs: LogSink,
    case: str,
    request_headers: Request,
    reason: str,
) -> None:
    """401 with ``DPoP error="invalid_dpop_proof", algs=…`` and resource_metadata, the Bearer
    challenge after it (this route still takes Bearer), the reason in the log only; nothing upstream."""
    token = bound_token(issuer)
    before = len(gateway_logs.lines())
    answer = await refused(gateway, "/mcp", request_headers(token, gateway.route_url("/mcp")))
    assert answer.status == 401
    dpop, bearer = dpop_challenge_of(answer.headers["WWW-Authenticate"])
    assert dpop == {
        "error": "invalid_dpop_proof",
        "scope": "mcp:access",
        "resource_metadata": PUBLIC + "/.well-known/oauth-protected-resource/mcp",
        "algs": ALGS,
    }
    assert bearer is not None and "error" not in parse_bearer_challenge(bearer)
    assert reason not in json.dumps(answer.message)
    assert await logged_reason(gateway_logs, before) == reason
    assert await upstream.requests() == []


async def test_two_proofs_are_refused(issuer: TestIssuer, gateway: Gateway, upstream: Upstream) -> None:
    """Two DPoP header lines (§4.3 item 1: exactly one): 401 with the DPoP challenge, nothing upstream."""
    token = bound_token(issuer)
    headers = CIMultiDict(dpop_headers(token))
    headers.add("DPoP", KEY.proof("POST", HTU, token))
    headers.add("DPoP", KEY.proof("POST", HTU, token))
    answer = await refused(gateway, "/mcp", headers)
    assert answer.status == 401
    assert dpop_challenge_of(answer.headers["WWW-Authenticate"])[0]["error"] == "invalid_dpop_proof"
    assert await upstream.requests() == []


async def test_a_replayed_proof_is_refused(issuer: TestIssuer, gateway: Gateway, upstream: Upstream) -> None:
    """The same proof twice: the first call is answered, the replay is 401 and never reaches the upstream."""
    token = bound_token(issuer)
    headers = dpop_headers(token, KEY.proof("POST", HTU, token))
    assert (await refused(gateway, "/mcp", headers)).status == 200
    assert len(await upstream.requests()) == 1
    answer = await refused(gateway, "/mcp", headers)
    assert answer.status == 401
    assert dpop_challenge_of(answer.headers["WWW-Authenticate"])[0]["error"] == "invalid_dpop_proof"
    assert len(await upstream.requests()) == 1


async def test_required_refuses_bearer_with_the_dpop_challenge_only(
    issuer: TestIssuer, gateway: Gateway, upstream: Upstream
) -> None:
    """dpop: required: an unbound Bearer token is 401 with one DPoP challenge (no Bearer one); a
    request without any token gets the DPoP challenge without an error code."""
    token = issuer.mint(audience=PUBLIC + "/strict")
    answer = await refused(gateway, "/strict", {"Authorization": f"Bearer {token}"})
    assert answer.status == 401
    dpop, bearer = dpop_challenge_of(answer.headers["WWW-Authenticate"])
    assert (dpop["error"], dpop["algs"], bearer) == ("invalid_dpop_proof", ALGS, None)
    answer = await refused(gateway, "/strict", {})
    assert answer.status == 401
    dpop, bearer = dpop_challenge_of(answer.headers["WWW-Authenticate"])
    assert "error" not in dpop and bearer is None
    assert await upstream.requests() == []


async def test_an_unbound_token_with_the_dpop_scheme_is_refused(
    issuer: TestIssuer, gateway: Gateway, upstream: Upstream
) -> None:
    """A token without cnf.jkt presented as DPoP, even with a valid proof, is refused: no binding to check."""
    token = issuer.mint(audience=HTU)
    answer = await refused(gateway, "/mcp", dpop_headers(token, KEY.proof("POST", HTU, token)))
    assert answer.status == 401
    assert dpop_challenge_of(answer.headers["WWW-Authenticate"])[0]["error"] == "invalid_dpop_proof"
    assert await upstream.requests() == []


async def test_dpop_off_route(issuer: TestIssuer, gateway: Gateway, upstream: Upstream) -> None:
    """dpop: off: the DPoP scheme is no token (401, Bearer challenge, no error) and a bound token as
    Bearer is invalid_token; Bearer challenges only, nothing upstream."""
    token = bound_token(issuer, "/plain")
    proof = KEY.proof("POST", PUBLIC + "/plain", token)
    answer = await refused(gateway, "/plain", dpop_headers(token, proof))
    assert answer.status == 401 and "error" not in parse_bearer_challenge(answer.headers["WWW-Authenticate"])
    answer = await refused(gateway, "/plain", {"Authorization": f"Bearer {token}"})
    assert answer.status == 401
    assert parse_bearer_challenge(answer.headers["WWW-Authenticate"])["error"] == "invalid_token"
    assert await upstream.requests() == []


async def test_bearer_still_works_where_dpop_is_allowed(
    issuer: TestIssuer, gateway: Gateway, upstream: Upstream
) -> None:
    """dpop: allowed (the default): an unbound Bearer token is accepted as before; a stray DPoP
    header is not forwarded."""
    token = issuer.mint(audience=HTU)
    answer = await refused(gateway, "/mcp", {"Authorization": f"Bearer {token}", "DPoP": "x.y.z"})
    assert answer.status == 200
    records = await upstream.requests()
    assert len(records) == 1 and upstream_saw_no_dpop(records, token)


@pytest.mark.parametrize(
    ("route", "expected"),
    [
        ("/mcp", {"dpop_signing_alg_values_supported": ["RS256", "ES256"]}),
        (
            "/strict",
            {
                "dpop_signing_alg_values_supported": ["RS256", "ES256"],
                "dpop_bound_access_tokens_required": True,
            },
        ),
        ("/plain", {}),
    ],
)
async def test_metadata_publishes_dpop(gateway: Gateway, route: str, expected: dict[str, Any]) -> None:
    """RFC 9728 §2: the algs for allowed and required, dpop_bound_access_tokens_required for required."""
    async with (
        aiohttp.ClientSession() as http,
        http.get(gateway.url + "/.well-known/oauth-protected-resource" + route) as response,
    ):
        document = await response.json()
    assert {key: value for key, value in document.items() if key.startswith("dpop")} == expected


# --- opaque tokens: the binding comes from the introspection answer ----------------------------


@pytest.fixture
async def fake_as(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[FakeAuthorizationServer]:
    """The fake AS, whose introspection endpoint answers for the tokens a test lists."""
    async with serving_fake_as() as server:
        monkeypatch.setenv("AS_CLIENT_SECRET", server.client_secret)
        yield server


async def test_an_introspected_binding_is_checked(
    upstream: Upstream, fake_as: FakeAuthorizationServer, start_gateway_with: GatewayFactory
) -> None:
    """An opaque token whose introspection says token_type DPoP and cnf.jkt works with a proof of
    that key only: as Bearer, or with another key's proof, it is 401 and nothing goes upstream."""
    gateway = await start_gateway_with(
        f"""
        public_url: {PUBLIC}
        issuers:
          - issuer: {fake_as.issuer}
            algorithms: [ES256]                   # the algs DPoP proofs may use
            introspection:
              endpoint: {fake_as.introspection_endpoint}
              client_id: {fake_as.client_id}
              client_secret: {{env: AS_CLIENT_SECRET}}
        routes:
          - {{path: /mcp, upstream: {upstream.mcp_url}, scopes: [mcp:access], tools: {{"*": []}}}}
        """
    )
    now = int(time.time())
    fake_as.introspection["opaque-bound"] = {
        "active": True,
        "iss": fake_as.issuer,
        "sub": "bob",
        "aud": HTU,
        "scope": "mcp:access",
        "exp": now + 300,
        "token_type": "DPoP",
        "cnf": {"jkt": KEY.jkt},
    }
    token = "opaque-bound"
    for headers in (
        {"Authorization": f"Bearer {token}"},
        dpop_headers(token, OTHER.proof("POST", HTU, token)),
    ):
        answer = await refused(gateway, "/mcp", headers)
        assert answer.status == 401
        assert dpop_challenge_of(answer.headers["WWW-Authenticate"])[0]["algs"] == "ES256"
    assert await upstream.requests() == []
    answer = await refused(gateway, "/mcp", dpop_headers(token, KEY.proof("POST", HTU, token)))
    assert answer.status == 200, answer.message
    records = await upstream.requests()
    assert len(records) == 1 and upstream_saw_no_dpop(records, token)


# --- the server nonce (RFC 9449 §8, §9) ---------------------------------------------------------

STATE_KEY = "a-state-key-of-at-least-thirty-two-bytes"
OTHER_STATE_KEY = "another-gateways-state-key-of-32-bytes-or-more"


def nonce_config(issuer: TestIssuer, upstream_url: str, state_key_env: str) -> str:
    """/mcp with dpop_nonce: true, its nonces sealed with the state key in ``state_key_env``."""
    return f"""
        listen: {{host: 127.0.0.1, port: 0}}
        public_url: {PUBLIC}
        state_keys: {{keys: [{{id: k1, secret: {{env: {state_key_env}}}}}]}}
        issuers:
          - issuer: {issuer.issuer}
            algorithms: [RS256, ES256]
            jwks: {{discover: true}}
            dpop_iat_window_s: 60
        routes:
          - path: /mcp
            upstream: {upstream_url}
            scopes: [mcp:access]
            tools: {{"*": []}}
            dpop_nonce: true
        """


@pytest.fixture
def state_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two state keys in the environment: STATE_KEY_A (two replicas share it) and STATE_KEY_B."""
    monkeypatch.setenv("STATE_KEY_A", STATE_KEY)
    monkeypatch.setenv("STATE_KEY_B", OTHER_STATE_KEY)


def with_nonce(token: str, nonce: str | None) -> dict[str, Any]:
    """DPoP headers with a fresh proof for /mcp, carrying ``nonce`` (none if None)."""
    return dpop_headers(token, KEY.proof("POST", HTU, token, claims={"nonce": nonce} if nonce else None))


def asks_for_a_nonce(answer: Answer) -> str:
    """The answer is 401 use_dpop_nonce with the DPoP challenge (Bearer after it); its DPoP-Nonce."""
    assert answer.status == 401, answer.message
    dpop, bearer = dpop_challenge_of(answer.headers["WWW-Authenticate"])
    assert dpop["error"] == "use_dpop_nonce" and dpop["algs"] == ALGS
    assert dpop["resource_metadata"] == PUBLIC + "/.well-known/oauth-protected-resource/mcp"
    assert bearer is not None
    return str(answer.headers["DPoP-Nonce"])


async def test_a_nonce_route_asks_for_a_nonce_then_accepts_it(
    issuer: TestIssuer,
    upstream: Upstream,
    start_gateway_with: GatewayFactory,
    state_keys: None,
    gateway_logs: LogSink,
) -> None:
    """dpop_nonce: a proof without a nonce is 401 use_dpop_nonce with a DPoP-Nonce and nothing goes
    upstream; the retry with that nonce is answered (one upstream request) with a fresh DPoP-Nonce."""
    gateway = await start_gateway_with(nonce_config(issuer, upstream.mcp_url, "STATE_KEY_A"))
    token = bound_token(issuer)
    before = len(gateway_logs.lines())
    nonce = asks_for_a_nonce(await refused(gateway, "/mcp", with_nonce(token, None)))
    assert await logged_reason(gateway_logs, before) == "dpop_nonce_missing"
    assert await upstream.requests() == []
    answer = await refused(gateway, "/mcp", with_nonce(token, nonce))
    assert answer.status == 200, answer.message
    assert answer.message["result"]["content"][0]["text"] == "3"
    fresh = answer.headers["DPoP-Nonce"]
    records = await upstream.requests()
    assert len(records) == 1 and upstream_saw_no_dpop(records, token)
    answer = await refused(gateway, "/mcp", with_nonce(token, fresh))  # the fresh one works too
    assert answer.status == 200, answer.message


async def test_a_nonce_is_good_on_a_replica_with_the_same_state_key_only(
    issuer: TestIssuer, upstream: Upstream, start_gateway_with: GatewayFactory, state_keys: None
) -> None:
    """Stateless: a replica with the same state_keys takes another's nonce; a gateway with another
    key refuses it with use_dpop_nonce (and its own nonce); nothing reaches the upstream until then."""
    first = await start_gateway_with(nonce_config(issuer, upstream.mcp_url, "STATE_KEY_A"))
    replica = await start_gateway_with(nonce_config(issuer, upstream.mcp_url, "STATE_KEY_A"))
    stranger = await start_gateway_with(nonce_config(issuer, upstream.mcp_url, "STATE_KEY_B"))
    token = bound_token(issuer)
    foreign = asks_for_a_nonce(await refused(stranger, "/mcp", with_nonce(token, None)))
    own = asks_for_a_nonce(await refused(first, "/mcp", with_nonce(token, foreign)))
    assert own != foreign
    assert await upstream.requests() == []
    answer = await refused(replica, "/mcp", with_nonce(token, own))
    assert answer.status == 200, answer.message
    assert len(await upstream.requests()) == 1


async def test_an_expired_nonce_is_refused(
    issuer: TestIssuer,
    upstream: Upstream,
    start_gateway_with: GatewayFactory,
    state_keys: None,
    gateway_logs: LogSink,
) -> None:
    """A nonce sealed with the gateway's own key but older than the iat window (60 s) is refused
    with use_dpop_nonce (dpop_nonce_expired); nothing upstream."""
    gateway = await start_gateway_with(nonce_config(issuer, upstream.mcp_url, "STATE_KEY_A"))
    sealer = StateSealer([("k1", STATE_KEY.encode())], "k1")
    old = DpopNonces(sealer).issue("/mcp", time.time() - 61)
    token = bound_token(issuer)
    before = len(gateway_logs.lines())
    asks_for_a_nonce(await refused(gateway, "/mcp", with_nonce(token, old)))
    assert await logged_reason(gateway_logs, before) == "dpop_nonce_expired"
    assert await upstream.requests() == []
