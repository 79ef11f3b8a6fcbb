"""Each issuer's signing keys, kept for the process's life and lent to the gateways that trust it.

A reload opens a new gateway while the old one still serves its requests (``gateway.web.live``).
If each gateway owned its issuers' keys, a reload would refetch every JWKS and, until the fetch
came back, verify nothing, even for issuers whose config did not change. So the keys live here,
beside the live gateway, and each gateway generation borrows them (``lease``):

- an issuer whose ``IssuerConfig`` is equal to one already lent gets that same ``IssuerKeys``:
  its cached keys serve at once and nothing is refetched (a JWKS file is re-read in the
  background, since the operator may have edited it with the config);
- a new issuer, or one whose config changed, gets a fresh ``IssuerKeys`` and refresh task;
- every lease is returned when its gateway closes; the last one returned cancels the refresh
  task and closes the keys. So two generations share one ``IssuerKeys`` (and one refresh task)
  and closing the old one cannot close what the new one still uses.

Ownership is a reference count rather than "the newest generation owns": a retired generation
may outlive several reloads while a long SSE stream drains, and leases make the order in which
generations close irrelevant.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp

from ..config import IssuerConfig, JwksFile
from ..metrics import GatewayMetrics
from .jwks import IssuerKeys


@dataclass(frozen=True, slots=True)
class KeyLease:
    """The keys lent to one gateway for one issuer; ``reused``: they were already being served."""

    keys: IssuerKeys
    reused: bool


@dataclass(eq=False)
class _Entry:
    keys: IssuerKeys
    refresh: asyncio.Task[None]
    holders: int = 0


class KeyRegistry:
    """The running ``IssuerKeys`` of every issuer some open gateway trusts, by issuer config."""

    def __init__(self, metrics: GatewayMetrics) -> None:
        self._metrics = metrics
        # Compared with ``==``, not hashed: a list of a few issuers, and IssuerConfig need not be
        # hashable (it may hold secrets, which refuse to hash).
        self._entries: list[tuple[IssuerConfig, _Entry]] = []
        # The keys outlive every gateway's own session, so they fetch through one of their own.
        self._session: aiohttp.ClientSession | None = None

    @contextlib.asynccontextmanager
    async def lease(self, issuer: IssuerConfig) -> AsyncIterator[KeyLease]:
        """Borrow the keys for ``issuer`` for the block: shared if its config is already served."""
        entry, reused = self._acquire(issuer)
        try:
            yield KeyLease(entry.keys, reused)
        finally:
            await self._release(entry)

    def _acquire(self, issuer: IssuerConfig) -> tuple[_Entry, bool]:
        for config, entry in self._entries:
            if config == issuer:
                entry.holders += 1
                if isinstance(issuer.jwks, JwksFile):
                    entry.keys.refresh_in_background()
                return entry, True
        keys = IssuerKeys(
            issuer,
            self._http(),
            on_fetch=functools.partial(self._metrics.jwks_fetched, issuer.issuer),
            on_key_skipped=functools.partial(self._metrics.jwks_key_skipped, issuer.issuer),
        )
        self._metrics.jwks_issuer_watched(issuer.issuer)
        entry = _Entry(keys, asyncio.create_task(keys.run(), name=f"jwks:{issuer.issuer}"), holders=1)
        self._entries.append((issuer, entry))
        return entry, False

    async def _release(self, entry: _Entry) -> None:
        entry.holders -= 1
        if entry.holders > 0:
            return
        self._entries = [(config, held) for config, held in self._entries if held is not entry]
        await _close(entry)

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            # To the authorization servers: no cookies, and no library versions to fingerprint.
            self._session = aiohttp.ClientSession(
                cookie_jar=aiohttp.DummyCookieJar(), headers={"User-Agent": "mcp-auth-gateway"}
            )
        return self._session

    @property
    def issuers(self) -> tuple[IssuerConfig, ...]:
        """The issuer configs whose keys are being served now (one refresh task each)."""
        return tuple(config for config, _ in self._entries)

    async def aclose(self) -> None:
        """Close whatever is still lent (the app's cleanup, after every gateway closed) and the session."""
        entries, self._entries = self._entries, []
        for _, entry in entries:
            await _close(entry)
        if self._session is not None:
            await self._session.close()
            self._session = None


async def _close(entry: _Entry) -> None:
    entry.refresh.cancel()  # before the keys: the task would start another load
    with contextlib.suppress(asyncio.CancelledError):
        await entry.refresh
    await entry.keys.aclose()
