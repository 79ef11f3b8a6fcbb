"""The log redaction step: the last line of defence against a token in a log line; and the
standard library's loggers (aiohttp, asyncio, any library) sent through the same pipeline."""

from __future__ import annotations

import asyncio
import datetime
import io
import json
import logging
import re
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import structlog
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.http_parser import HttpRequestParser, HttpRequestParserPy
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.logs import (
    REDACTED,
    configure_logging,
    log_now,
    log_soon,
    log_soon_built,
    mask_presented_token,
    redact_secrets,
    utc_timestamp,
)
from tests.conftest import _SESSION_LOGS

JWT = "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJl"


def redacted(**fields: Any) -> dict[str, Any]:
    return dict(redact_secrets(None, "info", dict(fields)))


def test_token_shaped_text_is_masked_wherever_it_appears() -> None:
    """A JWT or a Bearer/Basic credential is masked inside any string, nested values included."""
    out = redacted(
        detail=f"upstream said: {JWT} was refused",
        header="Authorization: Bearer abc.def-ghi",
        basic="basic dXNlcjpwYXNz",
        nested={"deeper": [f"x {JWT}", {"note": "BEARER zzz"}]},
    )
    assert out == {
        "detail": f"upstream said: {REDACTED} was refused",
        "header": f"Authorization: Bearer {REDACTED}",
        "basic": f"basic {REDACTED}",
        "nested": {"deeper": [f"x {REDACTED}", {"note": f"BEARER {REDACTED}"}]},
    }


def test_values_of_secret_named_keys_are_masked_and_safe_ones_kept() -> None:
    """Values of secret-named keys are masked; `token_id`, empty values and other fields are kept."""
    out = redacted(
        access_token="opaque-value",
        Client_Secret="s3cr3t",
        headers={"Cookie": "session=1", "X-Api-Key": "k"},
        token_id="jti-1",
        reason="expired",
        empty_token="",
        status=401,
        duration_ms=1.5,
        subject="user-1",
    )
    assert out == {
        "access_token": REDACTED,
        "Client_Secret": REDACTED,
        "headers": {"Cookie": REDACTED, "X-Api-Key": "k"},
        "token_id": "jti-1",
        "reason": "expired",
        "empty_token": "",
        "status": 401,
        "duration_ms": 1.5,
        "subject": "user-1",
    }


_FULL_JWT = re.compile(r"eyJ[A-Za-z0-9_-]{2,}\.[A-Za-z0-9_-]{2,}\.[A-Za-z0-9_-]*")
_FULL_BEARER = re.compile(r"(?i)\b(bearer|basic|dpop)\s+[A-Za-z0-9\-._~+/]+=*")

# Text built from the pieces that matter, so that near-misses are common.
_pieces = st.sampled_from(
    [
        "eyJ",
        "ey",
        "J",
        "abc",
        ".",
        "-",
        "_",
        " ",
        "\t",
        "\n",
        "Bearer",
        "bearer",
        "BASIC",
        "basic",
        "x",
        "=",
        "/",
        "é",
        # The pre-check for ASCII text is a substring search on the lowered text; text with
        # anything else keeps the pattern, whose case-insensitive `s` also matches U+017F (long s).
        "DPoP",
        "dpop",
        "ba",
        "\u017fic",
        "Bea",
        "rer",
        "\u212a",
    ]
)


@settings(max_examples=500)
@given(st.lists(_pieces, max_size=12).map("".join))
def test_the_fast_path_never_skips_what_the_full_patterns_would_mask(text: str) -> None:
    """A quick pre-check lets most strings through untouched; it must never let a match through."""
    expected = _FULL_BEARER.sub(r"\1 " + REDACTED, _FULL_JWT.sub(REDACTED, text))
    assert redacted(field=text)["field"] == expected


@settings(max_examples=300)
@given(st.lists(st.lists(_pieces, max_size=6).map("".join), min_size=1, max_size=5))
def test_the_fast_path_is_exact_for_an_events_fields_and_a_list_of_strings(texts: list[str]) -> None:
    """An event's string fields are pre-checked together, a list of strings as one text: a
    match split across two of them is a false alarm, and a match in any one is masked."""

    def full(text: str) -> str:
        return _FULL_BEARER.sub(r"\1 " + REDACTED, _FULL_JWT.sub(REDACTED, text))

    fields = {f"field_{number}": text for number, text in enumerate(texts)}
    assert redacted(**fields, items=texts) == {
        **{key: full(text) for key, text in fields.items()},
        "items": [full(text) for text in texts],
    }


# --- the standard library's loggers ------------------------------------------------------------

# A token as a client would send it; its pieces must not reach a log line in any form.
TOKEN = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJlLXNlZ21lbnQ"
SIGNATURE = TOKEN.rsplit(".", 1)[1]
LIBRARY_LOGGERS = (
    "aiohttp.server",
    "aiohttp.access",
    "aiohttp.client",
    "aiohttp.web",
    "aiohttp.internal",
    "asyncio",
    "some.other.library",
    "",  # the root logger itself
)

Capture = Callable[..., io.StringIO]


@pytest.fixture
def capture_logs() -> Iterator[Capture]:
    """``capture_logs(level=...)``: the gateway's logging, configured into a fresh stream; the
    session's configuration is back afterwards."""

    def configure(level: str = "debug") -> io.StringIO:
        stream = io.StringIO()
        configure_logging(json=True, level=level, stream=stream)
        return stream

    yield configure
    configure_logging(json=True, level="debug", stream=_SESSION_LOGS)


def events_in(stream: io.StringIO) -> list[dict[str, Any]]:
    """Every line of the stream, each of which must be one JSON event."""
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def parser_error(parser: type[Any], raw: bytes) -> HttpProcessingError:
    """What aiohttp's parser raises for ``raw``, with only the parser's frames in its traceback,
    as aiohttp's protocol hands it to its logger (it catches it in its own ``data_received``)."""
    try:
        parser(None, None, 2**16).feed_data(raw)
    except HttpProcessingError as exc:
        assert exc.__traceback__ is not None
        exc.__traceback__ = exc.__traceback__.tb_next  # without this test's own frame
        return exc
    raise AssertionError(f"{parser.__name__} accepted {raw!r}")


PARSERS = pytest.mark.parametrize("parser", [HttpRequestParser, HttpRequestParserPy], ids=["c", "python"])
BAD_HEADER = b"POST /mcp HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + TOKEN.encode() + b"\x01\r\n\r\n"


@PARSERS
def test_a_request_the_parser_refused_is_one_event_naming_only_the_exception_class(
    capture_logs: Capture, parser: type[Any]
) -> None:
    """aiohttp's report of a refused request (a token, then a control byte) is one
    `bad_http_request` event with the status and the exception's class: no header line, no
    message, no traceback."""
    stream = capture_logs()
    exc = parser_error(parser, BAD_HEADER)
    assert SIGNATURE in str(exc)  # what aiohttp would have printed
    logging.getLogger("aiohttp.server").exception("Error handling request from %s", "127.0.0.1", exc_info=exc)
    [event] = events_in(stream)
    assert {key: event[key] for key in ("event", "status", "level")} == {
        "event": "bad_http_request",
        "status": 400,
        "level": "info",
    }
    assert event["error"] == type(exc).__name__ and event.keys() == {
        "event",
        "status",
        "level",
        "error",
        "timestamp",
    }
    assert "eyJ" not in stream.getvalue() and "Traceback" not in stream.getvalue()


@PARSERS
def test_a_bad_method_logged_at_debug_is_still_one_event_at_info(
    capture_logs: Capture, parser: type[Any]
) -> None:
    """aiohttp logs a bad method on a connection's first request at debug (scanners, TLS on a
    plain port); with the gateway at `info` it is still the request's one `bad_http_request`."""
    stream = capture_logs(level="info")
    exc = parser_error(parser, b"G(T /mcp?access_token=" + TOKEN.encode() + b" HTTP/1.1\r\n\r\n")
    logging.getLogger("aiohttp.server").debug("Error handling request from %s", "127.0.0.1", exc_info=exc)
    [event] = events_in(stream)
    assert (event["event"], event["error"], event["level"]) == ("bad_http_request", "BadHttpMethod", "info")
    assert "eyJ" not in stream.getvalue()


def test_a_parser_error_raised_through_application_code_is_not_a_bad_request_and_has_no_traceback(
    capture_logs: Capture,
) -> None:
    """A body's parse error that reached a handler (the application logged that request itself)
    keeps aiohttp's message and the class, never the exception's text or traceback; so does an
    error raised from one."""
    stream = capture_logs()
    exc = parser_error(HttpRequestParserPy, BAD_HEADER)
    try:
        raise exc  # through this test's frame: application code
    except HttpProcessingError as raised:
        logging.getLogger("aiohttp.server").exception(
            "Error handling request from %s", "127.0.0.1", exc_info=raised
        )
    try:
        raise RuntimeError("wrapped") from exc
    except RuntimeError as wrapped:
        logging.getLogger("aiohttp.server").exception("Unhandled exception", exc_info=wrapped)
    first, second = events_in(stream)
    assert (first["event"], first["error"], first["level"]) == (
        "Error handling request from 127.0.0.1",
        "InvalidHeader",
        "error",
    )
    assert (second["event"], second["error"]) == ("Unhandled exception", "RuntimeError")
    assert "exception" not in first and "exception" not in second
    assert "eyJ" not in stream.getvalue() and "Traceback" not in stream.getvalue()


@pytest.mark.parametrize("name", LIBRARY_LOGGERS)
def test_every_library_logger_goes_through_the_gateway_pipeline_and_its_redaction(
    capture_logs: Capture, name: str
) -> None:
    """A record of aiohttp's loggers, asyncio's, any other library's or the root logger's is one
    JSON event with its logger's name, and a token or Bearer credential in it is masked."""
    stream = capture_logs()
    logging.getLogger(name).warning("GET /mcp?access_token=%s Authorization: Bearer opaque-123", TOKEN)
    [event] = events_in(stream)
    assert event["logger"] == (name or "root") and event["level"] == "warning"
    assert event["event"] == f"GET /mcp?access_token={REDACTED} Authorization: Bearer {REDACTED}"


def test_an_ordinary_library_error_keeps_its_traceback_with_tokens_masked(capture_logs: Capture) -> None:
    """An error that quotes no client input keeps its traceback, inside the one JSON line and
    redacted like every other field."""
    stream = capture_logs()
    try:
        raise ValueError(f"callback failed with {TOKEN}")
    except ValueError:
        logging.getLogger("asyncio").exception("Exception in callback %s", "handle")
    [event] = events_in(stream)
    assert (event["event"], event["error"], event["level"]) == (
        "Exception in callback handle",
        "ValueError",
        "error",
    )
    assert (
        event["exception"].startswith("Traceback")
        and f"ValueError: callback failed with {REDACTED}" in event["exception"]
    )
    assert "eyJ" not in stream.getvalue()


def test_library_records_follow_the_configured_level_and_one_handler_serves_them(
    capture_logs: Capture,
) -> None:
    """Configured twice, the pipeline writes each record once; below the configured level, a
    library's record is dropped."""
    capture_logs(level="debug")
    stream = capture_logs(level="warning")
    logging.getLogger("aiohttp.client").info("connection pooled")
    logging.getLogger("aiohttp.client").warning("connection reset")
    assert [event["event"] for event in events_in(stream)] == ["connection reset"]


def test_an_exception_group_holding_a_parser_error_is_logged_without_its_traceback(
    capture_logs: Capture,
) -> None:
    """A group (a task group's failure) with a parser error among its members prints no
    traceback, which would quote that member's message."""
    stream = capture_logs()
    group = ExceptionGroup(
        "tasks failed", [ValueError("other"), parser_error(HttpRequestParserPy, BAD_HEADER)]
    )
    logging.getLogger("asyncio").error("Task exception was never retrieved", exc_info=group)
    [event] = events_in(stream)
    assert (event["event"], event["error"]) == ("Task exception was never retrieved", "ExceptionGroup")
    assert "exception" not in event and "eyJ" not in stream.getvalue()


class BrokenStream(io.StringIO):
    def write(self, text: str) -> int:
        raise OSError("stream gone")


def test_a_record_that_cannot_be_written_leaves_one_fixed_line_and_none_of_its_text(
    capture_logs: Capture, capsys: pytest.CaptureFixture[str]
) -> None:
    """When the log stream fails, the record is reported lost in one line without its message or
    arguments (the standard library's fallback would print both)."""
    configure_logging(json=True, level="debug", stream=BrokenStream())
    logging.getLogger("aiohttp.client").warning("request with %s failed", f"Bearer {TOKEN}")
    assert capsys.readouterr().err == '{"event": "log_record_lost", "error": "OSError"}\n'


async def test_a_line_logged_soon_is_rendered_next_turn_in_the_context_of_the_call(
    capture_logs: Capture,
) -> None:
    """``log_soon`` renders in the loop's next turn, with the request id and masked token of the
    moment it was called, even once the request has cleared them; lines keep their call order."""
    stream = capture_logs()
    log = structlog.get_logger("gateway.request")
    structlog.contextvars.bind_contextvars(request_id="req-soon")
    mask_presented_token(TOKEN)
    log_soon(log, "info", "first", {"note": f"echo {TOKEN}"})
    log_soon(log, "warning", "second", {})
    structlog.contextvars.clear_contextvars()
    mask_presented_token(None)
    assert events_in(stream) == []
    await asyncio.sleep(0)
    first, second = events_in(stream)
    assert (first["event"], first["request_id"], first["note"]) == ("first", "req-soon", f"echo {REDACTED}")
    assert (second["event"], second["level"], second["request_id"]) == ("second", "warning", "req-soon")


def test_a_line_logged_soon_without_a_running_loop_is_rendered_at_once(capture_logs: Capture) -> None:
    """No loop runs (start-up, a command): ``log_soon`` is ``log_now``."""
    stream = capture_logs()
    log_soon(structlog.get_logger("gateway"), "info", "at_once", {"n": 1})
    [event] = events_in(stream)
    assert (event["event"], event["n"]) == ("at_once", 1)


async def test_a_line_that_cannot_be_rendered_later_leaves_one_line_without_its_fields(
    capture_logs: Capture,
) -> None:
    """A line logged soon that fails to render (a claim nested past the recursion limit) is
    replaced by one ``log_line_lost`` naming the event and the error, never its fields, and
    nothing reaches asyncio's exception handler (whose message would quote them)."""
    stream = capture_logs()
    nested: dict[str, Any] = {}
    deepest = nested
    for _ in range(5000):
        deepest["act"] = {}
        deepest = deepest["act"]
    loop = asyncio.get_running_loop()
    handled: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, context: handled.append(context))
    try:
        log_soon(
            structlog.get_logger("gateway.audit"),
            "info",
            "policy_decision",
            {
                "actor": nested,
                "target": "opaque-target-0123456789",
            },
        )
        await asyncio.sleep(0)
    finally:
        loop.set_exception_handler(None)
    [event] = events_in(stream)
    assert (event["event"], event["lost_event"], event["level"]) == (
        "log_line_lost",
        "policy_decision",
        "error",
    )
    assert event["error"] in {"RecursionError", "TypeError", "ValueError"}
    assert "opaque-target" not in stream.getvalue() and handled == []


async def test_a_line_built_soon_is_built_and_rendered_next_turn_in_order(capture_logs: Capture) -> None:
    """``log_soon_built``: the fields are built in the loop's next turn (not before the call
    returns), in the context of the call, in order with the lines logged soon around it."""
    stream = capture_logs()
    log = structlog.get_logger("gateway.audit")
    built: list[int] = []

    def build(n: int) -> dict[str, Any]:
        built.append(n)
        return {"n": n, "note": f"echo {TOKEN}"}

    structlog.contextvars.bind_contextvars(request_id="req-built")
    mask_presented_token(TOKEN)
    log_soon(log, "info", "before", {})
    log_soon_built(log, "info", "built", build, 7)
    log_soon(log, "info", "after", {})
    structlog.contextvars.clear_contextvars()
    mask_presented_token(None)
    assert built == [] and events_in(stream) == []
    await asyncio.sleep(0)
    before, middle, after = events_in(stream)
    assert [before["event"], middle["event"], after["event"]] == ["before", "built", "after"]
    assert (middle["n"], middle["note"], middle["request_id"]) == (7, f"echo {REDACTED}", "req-built")
    assert built == [7]


async def test_a_line_whose_fields_cannot_be_built_leaves_one_line_lost(capture_logs: Capture) -> None:
    """A builder that raises: one ``log_line_lost`` naming the event, nothing for asyncio's handler."""
    stream = capture_logs()
    loop = asyncio.get_running_loop()
    handled: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, context: handled.append(context))

    def broken() -> dict[str, Any]:
        raise KeyError("secret-ish-0123456789")

    try:
        log_soon_built(structlog.get_logger("gateway.audit"), "info", "policy_decision", broken)
        await asyncio.sleep(0)
    finally:
        loop.set_exception_handler(None)
    [event] = events_in(stream)
    lost = ("log_line_lost", "policy_decision", "KeyError")
    assert (event["event"], event["lost_event"], event["error"]) == lost
    assert "secret-ish" not in stream.getvalue() and handled == []


def test_a_line_built_soon_without_a_running_loop_is_rendered_at_once(capture_logs: Capture) -> None:
    """No loop runs: built and rendered at once."""
    stream = capture_logs()
    log_soon_built(structlog.get_logger("gateway"), "info", "at_once", lambda: {"n": 2})
    [event] = events_in(stream)
    assert (event["event"], event["n"]) == ("at_once", 2)


@settings(max_examples=500)
@given(st.floats(min_value=0, max_value=4_102_444_800, allow_nan=False))  # to 2100-01-01
def test_an_events_timestamp_is_its_utc_time_to_the_microsecond(now: float) -> None:
    """The stamp formats the second once and the microseconds per event: the time's own UTC
    moment (to the microsecond, truncated where datetime rounds), always six digits of fraction."""
    text = utc_timestamp(now)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", text)
    parsed = datetime.datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=datetime.UTC)
    exact = datetime.datetime.fromtimestamp(now, datetime.UTC)
    assert abs(parsed - exact) <= datetime.timedelta(microseconds=1)


def test_each_event_has_its_level_time_and_rendered_exception(capture_logs: Capture) -> None:
    """``warn`` is logged as ``warning`` and ``exception`` as ``error`` (structlog's names); an
    exception becomes the ``exception`` text, and the time is now's."""
    stream = capture_logs()
    log = structlog.get_logger("gateway")
    before = datetime.datetime.now(datetime.UTC)
    log.warn("old_name")
    try:
        raise ZeroDivisionError("boom")
    except ZeroDivisionError:
        log.exception("failed")
    warned, failed = events_in(stream)
    assert (warned["level"], failed["level"]) == ("warning", "error")
    assert "ZeroDivisionError: boom" in failed["exception"] and "exc_info" not in failed
    stamped = datetime.datetime.strptime(warned["timestamp"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(
        tzinfo=datetime.UTC
    )
    assert before - datetime.timedelta(seconds=1) <= stamped <= datetime.datetime.now(datetime.UTC)


def test_a_line_due_now_follows_each_new_configuration_and_its_level(capture_logs: Capture) -> None:
    """``log_now`` keeps the bound logger it assembled only while the configuration lasts: a
    reconfigured stream or level, and a test's structlog capture, apply from the next line on,
    with the logger used before them; below the level, nothing is written."""
    log = structlog.get_logger("gateway.request")
    first = capture_logs(level="info")
    log_now(log, "info", "one", {"n": 1})
    log_now(log, "debug", "hidden", {})
    second = capture_logs(level="warning")
    log_now(log, "info", "dropped", {})
    log_now(log, "warning", "two", {"n": 2})
    with structlog.testing.capture_logs() as captured:
        log_now(log, "error", "three", {"n": 3})
    log_now(log, "error", "four", {"n": 4})
    assert [(e["event"], e["level"]) for e in events_in(first)] == [("one", "info")]
    assert [(e["event"], e.get("n")) for e in events_in(second)] == [("two", 2), ("four", 4)]
    assert captured == [{"n": 3, "event": "three", "log_level": "error"}]


def test_a_line_due_now_is_the_same_line_the_logger_method_writes(capture_logs: Capture) -> None:
    """The short path to the processors renders exactly what ``logger.info(event, **fields)``
    renders: the context's request id, the fields, the level, redaction."""
    log = structlog.get_logger("gateway.request")
    stream = capture_logs(level="info")
    structlog.contextvars.bind_contextvars(request_id="r-1")
    try:
        fields = {"path": "/mcp", "note": f"Bearer {TOKEN}", "scopes": ["a", "b"], "n": 1}
        log_now(log, "info", "line", fields)
        log.info("line", **fields)
    finally:
        structlog.contextvars.clear_contextvars()
    short, usual = events_in(stream)
    assert short.pop("timestamp") and usual.pop("timestamp")
    assert short == usual
    assert short["request_id"] == "r-1" and short["note"] == "Bearer ***"
