"""The log redaction step: the last line of defence against a token in a log line."""

from __future__ import annotations

import re
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.logs import REDACTED, redact_secrets

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
_FULL_BEARER = re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9\-._~+/]+=*")

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
    ]
)


@settings(max_examples=500)
@given(st.lists(_pieces, max_size=12).map("".join))
def test_the_fast_path_never_skips_what_the_full_patterns_would_mask(text: str) -> None:
    """A quick pre-check lets most strings through untouched; it must never let a match through."""
    expected = _FULL_BEARER.sub(r"\1 " + REDACTED, _FULL_JWT.sub(REDACTED, text))
    assert redacted(field=text)["field"] == expected
