"""JWKS faults through the running gateway: malformed keys, outages, and what they cost the issuer.

RFC 7517 §5: a JWK the gateway cannot use is skipped (logged ``jwks_key_skipped``, counted), the
other keys of the set still verify. A failed load backs off with jitter, so an issuer without keys
or with stale keys during its outage is not refetched per request; the in-process issuer counts
every JWKS request it answers. Each broken answer (503, an HTML page, an empty body, an empty key
set, an answer slower than ``http_timeout_s``) is met at start (503 with Retry-After, nothing
forwarded) and after keys are cached (the cached keys serve on), with bounded fetches.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Literal

import pytest
from aiohttp import web
from aiohttp.typedefs import Handler

from tests.conftest import Gateway, GatewayFactory, LogSink, Upstream
from tests.integration.test_authentication import RESOURCE, post
from tests.integration.test_lifecycle import eventually
from tests.integration.test_metrics import scrape, value
from tests.support.issuer import SigningKey, TestIssuer, serving

COOLDOWN_S = 0.2  # also the backoff cap: steps of 0.1 s to 0.2 s once jittered


def short_ec_key() -> dict[str, Any]:
    """A P-256 JWK whose x coordinate is 31 bytes, not 32 (RFC 7518 §6.2.1.2)."""
    jwk = SigningKey.generate("ES256", kid="short-ec").public_jwk()
    jwk["x"] = base64.urlsafe_b64encode(b"\x01" * 31).rstrip(b"=").decode()
    return jwk


def rsa_key_without_e() -> dict[str, Any]:
    jwk = SigningKey.generate("RS256", kid="rsa-no-e").public_jwk()
    del jwk["e"]
    return jwk


Fault = Literal["html", "empty_body", "empty_key_set", "slow"]
SLOW_TIMEOUT_S = 0.2  # http_timeout_s when the JWKS answers slowly
# How each broken answer is logged and counted: a fetch that failed, or a set with no usable key.
FAULT_OUTCOMES: dict[Fault, tuple[str, str]] = {
    "html": ("jwks_fetch_failed", "failed"),
    "empty_body": ("jwks_fetch_failed", "failed"),
    "empty_key_set": ("jwks_has_no_usable_keys", "no_usable_keys"),
    "slow": ("jwks_fetch_failed", "failed"),
}


@dataclass
class FaultyIssuer(TestIssuer):
    """A test issuer whose JWKS can carry malformed keys next to (or instead of) its good ones, or
    answer with a ``fault`` instead of its key set."""

    __test__ = False

    malformed: list[dict[str, Any]] = field(default_factory=list)
    only_malformed: bool = False
    fault: Fault | None = None
    released: asyncio.Event = field(default_factory=asyncio.Event)  # ends slow answers

    def jwks(self) -> dict[str, Any]:
        good = [] if self.only_malformed else super().jwks()["keys"]
        return {"keys": [*self.malformed, *good]}

    def app(self) -> web.Application:
        @web.middleware
        async def faults(request: web.Request, handler: Handler) -> web.StreamResponse:
            if request.path != "/jwks" or self.fault is None:
                return await handler(request)
            self.jwks_fetches += 1
            if self.fault == "html":  # a login page or a proxy's error page, with status 200
                return web.Response(text="<html><body>Sign in</body></html>", content_type="text/html")
            if self.fault == "empty_body":
                return web.Response(body=b"", content_type="application/json")
            if self.fault == "empty_key_set":
                return web.json_response({"keys": []})
            # Slow: well past the gateway's http_timeout_s, until the test ends at the latest.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.released.wait(), 20 * SLOW_TIMEOUT_S)
            return web.json_response(self.jwks())

        app = super().app()
        app.middlewares.append(faults)
        return app


@pytest.fixture
async def issuer() -> AsyncIterator[FaultyIssuer]:
    async with serving(FaultyIssuer()) as served:
        assert isinstance(served, FaultyIssuer)
        yield served
        served.released.set()  # a slow answer still pending ends now, not at its timeout


def config_for(
    issuer: TestIssuer, upstream: Upstream, *, max_age_s: float = 600, http_timeout_s: float = 5
) -> str:
    return f"""
        listen: {{host: 127.0.0.1, port: 0}}
        public_url: http://127.0.0.1:8080
        admin: {{host: 127.0.0.1, port: 0}}
        issuers:
          - issuer: {issuer.issuer}
            algorithms: [RS256, ES256]
            jwks: {{url: {issuer.base_url}/jwks}}
            jwks_refresh_cooldown_s: {COOLDOWN_S}
            jwks_max_age_s: {max_age_s}
            http_timeout_s: {http_timeout_s}
        routes:
          - path: /mcp
            upstream: {upstream.mcp_url}
            scopes: [mcp:access]
            tools: {{"*": []}}
        """


def bearer(issuer: TestIssuer) -> dict[str, str]:
    return {"Authorization": f"Bearer {issuer.mint(audience=RESOURCE)}"}


def events_of(logs: LogSink, since: int, name: str, issuer: TestIssuer) -> list[dict[str, Any]]:
    return [
        event
        for event in logs.events()[since:]
        if event["event"] == name and event.get("issuer") == issuer.issuer
    ]


def fetch_bound(elapsed_s: float) -> int:
    """Most loads a failing issuer may see in ``elapsed_s``: the first, then one per half step."""
    return 2 + int(elapsed_s / (COOLDOWN_S / 2))


async def metric(gateway: Gateway, name: str, **labels: str) -> float:
    assert gateway.admin_url is not None
    _, _, samples = await scrape(gateway.admin_url)
    return value(samples, name, **labels)


async def test_malformed_keys_next_to_a_good_one_are_skipped_and_the_good_key_serves(
    issuer: FaultyIssuer, upstream: Upstream, start_gateway_with: GatewayFactory, gateway_logs: LogSink
) -> None:
    """Short EC coordinates and RSA without `e` at start: logged, counted; the good key's token gets 200."""
    issuer.malformed = [short_ec_key(), rsa_key_without_e()]
    before = len(gateway_logs.lines())
    gateway = await start_gateway_with(config_for(issuer, upstream))
    status, _, _ = await post(gateway, bearer(issuer))
    assert status == 200 and len(await upstream.requests()) == 1
    skipped = {(e["kid"], e["reason"]) for e in events_of(gateway_logs, before, "jwks_key_skipped", issuer)}
    assert skipped == {("short-ec", "unreadable_key"), ("rsa-no-e", "unreadable_key")}
    skipped_total = "mcp_gateway_jwks_keys_skipped_total"
    assert await metric(gateway, skipped_total, issuer=issuer.issuer, reason="unreadable_key") == 2
    assert await metric(gateway, "mcp_gateway_jwks_last_success_timestamp_seconds", issuer=issuer.issuer) > 0


async def test_only_malformed_keys_at_start_fail_closed_with_bounded_fetches(
    issuer: FaultyIssuer, upstream: Upstream, start_gateway_with: GatewayFactory, gateway_logs: LogSink
) -> None:
    """No usable key at all: 503 + Retry-After, never forwarded; the JWKS is not fetched per request."""
    issuer.malformed, issuer.only_malformed = [short_ec_key(), rsa_key_without_e()], True
    before = len(gateway_logs.lines())
    gateway = await start_gateway_with(config_for(issuer, upstream), wait_ready=False)
    started = time.monotonic()
    for _ in range(100):
        status, headers, body = await post(gateway, bearer(issuer))
        assert status == 503 and "Retry-After" in headers and body["error"]["code"]
    assert issuer.jwks_fetches <= fetch_bound(time.monotonic() - started)
    assert await upstream.requests() == []
    assert events_of(gateway_logs, before, "jwks_has_no_usable_keys", issuer)
    assert not events_of(gateway_logs, before, "jwks_load_crashed", issuer)
    assert gateway.admin_url is not None
    _, _, samples = await scrape(gateway.admin_url)
    gauge = ("mcp_gateway_jwks_last_success_timestamp_seconds", frozenset({("issuer", issuer.issuer)}))
    assert samples[gauge] == 0  # exported from the start, so "never loaded" can alert


async def test_a_keyless_issuer_answering_503_is_not_refetched_per_request(
    issuer: FaultyIssuer, upstream: Upstream, start_gateway_with: GatewayFactory
) -> None:
    """JWKS 503 from the start: 100 requests cost a handful of fetches (backoff), not 100; it recovers."""
    issuer.down = True
    gateway = await start_gateway_with(config_for(issuer, upstream), wait_ready=False)
    started = time.monotonic()
    for _ in range(100):
        assert (await post(gateway, bearer(issuer)))[0] == 503
    fetches, elapsed = issuer.jwks_fetches, time.monotonic() - started
    assert fetches <= fetch_bound(elapsed), (fetches, elapsed)
    # Every failed fetch is counted: the background task may fetch once more meanwhile (backoff).
    failed = await metric(gateway, "mcp_gateway_jwks_fetches_total", issuer=issuer.issuer, result="failed")
    assert fetches <= failed <= issuer.jwks_fetches, (fetches, failed, issuer.jwks_fetches)
    assert await upstream.requests() == []
    issuer.down = False
    await asyncio.sleep(COOLDOWN_S + 0.05)  # the background task's next step loads the keys
    assert (await post(gateway, bearer(issuer)))[0] == 200


async def test_stale_cached_keys_with_the_endpoint_down_keep_serving_with_bounded_refetches(
    issuer: FaultyIssuer, upstream: Upstream, start_gateway_with: GatewayFactory
) -> None:
    """Keys cached, then 503 past jwks_max_age_s: 100 requests pass on the old keys; one refetch per step."""
    gateway = await start_gateway_with(config_for(issuer, upstream, max_age_s=0.1))
    gauge = "mcp_gateway_jwks_last_success_timestamp_seconds"
    loaded_at = await metric(gateway, gauge, issuer=issuer.issuer)
    issuer.down = True
    await asyncio.sleep(0.15)
    fetches_before, started = issuer.jwks_fetches, time.monotonic()
    for _ in range(100):
        assert (await post(gateway, bearer(issuer)))[0] == 200
    fetches, elapsed = issuer.jwks_fetches - fetches_before, time.monotonic() - started
    assert fetches <= fetch_bound(elapsed), (fetches, elapsed)
    assert len(await upstream.requests()) == 100
    assert await metric(gateway, gauge, issuer=issuer.issuer) == loaded_at  # no success since


async def test_malformed_keys_met_by_the_background_refresh_keep_the_task_alive(
    issuer: FaultyIssuer, upstream: Upstream, start_gateway_with: GatewayFactory, gateway_logs: LogSink
) -> None:
    """Keys cached, then the refresh meets a bad key beside the good one, then bad keys alone: tokens
    keep passing, each refresh logs and counts, and the refresh task keeps running (fetches go on)."""
    gateway = await start_gateway_with(config_for(issuer, upstream, max_age_s=0.1))
    before = len(gateway_logs.lines())
    issuer.malformed = [short_ec_key(), rsa_key_without_e()]
    await asyncio.sleep(0.35)
    assert (await post(gateway, bearer(issuer)))[0] == 200
    issuer.only_malformed = True
    fetches = issuer.jwks_fetches
    # Nobody asks: two more fetches can only come from the background task, still running. Polled
    # (a loaded machine stretches the backoff's timers), not slept for a fixed time.
    await eventually(lambda: issuer.jwks_fetches >= fetches + 2, "two background refreshes")
    assert (await post(gateway, bearer(issuer)))[0] == 200  # the last good set is kept
    assert len(await upstream.requests()) == 2
    assert {e["reason"] for e in events_of(gateway_logs, before, "jwks_key_skipped", issuer)} == {
        "unreadable_key"
    }
    kept = events_of(gateway_logs, before, "jwks_has_no_usable_keys", issuer)
    assert kept and all(event["kept_cached_keys"] for event in kept)
    assert not events_of(gateway_logs, before, "jwks_load_crashed", issuer)
    no_usable = await metric(
        gateway, "mcp_gateway_jwks_fetches_total", issuer=issuer.issuer, result="no_usable_keys"
    )
    assert no_usable == len(kept)


def faulty_config(issuer: FaultyIssuer, upstream: Upstream, fault: Fault, *, max_age_s: float = 600) -> str:
    """The config for a fault test: a short http_timeout_s when the fault is a slow answer."""
    timeout_s = SLOW_TIMEOUT_S if fault == "slow" else 5
    return config_for(issuer, upstream, max_age_s=max_age_s, http_timeout_s=timeout_s)


async def fetch_results(gateway: Gateway, issuer: TestIssuer, result: str) -> float:
    return await metric(gateway, "mcp_gateway_jwks_fetches_total", issuer=issuer.issuer, result=result)


@pytest.mark.parametrize("fault", list(FAULT_OUTCOMES))
async def test_a_broken_jwks_answer_at_start_fails_closed_with_bounded_fetches(
    issuer: FaultyIssuer,
    upstream: Upstream,
    start_gateway_with: GatewayFactory,
    gateway_logs: LogSink,
    fault: Fault,
) -> None:
    """HTML, an empty body, an empty key set or a too-slow JWKS from the start: every request gets
    503 + Retry-After and reaches no upstream; each load is logged and counted, at most one per
    backoff step; the last-success gauge stays 0."""
    event, result = FAULT_OUTCOMES[fault]
    issuer.fault = fault
    before = len(gateway_logs.lines())
    gateway = await start_gateway_with(faulty_config(issuer, upstream, fault), wait_ready=False)
    started = time.monotonic()
    for _ in range(50):
        status, headers, body = await post(gateway, bearer(issuer))
        assert status == 503 and "Retry-After" in headers and body["error"]["code"]
    fetches = issuer.jwks_fetches
    assert 1 <= fetches <= fetch_bound(time.monotonic() - started), fetches
    assert await upstream.requests() == []
    # One load may still be on its way (a slow answer): counted once it has failed.
    counted = await fetch_results(gateway, issuer, result)
    assert fetches - 1 <= counted <= issuer.jwks_fetches, (counted, fetches)
    logged = events_of(gateway_logs, before, event, issuer)
    assert logged and not any(entry["kept_cached_keys"] for entry in logged)
    if fault == "slow":
        assert all("timed out" in entry["error"] for entry in logged)
    assert not events_of(gateway_logs, before, "jwks_load_crashed", issuer)
    gauge = "mcp_gateway_jwks_last_success_timestamp_seconds"
    assert await metric(gateway, gauge, issuer=issuer.issuer) == 0


@pytest.mark.parametrize("fault", list(FAULT_OUTCOMES))
async def test_a_broken_jwks_answer_after_keys_are_cached_keeps_the_cached_keys_serving(
    issuer: FaultyIssuer,
    upstream: Upstream,
    start_gateway_with: GatewayFactory,
    gateway_logs: LogSink,
    fault: Fault,
) -> None:
    """Keys cached, then the refreshes (past jwks_max_age_s) get HTML, an empty body, an empty key
    set or no answer in time: tokens keep passing on the cached keys, refetches stay one per
    backoff step, each is logged and counted, and the last-success gauge does not move."""
    event, result = FAULT_OUTCOMES[fault]
    gateway = await start_gateway_with(faulty_config(issuer, upstream, fault, max_age_s=0.1))
    before = len(gateway_logs.lines())
    issuer.fault = fault
    fetches = issuer.jwks_fetches
    # Nobody asks: the background refresh meets the fault (polled, not slept for).
    await eventually(
        lambda: issuer.jwks_fetches >= fetches + 2 and events_of(gateway_logs, before, event, issuer),
        "two refreshes meeting the fault",
    )
    gauge = "mcp_gateway_jwks_last_success_timestamp_seconds"
    loaded_at = await metric(gateway, gauge, issuer=issuer.issuer)
    assert loaded_at > 0
    counted_before = await fetch_results(gateway, issuer, result)
    fetches_before, started = issuer.jwks_fetches, time.monotonic()
    for _ in range(50):
        assert (await post(gateway, bearer(issuer)))[0] == 200
    fetches = issuer.jwks_fetches - fetches_before
    assert fetches <= fetch_bound(time.monotonic() - started), fetches
    assert len(await upstream.requests()) == 50
    assert await metric(gateway, gauge, issuer=issuer.issuer) == loaded_at  # no success since
    # Every load of the window counted, give or take one on its way at either end (a slow answer).
    counted = await fetch_results(gateway, issuer, result) - counted_before
    assert fetches - 1 <= counted <= fetches + 1, (counted, fetches)
    logged = events_of(gateway_logs, before, event, issuer)
    assert logged and all(entry["kept_cached_keys"] for entry in logged)
    assert not events_of(gateway_logs, before, "jwks_load_crashed", issuer)
