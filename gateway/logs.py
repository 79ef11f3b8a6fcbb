"""structlog set-up: JSON lines by default, console on request, and a redaction step.

Redaction is the last line of defence, not the first: code never logs tokens on purpose. This
step still masks anything shaped like a JWT or a ``Bearer`` credential, and the value of any key
whose name says it holds a secret, so one careless ``log.info(headers=...)`` cannot leak one.

The standard library's loggers (aiohttp's, asyncio's, any other library's) go through the same
pipeline: ``configure_logging`` puts one handler on the root logger that turns each record into
a structlog event (``library_event``). A request aiohttp's HTTP parser refused becomes one
``bad_http_request`` event that names the exception's class and nothing else: the parser's
message quotes the raw bytes it refused (a header line, token included).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import re
import sys
import time
from collections.abc import Callable, Mapping, MutableMapping
from contextvars import ContextVar
from types import TracebackType
from typing import Any, TextIO

import orjson
import structlog
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestPayloadError

from .log_lines import TurnBatchedWriter

_JWT_SHAPED = re.compile(r"eyJ[A-Za-z0-9_-]{2,}\.[A-Za-z0-9_-]{2,}\.[A-Za-z0-9_-]*")
_BEARER = re.compile(r"(?i)\b(bearer|basic|dpop)\s+[A-Za-z0-9\-._~+/]+=*")
# Matches wherever either pattern above could; for text that is not ASCII only (`_shaped_like_secret`).
_SUSPECT = re.compile(r"eyJ|(?i:\b(?:bearer|basic|dpop)\s)")
_SECRET_KEY_NAMES = ("authorization", "token", "secret", "password", "cookie", "api_key", "apikey")
# `token_id` (a jti) and counts are fine; values of keys that *are* secrets are not.
_SAFE_KEYS = frozenset({"token_id", "reason", "token_reason", "token_type"})
_PLAIN_TYPES = frozenset({int, float, bool, type(None)})
REDACTED = "***"


@functools.lru_cache(maxsize=1024)  # bounded: nested keys (audited tool arguments) are the caller's
def _is_secret_key(key: str) -> bool:
    lowered = key.lower()
    return lowered not in _SAFE_KEYS and any(name in lowered for name in _SECRET_KEY_NAMES)


# The token the request being handled presented (set by the pipeline once it has one, for the
# task of that request): masked by value wherever it appears, whatever its shape. An opaque
# token has no shape the patterns above know, and a client can paste its own token into a tool
# name, a request id or a session header. A shorter "token" is no credential anyone issues.
PRESENTED_TOKEN: ContextVar[str | None] = ContextVar("presented_token", default=None)
_SHORTEST_MASKED_TOKEN = 16


def mask_presented_token(token: str | None) -> None:
    """From now on in this request's task, ``token`` reads ``***`` in every event and span."""
    PRESENTED_TOKEN.set(token if token is not None and len(token) >= _SHORTEST_MASKED_TOKEN else None)


def _redact_value(value: Any) -> Any:
    kind = type(value)
    if kind in _PLAIN_TYPES:
        return value
    if kind is list or kind is tuple:  # before the Mapping check, an ABC's (scopes, groups: lists)
        return _redact_sequence(value)
    if isinstance(value, str):
        presented = PRESENTED_TOKEN.get()
        if presented is not None and presented in value:
            value = value.replace(presented, REDACTED)
        if not _shaped_like_secret(value):
            return value
        return _BEARER.sub(r"\1 " + REDACTED, _JWT_SHAPED.sub(REDACTED, value))
    if kind is dict or isinstance(value, Mapping):
        return {key: _redact_item(str(key), item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return _redact_sequence(value)
    return value


def _redact_sequence(value: list[Any] | tuple[Any, ...]) -> list[Any]:
    if all(type(item) is str for item in value) and not _suspect("\n".join(value)):
        # Scope lists, groups: one search for all (the joined text holds every item's match).
        return list(value)
    return [_redact_value(item) for item in value]


def _redact_item(key: str, value: Any) -> Any:
    if _is_secret_key(key):
        return REDACTED if value not in (None, "") else value
    return _redact_value(value)


def redact(value: Any) -> Any:
    """``value`` as a log event would show it: JWT-shaped and ``Bearer …`` strings masked, and the
    values of secret-named keys at any depth (what leaves the process elsewhere, spans, gets the
    same treatment)."""
    return _redact_value(value)


def redact_text(text: str) -> str:
    """A string as a log event would show it (``redact`` for one string)."""
    return _redact_value(text) if _suspect(text) else text


def log_now(logger: Any, level: str, event: str, fields: dict[str, Any]) -> None:
    """``logger.<level>(event, **fields)``: ``log_soon``'s counterpart for a line due now.

    For the request path's lines, structlog's own steps without its per-event assembly: the
    bound logger is assembled once per logger and configuration (``_assembled``), and the event
    goes straight to its processor chain (``_process_event``, which structlog keeps for custom
    wrappers), with the level filter checked first: 7.8 → 5.6 µs for the request line."""
    bound = _assembled(logger)
    enabled = getattr(bound, "is_enabled_for", None)
    number = _LEVEL_NUMBERS.get(level)
    if enabled is None or number is None:  # not a filtering logger: its own method decides
        getattr(bound, level)(event, **fields)
        return
    if not enabled(number):
        return
    try:
        args, kwargs = bound._process_event(level, event, fields)
    except structlog.DropEvent:  # a processor dropped it (a test's capture does)
        return
    getattr(bound._logger, level)(*args, **kwargs)


_LEVEL_NUMBERS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}
# The bound logger behind each module logger, as assembled under the configuration in force:
# structlog's lazy proxy (``get_logger``) assembles one for every event, and caching it on first
# use would keep a later configuration (a test's capture, a reconfigured stream) from reaching
# it. Kept with the configuration's parts it was assembled under, compared by identity one by
# one (a zip over a tuple of them cost 0.7 µs of the 2.2 saved).
_ASSEMBLED: dict[int, tuple[Any, Any, Any, Any, Any, Any]] = {}


def _assembled(logger: Any) -> Any:
    config = structlog.get_config()
    entry = _ASSEMBLED.get(id(logger))
    if (
        entry is not None
        and entry[0] is logger
        and entry[1] is config["processors"]
        and entry[2] is config["wrapper_class"]
        and entry[3] is config["logger_factory"]
        and entry[4] is config["context_class"]
    ):
        return entry[5]
    bound = logger.bind()  # a lazy proxy assembles; a bound logger is copied, context and all
    if len(_ASSEMBLED) >= 64:  # the request path's module loggers: a handful
        _ASSEMBLED.clear()
    entry = (
        logger,
        config["processors"],
        config["wrapper_class"],
        config["logger_factory"],
        config["context_class"],
        bound,
    )
    _ASSEMBLED[id(logger)] = entry
    return bound


def log_soon(logger: Any, level: str, event: str, fields: dict[str, Any]) -> None:
    """``logger.<level>(event, **fields)`` in the event loop's next turn, in a copy of the
    current context (the request's id, the token it masks); at once when no loop runs.

    For the lines of the request path that its answer need not wait for: rendering one is
    10-20 µs, paid after the step that forwards the call or writes the answer. The fields'
    values must be fixed by then (values no later step changes; the dict itself is copied). Lines
    logged soon keep their order among themselves; a line logged at once in the same turn comes
    out before them, and a line's timestamp is when it was rendered (within a turn of the call).
    """
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        log_now(logger, level, event, fields)
        return
    loop.call_soon(_render_soon, logger, level, event, dict(fields))


def log_soon_built(
    logger: Any, level: str, event: str, build: Callable[..., dict[str, Any]], *args: Any
) -> None:
    """``log_soon`` of the fields ``build(*args)`` returns, built in the loop's next turn too.

    For an event whose fields take building (the policy decision's: the caller, the rules, the
    scopes), where nothing the request does before the answer needs them: a call's decision is
    then built while the upstream works on the call, not before it is sent. ``args`` must be
    values no later step changes. In order with the lines logged soon; at once without a loop.
    """
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        _render_built(logger, level, event, build, args)
        return
    loop.call_soon(_render_built, logger, level, event, build, args)


def _render_soon(logger: Any, level: str, event: str, fields: dict[str, Any]) -> None:
    try:
        log_now(logger, level, event, fields)
    except Exception as exc:
        _lost(logger, event, exc)


def _render_built(
    logger: Any, level: str, event: str, build: Callable[..., dict[str, Any]], args: tuple[Any, ...]
) -> None:
    try:
        log_now(logger, level, event, build(*args))
    except Exception as exc:
        _lost(logger, event, exc)


def _lost(logger: Any, event: str, exc: Exception) -> None:
    # A line that cannot be built or rendered (a claim nested past the recursion limit): one line
    # in its place, never its fields, and nothing for asyncio's handler to print them with.
    with contextlib.suppress(Exception):
        logger.error("log_line_lost", lost_event=event, error=type(exc).__name__)


def _shaped_like_secret(text: str) -> bool:
    """Whether ``text`` may hold a match of ``_JWT_SHAPED`` or ``_BEARER`` (a false alarm costs
    only the exact search that follows).

    This runs on every string of every event (two per request, a dozen strings each), where
    ``_SUSPECT.search`` cost about 10 µs for a 300-character line: a case-insensitive
    alternation is tried at every position. For ASCII text (``isascii`` reads a flag) a few
    substring searches find a superset of its matches: in ASCII, a case-insensitive letter
    matches only its two ASCII cases, and leaving out the word boundary and the whitespace that
    follows only adds false alarms. Other text keeps the pattern, whose case-insensitive ``s``
    also matches the long s, U+017F.
    """
    if not text.isascii():
        return _SUSPECT.search(text) is not None
    if "eyJ" in text:
        return True
    lowered = text.lower()
    return "bearer" in lowered or "basic" in lowered or "dpop" in lowered


def _suspect(text: str) -> bool:
    """Whether ``text`` may hold something to mask (a match here is checked field by field)."""
    if _shaped_like_secret(text):
        return True
    presented = PRESENTED_TOKEN.get()
    return presented is not None and presented in text


# Bound (as a structlog context variable) for requests of a gateway with
# `logging: {include_subject: false}`; `drop_subject` then removes who the caller is.
HIDE_SUBJECT = "_hide_subject"
# The actor (RFC 8693 `act`) names a party too.
SUBJECT_FIELDS = ("subject", "client_id", "actor")


def drop_subject(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor: without ``subject``, ``client_id`` and ``actor`` when the request asked for it."""
    if event_dict.pop(HIDE_SUBJECT, False):
        for key in SUBJECT_FIELDS:
            event_dict.pop(key, None)
    return event_dict


def _drop_subject_always(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    event_dict.pop(HIDE_SUBJECT, None)
    for key in SUBJECT_FIELDS:
        event_dict.pop(key, None)
    return event_dict


def redact_secrets(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor: mask secrets in every field of the event."""
    # `_redact_item` for each field, unrolled: this runs for every event of every request. The
    # plain string fields are searched at once: every match in one of them is a match in their
    # join (a join can only add a false alarm at a seam, which the field-by-field pass clears).
    strings: list[str] = []
    for key, value in event_dict.items():
        if _is_secret_key(key):
            if value not in (None, ""):
                event_dict[key] = REDACTED
        elif type(value) is str:
            strings.append(key)
        elif type(value) not in _PLAIN_TYPES:
            event_dict[key] = _redact_value(value)
    if strings and _suspect("\n".join([event_dict[key] for key in strings])):
        for key in strings:
            event_dict[key] = _redact_value(event_dict[key])
    return event_dict


_LEVEL_OF_METHOD = {"warn": "warning", "exception": "error"}  # as structlog's add_log_level
# The current second, and its ISO 8601 text (UTC): formatted once a second, not per event.
_second_text: tuple[int, str] = (-1, "")


def utc_timestamp(now: float) -> str:
    """``now`` (epoch seconds) as ISO 8601 in UTC to the microsecond, ``2026-12-06T21:13:47.559427Z``."""
    global _second_text
    second = int(now)
    cached_second, text = _second_text
    if second != cached_second:
        text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        _second_text = (second, text)
    return f"{text}.{int((now - second) * 1_000_000):06d}Z"


def stamp(logger: Any, method: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog processor: the level, the time, and an ``exc_info`` rendered as ``exception``
    (structlog's add_log_level, TimeStamper(fmt="iso", utc=True) and format_exc_info in one
    step: they ran for every event, the time formatting alone 1.3 µs)."""
    event_dict["level"] = _LEVEL_OF_METHOD.get(method, method)
    event_dict["timestamp"] = utc_timestamp(time.time())
    if "exc_info" in event_dict:
        structlog.processors.format_exc_info(logger, method, event_dict)
    return event_dict


def redact_and_render_json(logger: Any, method: str, event_dict: MutableMapping[str, Any]) -> str:
    """structlog renderer: ``redact_secrets``, then ``render_json``."""
    return render_json(logger, method, redact_secrets(logger, method, event_dict))


def render_json(_logger: Any, _method: str, event_dict: MutableMapping[str, Any]) -> str:
    """structlog renderer: one JSON line, by orjson (a third of the standard encoder's time for
    an event of the request path). What orjson refuses (an integer beyond 64 bits in an audited
    claim, a key that is not a string) is rendered by the standard library instead."""
    try:
        return orjson.dumps(event_dict, default=_unknown_as_text).decode()
    except TypeError:  # orjson.JSONEncodeError is one
        return json.dumps(event_dict, default=_unknown_as_text)


def _unknown_as_text(value: Any) -> str:
    return repr(value) if not isinstance(value, str) else value


def _shared(logger: Any) -> Any:
    return lambda *_args: logger


_batched_writer: TurnBatchedWriter | None = None


def configure_logging(
    *,
    json: bool = True,
    level: str = "info",
    stream: TextIO | None = None,
    include_subject: bool = True,
    batched: bool = False,
) -> None:
    """Configure structlog once for the process, and send the standard library's loggers
    through it (``library_event``); ``include_subject=False`` drops subject and client id from
    every event (a gateway can also ask for that per request, see HIDE_SUBJECT). ``batched``
    (the server's choice) writes the lines of an event-loop turn together at its end
    (``gateway.log_lines``); otherwise each line is written as it is logged."""
    global _batched_writer
    if _batched_writer is not None:  # configured again: what the previous writer holds goes first
        _batched_writer.flush()
        _batched_writer = None
    output = stream or sys.stderr
    writer: Any = structlog.WriteLogger(output)
    if batched:
        writer = _batched_writer = TurnBatchedWriter(output)
    # Redaction, then rendering: one step for JSON (the request path's format), two for humans.
    tail: list[Any] = (
        [redact_and_render_json]
        if json
        else [redact_secrets, structlog.dev.ConsoleRenderer(colors=output.isatty())]
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            drop_subject if include_subject else _drop_subject_always,
            stamp,
            *tail,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelNamesMapping()[level.upper()]),
        # One logger for the process: the default factory builds a new one (and its lock) per event.
        logger_factory=_shared(writer),
        cache_logger_on_first_use=False,
    )
    _route_standard_logging(logging.getLevelNamesMapping()[level.upper()])


# --- the standard library's loggers ------------------------------------------------------------

# aiohttp's HTTP protocol logger: it reports each request its parser refused (`handle_error`).
PROTOCOL_LOGGER = "aiohttp.server"
# Exceptions whose text quotes what the client sent: the parser's (`BadHttpMessage`,
# `LineTooLong`, `InvalidHeader`, ...: the refused header line, token included) and the body
# reader's, which wraps a parser message (`RequestPayloadError(str(parser_error))`).
_INPUT_QUOTING = (HttpProcessingError, RequestPayloadError)


def _linked(exc: BaseException | None) -> list[BaseException]:
    """``exc`` and every exception a traceback of it would print: those it was raised from or
    during, and the members of an exception group; each once."""
    found: list[BaseException] = []
    pending = [exc]
    while pending:
        current = pending.pop()
        if current is None or any(current is known for known in found):
            continue
        found.append(current)
        pending += [current.__cause__, current.__context__]
        if isinstance(current, BaseExceptionGroup):
            pending += current.exceptions
    return found


def quotes_input(exc: BaseException | None) -> bool:
    """Whether ``exc``, or an exception linked to it, has text that quotes the client's bytes."""
    return any(isinstance(link, _INPUT_QUOTING) for link in _linked(exc))


def parser_refusal(exc: BaseException | None) -> HttpProcessingError | None:
    """``exc`` if it is aiohttp's parser refusing a request before any application code saw it.

    An error raised through the application (a body's parse error surfacing in a handler that
    reads it) has frames outside aiohttp, and the request has the application's own log line.
    """
    if not isinstance(exc, HttpProcessingError):
        return None
    frame: TracebackType | None = exc.__traceback__
    while frame is not None:
        if not str(frame.tb_frame.f_globals.get("__name__", "")).startswith("aiohttp"):
            return None
        frame = frame.tb_next
    return exc


_LEVEL_NAMES = (
    (logging.CRITICAL, "critical"),
    (logging.ERROR, "error"),
    (logging.WARNING, "warning"),
    (logging.INFO, "info"),
)


def _level_name(levelno: int) -> str:
    return next((name for threshold, name in _LEVEL_NAMES if levelno >= threshold), "debug")


def library_event(record: logging.LogRecord) -> tuple[str, str, dict[str, Any]]:
    """``(level, event, fields)`` for one standard-library log record.

    A request aiohttp's parser refused is one ``bad_http_request`` with the status aiohttp
    answered and the exception's class: no message, header or traceback, which would quote
    the refused bytes. Any other record keeps its message and its logger's name; its traceback
    too, unless an exception in it quotes client input (then only the class is named). The
    event then goes through the same processors as the gateway's own, redaction included.
    """
    exc = record.exc_info[1] if record.exc_info else None
    refusal = parser_refusal(exc) if record.name == PROTOCOL_LOGGER else None
    if refusal is not None:
        # aiohttp answers every parser error with 400 (`_ErrInfo(status=400)`), each parser
        # exception's own code; a code outside 4xx/5xx would not be what it answered.
        status = refusal.code if 400 <= refusal.code < 600 else 400
        # Info whatever level aiohttp chose (it logs a bad method at debug, the rest as errors):
        # one line per refused request, as the gateway's `request` line is for the others.
        return "info", "bad_http_request", {"status": status, "error": type(refusal).__name__}
    try:
        message = record.getMessage()
    except Exception:  # a library's format string that does not match its arguments
        message = str(record.msg)
    fields: dict[str, Any] = {"logger": record.name}
    if exc is not None:
        fields["error"] = type(exc).__name__
        if not quotes_input(exc):
            fields["exc_info"] = record.exc_info
    return _level_name(record.levelno), message, fields


class _StructlogBridge(logging.Handler):
    """The root logger's handler: every record becomes an event of the gateway's log pipeline."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            level, event, fields = library_event(record)
            getattr(structlog.get_logger(), level)(event, **fields)
        except Exception as exc:
            # Not `handleError`, which prints the record's message and arguments: one fixed line.
            with contextlib.suppress(Exception):
                sys.stderr.write(f'{{"event": "log_record_lost", "error": "{type(exc).__name__}"}}\n')


def _route_standard_logging(level: int) -> None:
    """Send every standard-library record, at ``level`` or above, through the structlog pipeline.

    One handler on the root logger, which every library logger propagates to (aiohttp.server,
    aiohttp.access, aiohttp.client, aiohttp.web, aiohttp.internal, asyncio, ...). With a
    handler in place, Python's last-resort handler, which printed aiohttp's tracebacks (the
    refused header line, token included) straight to stderr, is no longer used.
    """
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, _StructlogBridge):  # configured again (a test, a reload of settings)
            root.removeHandler(handler)
    root.addHandler(_StructlogBridge())
    root.setLevel(level)
    # aiohttp logs a bad method at debug: its record must reach the bridge to become the request's
    # one `bad_http_request`; the pipeline's own level filter drops its other debug records.
    logging.getLogger(PROTOCOL_LOGGER).setLevel(logging.DEBUG)
