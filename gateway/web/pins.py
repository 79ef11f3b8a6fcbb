"""Pinned tools on the request path: a call to a drifted tool refused, each answer's lists checked.

The decisions are ``gateway.pinning.guard``'s; this is where the pipeline meets them. A POST's
``tools/call`` messages are checked after the policy allowed them: with ``enforce``, one whose
tool drifted (or is not in the lock) refuses the whole POST with 403 (``ToolPinBlocked``) before
the upstream sees anything; with ``observe`` it goes on and ``would_deny`` is logged. The answer
rewriter (``PinView``) knows whether this POST asked for a listing's first page, so a tool missing
from a complete list can be reported as removed.
"""

from __future__ import annotations

from collections.abc import Mapping

import structlog

from ..errors import ToolPinBlocked
from ..mcp.messages import McpPost
from ..mcp.methods import Tool
from ..pinning import PinView, ToolPins

__all__ = ["check_pinned_calls", "pin_view"]

log = structlog.get_logger("gateway.pinning")


def check_pinned_calls(pins: ToolPins | None, post: McpPost) -> None:
    """Refuse (enforce) or report (observe) the POST's calls to tools that drifted from the lock."""
    if pins is None:
        return
    for message in post.messages:
        target = message.target
        if message.method != "tools/call" or not isinstance(target, Tool):
            continue
        drift = pins.refusal(target.name)
        if drift is None:
            continue
        if pins.enforcing:
            raise ToolPinBlocked(target.name, drift)
        log.warning(
            "would_deny",
            route=pins.route,
            method="tools/call",
            target=target.name,
            rule="pinning",
            drift=list(drift),
        )


def pin_view(pins: ToolPins, post: McpPost | None) -> PinView:
    """The answer rewriter for one request; a POST's own first-page tools/list makes it complete."""
    first_page = post is not None and any(
        message.method == "tools/list"
        and message.kind == "request"
        and not (isinstance(message.params, Mapping) and message.params.get("cursor"))
        for message in post.messages
    )
    return pins.view(first_page=first_page)
