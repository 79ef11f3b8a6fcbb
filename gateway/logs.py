"""structlog set-up: JSON lines by default, console on request, and a redaction step.

Redaction is the last line of defence, not the first: code never logs tokens on purpose. This
step still masks anything shaped like a JWT or a ``Bearer`` credential, and the value of any key
whose name says it holds a secret, so one careless ``log.info(headers=...)`` cannot leak one.
"""

from __future__ import annotations

import functools
import logging
import re
import sys
from collections.abc import Mapping, MutableMapping
from typing import Any, TextIO

import structlog

_JWT_SHAPED = re.compile(r"eyJ[A-Za-z0-9_-]{2,}\.[A-Za-z0-9_-]{2,}\.[A-Za-z0-9_-]*")
_BEARER = re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9\-._~+/]+=*")
# Matches wherever either pattern above could: one cheap search lets almost every string through
# untouched (two log events per request, a dozen strings each).
_SUSPECT = re.compile(r"eyJ|(?i:\b(?:bearer|basic)\s)")
_SECRET_KEY_NAMES = ("authorization", "token", "secret", "password", "cookie", "api_key", "apikey")
# `token_id` (a jti) and counts are fine; values of keys that *are* secrets are not.
_SAFE_KEYS = frozenset({"token_id", "reason", "token_reason", "token_type"})
_PLAIN_TYPES = frozenset({int, float, bool, type(None)})
REDACTED = "***"


@functools.lru_cache(maxsize=1024)  # bounded: nested keys (audited tool arguments) are the caller's
def _is_secret_key(key: str) -> bool:
    lowered = key.lower()
    return lowered not in _SAFE_KEYS and any(name in lowered for name in _SECRET_KEY_NAMES)


def _redact_value(value: Any) -> Any:
    if type(value) in _PLAIN_TYPES:
        return value
    if isinstance(value, str):
        if _SUSPECT.search(value) is None:
            return value
        return _BEARER.sub(r"\1 " + REDACTED, _JWT_SHAPED.sub(REDACTED, value))
    if isinstance(value, Mapping):
        return {key: _redact_item(str(key), item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_redact_value(item) for item in value]
    return value


def _redact_item(key: str, value: Any) -> Any:
    if _is_secret_key(key):
        return REDACTED if value not in (None, "") else value
    return _redact_value(value)


# Bound (as a structlog context variable) for requests of a gateway with
# `logging: {include_subject: false}`; `drop_subject` then removes who the caller is.
HIDE_SUBJECT = "_hide_subject"
SUBJECT_FIELDS = ("subject", "client_id")


def drop_subject(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor: without ``subject`` and ``client_id`` when the request asked for it."""
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
    # `_redact_item` for each field, unrolled: this runs for every event of every request.
    for key, value in event_dict.items():
        if _is_secret_key(key):
            if value not in (None, ""):
                event_dict[key] = REDACTED
        elif type(value) is str:
            if _SUSPECT.search(value) is not None:
                event_dict[key] = _redact_value(value)
        elif type(value) not in _PLAIN_TYPES:
            event_dict[key] = _redact_value(value)
    return event_dict


def configure_logging(
    *, json: bool = True, level: str = "info", stream: TextIO | None = None, include_subject: bool = True
) -> None:
    """Configure structlog once for the process; ``include_subject=False`` drops subject and
    client id from every event (a gateway can also ask for that per request, see HIDE_SUBJECT)."""
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if json
        else structlog.dev.ConsoleRenderer(colors=(stream or sys.stderr).isatty())
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            drop_subject if include_subject else _drop_subject_always,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            redact_secrets,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelNamesMapping()[level.upper()]),
        logger_factory=structlog.WriteLoggerFactory(file=stream or sys.stderr),
        cache_logger_on_first_use=False,
    )
