"""Task ids in MCP messages: found where the protocol puts them, so that each can be sealed.

MCP 2025-11-25 tasks (and the tasks extension of 2026-07-28) give the client a ``taskId`` to come
back with. It sits, in ``params`` or ``result`` of any message, in one of these places:

- ``taskId`` itself: ``tasks/get``, ``tasks/result``, ``tasks/cancel`` requests,
  ``notifications/tasks/status``, and the ``Task`` results of ``tasks/get`` and ``tasks/cancel``;
- ``task.taskId``: ``CreateTaskResult``, the answer to a task-augmented request;
- ``tasks[].taskId``: ``ListTasksResult``;
- ``_meta["io.modelcontextprotocol/related-task"].taskId``: any message tied to a task (a
  server's elicitation during one, the client's answer to it, ``tasks/result``).

Only those places: a tool argument or a tool result that happens to use the word (a Jira tool's
``{"taskId": "JIRA-1"}``) is the tool's data, not a handle, and passes untouched.

Pure: the sealing itself is a callable the caller passes.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from typing import Any, Final

from ..strictjson import loads_strict

__all__ = [
    "RELATED_TASK_KEY",
    "TASK_ID_KEY",
    "NotAHandle",
    "TaskIdSealer",
    "mentions_task_id",
    "rewrite_body_task_ids",
    "rewrite_task_ids",
]

TASK_ID_KEY: Final = "taskId"
# The SDK's models also accept their fields by Python name (pydantic populate_by_name): an
# upstream built on them reads ``task_id`` and ``meta`` as ``taskId`` and ``_meta``.
TASK_ID_KEYS: Final = (TASK_ID_KEY, "task_id")
META_KEYS: Final = ("_meta", "meta")
_TASK_ID_BYTES: Final = tuple(key.encode("ascii") for key in TASK_ID_KEYS)


class NotAHandle(ValueError):
    """A ``taskId`` that is not a string: no SDK would read it as one of its ids."""


def mentions_task_id(body: bytes | str) -> bool:
    """Whether ``body`` could hold a ``taskId`` key: spelled out, or hidden in ``\\u`` escapes.

    A cheap test on the bytes, so that a message without one is never parsed again.
    """
    if isinstance(body, str):
        return any(key in body for key in TASK_ID_KEYS) or "\\u" in body
    return any(key in body for key in _TASK_ID_BYTES) or b"\\u" in body


RELATED_TASK_KEY: Final = "io.modelcontextprotocol/related-task"


def _task_slots(message: dict[str, Any]) -> list[dict[str, Any]]:
    """The objects of ``message`` whose ``taskId`` key, when present, is a task handle."""
    slots: list[dict[str, Any]] = []
    for part in ("params", "result"):
        body = message.get(part)
        if not isinstance(body, dict):
            continue
        slots.append(body)
        task = body.get("task")
        if isinstance(task, dict):
            slots.append(task)
        tasks = body.get("tasks")
        if isinstance(tasks, list):
            slots.extend(item for item in tasks if isinstance(item, dict))
        for meta_key in META_KEYS:
            meta = body.get(meta_key)
            related = meta.get(RELATED_TASK_KEY) if isinstance(meta, dict) else None
            if isinstance(related, dict):
                slots.append(related)
    return slots


def rewrite_task_ids(document: Any, transform: Callable[[str], str]) -> bool:
    """Replace, in place, every task handle of a message (or of each message of a batch) by
    ``transform(value)``.

    Returns whether anything was replaced. ``transform`` may raise to refuse a value; a
    ``taskId`` there that is not a string raises ``NotAHandle``.
    """
    messages = document if isinstance(document, list) else [document]
    changed = False
    for message in messages:
        if not isinstance(message, dict):
            continue
        for slot in _task_slots(message):
            for key in TASK_ID_KEYS:
                if key not in slot:
                    continue
                value = slot[key]
                if not isinstance(value, str):
                    raise NotAHandle(f"{key} is not a string")
                slot[key] = transform(value)
                changed = True
    return changed


def rewrite_body_task_ids(body: bytes, transform: Callable[[str], str]) -> bytes:
    """``body`` (strict JSON already accepted) with every task id transformed; unchanged bytes
    when it holds none."""
    if not mentions_task_id(body):
        return body
    document = loads_strict(body)
    if not rewrite_task_ids(document, transform):
        return body
    # ASCII escapes: a lone surrogate (valid in a JSON escape) survives, where UTF-8 would fail.
    return json.dumps(document, separators=(",", ":")).encode("ascii")


class TaskIdSealer:
    """A message rewriter (``gateway.mcp.answers``): every task id the upstream sends, sealed.

    A ``taskId`` that is not a string is sealed as nothing the client could send back: the
    message is replaced by an error rather than relayed with an unbound handle.
    """

    __slots__ = ("_seal",)

    markers: Final = _TASK_ID_BYTES

    def __init__(self, seal: Callable[[str], str]) -> None:
        self._seal = seal

    def rewrite(self, message: dict[str, Any]) -> dict[str, Any] | None:
        # A chain runs every rewriter once any one's markers occur (an error answer watched by
        # tracing, a list being filtered): a message with no task id is not copied.
        if not any(key in slot for slot in _task_slots(message) for key in TASK_ID_KEYS):
            return None
        rewritten = copy.deepcopy(message)
        try:
            changed = rewrite_task_ids(rewritten, self._seal)
        except NotAHandle:
            return {"jsonrpc": "2.0", "id": message.get("id"), "error": _UNBOUND_TASK}
        return rewritten if changed else None


_UNBOUND_TASK: Final = {"code": -32603, "message": "Upstream sent a task id the gateway could not bind"}
