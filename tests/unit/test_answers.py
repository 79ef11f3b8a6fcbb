"""gateway.mcp.answers: which upstream answers are relayed, and the framing around message rewriters."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import pytest

from gateway.errors import UpstreamError
from gateway.mcp.answers import UNREADABLE_MESSAGE, AnswerInspector, answer_kind, chain, guarded_markers
from gateway.mcp.handles import TaskIdSealer
from gateway.mcp.listing import ListFilter
from gateway.mcp.policy import RoutePolicy
from gateway.mcp.schema_check import SchemaWatch
from gateway.telemetry.tracing import AnswerWatch

# --- answer_kind ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "content_types", "kind"),
    [
        (200, ["application/json"], "json"),
        (200, ["Application/JSON; charset=UTF-8"], "json"),
        (200, ['application/json; charset="utf8"'], "json"),
        (200, ["text/event-stream"], "sse"),
        (200, ["text/event-stream; charset=utf-8"], "sse"),
        (200, ["text/event-stream;foo=bar"], "sse"),
        (400, ["application/json"], "json"),  # error bodies of these types are inspected too
        (500, ["text/event-stream"], "sse"),
        (202, [], "bodiless"),
        (200, ["text/plain"], "bodiless"),
        (200, ["application/json-rpc"], "bodiless"),  # both SDKs read it as JSON: must be empty
        (200, ["application/jsonl"], "bodiless"),
        (204, ["text/html"], "bodiless"),
        (404, ["text/plain; charset=utf-8"], "opaque"),  # an error body no client reads as a result
        (405, [], "opaque"),
        (500, ["application/json-rpc"], "opaque"),
        (503, ["text/html"], "opaque"),
    ],
)
def test_answer_kind_by_status_and_media_type(status: int, content_types: list[str], kind: str) -> None:
    """Table: exact JSON/SSE types are read; other 2xx must be empty; other errors pass as they are."""
    assert answer_kind(status, content_types, [], empty=False) == kind


@pytest.mark.parametrize(
    ("status", "content_types", "content_encodings", "empty", "reason"),
    [
        (301, [], [], True, "upstream_redirect"),
        (302, ["application/json"], [], False, "upstream_redirect"),
        (307, [], [], True, "upstream_redirect"),
        (308, [], [], True, "upstream_redirect"),
        (304, [], [], True, "upstream_redirect"),
        (401, ["application/json"], [], False, "upstream_auth_refused"),
        (403, [], [], True, "upstream_auth_refused"),
        (200, ["application/json"], ["gzip"], False, "upstream_content_encoding"),
        (200, ["text/event-stream"], ["br"], False, "upstream_content_encoding"),
        (200, ["text/event-stream"], ["identity", "deflate"], False, "upstream_content_encoding"),
        (200, ["application/json"], ["identity, gzip"], False, "upstream_content_encoding"),
        (404, ["text/plain"], ["zstd"], False, "upstream_content_encoding"),
        (200, ["application/json", "application/json"], [], False, "upstream_content_type"),
        (200, ["text/plain", "application/json"], [], False, "upstream_content_type"),
        (200, ["application/json; x=text/event-stream"], [], False, "upstream_content_type"),
        (200, ["text/event-stream, application/json"], [], False, "upstream_content_type"),
        (200, ["text/event-stream; charset=utf-16"], [], False, "upstream_content_type"),
        (200, ["text/event-stream; charset=latin-1"], [], False, "upstream_content_type"),
        (200, ["application/json; charset=utf-8; charset=utf-16"], [], False, "upstream_content_type"),
        (200, ["text/event-stream; charset*=utf-16''"], [], False, "upstream_content_type"),
        (500, ["application/json; charset=iso-8859-1"], [], False, "upstream_content_type"),
        (101, [], [], True, "upstream_failed"),
        (103, ["application/json"], [], False, "upstream_failed"),
    ],
)
def test_answers_the_client_must_not_see_are_502(
    status: int, content_types: list[str], content_encodings: list[str], empty: bool, reason: str
) -> None:
    """Table: redirects, 401/403, content codings, doubled or ambiguous types, other charsets: 502."""
    with pytest.raises(UpstreamError) as caught:
        answer_kind(status, content_types, content_encodings, empty=empty)
    assert caught.value.status == 502
    assert caught.value.reason == reason


@pytest.mark.parametrize("encodings", [[], ["identity"], ["Identity"], [""], ["gzip"]])
def test_content_coding_on_an_empty_body_is_harmless(encodings: list[str]) -> None:
    """A known-empty body has nothing to decode: its (dropped) Content-Encoding does not matter."""
    assert answer_kind(202, [], encodings, empty=True) == "bodiless"
    if encodings != ["gzip"]:
        assert answer_kind(200, ["application/json"], encodings, empty=False) == "json"


@pytest.mark.parametrize(
    "codings",
    [
        ["gzip, chunked"],
        ["chunked", "deflate"],
        ["compress"],
        ["chunked, identity"],
        ["chunked", "identity"],
        ["chunked, chunked"],
        ["chunked", "Chunked"],
    ],
)
def test_transfer_codings_other_than_chunked_once_and_last_are_502(codings: list[str]) -> None:
    """A coding the gateway never asked for (it sends no TE), or chunked not last (the answer is then
    framed by the close and the chunk framing would reach the client as body): 502."""
    with pytest.raises(UpstreamError) as caught:
        answer_kind(200, ["text/event-stream"], [], empty=False, transfer_encodings=codings)
    assert caught.value.reason == "upstream_content_encoding"


@pytest.mark.parametrize(
    "codings",
    [[], ["chunked"], ["Chunked"], [" chunked "], ["identity, chunked"], ["", "chunked"], ["chunked,"]],
)
def test_chunked_once_and_last_is_read(codings: list[str]) -> None:
    """Chunked, once and last (empty list elements and a leading identity mean nothing): read as SSE."""
    assert answer_kind(200, ["text/event-stream"], [], empty=False, transfer_encodings=codings) == "sse"


# --- rewriters, chained --------------------------------------------------------------------------


@dataclass
class Tagger:
    """A test rewriter: adds its tag to every message that has ``key``; records what it saw."""

    key: str
    tag: str
    markers: tuple[bytes, ...] = ()
    seen: list[dict[str, Any]] = field(default_factory=list)

    def rewrite(self, message: dict[str, Any]) -> dict[str, Any] | None:
        self.seen.append(message)
        if self.key not in message:
            return None
        return {**message, "tags": [*message.get("tags", []), self.tag]}


def test_chain_feeds_each_rewriter_the_previous_output() -> None:
    """Two rewriters in a row: the second sees the first one's replacement; None when neither acts."""
    first = Tagger("result", "a", (b'"result"',))
    second = Tagger("tags", "b", (b'"tags"',))
    both = chain(first, second)
    assert both.markers == (b'"result"', b'"tags"')
    assert both.rewrite({"result": 1}) == {"result": 1, "tags": ["a", "b"]}
    assert second.seen[-1] == {"result": 1, "tags": ["a"]}
    assert both.rewrite({"method": "x"}) is None
    assert chain(first) is first


def test_chain_keeps_a_change_made_in_place() -> None:
    """A rewriter that changes its argument in place and returns it: the chain reports the change."""

    @dataclass
    class InPlace:
        markers: tuple[bytes, ...] = (b'"taskId"',)

        def rewrite(self, message: dict[str, Any]) -> dict[str, Any] | None:
            if "taskId" not in message:
                return None
            message["taskId"] = "sealed"
            return message

    both = chain(Tagger("absent", "a", (b'"x"',)), InPlace())
    assert both.rewrite({"taskId": "t1"}) == {"taskId": "sealed"}
    body = AnswerInspector(both).json_body(b'{"taskId":"t1"}')
    assert body == b'{"taskId":"sealed"}'


def test_chain_with_a_rewriter_that_sees_everything_has_no_markers() -> None:
    """One member without markers: every message of every answer is parsed for the chain."""
    inspector = AnswerInspector(chain(Tagger("result", "a", (b'"result"',)), Tagger("id", "b")))
    assert inspector.markers == ()
    assert inspector.concerns(b"anything")


def test_inspector_hands_every_message_of_a_batch_and_skips_non_objects() -> None:
    """JSON framing: one object, or each object of a batch array; strings and numbers are no messages."""
    tagger = Tagger("id", "t", (b'"id"',))
    inspector = AnswerInspector(tagger)
    assert inspector.markers == (b'"id"', b"\\u")
    body = b'[{"id":1},"x",{"method":"m"},[2]]'
    expected = [{"id": 1, "tags": ["t"]}, "x", {"method": "m"}, [2]]
    assert json.loads(inspector.json_body(body) or b"") == expected
    assert tagger.seen == [{"id": 1}, {"method": "m"}]
    assert inspector.json_body(b'"id"') is None
    assert inspector.json_body(b"[]") is None


def test_inspector_output_is_ascii() -> None:
    """Rewritten bodies carry non-ASCII text as escapes, lone surrogates included."""
    inspector = AnswerInspector(Tagger("id", "t", (b'"id"',)))
    rewritten = inspector.json_body('{"id":1,"s":"é\u2028","u":"\\ud800"}'.encode())
    assert rewritten == b'{"id":1,"s":"\\u00e9\\u2028","u":"\\ud800","tags":["t"]}'


# --- SSE framing -----------------------------------------------------------------------------------


def sse_through(inspector: AnswerInspector, raw: bytes) -> bytes:
    relay = inspector.sse()
    return relay.feed(raw) + relay.finish()


def test_sse_events_are_inspected_like_json_bodies() -> None:
    """An object event and a batch-array event are rewritten; events without a marker are not parsed."""
    inspector = AnswerInspector(Tagger("id", "t", (b'"id"',)))
    raw = b'data: {"id":1}\n\ndata: [{"id":2}]\n\ndata: not json\n\n'
    assert sse_through(inspector, raw) == (
        b'data: {"id":1,"tags":["t"]}\n\ndata: [{"id":2,"tags":["t"]}]\n\ndata: not json\n\n'
    )


@pytest.mark.parametrize(
    "data",
    [
        b'{"id":1',  # cut short
        b'{"id":1,"id":2}',  # duplicate keys: JSON.parse keeps the last, others the first
        b'{"id":NaN}',
        b'"id" and then some',
    ],
)
def test_unreadable_event_data_is_replaced_by_an_error(data: bytes) -> None:
    """Table: an event that concerns a rewriter but is not strict JSON: its data becomes an error."""
    inspector = AnswerInspector(Tagger("id", "t", (b'"id"',)))
    out = sse_through(inspector, b"id: 4\ndata: " + data + b"\n\n")
    assert out == b"id: 4\ndata: " + UNREADABLE_MESSAGE.encode() + b"\n\n"


def test_event_data_with_raw_line_separators_is_reencoded() -> None:
    """U+2028 inside a JSON string of an inspected event goes out escaped, even when nothing changed."""
    inspector = AnswerInspector(Tagger("absent", "t", (b'"id"',)))
    raw = 'data: {"id":1,"text":"a\u2028b\u0085c"}\n\n'.encode()
    assert sse_through(inspector, raw) == b'data: {"id":1,"text":"a\\u2028b\\u0085c"}\n\n'
    assert sse_through(inspector, b'data: {"id":1}\n\n') == b'data: {"id":1}\n\n'  # else untouched


def test_event_with_a_hidden_data_line_for_some_readers_is_replaced() -> None:
    """A data line only a splitlines() reader sees (after U+2028 in an id line): an error event."""
    inspector = AnswerInspector(Tagger("id", "t", (b'"id"',)))
    raw = 'id: 7\u2028data: {"id":1}\n\n'.encode()
    assert sse_through(inspector, raw) == b"data: " + UNREADABLE_MESSAGE.encode() + b"\n\n"


def test_whitespace_only_event_data_is_left_alone() -> None:
    """An event that concerns a rewriter only through another field, with empty data: untouched."""
    inspector = AnswerInspector(Tagger("id", "t", (b'"id"',)))
    raw = b'event: "id"\ndata:\n\n'
    assert sse_through(inspector, raw) == raw


# --- the tracing watch's markers ----------------------------------------------------------------


@dataclass
class Watcher:
    """A rewriter with the tracing watch's markers (``AnswerWatch.markers``) that records what
    it is shown and changes nothing, as the watch does."""

    markers: tuple[Any, ...] = AnswerWatch.markers
    seen: list[dict[str, Any]] = field(default_factory=list)
    passive: bool = AnswerWatch.passive

    def rewrite(self, message: dict[str, Any]) -> dict[str, Any] | None:
        self.seen.append(message)
        return None


@pytest.mark.parametrize(
    ("body", "shown"),
    [
        (b'{"jsonrpc":"2.0","id":1,"result":{"content":[],"isError":true}}', True),
        (b'{"jsonrpc":"2.0","id":1,"result":{"content":[],"isError" :\n\ttrue}}', True),
        (b'{"jsonrpc":"2.0","id":1,"result":{"content":[],"\\u0069sError":true}}', True),
        (b'[{"jsonrpc":"2.0","id":1,"result":{"isError":false}},{"id":2,"result":{"isError":true}}]', True),
        (b'{"jsonrpc":"2.0","id":1,"error":{"code":-32602,"message":"bad"}}', True),
        (b'{"jsonrpc":"2.0","id":1,"result":{"content":[],"isError":false}}', False),
        (b'{"jsonrpc":"2.0","id":1,"result":{"content":[{"type":"text","text":"hi"}]}}', False),
    ],
)
def test_the_tracing_watch_sees_every_error_answer_and_skips_a_plain_tool_result(
    body: bytes, shown: bool
) -> None:
    """A tool result can say isError: true only with both `"isError"` and the literal `true` in its
    bytes (or an escape), so every such answer is parsed for the watch, however it is spaced or
    spelled; the SDK's `"isError":false` on every other result is relayed without a parse."""
    watcher = Watcher()
    assert AnswerInspector(watcher).json_body(body) is None
    document = json.loads(body)
    assert watcher.seen == ((document if isinstance(document, list) else [document]) if shown else [])


def test_a_plain_tool_result_is_relayed_alike_with_tracing_on_and_off() -> None:
    """Watching must not change what a client gets: a tool result the strict parser would refuse
    (a repeated key) is relayed as it is whether the watch is shown it or not (it is when `true`
    occurs anywhere, a boolean in structured content for one)."""
    body = b'{"jsonrpc":"2.0","id":1,"result":{"content":[],"content":[],"isError":false}}'
    assert AnswerInspector(Watcher()).json_body(body) is None
    shown = body.replace(b'"content":[]}', b'"content":[],"structuredContent":{"ok":true}}')
    watcher = Watcher()
    assert AnswerInspector(watcher).json_body(shown) is None and watcher.seen == []
    assert AnswerInspector(Watcher()).json_body(body.replace(b"false", b"true")) is None


@dataclass
class Looker:
    """A watcher: records what it is shown, changes nothing, and says so (``passive``)."""

    markers: tuple[Any, ...] = (b'"id"',)
    seen: list[dict[str, Any]] = field(default_factory=list)
    passive: bool = True

    def rewrite(self, message: dict[str, Any]) -> dict[str, Any] | None:
        self.seen.append(message)
        return None


def test_only_watchers_never_make_an_answer_refused() -> None:
    """A body that only watchers' markers concern and that is not strict JSON goes out as it came;
    one that also concerns a rewriter that may change it is refused (502), whatever watches it."""
    unreadable = b'{"id":1,"id":2,"result":{"tools":[]}}'
    assert AnswerInspector(Looker()).json_body(unreadable) is None
    assert AnswerInspector(chain(Looker(), Tagger("x", "t", (b'"x"',)))).json_body(unreadable) is None
    for guarded in (
        chain(Looker(), Tagger("tools", "t", (b'"tools"',))),
        chain(Looker(), Tagger("any", "t")),  # one that sees every message
        Tagger("id", "t", (b'"id"',)),
    ):
        with pytest.raises(UpstreamError, match="upstream_unreadable_answer"):
            AnswerInspector(guarded).json_body(unreadable)
    # An escape may spell a guarded key: it counts as one of its markers.
    with pytest.raises(UpstreamError):
        AnswerInspector(chain(Looker(), Tagger("x", "t", (b'"x"',)))).json_body(
            b'{"id":1,"id":2,"\\u0078":1}'
        )


REPLACED = b"data: " + UNREADABLE_MESSAGE.encode() + b"\n\n"


@pytest.mark.parametrize(
    ("raw", "guarded"),
    [
        # Unreadable data: replaced by the error message.
        (b'data: {"id":1,"id":2}\n\n', REPLACED),
        # A line a U+2028-splitting reader would read other fields in: the event replaced whole.
        (b'event: a\xe2\x80\xa8data: {"y":1}\ndata: {"id":1}\n\n', REPLACED),
        # Raw U+2028 inside a JSON string: re-encoded with an ASCII escape.
        ('data: {"id":1,"s":"a\u2028b"}\n\n'.encode(), b'data: {"id":1,"s":"a\\u2028b"}\n\n'),
        # An unterminated last event: dropped.
        (b'data: {"id":1}\n\ndata: {"id":2}', b'data: {"id":1}\n\n'),
    ],
)
def test_events_only_watchers_are_shown_go_out_as_they_came(raw: bytes, guarded: bytes) -> None:
    """SSE: what the relay does so that every reader reads what the gateway read (replace an
    unreadable or ambiguous event, re-encode raw line separators, drop an unfinished tail) it
    does to events that concern a rewriter that may change them; an event only watchers are
    shown goes out byte for byte, the watcher having seen what could be read."""
    looker = Looker()
    assert sse_through(AnswerInspector(looker), raw) == raw
    assert sse_through(AnswerInspector(chain(Looker(), Tagger("absent", "t", (b'"x"',)))), raw) == raw
    assert sse_through(AnswerInspector(chain(Looker(), Tagger("absent", "t", (b'"id"',)))), raw) == guarded


def test_the_gateways_watchers_are_passive_and_its_rewriters_are_not() -> None:
    """The tracing watch and the schema check only watch; the list filter, the task-id sealer and
    the pinning view may change what they are shown, so what concerns them must be readable."""
    assert AnswerWatch.passive is True and SchemaWatch.passive is True
    assert guarded_markers(Watcher()) is None
    assert guarded_markers(chain(Watcher(), Tagger("x", "t", (b'"x"',)))) == (b'"x"',)
    assert guarded_markers(chain(Watcher(), Tagger("x", "t"))) == ()  # one that sees everything
    for rewriter in (ListFilter(RoutePolicy(), frozenset()), TaskIdSealer(lambda task_id: task_id)):
        assert guarded_markers(rewriter) == rewriter.markers
