"""Strict reading of MCP POST bodies, so the gateway and the upstream never read one body two ways.

Every authorization decision is taken on what this module returns, and what it returns comes from
the BODY only: the ``Mcp-Method``/``Mcp-Name`` headers are never trusted, they are only checked
against the body where the protocol requires them to agree (MCP 2026-07-28). Anything ambiguous
(duplicate keys, invalid UTF-8, a NUL in a tool name, a batch where batching no longer exists, a
header that disagrees with the body) is refused before a decision is taken, because an upstream
might resolve the ambiguity differently from us (request smuggling).

Pure: no I/O and no aiohttp; it takes the body bytes and a header lookup.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from itertools import accumulate
from types import MappingProxyType
from typing import Any, Final, Literal, TypeAlias, TypeGuard, TypeVar

from ..errors import McpReason, McpRejected, RpcId
from ..strictjson import StrictJSONError, loads_strict
from .methods import COMPLETION_REFS, KNOWN_METHODS, METHODS, REMOVED_IN_MODERN, Resource, Target
from .uris import AmbiguousUri, normal_form

__all__ = [
    "HANDSHAKE_VERSIONS",
    "MAX_DEPTH",
    "MODERN_VERSION",
    "Kind",
    "McpMessage",
    "McpPost",
    "McpRejected",
    "in_session_era",
    "parse_post",
]

HANDSHAKE_VERSIONS: Final = ("2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25")
"""Protocol versions negotiated by the ``initialize`` handshake (the session era)."""

MODERN_VERSION: Final = "2026-07-28"
"""The first per-request-envelope version: headers and body must agree (MCP 2026-07-28)."""

DEFAULT_VERSION: Final = "2025-03-26"
"""MCP 2025-06-18 transports: without ``MCP-Protocol-Version`` the server SHOULD assume 2025-03-26."""

BATCH_VERSION: Final = "2025-03-26"
"""The only version whose transport allows JSON-RPC batches (MCP 2025-06-18 removed batching)."""

MAX_DEPTH: Final = 64
"""Deepest nesting of arrays/objects accepted; the top-level value is depth 1."""

Kind = Literal["request", "notification", "response"]
HeaderLookup: TypeAlias = Callable[[str], str | None]
HeaderValues: TypeAlias = Callable[[str], Sequence[str]]
"""Every value a request carries for a header name (case-insensitive), in order."""

# Headers the body is checked against: two copies leave open which one the upstream reads.
SINGLE_HEADERS: Final = ("MCP-Protocol-Version", "Mcp-Method", "Mcp-Name", "Mcp-Session-Id")

PROTOCOL_VERSION_HEADER: Final = "MCP-Protocol-Version"
METHOD_HEADER: Final = "Mcp-Method"
NAME_HEADER: Final = "Mcp-Name"
META_VERSION_KEY: Final = "io.modelcontextprotocol/protocolVersion"

# --- Rejections -------------------------------------------------------------------------------

# --- Result types -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class McpMessage:
    """One JSON-RPC message of a POST, as the decision must see it."""

    kind: Kind
    method: str | None
    id: RpcId | None
    target: Target | None  # what the call acts on, as the body spells it (rules: its rule_key)
    params: Mapping[str, Any] | None
    watched: tuple[Resource, ...] = ()  # subscriptions/listen: the resources whose updates it asks for


@dataclass(frozen=True, slots=True)
class McpPost:
    """A whole POST body: its messages, whether it was a batch, and the protocol version."""

    messages: tuple[McpMessage, ...]
    is_batch: bool
    protocol_version: str


# --- Entry point ------------------------------------------------------------------------------


def parse_post(body: bytes, headers: HeaderValues) -> McpPost:
    """Read a POST body strictly and check it against the headers its protocol version binds.

    ``headers(name)`` returns every value the request carries for that header. Raises
    McpRejected for anything that is not unambiguous, a repeated MCP header included.
    """
    document = decode_body(body)
    for name in SINGLE_HEADERS:
        if len(headers(name)) > 1:
            raise McpRejected("header_mismatch", _readable_id(document), detail=f"{name} sent more than once")

    def header(name: str) -> str | None:
        values = headers(name)
        return values[0] if values else None

    version = protocol_version(header, _readable_id(document))
    raw_messages, is_batch = split_batch(document, version)
    # MCP 2026-07-28 removed resources/subscribe and /unsubscribe: the upstream answers -32601
    # (SEP-2575), so one without a uri passes unchecked. One WITH a uri is decided on like any
    # other: the version header is the client's claim, and an upstream that still serves
    # subscribe would act on the uri.
    removed = REMOVED_IN_MODERN if version not in HANDSHAKE_VERSIONS else frozenset()
    messages = tuple(parse_message(raw, removed) for raw in raw_messages)
    _refuse_duplicate_ids(messages)
    if version not in HANDSHAKE_VERSIONS:
        check_modern_agreement(messages[0], header, version)
    return McpPost(messages=messages, is_batch=is_batch, protocol_version=version)


# --- Body → JSON value ------------------------------------------------------------------------

_BRACKET_DELTA: Final = bytes.maketrans(b"[]{}", b"\x01\xff\x01\xff")  # +1 / -1 as signed bytes
_NOT_BRACKET: Final = bytes(byte for byte in range(256) if byte not in b"[]{}")


def _outside_strings(body: bytes) -> bytes:
    """The bytes of ``body`` that are not inside JSON strings, found with C-speed operations only.

    Escaped backslashes go first, then escaped quotes (a run of backslashes pairs up from the left,
    as in JSON); every remaining quote opens or closes a string, so the even pieces between quotes
    are outside. Linear on any input; what this makes of malformed JSON does not matter, the
    parser refuses it afterwards.
    """
    if b'"' not in body:
        return body
    unescaped = body.replace(b"\\\\", b"").replace(b'\\"', b"")
    return b"".join(unescaped.split(b'"')[::2])


def exceeds_depth(body: bytes, limit: int = MAX_DEPTH) -> bool:
    """True when arrays/objects nest deeper than ``limit``, found without parsing or recursing.

    Brackets inside strings do not count; an opener never closed counts as open. Python's json
    recurses per level, so this runs before it: a 100000-deep ``[[[…`` is refused in
    milliseconds, with its own reason.
    """
    if body.count(b"[") + body.count(b"{") <= limit:
        return False  # fewer openers than the limit: no nesting can exceed it
    deltas = memoryview(_outside_strings(body).translate(_BRACKET_DELTA, _NOT_BRACKET)).cast("b")
    return max(accumulate(deltas), default=0) > limit


def decode_body(body: bytes) -> Any:
    """The body as strict JSON (RFC 8259 plus: no duplicate keys, NaN, BOM or invalid UTF-8)."""
    if not body:
        raise McpRejected("empty_body")
    if exceeds_depth(body):
        raise McpRejected("too_deep", detail=f"nesting deeper than {MAX_DEPTH}")
    try:
        return loads_strict(body)
    except StrictJSONError as exc:
        raise McpRejected("invalid_json", detail=_json_failure(exc)) from None


def _json_failure(exc: StrictJSONError) -> str:
    """The class of failure for the log, without the key name a duplicate-key error quotes."""
    text = str(exc)
    return "duplicate object key" if text.startswith("duplicate object key") else text


# --- Protocol version ---------------------------------------------------------------------------


def protocol_version(header: HeaderLookup, rpc_id: RpcId | None = None) -> str:
    """The version from ``MCP-Protocol-Version``; 2025-03-26 when absent.

    MCP 2025-06-18 transports: without the header the server SHOULD assume 2025-03-26. A present
    header is taken verbatim, even empty or unknown: the SDK upstream routes any present value
    that is not a handshake version to its 2026 handler, and so must we. A comma means the header
    was sent more than once (the caller joins repeats with ", "): refused.
    """
    value = header(PROTOCOL_VERSION_HEADER)
    if value is None:
        return DEFAULT_VERSION
    if "," in value:
        raise McpRejected("header_mismatch", rpc_id, detail="MCP-Protocol-Version sent more than once")
    return value


# --- Batches ----------------------------------------------------------------------------------


def split_batch(document: Any, version: str) -> tuple[tuple[dict[str, Any], ...], bool]:
    """The message objects of the body and whether it was a batch.

    JSON-RPC 2.0 §6: a batch is a non-empty array of message objects. MCP 2025-03-26 transports
    allow one; MCP 2025-06-18 removed batching, and 2026-07-28 takes a single message per POST.
    """
    if isinstance(document, dict):
        return (document,), False
    if not isinstance(document, list):
        raise McpRejected("invalid_message", detail="top level is neither an object nor an array")
    if version != BATCH_VERSION:
        raise McpRejected("batch_not_allowed", detail="batch outside protocol 2025-03-26")
    if not document:
        raise McpRejected("empty_batch")
    if not all(isinstance(element, dict) for element in document):
        raise McpRejected("invalid_batch", detail="batch element is not an object")
    return tuple(document), True


def _refuse_duplicate_ids(messages: Sequence[McpMessage]) -> None:
    """JSON-RPC 2.0 §6: responses are matched to requests by id, so ids in one batch must differ.

    A repeated id would let a later response filter (e.g. of tools/list) attach to the wrong
    request. 1 and "1" count as the same id: some peers coerce one into the other.
    """
    seen: set[str] = set()
    for message in messages:
        if message.kind != "request" or message.id is None:
            continue
        key = str(message.id)
        if key in seen:
            raise McpRejected("duplicate_id", message.id, detail="request id repeated in one batch")
        seen.add(key)


# --- One message --------------------------------------------------------------------------------

_CONTROL_CHARACTER: Final = re.compile(r"[\x00-\x1f\x7f]")


def is_clean_text(value: object) -> TypeGuard[str]:
    """A string with no C0 control character or DEL and no lone surrogate.

    A NUL or CR/LF in a name is a classic way to make a C-string or line-based reader see a
    different name than we do; a lone surrogate (legal ``\\ud800`` escape in JSON, not Unicode)
    is replaced or refused by other decoders, so it would read differently upstream.
    """
    if not isinstance(value, str) or _CONTROL_CHARACTER.search(value):
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def is_valid_id(value: object) -> TypeGuard[RpcId]:
    """JSON-RPC 2.0 §4: an id is a string or a number; MCP narrows it to string or integer.

    bool is excluded explicitly (a Python bool is an int); null and fractions are refused.
    """
    return isinstance(value, str | int) and not isinstance(value, bool)


def _readable_id(document: Any) -> RpcId | None:
    """The id of a single message, for error bodies, when it is well formed."""
    if isinstance(document, dict):
        candidate = document.get("id")
        if is_valid_id(candidate):
            return candidate
    return None


def parse_message(raw: dict[str, Any], removed: frozenset[str] = frozenset()) -> McpMessage:
    """Classify one JSON-RPC 2.0 message (§4 request/notification, §5 response) and find its target."""
    rpc_id = _readable_id(raw)
    if raw.get("jsonrpc") != "2.0":
        raise McpRejected("invalid_message", rpc_id, detail='jsonrpc is not exactly "2.0"')
    if "method" in raw:
        return _parse_call(raw, rpc_id, removed)
    return _parse_response(raw, rpc_id)


_KNOWN_METHODS_LOWER: Final = frozenset(method.lower() for method in KNOWN_METHODS)
# Every MCP method name is printable ASCII without spaces (U+0021-U+007E).
_PRINTABLE_ASCII: Final = re.compile(r"[!-~]+")


def _parse_call(raw: dict[str, Any], rpc_id: RpcId | None, removed: frozenset[str]) -> McpMessage:
    """A request (§4, with id) or a notification (§4.1, without id)."""
    method = raw["method"]
    if not is_clean_text(method) or method == "":
        raise McpRejected("invalid_message", rpc_id, detail="method is not a clean non-empty string")
    if not _PRINTABLE_ASCII.fullmatch(method):
        # "tools/call " or "tools/call\u200b" (stripped), "t\u043e\u043els/call" (Cyrillic o) or
        # "\uff54ools/call" (fullwidth t; NFKC-folded or confusable-mapped) may be run as tools/call by
        # an upstream that cleans names up, past the tool rules. No MCP method has a space or a
        # non-ASCII character, so one that has any is refused whatever it looks like: no
        # look-alike table to keep complete. ASCII look-alikes ("tools/caII") stay unknown methods.
        raise McpRejected(
            "method_not_printable_ascii", rpc_id, detail="method has a space or a non-ASCII character"
        )
    if method not in KNOWN_METHODS and method.lower() in _KNOWN_METHODS_LOWER:
        # "Tools/Call" is no MCP method, but an upstream that folds case would run it as
        # tools/call, past the tool rules. Refuse instead of passing it on as "unknown".
        raise McpRejected(
            "method_case_variant", rpc_id, detail="method differs from an MCP method only by case"
        )
    if "result" in raw or "error" in raw:
        # A message that is both a call and a response reads differently to different peers.
        raise McpRejected("invalid_message", rpc_id, detail="call carries result or error")
    if "id" in raw and not is_valid_id(raw["id"]):
        raise McpRejected("invalid_message", None, detail="id is not a string or an integer")
    params = _params(raw, rpc_id)
    optional = method in removed and (params is None or "uri" not in params)
    spec = METHODS.get(method)
    return McpMessage(
        kind="request" if "id" in raw else "notification",
        method=method,
        id=rpc_id,
        target=None if optional else find_target(method, params, rpc_id),
        params=None if params is None else MappingProxyType(params),
        watched=watched_resources(params, rpc_id) if spec is not None and spec.watches else (),
    )


def _parse_response(raw: dict[str, Any], rpc_id: RpcId | None) -> McpMessage:
    """A response (§5): an id and exactly one of result/error; error is {code: int, message: str}."""
    if rpc_id is None:
        raise McpRejected("invalid_message", None, detail="neither a call nor a response with a valid id")
    if ("result" in raw) == ("error" in raw):
        raise McpRejected("invalid_message", rpc_id, detail="response needs exactly one of result/error")
    if "params" in raw:
        raise McpRejected("invalid_message", rpc_id, detail="response carries params")
    if "error" in raw and not _is_error_object(raw["error"]):
        raise McpRejected("invalid_message", rpc_id, detail="malformed error object")
    return McpMessage(kind="response", method=None, id=rpc_id, target=None, params=None)


def _is_error_object(value: object) -> bool:
    """JSON-RPC 2.0 §5.1: an error object has an integer code and a string message."""
    if not isinstance(value, dict):
        return False
    code = value.get("code")
    return isinstance(code, int) and not isinstance(code, bool) and isinstance(value.get("message"), str)


def _params(raw: dict[str, Any], rpc_id: RpcId | None) -> dict[str, Any] | None:
    """``params`` when present must be an object.

    JSON-RPC 2.0 §4.2 also allows an array, but every MCP method takes named params; an array
    (or null) is something an upstream would read in its own way, so it is refused.
    """
    if "params" not in raw:
        return None
    params = raw["params"]
    if not isinstance(params, dict):
        raise McpRejected("invalid_params", rpc_id, detail="params is not an object")
    return params


# --- Targets ----------------------------------------------------------------------------------


def find_target(method: str, params: Mapping[str, Any] | None, rpc_id: RpcId | None = None) -> Target | None:
    """What a call acts on, exactly as the body spells it (no strip, no Unicode normalisation).

    Method names are case-sensitive (JSON-RPC 2.0 §4): "Tools/Call" is an unknown method with no
    target, left to the policy. MRTR retries (2026-07-28 ``params.inputResponses``) are ordinary
    tools/call bodies and get the same target. A resource URI must have one reading
    (``uris.normal_form``), else the call is refused here, before any decision.
    """
    spec = METHODS.get(method)
    fields: Mapping[str, Any] = params if params is not None else {}
    if spec is not None and spec.target is not None:
        reason: McpReason = "invalid_uri" if spec.target is Resource else "invalid_name"
        return _readable(spec.target(_clean_field(fields, spec.target.param, reason, rpc_id)), rpc_id)
    if spec is not None and spec.completes:
        return _readable(_completion_target(fields.get("ref"), rpc_id), rpc_id)
    return None


def watched_resources(params: Mapping[str, Any] | None, rpc_id: RpcId | None = None) -> tuple[Resource, ...]:
    """subscriptions/listen (MCP 2026-07-28): the URIs in ``params.notifications.resourceSubscriptions``.

    Each is read as strictly as a ``resources/read`` uri: the stream would carry that resource's
    updates, so the rules decide on every one. Without the key (or null) it names none; a
    ``notifications`` that is not an object is the upstream's to refuse (-32602), it names nothing.
    """
    notifications = params.get("notifications") if params is not None else None
    uris = notifications.get("resourceSubscriptions") if isinstance(notifications, dict) else None
    if uris is None:
        return ()
    if not isinstance(uris, list) or not all(is_clean_text(uri) for uri in uris):
        raise McpRejected(
            "invalid_uri", rpc_id, detail="resourceSubscriptions is not a list of clean strings"
        )
    return tuple(_readable(Resource(uri), rpc_id) for uri in uris)


_T = TypeVar("_T", bound=Target)


def _readable(target: _T, rpc_id: RpcId | None) -> _T:
    """The target, unless it is a URI whose meaning depends on who decodes it (400, -32602)."""
    if isinstance(target, Resource) and target.rule_key is None:
        try:
            normal_form(target.uri)  # once more, for the reason: it names the construct, not the URI
        except AmbiguousUri as exc:
            raise McpRejected("ambiguous_uri", rpc_id, detail=f"uri has {exc}") from None
    return target


def _clean_field(fields: Mapping[str, Any], key: str, reason: McpReason, rpc_id: RpcId | None) -> str:
    value = fields.get(key)
    if not is_clean_text(value):
        raise McpRejected(reason, rpc_id, detail=f"params.{key} is not a clean string")
    return value


def _completion_target(ref: object, rpc_id: RpcId | None) -> Target:
    """completion/complete: ``params.ref`` is a PromptReference (type "ref/prompt", name) or a
    ResourceTemplateReference (type "ref/resource", uri); anything else names nothing we can judge.
    """
    if isinstance(ref, dict) and isinstance(ref.get("type"), str) and ref["type"] in COMPLETION_REFS:
        kind = COMPLETION_REFS[ref["type"]]
        return kind(_clean_field(ref, kind.param, "invalid_ref", rpc_id))
    raise McpRejected("invalid_ref", rpc_id, detail="params.ref is not a prompt or resource reference")


# --- MCP 2026-07-28 header/body agreement -----------------------------------------------------

_BASE64_SENTINEL: Final = re.compile(r"=\?base64\?(?P<payload>[^?]*)\?=")


def decode_header_value(value: str) -> str | None:
    """A ``Mcp-Name`` value as text; ``=?base64?…?=`` carries standard base64 of the UTF-8 value.

    Decoded strictly: characters outside the alphabet, wrong padding, non-canonical trailing bits
    or invalid UTF-8 give None (a mismatch), so a corrupt header never equals a body by accident.
    """
    match = _BASE64_SENTINEL.fullmatch(value)
    if match is None:
        return value
    payload = match["payload"]
    try:
        raw = base64.b64decode(payload, validate=True)
        if base64.b64encode(raw).decode("ascii") != payload:
            return None  # non-canonical: two encodings of one value would compare differently
        return raw.decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None


def check_modern_agreement(message: McpMessage, header: HeaderLookup, version: str) -> None:
    """MCP 2026-07-28 transports, "Server Validation": headers and body MUST agree, and an
    intermediary MUST reject a mismatch with HTTP 400 / -32020 HeaderMismatch.

    ``Mcp-Method`` is required and equals ``method``; ``Mcp-Name`` is required on tools/call,
    resources/read and prompts/get and equals ``params.name`` / ``params.uri``; a request's
    ``params._meta["io.modelcontextprotocol/protocolVersion"]`` equals ``MCP-Protocol-Version``.
    """
    if message.kind == "response":
        # 2026-07-28 streamable HTTP, "Sending Messages": clients do not POST responses.
        raise McpRejected("response_not_allowed", message.id)
    # parse_post refused a header sent twice, so a comma in a value is part of it (a resource URI
    # may contain one) and simply has to match the body.
    if header(METHOD_HEADER) != message.method:
        raise McpRejected("header_mismatch", message.id, detail="Mcp-Method missing or differs from body")
    spec = METHODS.get(message.method or "")
    if spec is not None and spec.name_header:
        name = header(NAME_HEADER)
        target = message.target
        if name is None or target is None or decode_header_value(name) != target.identifier:
            raise McpRejected("header_mismatch", message.id, detail="Mcp-Name missing or differs from body")
    if message.kind == "request":
        meta_version = _meta_version(message.params)
        if meta_version is None:
            # Missing is malformed params (-32602, as the SDK and SEP-2575 answer), not a mismatch.
            raise McpRejected("invalid_params", message.id, detail="_meta protocol version missing")
        if meta_version != version:
            raise McpRejected(
                "header_mismatch", message.id, detail="_meta protocol version differs from header"
            )


def _meta_version(params: Mapping[str, Any] | None) -> object:
    """``params._meta["io.modelcontextprotocol/protocolVersion"]``, or None when absent."""
    meta = params.get("_meta") if params is not None else None
    return meta.get(META_VERSION_KEY) if isinstance(meta, dict) else None


def in_session_era(version: str | None) -> bool:
    """Whether a request's ``MCP-Protocol-Version`` is one with sessions (absent: 2025-03-26)."""
    return version is None or version in HANDSHAKE_VERSIONS
