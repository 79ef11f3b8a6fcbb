"""JWKS faults through the running gateway: malformed keys, outages, and what they cost the issuer.

RFC 7517 §5: a JWK the gateway cannot use is skipped (logged ``jwks_key_skipped``, counted), the
other keys of the set still verify. A failed load backs off with jitter, so an issuer without keys
or with stale keys during its outage is not refetched per request; the in-process issuer counts
every JWKS request it answers.
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest

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


@dataclass
class FaultyIssuer(TestIssuer):
    """A test issuer whose JWKS can carry malformed keys next to (or instead of) its good ones."""

    __test__ = False

    malformed: list[dict[str, Any]] = field(default_factory=list)
    only_malformed: bool = False

    def jwks(self) -> dict[str, Any]:
        good = [] if self.only_malformed else super().jwks()["keys"]
        return {"keys": [*self.malformed, *good]}


@pytest.fixture
async def issuer() -> AsyncIterator[FaultyIssuer]:
    async with serving(FaultyIssuer()) as served:
        assert isinstance(served, FaultyIssuer)
        yield served


def config_for(issuer: TestIssuer, upstream: Upstream, *, max_age_s: float = 600) -> str:
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
    assert (
        await metric(gateway, "mcp_gateway_jwks_fetches_total", issuer=issuer.issuer, result="failed")
        == fetches
    )
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
