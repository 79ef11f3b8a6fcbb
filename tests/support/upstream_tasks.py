"""MCP 2025-11-25 tasks for the upstream fixture (``upstream_server --tasks``), on the SDK's own hooks.

SDK 2.3.0 has the task types (``mcp_types.Task``, ``CreateTaskResult``…) but serves none of the
task methods, so this module adds them the way the SDK lets a server add methods:

- ``tasks/get``, ``tasks/result``, ``tasks/cancel`` and ``tasks/list`` are ``MethodBinding``s of
  an ``Extension`` (not spec methods in 2.3.0, so an extension may bind them), served in
  2025-11-25 only (another version gets -32601, as from a server without tasks);
- a task-augmented ``tools/call`` (``params.task``, e.g. ``{"ttl": 60000}``) is answered by a
  ``Server.middleware``, not by ``Extension.intercept_tool_call``: the SDK accepts ``params.task``
  (``CallToolRequestParams.task``, and the 2025-11-25 surface check), but its runner validates
  every ``tools/call`` result against ``CallToolResult`` (``content`` required), so a
  ``CreateTaskResult`` returned from the interceptor reaches the client as -32603 "Handler
  returned an invalid result". A middleware runs before that and owns its result. It records
  the task, answers ``{"task": {...}}`` at once, and runs the rest of the chain (params check,
  the tool, result shaping) in the background with ``task`` removed; ``tasks/result`` later
  returns exactly what the plain call would have returned, with the related-task ``_meta``.

Task ids are random and tasks are global: like the upstreams the gateway fronts, this server
cannot tell users apart, and ``tasks/list`` lists every caller's tasks. When a task ends, a
``notifications/tasks/status`` goes to the session's standalone GET stream (dropped when none
is open). ``initialize`` advertises the ``tasks`` capability.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Final, cast

import mcp_types
from mcp.server.context import CallNext, HandlerResult, ServerRequestContext
from mcp.server.extension import Extension, MethodBinding
from mcp.shared.exceptions import MCPError
from pydantic import BaseModel, ValidationError

__all__ = ["RELATED_TASK_META_KEY", "TASKS_VERSION", "TaskAugmentation", "TaskStore", "TasksExtension"]

TASKS_VERSION: Final = "2025-11-25"
RELATED_TASK_META_KEY: Final = "io.modelcontextprotocol/related-task"
DEFAULT_TTL_MS: Final = 60_000
POLL_INTERVAL_MS: Final = 100
TERMINAL: Final = frozenset({"completed", "failed", "cancelled"})
TASKS_CAPABILITY: Final[dict[str, Any]] = {"list": {}, "cancel": {}, "requests": {"tools": {"call": {}}}}

logger = logging.getLogger(__name__)


def _now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def _wire(result: HandlerResult) -> dict[str, Any]:
    if isinstance(result, BaseModel):
        return result.model_dump(by_alias=True, mode="json", exclude_none=True)
    return dict(result or {})


@dataclass
class _Task:
    task_id: str
    ttl: int
    created_at: str = field(default_factory=_now)
    last_updated_at: str = ""
    status: mcp_types.TaskStatus = "working"
    status_message: str | None = None
    result: dict[str, Any] | None = None
    error: MCPError | None = None
    done: asyncio.Event = field(default_factory=asyncio.Event)
    runner: asyncio.Task[None] | None = None

    def model(self) -> mcp_types.Task:
        """The wire shape, by the SDK's own model (``taskId``, ``createdAt``…)."""
        return mcp_types.Task(
            task_id=self.task_id,
            status=self.status,
            status_message=self.status_message,
            created_at=self.created_at,
            last_updated_at=self.last_updated_at or self.created_at,
            ttl=self.ttl,
            poll_interval=POLL_INTERVAL_MS,
        )

    def finish(self, status: mcp_types.TaskStatus, message: str | None = None) -> None:
        self.status, self.status_message, self.last_updated_at = status, message, _now()
        self.done.set()


class TaskStore:
    """Every task of the server, by the upstream's own id."""

    def __init__(self) -> None:
        self.tasks: dict[str, _Task] = {}

    def create(self, ttl: int) -> _Task:
        task = _Task(task_id=secrets.token_urlsafe(12), ttl=ttl)
        self.tasks[task.task_id] = task
        return task

    def get(self, task_id: str) -> _Task:
        task = self.tasks.get(task_id)
        if task is None:
            # MCP 2025-11-25 tasks: an invalid or nonexistent taskId is -32602.
            raise MCPError(code=mcp_types.INVALID_PARAMS, message="Failed to retrieve task: Task not found")
        return task


def _task_request(ctx: ServerRequestContext[Any, Any]) -> Mapping[str, Any] | None:
    """The ``params.task`` of a task-augmented 2025-11-25 ``tools/call``, else None."""
    params = ctx.params
    if ctx.method != "tools/call" or ctx.protocol_version != TASKS_VERSION or not isinstance(params, Mapping):
        return None
    task = params.get("task")
    return cast("Mapping[str, Any]", task) if isinstance(task, Mapping) else None


class TaskAugmentation:
    """``Server.middleware``: a task-augmented ``tools/call`` becomes a task; ``initialize``
    advertises tasks."""

    def __init__(self, store: TaskStore) -> None:
        self.store = store

    async def __call__(self, ctx: ServerRequestContext[Any, Any], call_next: CallNext) -> HandlerResult:
        if ctx.method == "initialize":
            return _with_tasks_capability(_wire(await call_next(ctx)))
        augmentation = _task_request(ctx)
        if augmentation is None:
            return await call_next(ctx)
        ttl = augmentation.get("ttl")
        wanted = ttl if isinstance(ttl, int) and not isinstance(ttl, bool) else DEFAULT_TTL_MS
        task = self.store.create(wanted)
        plain = {key: value for key, value in cast("Mapping[str, Any]", ctx.params).items() if key != "task"}
        task.runner = asyncio.create_task(self._run(task, call_next, replace(ctx, params=plain)))
        return mcp_types.CreateTaskResult(task=task.model())

    async def _run(self, task: _Task, call_next: CallNext, ctx: ServerRequestContext[Any, Any]) -> None:
        try:
            result = _wire(await call_next(ctx))
        except MCPError as exc:
            task.error = exc
            task.finish("failed", exc.error.message)
        except ValidationError:
            task.error = MCPError(code=mcp_types.INVALID_PARAMS, message="Invalid request parameters")
            task.finish("failed", task.error.error.message)
        except Exception as exc:  # a tool crash ends its task, not the server
            logger.exception("task %s raised", task.task_id)
            task.error = MCPError(code=mcp_types.INTERNAL_ERROR, message=type(exc).__name__)
            task.finish("failed", task.error.error.message)
        else:
            task.result = result
            task.finish("failed" if result.get("isError") else "completed")
        await _announce(ctx, task)


def _with_tasks_capability(result: dict[str, Any]) -> dict[str, Any]:
    if result.get("protocolVersion") != TASKS_VERSION or not isinstance(result.get("capabilities"), dict):
        return result
    return {**result, "capabilities": {**result["capabilities"], "tasks": TASKS_CAPABILITY}}


async def _announce(ctx: ServerRequestContext[Any, Any], task: _Task) -> None:
    """``notifications/tasks/status`` on the session's standalone stream (no related request)."""
    note = mcp_types.TaskStatusNotification(
        params=mcp_types.TaskStatusNotificationParams(**task.model().model_dump())
    )
    try:
        # The SDK leaves TaskStatusNotification out of its ServerNotification union (types
        # only); the session sends whichever model it is given.
        await ctx.session.send_notification(cast("mcp_types.ServerNotification", note))
    except Exception:  # the session may be gone by now: the status is still in tasks/get
        logger.debug("task %s: status notification not delivered", task.task_id, exc_info=True)


class TasksExtension(Extension):
    """The four task methods of MCP 2025-11-25 over one ``TaskStore``."""

    identifier = "dev.mcp-auth-gateway.tests/tasks"

    def __init__(self, store: TaskStore) -> None:
        self.store = store

    def methods(self) -> Sequence[MethodBinding]:
        only = frozenset({TASKS_VERSION})
        return [
            MethodBinding("tasks/get", mcp_types.GetTaskRequestParams, self.get, only),
            MethodBinding("tasks/result", mcp_types.GetTaskPayloadRequestParams, self.result, only),
            MethodBinding("tasks/cancel", mcp_types.CancelTaskRequestParams, self.cancel, only),
            MethodBinding("tasks/list", mcp_types.PaginatedRequestParams, self.list_tasks, only),
        ]

    async def get(
        self, ctx: ServerRequestContext[Any, Any], params: mcp_types.GetTaskRequestParams
    ) -> HandlerResult:
        return mcp_types.GetTaskResult(**self.store.get(params.task_id).model().model_dump())

    async def result(
        self, ctx: ServerRequestContext[Any, Any], params: mcp_types.GetTaskPayloadRequestParams
    ) -> HandlerResult:
        """Blocks until the task ends (MCP 2025-11-25), then the call's own result or error."""
        task = self.store.get(params.task_id)
        await task.done.wait()
        if task.error is not None:
            raise task.error
        if task.result is None:
            raise MCPError(code=mcp_types.INVALID_PARAMS, message=f"Task {task.status}: no result")
        meta = {**task.result.get("_meta", {}), RELATED_TASK_META_KEY: {"taskId": task.task_id}}
        return {**task.result, "_meta": meta}

    async def cancel(
        self, ctx: ServerRequestContext[Any, Any], params: mcp_types.CancelTaskRequestParams
    ) -> HandlerResult:
        task = self.store.get(params.task_id)
        if task.status in TERMINAL:
            raise MCPError(
                code=mcp_types.INVALID_PARAMS, message=f"Cannot cancel task: already {task.status}"
            )
        if task.runner is not None:
            task.runner.cancel()
        task.finish("cancelled", "cancelled by request")
        return mcp_types.CancelTaskResult(**task.model().model_dump())

    async def list_tasks(
        self, ctx: ServerRequestContext[Any, Any], params: mcp_types.PaginatedRequestParams
    ) -> HandlerResult:
        return mcp_types.ListTasksResult(tasks=[task.model() for task in self.store.tasks.values()])
