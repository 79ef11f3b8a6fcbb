"""The MCP conformance suite's server fixture contract, built on the official ``mcp`` SDK.

Run from the repository root::

    python -m tests.conformance.fixture_server --port 0

Prints exactly one line, ``LISTENING <port>``, once the socket accepts connections. One
endpoint, ``/mcp``, serves the 2025 session revisions and 2026-07-28 (the SDK routes on the
``MCP-Protocol-Version`` header). The names and result shapes are the ones the suite's server
scenarios (``@modelcontextprotocol/conformance``) ask for in their descriptions. Beyond the core
contract: ``json_schema_2020_12_tool`` (its 2020-12 input schema published as is),
``test_custom_header_region`` (an ``x-mcp-header`` parameter, for the SEP-2243 probes) and
``test_reconnection`` (closes its SSE stream mid-call; an in-memory event store lets the client
resume with ``Last-Event-ID``). Not implemented, so those scenarios fail directly as well:
``test_missing_capability`` (server-stateless) and the ``input-required-result-*`` tools.

Every HTTP request is recorded by ``tests.support.upstream_server.Recorder`` (``GET /__records``,
``POST /__records/clear``), so the runner can prove that a refused request never got here.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import struct
import sys
import zlib
from collections.abc import Awaitable, Callable
from itertools import count
from typing import Any, TypeAlias, cast

import anyio
import mcp.types as types
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.prompts.base import UserMessage
from mcp.server.streamable_http import EventCallback, EventMessage, EventStore
from mcp.types import JSONRPCMessage

from tests.support.upstream_server import Recorder, serve

MCP_PATH = "/mcp"
WATCHED_URI = "test://watched-resource"

CompletionHandler: TypeAlias = Callable[[Any, types.CompletionArgument, Any], Awaitable[types.Completion]]


def _png_1x1_red() -> bytes:
    """A valid 1x1 red PNG, built from its chunks."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)  # 1x1, 8-bit RGB
    pixels = zlib.compress(b"\x00\xff\x00\x00")  # filter byte + one red pixel
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")


def _wav_silence(samples: int = 8) -> bytes:
    """A valid mono 8 kHz 16-bit PCM WAV of a few silent samples."""
    data = b"\x00\x00" * samples
    fmt = struct.pack("<HHIIHH", 1, 1, 8000, 16000, 2, 16)
    return (
        b"RIFF"
        + struct.pack("<I", 36 + len(data))
        + b"WAVE"
        + b"fmt "
        + struct.pack("<I", len(fmt))
        + fmt
        + b"data"
        + struct.pack("<I", len(data))
        + data
    )


PNG = _png_1x1_red()
PNG_B64 = base64.b64encode(PNG).decode("ascii")
WAV_B64 = base64.b64encode(_wav_silence()).decode("ascii")


JSON_SCHEMA_2020_12: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "$defs": {
        "address": {
            "$anchor": "addressDef",
            "type": "object",
            "properties": {"street": {"type": "string"}, "city": {"type": "string"}},
        }
    },
    "properties": {
        "name": {"type": "string"},
        "address": {"$ref": "#/$defs/address"},
        "contactMethod": {"type": "string", "enum": ["phone", "email"]},
        "phone": {"type": "string"},
        "email": {"type": "string"},
    },
    "allOf": [{"anyOf": [{"required": ["phone"]}, {"required": ["email"]}]}],
    "if": {"properties": {"contactMethod": {"const": "phone"}}, "required": ["contactMethod"]},
    "then": {"required": ["phone"]},
    "else": {"required": ["email"]},
    "additionalProperties": False,
}
"""The input schema the suite's json-schema-2020-12 scenario expects to see preserved."""


def _text(text: str) -> types.TextContent:
    return types.TextContent(type="text", text=text)


def _image() -> types.ImageContent:
    return types.ImageContent(type="image", data=PNG_B64, mime_type="image/png")


def _embedded(uri: str, text: str, mime_type: str = "text/plain") -> types.EmbeddedResource:
    return types.EmbeddedResource(
        type="resource",
        resource=types.TextResourceContents(uri=uri, mime_type=mime_type, text=text),
    )


class MemoryEventStore(EventStore):
    """Every SSE event kept in memory, so a client can resume a stream with ``Last-Event-ID``
    (the suite's server-sse-polling scenario closes a stream mid-call on purpose)."""

    def __init__(self) -> None:
        self._events: list[tuple[str, str, JSONRPCMessage | None]] = []  # (event id, stream id, message)
        self._ids = count(1)

    async def store_event(self, stream_id: str, message: JSONRPCMessage | None) -> str:
        event_id = str(next(self._ids))
        self._events.append((event_id, stream_id, message))
        return event_id

    async def replay_events_after(self, last_event_id: str, send_callback: EventCallback) -> str | None:
        position = next((i for i, (eid, _, _) in enumerate(self._events) if eid == last_event_id), None)
        if position is None:
            return None
        stream_id = self._events[position][1]
        for event_id, sid, message in self._events[position + 1 :]:
            if sid == stream_id and message is not None:
                await send_callback(EventMessage(message, event_id))
        return stream_id


def build_server() -> MCPServer:
    server = MCPServer("conformance-fixture", version="1.0.0", log_level="WARNING")
    subscriptions: set[str] = set()

    # ---- tools -------------------------------------------------------------------------------
    @server.tool(description="Returns simple text content")
    def test_simple_text() -> list[types.TextContent]:
        return [_text("This is a simple text response for testing.")]

    @server.tool(description="Returns image content")
    def test_image_content() -> list[types.ImageContent]:
        return [_image()]

    @server.tool(description="Returns audio content")
    def test_audio_content() -> list[types.AudioContent]:
        return [types.AudioContent(type="audio", data=WAV_B64, mime_type="audio/wav")]

    @server.tool(description="Returns an embedded resource")
    def test_embedded_resource() -> list[types.EmbeddedResource]:
        return [_embedded("test://embedded-resource", "This is an embedded resource content.")]

    @server.tool(description="Returns text, image and resource content")
    def test_multiple_content_types() -> list[
        types.TextContent | types.ImageContent | types.EmbeddedResource
    ]:
        return [
            _text("Multiple content types test:"),
            _image(),
            _embedded(
                "test://mixed-content-resource",
                json.dumps({"test": "data", "value": 123}),
                mime_type="application/json",
            ),
        ]

    @server.tool(description="Sends three log notifications while running")
    async def test_tool_with_logging(ctx: Context) -> list[types.TextContent]:
        await ctx.info("Tool execution started")
        await anyio.sleep(0.05)
        await ctx.info("Tool processing data")
        await anyio.sleep(0.05)
        await ctx.info("Tool execution completed")
        return [_text("Tool with logging executed successfully")]

    @server.tool(description="Always fails")
    def test_error_handling() -> str:
        raise ValueError("This tool intentionally returns an error for testing")

    @server.tool(description="Reports progress 0, 50, 100 of 100")
    async def test_tool_with_progress(ctx: Context) -> list[types.TextContent]:
        for step in (0, 50, 100):
            await ctx.report_progress(step, 100)
            if step < 100:
                await anyio.sleep(0.05)
        return [_text("Tool with progress executed successfully")]

    @server.tool(description="Asks the client to sample an LLM")
    async def test_sampling(prompt: str, ctx: Context) -> list[types.TextContent]:
        result = await ctx.session.create_message(
            [types.SamplingMessage(role="user", content=_text(prompt))],
            max_tokens=100,
            related_request_id=ctx.request_id,
        )
        content = result.content
        reply = content.text if isinstance(content, types.TextContent) else str(content)
        return [_text(f"LLM response: {reply}")]

    async def _elicit(ctx: Context, message: str, schema: dict[str, Any]) -> types.ElicitResult:
        # Context.session is unannotated in the SDK (Any); elicit_form itself returns ElicitResult.
        result: types.ElicitResult = await ctx.session.elicit_form(
            message, schema, related_request_id=ctx.request_id
        )
        return result

    @server.tool(description="Asks the client for user input")
    async def test_elicitation(message: str, ctx: Context) -> list[types.TextContent]:
        result = await _elicit(
            ctx,
            message,
            {
                "type": "object",
                "properties": {
                    "username": {"type": "string", "description": "User's response"},
                    "email": {"type": "string", "description": "User's email address"},
                },
                "required": ["username", "email"],
            },
        )
        return [_text(f"User response: action={result.action}, content={json.dumps(result.content)}")]

    @server.tool(description="Elicitation with defaults for every primitive type (SEP-1034)")
    async def test_elicitation_sep1034_defaults(ctx: Context) -> list[types.TextContent]:
        result = await _elicit(
            ctx,
            "Please review and update the form fields with defaults",
            {
                "type": "object",
                "properties": {
                    "name": {"type": "string", "description": "User name", "default": "John Doe"},
                    "age": {"type": "integer", "description": "User age", "default": 30},
                    "score": {"type": "number", "description": "User score", "default": 95.5},
                    "status": {
                        "type": "string",
                        "description": "User status",
                        "enum": ["active", "inactive", "pending"],
                        "default": "active",
                    },
                    "verified": {"type": "boolean", "description": "Verification status", "default": True},
                },
                "required": [],
            },
        )
        return [_text(f"Elicitation completed: action={result.action}, content={json.dumps(result.content)}")]

    @server.tool(description="Elicitation with the five enum schema variants (SEP-1330)")
    async def test_elicitation_sep1330_enums(ctx: Context) -> list[types.TextContent]:
        result = await _elicit(
            ctx,
            "Please select options from the enum fields",
            {
                "type": "object",
                "properties": {
                    "untitledSingle": {
                        "type": "string",
                        "description": "Untitled single-select",
                        "enum": ["option1", "option2", "option3"],
                    },
                    "titledSingle": {
                        "type": "string",
                        "description": "Titled single-select",
                        "oneOf": [
                            {"const": "value1", "title": "First Option"},
                            {"const": "value2", "title": "Second Option"},
                            {"const": "value3", "title": "Third Option"},
                        ],
                    },
                    "legacyEnum": {
                        "type": "string",
                        "description": "Legacy titled enum",
                        "enum": ["opt1", "opt2", "opt3"],
                        "enumNames": ["Option One", "Option Two", "Option Three"],
                    },
                    "untitledMulti": {
                        "type": "array",
                        "description": "Untitled multi-select",
                        "items": {"type": "string", "enum": ["option1", "option2", "option3"]},
                    },
                    "titledMulti": {
                        "type": "array",
                        "description": "Titled multi-select",
                        "items": {
                            "anyOf": [
                                {"const": "value1", "title": "First Choice"},
                                {"const": "value2", "title": "Second Choice"},
                                {"const": "value3", "title": "Third Choice"},
                            ]
                        },
                    },
                },
                "required": [],
            },
        )
        return [_text(f"Elicitation completed: action={result.action}, content={json.dumps(result.content)}")]

    @server.tool(name="json_schema_2020_12_tool", description="Tool with JSON Schema 2020-12 features")
    def json_schema_tool(**kwargs: Any) -> list[types.TextContent]:
        return [_text("ok")]

    tool = server._tool_manager.get_tool("json_schema_2020_12_tool")
    assert tool is not None
    tool.parameters = JSON_SCHEMA_2020_12  # published as is; the SDK would derive one from the signature

    @server.tool(description="Echoes a region that 2026-07-28 clients mirror into Mcp-Param-Region")
    def test_custom_header_region(region: str) -> list[types.TextContent]:
        return [_text(f"region={region}")]

    tool = server._tool_manager.get_tool("test_custom_header_region")
    assert tool is not None
    tool.parameters = {
        "type": "object",
        "properties": {"region": {"type": "string", "description": "A region", "x-mcp-header": "Region"}},
        "required": ["region"],
    }

    @server.tool(description="Closes its SSE stream mid-call; the client resumes with Last-Event-ID")
    async def test_reconnection(ctx: Context) -> list[types.TextContent]:
        await anyio.sleep(0.05)
        await ctx.close_sse_stream()
        await anyio.sleep(0.3)
        return [_text("Reconnection test completed successfully")]

    # ---- resources -----------------------------------------------------------------------------
    @server.resource(
        "test://static-text", name="static-text", description="A static text resource", mime_type="text/plain"
    )
    def static_text() -> str:
        return "This is the content of the static text resource."

    @server.resource(
        "test://static-binary",
        name="static-binary",
        description="A static binary resource",
        mime_type="image/png",
    )
    def static_binary() -> bytes:
        return PNG

    @server.resource(
        "test://template/{id}/data",
        name="template-data",
        description="A resource template with an id parameter",
        mime_type="application/json",
    )
    def template_data(id: str) -> str:
        return json.dumps({"id": id, "templateTest": True, "data": f"Data for ID: {id}"})

    @server.resource(
        WATCHED_URI,
        name="watched-resource",
        description="A resource clients can subscribe to",
        mime_type="text/plain",
    )
    def watched() -> str:
        return "Watched resource content"

    # ---- prompts -------------------------------------------------------------------------------
    @server.prompt(description="A simple prompt without arguments")
    def test_simple_prompt() -> list[UserMessage]:
        return [UserMessage(content=_text("This is a simple prompt for testing."))]

    @server.prompt(description="A prompt with two required arguments")
    def test_prompt_with_arguments(arg1: str, arg2: str) -> list[UserMessage]:
        return [UserMessage(content=_text(f"Prompt with arguments: arg1='{arg1}', arg2='{arg2}'"))]

    @server.prompt(description="A prompt embedding a resource")
    def test_prompt_with_embedded_resource(resourceUri: str) -> list[UserMessage]:
        return [
            UserMessage(content=_embedded(resourceUri, "Embedded resource content for testing.")),
            UserMessage(content=_text("Please process the embedded resource above.")),
        ]

    @server.prompt(description="A prompt with image content")
    def test_prompt_with_image() -> list[UserMessage]:
        return [
            UserMessage(content=_image()),
            UserMessage(content=_text("Please analyze the image above.")),
        ]

    # ---- completion, logging, subscriptions ------------------------------------------------------
    # MCPServer.completion is unannotated in the SDK; its decorator registers the handler and
    # returns it unchanged, which is what this cast says.
    completion = cast(Callable[[], Callable[[CompletionHandler], CompletionHandler]], server.completion)

    @completion()
    async def complete(ref: Any, argument: types.CompletionArgument, context: Any) -> types.Completion:
        candidates = ["paris", "park", "party"]
        values = [value for value in candidates if value.startswith(argument.value)]
        return types.Completion(values=values, total=len(values), has_more=False)

    lowlevel = server._lowlevel_server  # the SDK has no high-level hook for these three

    async def set_level(ctx: Any, params: types.SetLevelRequestParams) -> types.EmptyResult:
        return types.EmptyResult()

    async def subscribe(ctx: Any, params: types.SubscribeRequestParams) -> types.EmptyResult:
        subscriptions.add(str(params.uri))
        return types.EmptyResult()

    async def unsubscribe(ctx: Any, params: types.UnsubscribeRequestParams) -> types.EmptyResult:
        subscriptions.discard(str(params.uri))
        return types.EmptyResult()

    lowlevel.add_request_handler("logging/setLevel", types.SetLevelRequestParams, set_level)
    lowlevel.add_request_handler("resources/subscribe", types.SubscribeRequestParams, subscribe)
    lowlevel.add_request_handler("resources/unsubscribe", types.UnsubscribeRequestParams, unsubscribe)
    return server


def build_app() -> Recorder:
    sdk_app = build_server().streamable_http_app(
        streamable_http_path=MCP_PATH,
        json_response=False,
        host="127.0.0.1",
        event_store=MemoryEventStore(),
        retry_interval=100,
    )
    return Recorder(sdk_app)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    args = parser.parse_args(argv)
    try:
        asyncio.run(serve(args.port, build_app()))
    except KeyboardInterrupt:
        pass
    sys.exit(0)


if __name__ == "__main__":
    main()
