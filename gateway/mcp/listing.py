"""Hiding from ``*/list`` results what the caller may not use, in JSON and in SSE responses.

Only the JSON-RPC responses to the list requests of this POST are touched; every other byte
(notifications on the same stream, other responses, cursors and other result keys) passes
unchanged. A list response that cannot be read is replaced by an error: showing an unfiltered
list would be failing open.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

from ..errors import RpcId
from ..strictjson import StrictJSONError, loads_strict
from .messages import HANDSHAKE_VERSIONS, McpPost
from .methods import LIST_METHODS
from .policy import RoutePolicy, is_visible

_UNREADABLE = {"code": -32603, "message": "Upstream list result could not be filtered"}


class ListFilter:
    """Rewrites the responses to the list requests of one POST for one caller."""

    def __init__(
        self,
        list_requests: Mapping[RpcId, str],
        policy: RoutePolicy,
        granted: frozenset[str],
        *,
        mark_private: bool,
    ) -> None:
        self._methods = dict(list_requests)
        self._policy = policy
        self._granted = granted
        # MCP 2026-07-28 caching: a result that varies by caller must not sit in shared caches.
        self._mark_private = mark_private

    @classmethod
    def for_post(cls, post: McpPost, policy: RoutePolicy, granted: frozenset[str]) -> ListFilter | None:
        """A filter when the POST holds list requests, else None (the response passes as is)."""
        requests: dict[RpcId, str] = {}
        for message in post.messages:
            method = message.method
            if (
                message.kind == "request"
                and message.id is not None
                and method is not None
                and method in LIST_METHODS
            ):
                requests[message.id] = method
        if not requests:
            return None
        return cls(requests, policy, granted, mark_private=post.protocol_version not in HANDSHAKE_VERSIONS)

    def rewrite_json(self, body: bytes | str) -> bytes | None:
        """The filtered body, or None when nothing had to change."""
        try:
            document = loads_strict(body)
        except StrictJSONError:
            return json.dumps({"jsonrpc": "2.0", "id": None, "error": _UNREADABLE}).encode()
        if isinstance(document, list):  # a 2025-03-26 batch response
            changed = [self._rewrite_message(item) for item in document]
            if all(item is None for item in changed):
                return None
            merged = [new if new is not None else old for old, new in zip(document, changed, strict=True)]
            return json.dumps(merged, separators=(",", ":")).encode()
        rewritten = self._rewrite_message(document)
        return None if rewritten is None else json.dumps(rewritten, separators=(",", ":")).encode()

    def rewrite_event_data(self, data: str) -> str | None:
        """For SSE: the same rewrite on one event's data."""
        rewritten = self.rewrite_json(data)
        return None if rewritten is None else rewritten.decode()

    def _rewrite_message(self, message: Any) -> dict[str, Any] | None:
        if not isinstance(message, dict) or "method" in message:
            return None  # a notification or request from the server, not our response
        rpc_id = message.get("id")
        # bool is an int in Python (True == 1): an id `true` must not match request id 1.
        if not isinstance(rpc_id, str | int) or isinstance(rpc_id, bool):
            return None
        method = self._methods.get(rpc_id)
        if method is None or "result" not in message:
            return None  # not a list response of this POST, or an error: nothing to hide
        result = message["result"]
        if not isinstance(result, dict):
            return {"jsonrpc": "2.0", "id": rpc_id, "error": _UNREADABLE}
        target = LIST_METHODS[method].target
        filtered = filter_list_result(
            method, result, lambda name: is_visible(self._policy, target(name), self._granted)
        )
        if self._mark_private and (filtered or result).get("cacheScope") != "private":
            filtered = {**(filtered or result), "cacheScope": "private"}
        if filtered is None:
            return None
        return {**message, "result": filtered}


def filter_list_result(
    method: str, result: Mapping[str, Any], is_visible: Callable[[str], bool]
) -> dict[str, Any] | None:
    """A new result without the items the caller may not see, or None if nothing was removed.

    Fails closed: an item that is not an object, or whose naming field is missing or not a
    string, is removed; a list key holding something other than an array becomes an empty array.
    Every other key (nextCursor, _meta, ttlMs, …) is kept as is. A method not in LIST_METHODS
    is a caller bug: KeyError.
    """
    listing = LIST_METHODS[method]
    list_key = listing.result_key
    if list_key not in result:
        return None
    items = result[list_key]
    if not isinstance(items, list):
        return {**result, list_key: []}
    kept = [item for item in items if _item_visible(item, listing.item_key, is_visible)]
    if len(kept) == len(items):
        return None
    return {**result, list_key: kept}


def _item_visible(item: object, name_key: str, is_visible: Callable[[str], bool]) -> bool:
    if not isinstance(item, dict):
        return False
    name = item.get(name_key)
    return isinstance(name, str) and is_visible(name)
