"""Hiding from ``*/list`` results what the caller may not use, wherever such a result reaches the client.

``ListFilter`` is a ``MessageRewriter`` (``gateway.mcp.answers``): it sees every JSON-RPC message
of every upstream answer (JSON bodies, batches, SSE events of a POST or of a GET stream, replays
after ``Last-Event-ID``). The gateway is stateless and cannot know which request an id on a GET
stream belonged to, and SDK clients match ids loosely (``"7"`` answers request 7; the Python SDK
even takes any response on a POST's stream as the answer to that POST), so the filter goes by the
shape, not by the id: any message whose ``result`` is an object carrying a list key (``tools``,
``prompts``, ``resources``, ``resourceTemplates``) has that list filtered by the kind the key
names. Notifications, errors, cursors and other result keys pass unchanged.

The ids of this POST's own list requests add two things: a non-object result to one of them is
replaced by an error (showing it would be failing open), and in MCP 2026-07-28 a list result is
marked ``cacheScope: private`` (it varies by caller).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any, Final

from ..errors import RpcId
from .conditions import Facts
from .messages import HANDSHAKE_VERSIONS, McpPost
from .methods import LIST_METHODS, Listing
from .policy import RoutePolicy, is_visible

_UNREADABLE: Final = {"code": -32603, "message": "Upstream list result could not be filtered"}

LIST_KEYS: Final[Mapping[str, Listing]] = MappingProxyType(
    {
        **{listing.result_key: listing for listing in LIST_METHODS.values()},
        # The Python SDK's result models (mcp_types) also accept field names where a client
        # validates without by_name=False: the snake_case spelling lists templates just the same.
        "resource_templates": LIST_METHODS["resources/templates/list"],
    }
)
"""Every key under which a result lists items, and the listing (kind, naming field) it holds."""

# A list key as it stands in JSON bytes; a key spelled with escapes is caught by ``\u``.
LIST_KEY_MARKERS: Final = tuple(json_key.encode("ascii") for json_key in (f'"{key}"' for key in LIST_KEYS))
_RESULT_MARKER: Final = b'"result"'


class ListFilter:
    """A ``MessageRewriter`` that filters every list-shaped result for one caller."""

    __slots__ = ("_facts", "_granted", "_list_ids", "_mark_private", "_policy", "markers")

    def __init__(
        self,
        policy: RoutePolicy,
        granted: frozenset[str],
        *,
        list_requests: Mapping[RpcId, str] | None = None,
        mark_private: bool = False,
        facts: Facts | None = None,
    ) -> None:
        self._policy = policy
        self._granted = granted
        self._facts = facts  # the caller, for rule conditions (one that reads arguments shows the item)
        self._list_ids = frozenset(
            key for key in (sdk_id(rpc_id) for rpc_id in (list_requests or {})) if key is not None
        )
        # MCP 2026-07-28 caching: a result that varies by caller must not sit in shared caches.
        self._mark_private = mark_private
        # The answer to a list request is looked at even without a list key (a non-object result,
        # a 2026 result to mark private); any other answer only when it holds one.
        self.markers: tuple[bytes, ...] = (
            (*LIST_KEY_MARKERS, _RESULT_MARKER) if self._list_ids else LIST_KEY_MARKERS
        )

    @classmethod
    def for_post(
        cls, post: McpPost, policy: RoutePolicy, granted: frozenset[str], facts: Facts | None = None
    ) -> ListFilter:
        """The filter for the answer to one POST, which knows that POST's list requests."""
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
        return cls(
            policy,
            granted,
            list_requests=requests,
            mark_private=post.protocol_version not in HANDSHAKE_VERSIONS,
            facts=facts,
        )

    def rewrite(self, message: dict[str, Any]) -> dict[str, Any] | None:
        """The message with its list result filtered, or None when nothing had to change.

        A message counts whatever else it holds (``method``, ``error``): an SDK that reads it as
        a response reads its ``result``.
        """
        if "result" not in message:
            return None  # a notification, a request, an error: no list to hide
        result = message["result"]
        answers_list_request = bool(self._list_ids) and sdk_id(message.get("id")) in self._list_ids
        if not isinstance(result, dict):
            if answers_list_request:
                return {"jsonrpc": "2.0", "id": message.get("id"), "error": _UNREADABLE}
            return None
        filtered: dict[str, Any] | None = None
        listed = answers_list_request
        for key, listing in LIST_KEYS.items():
            if key in result:
                listed = True
                narrowed = _filter_listing(listing, key, filtered or result, self._visible(listing))
                filtered = narrowed or filtered
        if self._mark_private and listed and (filtered or result).get("cacheScope") != "private":
            filtered = {**(filtered or result), "cacheScope": "private"}
        return None if filtered is None else {**message, "result": filtered}

    def _visible(self, listing: Listing) -> Callable[[str], bool]:
        target, policy, granted, facts = listing.target, self._policy, self._granted, self._facts
        return lambda name: is_visible(policy, target(name), granted, facts)


def sdk_id(value: object) -> int | str | None:
    """A JSON-RPC id as SDK clients match it, for comparing ids; None: no SDK reads it as an id.

    The Python SDK turns a string that ``int()`` reads into that int; the TypeScript SDK takes
    ``Number(id)`` (so also ``" 7 "``, ``"7.0"``, ``"0x7"``, and a JSON ``7.0``). Matching the union
    of both only ever treats more responses as answers to a list request, which fails closed.
    Booleans are no ids for either SDK (``true`` is not request 1).
    """
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(value) if value.is_integer() else None
    if not isinstance(value, str):
        return None
    try:
        return int(value)
    except ValueError:
        pass
    text = value.strip()
    try:
        number = int(text, 0) if text[:2].lower() in ("0x", "0o", "0b") else float(text) if text else 0.0
    except ValueError:
        return value
    if isinstance(number, float):
        return int(number) if math.isfinite(number) and number.is_integer() else value
    return number


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
    return _filter_listing(listing, listing.result_key, result, is_visible)


def _filter_listing(
    listing: Listing, list_key: str, result: Mapping[str, Any], is_visible: Callable[[str], bool]
) -> dict[str, Any] | None:
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
