"""Issuers' keys across a reload (``reload_from_file``, what SIGHUP runs) of a running gateway.

An issuer whose config a reload keeps keeps its cached keys and its one refresh task: nothing is
refetched, and tokens verify at once even with its JWKS endpoint down. A reload whose new or
changed issuers load no keys within the swap wait is refused (``config_reload_refused`` naming
them) and the old config serves on; one whose new JWKS works is swapped in with the new keys.
"""

from __future__ import annotations

import asyncio
import json
import textwrap
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from gateway.config import GatewayConfig, load_config
from gateway.server import reload_from_file, start_gateway
from gateway.web.live import LIVE, LiveGateway
from tests.conftest import Gateway, LogSink, Upstream
from tests.integration.test_authentication import RESOURCE, post
from tests.integration.test_lifecycle import eventually, free_port
from tests.support.issuer import SigningKey, TestIssuer, serving

REFUSAL_WAIT_S = 0.5  # the swap wait of a reload expected to be refused
SWAP_WAIT_S = 5.0  # of one expected to succeed: generous, it ends as soon as the keys are in


def config_text(upstream: Upstream, *issuers: tuple[str, str], grace_s: float = 30) -> str:
    """One route; each issuer as (identifier, JWKS URL)."""
    issuer_entries = "".join(
        f"""
          - issuer: {identifier}
            algorithms: [RS256, ES256]
            jwks: {{url: {jwks_url}}}
            jwks_refresh_cooldown_s: 0.2"""
        for identifier, jwks_url in issuers
    )
    return textwrap.dedent(f"""
        listen: {{host: 127.0.0.1, port: 0}}
        public_url: http://127.0.0.1:8080
        shutdown_grace_s: {grace_s}
        issuers:{issuer_entries}
        routes:
          - path: /mcp
            upstream: {upstream.mcp_url}
            scopes: [mcp:access]
            tools: {{"*": []}}
        """)


@dataclass
class Reloadable:
    """A gateway running in this process from a config file the test rewrites and reloads."""

    gateway: Gateway
    live: LiveGateway[Any]
    started: GatewayConfig
    path: Path

    async def reload(self, text: str, *, keys_wait_s: float) -> bool:
        await asyncio.to_thread(self.path.write_text, text)
        return await reload_from_file(self.live, self.started, keys_wait_s=keys_wait_s)


@pytest.fixture
async def start_reloadable(tmp_path: Path) -> AsyncIterator[Callable[[str], Awaitable[Reloadable]]]:
    """Start a gateway from config text and wait until it has its keys; stopped at the end."""
    runners: list[web.AppRunner] = []

    async def start(text: str) -> Reloadable:
        path = tmp_path / "gateway.yaml"
        await asyncio.to_thread(path.write_text, text)
        config = await asyncio.to_thread(load_config, path)
        runner, port = await start_gateway(config, host="127.0.0.1", port=0)
        runners.append(runner)
        live = runner.app[LIVE]
        await eventually(lambda: live.current.ready, "keys at start")
        return Reloadable(Gateway(url=f"http://127.0.0.1:{port}", config=config), live, config, path)

    yield start
    for runner in runners:
        await runner.cleanup()


def bearer(issuer: TestIssuer, *, iss: str | None = None, key: SigningKey | None = None) -> dict[str, str]:
    claims = {} if iss is None else {"iss": iss}
    return {"Authorization": f"Bearer {issuer.mint(audience=RESOURCE, claims=claims, key=key)}"}


def refresh_tasks(issuer: str) -> list[asyncio.Task[Any]]:
    """The key refresh tasks running for ``issuer`` (named ``jwks:<issuer>``)."""
    return [task for task in asyncio.all_tasks() if task.get_name() == f"jwks:{issuer}" and not task.done()]


def logged(logs: LogSink, since: int, name: str) -> list[dict[str, Any]]:
    return [event for event in logs.events()[since:] if event["event"] == name]


async def test_a_reload_keeps_the_cached_keys_of_an_unchanged_issuer(
    issuer: TestIssuer,
    upstream: Upstream,
    start_reloadable: Callable[[str], Awaitable[Reloadable]],
    gateway_logs: LogSink,
) -> None:
    """Issuer unchanged, its JWKS endpoint down: the reload fetches nothing, tokens verify at once on
    the new config, and after the old config closed as well; one refresh task runs throughout."""
    served = await start_reloadable(config_text(upstream, (issuer.issuer, f"{issuer.base_url}/jwks")))
    first = served.live.current
    issuer.down = True
    fetches = issuer.jwks_fetches
    since = len(gateway_logs.lines())
    # Only shutdown_grace_s changes: the issuer's config is equal.
    changed = config_text(upstream, (issuer.issuer, f"{issuer.base_url}/jwks"), grace_s=20)
    assert await served.reload(changed, keys_wait_s=SWAP_WAIT_S) is True
    assert served.live.current is not first and served.live.config.shutdown_grace_s == 20
    (reloaded,) = logged(gateway_logs, since, "config_reloaded")
    assert reloaded["keys_ready"] is True
    assert (await post(served.gateway, bearer(issuer)))[0] == 200
    await eventually(lambda: logged(gateway_logs, since, "previous_config_closed"), "old config closed")
    assert (await post(served.gateway, bearer(issuer)))[0] == 200  # its closing kept the shared keys
    assert len(await upstream.requests()) == 2
    assert issuer.jwks_fetches == fetches
    assert len(refresh_tasks(issuer.issuer)) == 1


@pytest.mark.parametrize("change", ["wrong_jwks_url", "new_issuer_down"])
async def test_a_reload_whose_new_keys_do_not_load_is_refused_and_the_old_config_serves(
    issuer: TestIssuer,
    upstream: Upstream,
    start_reloadable: Callable[[str], Awaitable[Reloadable]],
    gateway_logs: LogSink,
    change: str,
) -> None:
    """An issuer's JWKS URL changed to one that answers nothing, or a new issuer whose JWKS is down:
    refused within the swap wait, logged naming that issuer; the old gateway keeps answering 200
    and the new gateway's refresh task is gone."""
    async with serving(TestIssuer(down=True)) as second:
        served = await start_reloadable(config_text(upstream, (issuer.issuer, f"{issuer.base_url}/jwks")))
        first = served.live.current
        since = len(gateway_logs.lines())
        if change == "wrong_jwks_url":
            text, refused_issuer = (
                config_text(upstream, (issuer.issuer, f"http://127.0.0.1:{free_port()}/jwks")),
                issuer.issuer,
            )
        else:
            text, refused_issuer = (
                config_text(
                    upstream,
                    (issuer.issuer, f"{issuer.base_url}/jwks"),
                    (second.issuer, f"{second.base_url}/jwks"),
                ),
                second.issuer,
            )
        assert await served.reload(text, keys_wait_s=REFUSAL_WAIT_S) is False
        (refused,) = logged(gateway_logs, since, "config_reload_refused")
        assert refused["level"] == "error" and refused["reason"] == "keys_not_loaded"
        assert refused["issuers"] == [refused_issuer]
        assert not logged(gateway_logs, since, "config_reloaded")
        assert served.live.current is first
        for _ in range(3):
            assert (await post(served.gateway, bearer(issuer)))[0] == 200
        assert len(await upstream.requests()) == 3
        # The refused gateway returned its keys: only the serving config's refresh task runs.
        assert len(refresh_tasks(issuer.issuer)) == 1 and refresh_tasks(second.issuer) == []


async def test_a_reload_to_a_working_new_jwks_swaps_in_the_new_keys(
    issuer: TestIssuer,
    upstream: Upstream,
    start_reloadable: Callable[[str], Awaitable[Reloadable]],
    gateway_logs: LogSink,
) -> None:
    """The issuer's JWKS URL changed to one with other keys: swapped in once they load; tokens signed
    with the new keys pass and those signed with the old ones are refused, never forwarded."""
    async with serving(TestIssuer()) as new_keys:
        served = await start_reloadable(config_text(upstream, (issuer.issuer, f"{issuer.base_url}/jwks")))
        assert (await post(served.gateway, bearer(new_keys, iss=issuer.issuer)))[0] == 401
        since = len(gateway_logs.lines())
        text = config_text(upstream, (issuer.issuer, f"{new_keys.base_url}/jwks"))
        assert await served.reload(text, keys_wait_s=SWAP_WAIT_S) is True
        (reloaded,) = logged(gateway_logs, since, "config_reloaded")
        assert reloaded["keys_ready"] is True and new_keys.jwks_fetches >= 1
        assert (await post(served.gateway, bearer(new_keys, iss=issuer.issuer)))[0] == 200
        assert (await post(served.gateway, bearer(issuer)))[0] == 401
        assert len(await upstream.requests()) == 1
        await eventually(lambda: logged(gateway_logs, since, "previous_config_closed"), "old config closed")
        assert len(refresh_tasks(issuer.issuer)) == 1  # the old keys' task ended with the old config


async def test_a_reload_keeping_a_jwks_file_issuer_rereads_the_file(
    issuer: TestIssuer,
    upstream: Upstream,
    start_reloadable: Callable[[str], Awaitable[Reloadable]],
    tmp_path: Path,
) -> None:
    """A `jwks: {file: …}` issuer kept by a reload: the file is re-read (the operator may have
    edited it with the config), so a key removed from it stops verifying; the kept key serves on."""
    keys_file = tmp_path / "keys.json"
    old = issuer.active
    new = issuer.rotate()
    await asyncio.to_thread(keys_file.write_text, json.dumps(issuer.jwks()))
    text = config_text(upstream, (issuer.issuer, "PLACEHOLDER")).replace(
        "{url: PLACEHOLDER}", f"{{file: {keys_file.name}}}"
    )
    served = await start_reloadable(text)
    assert (await post(served.gateway, bearer(issuer, key=old)))[0] == 200
    issuer.retire_all_but_active()
    await asyncio.to_thread(keys_file.write_text, json.dumps(issuer.jwks()))
    assert await served.reload(text, keys_wait_s=SWAP_WAIT_S) is True

    async def old_key_refused() -> bool:
        return (await post(served.gateway, bearer(issuer, key=old)))[0] == 401

    await eventually(old_key_refused, "the removed key refused")
    await upstream.clear()  # the polls before the re-read landed were rightly forwarded
    assert await old_key_refused() and await upstream.requests() == []
    assert (await post(served.gateway, bearer(issuer, key=new)))[0] == 200
    assert len(await upstream.requests()) == 1
