"""Upstream answers as an MCP client will read them: which may be relayed, and each message rewritten.

Every decision about what the upstream sends back is made here, so that the gateway never shows a
client something the client reads differently from the way the gateway inspected it:

- ``answer_kind``: from the status and the ``Content-Type`` / ``Content-Encoding`` headers, how the
  body will be read (``json``, ``sse``), whether it is relayed untouched (``opaque``: an error body
  no client reads as a result) or must be empty (``bodiless``); or a 502 (``UpstreamError``);
- ``AnswerInspector``: the JSON framing (one message, or a 2025-03-26 batch array) and the SSE
  framing (each event's data, through ``gateway.mcp.sse``), handing every JSON-RPC message object
  to a ``MessageRewriter`` (``chain`` puts several in a row);
- the byte pre-check: a rewriter names the byte strings (``markers``) without which a message cannot
  concern it. A body or an event in which none occurs, and no ``\\u`` escape either (an escape can
  spell any key), is relayed without being parsed.

Pure: no aiohttp; the proxy passes header values and bytes.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any, Final, Literal, Protocol, TypeAlias

from ..errors import UpstreamError
from ..strictjson import StrictJSONError, loads_strict
from .sse import Marker, SseEventRewriter, marker_occurs

__all__ = [
    "AnswerInspector",
    "AnswerKind",
    "MessageRewriter",
    "RewriterChain",
    "answer_kind",
    "chain",
    "guarded_markers",
    "is_passive",
]

AnswerKind: TypeAlias = Literal["json", "sse", "opaque", "bodiless"]

JSON_MEDIA_TYPE: Final = "application/json"
SSE_MEDIA_TYPE: Final = "text/event-stream"
# A JSON escape can spell any key (`"\u0074ools"` is "tools"), so it always counts as a marker.
ESCAPE_MARKER: Final = b"\\u"
# What a client gets in place of an answer, or an SSE event, the gateway could not read safely.
UNREADABLE_MESSAGE: Final = json.dumps(
    {
        "jsonrpc": "2.0",
        "id": None,
        "error": {"code": -32603, "message": "Upstream answer could not be inspected"},
    },
    separators=(",", ":"),
)
_UTF8_CHARSETS: Final = frozenset({"utf-8", "utf8"})
_JSON_WHITESPACE: Final = " \t\r\n"
# Line breaks for str.splitlines() that strict JSON allows raw inside a string (VT, FF and the
# other C0 controls it does not): see _AMBIGUOUS_BREAK in gateway.mcp.sse.
_RAW_IN_JSON_STRINGS_BREAKS: Final = ("\x85", "\u2028", "\u2029")


class MessageRewriter(Protocol):
    """Sees each JSON-RPC message object the upstream sends (alone, in a batch, in an SSE event).

    ``markers``: at least one of them occurs in the raw bytes of any message this rewriter would
    change (a byte string, or a tuple of byte strings that all occur: ``gateway.mcp.sse.Marker``;
    the inspector adds ``\\u``); empty means "every message". ``rewrite``
    returns the message to send instead (a new object, or its argument changed in place), or None
    when nothing changed: None means the original bytes go out, so a change must be returned.
    """

    @property
    def markers(self) -> tuple[Marker, ...]: ...

    def rewrite(self, message: dict[str, Any]) -> dict[str, Any] | None: ...


def is_passive(rewriter: MessageRewriter) -> bool:
    """Whether ``rewriter`` only watches (``passive = True``: it never returns a change). What
    only watchers are shown is relayed as it came whatever they make of it: an answer they cannot
    read is not refused, an event not replaced, so that watching (tracing, the schema check)
    never changes what a client gets."""
    return getattr(rewriter, "passive", False) is True


def guarded_markers(rewriter: MessageRewriter) -> tuple[Marker, ...] | None:
    """The markers of the rewriters that may change a message: an answer or event holding one
    (or an escape) is refused or replaced when it cannot be read. None: only watchers; (): a
    rewriter that may change any message."""
    if isinstance(rewriter, RewriterChain):
        return rewriter.guarded
    return None if is_passive(rewriter) else tuple(rewriter.markers)


class RewriterChain:
    """Several rewriters in a row, each seeing the previous one's output: itself a rewriter."""

    __slots__ = ("_rewriters", "guarded", "markers")

    def __init__(self, rewriters: Sequence[MessageRewriter]) -> None:
        self._rewriters = tuple(rewriters)
        self.markers = _merged([rewriter.markers for rewriter in self._rewriters])
        active = [found for r in self._rewriters if (found := guarded_markers(r)) is not None]
        self.guarded: tuple[Marker, ...] | None = _merged(active) if active else None

    def rewrite(self, message: dict[str, Any]) -> dict[str, Any] | None:
        current, changed = message, False
        for rewriter in self._rewriters:
            replaced = rewriter.rewrite(current)
            if replaced is not None:
                current, changed = replaced, True
        return current if changed else None


def _merged(marker_sets: Sequence[tuple[Marker, ...]]) -> tuple[Marker, ...]:
    """Several rewriters' markers as one set; () when one of them has none (every message)."""
    if any(not markers for markers in marker_sets):
        return ()
    return tuple(dict.fromkeys(marker for markers in marker_sets for marker in markers))


def chain(*rewriters: MessageRewriter) -> MessageRewriter:
    """One rewriter for several (the list filter, then task-id sealing, …); one is itself."""
    return rewriters[0] if len(rewriters) == 1 else RewriterChain(rewriters)


# --- which answers may be relayed ---------------------------------------------------------------


def answer_kind(
    status: int,
    content_types: Sequence[str],
    content_encodings: Sequence[str],
    *,
    empty: bool,
    transfer_encodings: Sequence[str] = (),
) -> AnswerKind:
    """How the client will read this answer, or ``UpstreamError`` (502) when it must not see it.

    ``content_types``, ``content_encodings`` and ``transfer_encodings`` are every value of those
    headers; ``empty`` is whether the body is known to be empty (Content-Length 0, 204, 304).

    - 1xx as a final answer (the gateway never asks to upgrade): not an answer at all.
    - 3xx: never followed, never relayed: an MCP client would follow it elsewhere.
    - 401 / 403: the upstream refused the gateway's own credential; its challenge would send the
      client to another authorization server.
    - A content coding other than identity, or a transfer coding other than chunked: the gateway
      never sends Accept-Encoding or TE and inspects bodies as they are, so a compressed body
      cannot be inspected (and is not relayed either).
    - ``application/json`` / ``text/event-stream`` exactly (parameters allowed, a charset only if
      UTF-8): read, and inspected, whatever the status. A value naming both, or a second
      Content-Type header, could be read either way by some client (the TypeScript SDK looks for
      the media type anywhere in the value): refused.
    - Anything else on a 2xx answer must be empty (202 Accepted, a DELETE's 200): both SDK
      clients read e.g. ``application/json-rpc`` as JSON. Anything else on another status is an
      error body no client reads as a result (text/plain 404 "Session not found"): relayed.
    """
    if status < 200:
        raise UpstreamError("upstream_failed", detail=f"status {status}")
    if 300 <= status < 400:
        raise UpstreamError("upstream_redirect", detail=f"status {status}")
    if status in (401, 403):
        raise UpstreamError("upstream_auth_refused", detail=f"status {status}")
    if not empty and not all(_is_identity(value) for value in content_encodings):
        raise UpstreamError("upstream_content_encoding", detail="content coding the gateway did not ask for")
    if not _framed_by_chunks_or_length(transfer_encodings):
        raise UpstreamError("upstream_content_encoding", detail="transfer coding the gateway did not ask for")
    media = _read_media_type(content_types)
    if media is not None:
        return media
    return "bodiless" if 200 <= status < 300 else "opaque"


def _is_identity(coding: str) -> bool:
    return all(token.strip().lower() in ("", "identity") for token in coding.split(","))


def _framed_by_chunks_or_length(transfer_encodings: Sequence[str]) -> bool:
    """No transfer coding but chunked, applied at most once and last (RFC 9112 section 6.1).

    Chunked anywhere but last (``chunked, identity``) leaves a response framed by the close:
    the chunk framing would be relayed as the body.
    """
    codings = [
        token
        for value in transfer_encodings
        for token in (part.strip().lower() for part in value.split(","))
        if token
    ]
    meaningful = [coding for coding in codings if coding != "identity"]
    return meaningful in ([], ["chunked"]) and (not meaningful or codings[-1] == "chunked")


def _read_media_type(values: Sequence[str]) -> Literal["json", "sse"] | None:
    if not values:
        return None
    if len(values) > 1:
        raise UpstreamError("upstream_content_type", detail="Content-Type sent more than once")
    value = values[0].lower()
    if JSON_MEDIA_TYPE in value and SSE_MEDIA_TYPE in value:
        raise UpstreamError("upstream_content_type", detail="Content-Type names both JSON and SSE")
    media_type, _, parameters = value.partition(";")
    media_type = media_type.strip()
    kind: Literal["json", "sse"] | None = (
        "json" if media_type == JSON_MEDIA_TYPE else "sse" if media_type == SSE_MEDIA_TYPE else None
    )
    if kind is not None and not _utf8_or_no_charset(parameters):
        # The Python SDK decodes an event stream in the charset the header names; the byte
        # checks here read UTF-8. RFC 2231 spellings (charset*=) count as a charset too.
        raise UpstreamError("upstream_content_type", detail="charset other than UTF-8")
    return kind


def _utf8_or_no_charset(parameters: str) -> bool:
    charsets = []
    for parameter in parameters.split(";"):
        name, _, raw = parameter.partition("=")
        name = name.strip()
        if name.startswith("charset"):
            if name != "charset":
                return False
            charsets.append(raw.strip().strip('"'))
    return len(charsets) <= 1 and all(charset in _UTF8_CHARSETS for charset in charsets)


# --- inspecting what is relayed -----------------------------------------------------------------


class AnswerInspector:
    """The JSON and SSE framing around one rewriter (or chain) for one answer."""

    __slots__ = ("_guarded", "_markers", "_rewriter")

    def __init__(self, rewriter: MessageRewriter) -> None:
        self._rewriter = rewriter
        markers = tuple(rewriter.markers)
        self._markers: tuple[Marker, ...] = (*markers, ESCAPE_MARKER) if markers else ()
        guarded = guarded_markers(rewriter)
        self._guarded: tuple[Marker, ...] | None = (*guarded, ESCAPE_MARKER) if guarded else guarded

    @property
    def markers(self) -> tuple[Marker, ...]:
        """What the byte pre-check looks for; empty: every message is parsed."""
        return self._markers

    def concerns(self, raw: bytes) -> bool:
        """Whether ``raw`` may hold a message the rewriter would change (else: not parsed)."""
        markers = self._markers
        if not markers:
            return True
        for marker in markers:  # a loop of `in` is the cheapest form measured (no regex, no any())
            if marker in raw if type(marker) is bytes else marker_occurs(marker, raw):
                return True
        return False

    def guards(self, raw: bytes) -> bool:
        """Whether ``raw`` may hold a message a rewriter that changes messages would change: then
        it must be readable (else refused, or replaced), not only looked at."""
        guarded = self._guarded
        if guarded is None:
            return False
        return not guarded or any(marker_occurs(marker, raw) for marker in guarded)

    def json_body(self, body: bytes) -> bytes | None:
        """The rewritten ``application/json`` body, or None to relay the original bytes.

        A body that concerns a rewriter that may change it but is not strict JSON is refused
        (502): a lenient client parser might read in it what the gateway could not (duplicate
        keys, for one). One only watchers were shown goes out as it came.
        """
        if not self.concerns(body):
            return None
        try:
            document = loads_strict(body)
        except StrictJSONError as exc:
            if not self.guards(body):
                return None
            raise UpstreamError("upstream_unreadable_answer", detail=str(exc)) from None
        rewritten = self._rewrite_document(document)
        return None if rewritten is None else _dump(rewritten)

    def event_data(self, data: str) -> str | None:
        """For SSE: the same rewrite on one event's data; unreadable data becomes an error message.

        Called only for events whose bytes concern the rewriter. The stream has started, so a
        502 is no longer possible: the event is replaced instead. Data holding a character some
        SSE readers break lines at (inside a JSON string: it is valid there) is sent re-encoded
        with ASCII escapes, so that every reader reads the one data line the gateway read.
        """
        if not data.strip(_JSON_WHITESPACE):
            return None  # no client reads a message from an event without one
        try:
            document = loads_strict(data)
        except StrictJSONError:
            return UNREADABLE_MESSAGE if self.guards(_raw(data)) else None
        rewritten = self._rewrite_document(document)
        if rewritten is None:
            if not any(char in data for char in _RAW_IN_JSON_STRINGS_BREAKS) or not self.guards(_raw(data)):
                return None
            rewritten = document
        return _dump(rewritten).decode("ascii")

    def sse(
        self, *, max_event_bytes: int | None = None, rewrite_id: Callable[[str], str] | None = None
    ) -> SseEventRewriter:
        """An SSE relay that offers this inspector every event that concerns it; ``rewrite_id``
        turns each upstream event id into the one the client resumes from."""
        limits = {} if max_event_bytes is None else {"max_event_bytes": max_event_bytes}
        # The relay's own terms: None guards every event (what may change any message is in the
        # chain), () none (only watchers are).
        guarded = self._guarded
        return SseEventRewriter(
            self.event_data,
            markers=self._markers or None,
            guarded_markers=() if guarded is None else (guarded or None),
            ambiguous=UNREADABLE_MESSAGE,
            rewrite_id=rewrite_id,
            **limits,
        )

    def _rewrite_document(self, document: Any) -> Any:
        """The rewritten document, or None when no message in it changed."""
        if isinstance(document, dict):
            return self._rewriter.rewrite(document)
        if isinstance(document, list):  # a 2025-03-26 batch
            changed = False
            merged: list[Any] = []
            for item in document:
                replaced = self._rewriter.rewrite(item) if isinstance(item, dict) else None
                changed = changed or replaced is not None
                merged.append(item if replaced is None else replaced)
            return merged if changed else None
        return None  # a JSON string, number…: no message an SDK reads


def _raw(data: str) -> bytes:
    """An event's data as the bytes the markers are looked for in (a failure path only)."""
    return data.encode("utf-8", "surrogatepass")


def _dump(document: Any) -> bytes:
    # ASCII escapes: a lone surrogate (valid in a JSON escape) survives, and no U+2028 or other
    # character some SSE line splitter breaks at reaches the wire raw.
    return json.dumps(document, separators=(",", ":")).encode("ascii")
