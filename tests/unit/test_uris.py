"""One reading of a resource URI: the normal form the rules match, or a refusal (gateway.mcp.uris)."""

from __future__ import annotations

import pytest

from gateway.mcp.uris import AmbiguousUri, normal_form, normal_form_or_none, pattern_problem


@pytest.mark.parametrize(
    ("uri", "normal"),
    [
        pytest.param("docs://files/private", "docs://files/private", id="already-normal"),
        pytest.param("docs://files/%70rivate", "docs://files/private", id="escaped-unreserved-letter"),
        pytest.param("docs://files/%70%72%69%76%61%74%65", "docs://files/private", id="all-escaped"),
        pytest.param("docs://%66iles/private", "docs://files/private", id="escaped-host-letter"),
        pytest.param("docs://files/a%2Etxt", "docs://files/a.txt", id="escaped-dot-not-a-segment"),
        pytest.param("docs://files/%7E%2D%5F", "docs://files/~-_", id="escaped-unreserved-marks"),
        pytest.param("DOCS://FILES/Private", "docs://files/Private", id="scheme-and-host-folded-path-kept"),
        pytest.param("docs://FI%4CES/x", "docs://files/x", id="escaped-uppercase-host-folded"),
        pytest.param("docs://Us%45r@HOST:80/x", "docs://UsEr@host:80/x", id="userinfo-keeps-case"),
        pytest.param("docs://\u212aeys/x", "docs://\u212aeys/x", id="kelvin-sign-is-not-ascii-k"),
        # What the SDK hands the handler (urllib.parse.unquote of the capture): decoded.
        pytest.param("docs://files/a%20b", "docs://files/a b", id="escaped-space-decoded"),
        pytest.param("docs://files/a b", "docs://files/a b", id="raw-space-same-reading"),
        pytest.param("docs://files/caf%C3%A9", "docs://files/caf\u00e9", id="escaped-utf8-decoded"),
        pytest.param("docs://files/caf%c3%a9", "docs://files/caf\u00e9", id="lowercase-hex-same"),
        pytest.param("docs://files/caf\u00e9", "docs://files/caf\u00e9", id="raw-non-ascii-same"),
        pytest.param("docs://files/%22%3C%3E%5E%60%7C", 'docs://files/"<>^`|', id="other-non-reserved"),
        pytest.param("docs://files/cafe\u0301", "docs://files/cafe\u0301", id="no-unicode-normalisation"),
        # Raw reserved characters are structure, kept as they are.
        pytest.param("db://t/x?id=5&k=a,b", "db://t/x?id=5&k=a,b", id="raw-query-kept"),
        pytest.param("db://t/x?id=%35", "db://t/x?id=5", id="escaped-query-value"),
        pytest.param("db://t/x?p=../..", "db://t/x?p=../..", id="dots-in-query-are-not-segments"),
        pytest.param("file:///etc/hosts", "file:///etc/hosts", id="empty-authority"),
        pytest.param("file:///dir/", "file:///dir/", id="trailing-slash"),
        pytest.param("docs://files/.../x", "docs://files/.../x", id="three-dots-not-a-dot-segment"),
        pytest.param("urn:Example:A%42", "urn:Example:AB", id="no-authority-nothing-folded-but-scheme"),
        pytest.param("Demo://a", "demo://a", id="scheme-folded"),
        pytest.param("relative/path", "relative/path", id="no-scheme"),
        pytest.param("", "", id="empty"),
        # Templates: expressions verbatim, literals normalised.
        pytest.param("docs://files/{name}", "docs://files/{name}", id="template"),
        pytest.param("weather://{City}/x{?units,lang}", "weather://{City}/x{?units,lang}", id="expr-kept"),
        pytest.param("DOCS://F/%61{/path*}{.ext}", "docs://f/a{/path*}{.ext}", id="template-literals"),
        pytest.param("docs://files/{name}", "docs://files/{name}", id="concrete-braces-as-sdk-reads"),
    ],
)
def test_normal_form(uri: str, normal: str) -> None:
    """Scheme and host lowercase, every escape of a non-reserved character decoded, nothing else changed."""
    assert normal_form(uri) == normal
    assert normal_form(normal) == normal  # idempotent
    assert "%" not in normal


@pytest.mark.parametrize(
    ("uri", "why"),
    [
        pytest.param("docs://files/a%2Fb", "'/'", id="escaped-slash"),
        pytest.param("docs://files/a%2fb", "'/'", id="escaped-slash-lowercase"),
        pytest.param("docs://files/a%3Fb", "'?'", id="escaped-question-mark"),
        pytest.param("docs://files/a%23b", "'#'", id="escaped-hash"),
        pytest.param("docs://files/a%2Cb", "','", id="escaped-comma-sub-delim"),
        pytest.param("docs://files/a%26b", "'&'", id="escaped-ampersand"),
        pytest.param("db://t/x?k=a%3Db", "'='", id="escaped-equals-in-query"),
        pytest.param("docs://fi%3Ales/x", "':'", id="escaped-colon-in-host"),
        pytest.param("docs://files/%2570rivate", "'%'", id="double-encoded"),
        pytest.param("docs://files/a%5Cb", "'\\\\'", id="escaped-backslash"),
        pytest.param("docs://files/%7Bname%7D", "'{'", id="escaped-brace"),
        pytest.param("docs://files/a\\b", "backslash", id="raw-backslash"),
        pytest.param("docs://files/..", "dot segment", id="dot-dot"),
        pytest.param("docs://files/../private", "dot segment", id="dot-dot-inside"),
        pytest.param("docs://files/%2e%2e/private", "dot segment", id="escaped-dot-dot"),
        pytest.param("docs://files/.%2E/private", "dot segment", id="half-escaped-dot-dot"),
        pytest.param("docs://files/./private", "dot segment", id="dot"),
        pytest.param("docs://files/%2E", "dot segment", id="escaped-dot"),
        pytest.param("file:../x", "dot segment", id="dot-dot-no-authority"),
        pytest.param("demo://%2e%2e", "dot segment as the host", id="dot-dot-host"),
        pytest.param("demo://./x", "dot segment as the host", id="dot-host"),
        pytest.param("demo://u@..:80/x", "dot segment as the host", id="dot-dot-host-with-port"),
        pytest.param("docs://files//private", "empty segment", id="empty-segment"),
        pytest.param("file:////etc/passwd", "empty segment", id="four-slashes"),
        pytest.param("docs://files/private#x", "fragment", id="fragment"),
        pytest.param("docs://files/%zz", "invalid percent-escape", id="invalid-hex"),
        pytest.param("docs://files/%4", "invalid percent-escape", id="truncated-escape"),
        pytest.param("docs://files/%", "invalid percent-escape", id="bare-percent"),
        pytest.param("docs://files/%%41", "invalid percent-escape", id="percent-percent"),
        pytest.param("docs://files/%C3", "not UTF-8", id="truncated-utf8"),
        pytest.param("docs://files/%FF", "not UTF-8", id="invalid-utf8-byte"),
        pytest.param("docs://files/%C0%AF", "not UTF-8", id="overlong-slash"),
        pytest.param("docs://files/%ED%A0%80", "not UTF-8", id="encoded-surrogate"),
        pytest.param("docs://files/a%00b", "control", id="escaped-nul"),
        pytest.param("docs://files/a%0Ab", "control", id="escaped-newline"),
        pytest.param("docs://files/a%7F", "control", id="escaped-del"),
        pytest.param("docs://files/a%C2%85", "control", id="escaped-c1-next-line"),
        pytest.param("docs://files/a\u0085", "control", id="raw-c1"),
        pytest.param("docs://files/a\ud800", "surrogate", id="raw-lone-surrogate"),
        pytest.param("docs://a@b@c/x", "'@'", id="two-at-signs"),
        pytest.param("docs://files/{", "brace", id="unclosed-brace"),
        pytest.param("docs://files/}", "brace", id="stray-brace"),
        pytest.param("docs://files/{a{b}}", "brace", id="nested-brace"),
        pytest.param("docs://files/{a/../b}", "RFC 6570", id="not-an-expression"),
        pytest.param("docs://files/{%70}", "RFC 6570", id="escape-inside-expression"),
        pytest.param("docs://files/{}", "RFC 6570", id="empty-expression"),
        pytest.param("docs://files/{x}/../y", "dot segment", id="template-dot-segment"),
    ],
)
def test_ambiguous_uris_are_refused(uri: str, why: str) -> None:
    """A URI whose meaning depends on who decodes or resolves it has no normal form; the reason says why."""
    with pytest.raises(AmbiguousUri) as caught:
        normal_form(uri)
    assert why in str(caught.value)
    assert normal_form_or_none(uri) is None


@pytest.mark.parametrize(
    ("pattern", "problem"),
    [
        pytest.param("docs://files/private", None, id="normal"),
        pytest.param("*", None, id="star"),
        pytest.param("file:///pub/?.txt", None, id="question-mark-is-a-wildcard"),
        pytest.param("docs://f?le/*", None, id="wildcard-in-host"),
        pytest.param("*{*}", None, id="braces-may-hold-a-glob"),
        pytest.param("docs://files/{name}", None, id="template"),
        pytest.param("docs://files/caf\u00e9", None, id="non-ascii"),
        pytest.param("DOCS://files/*", "write 'docs://files/*'", id="uppercase-scheme"),
        pytest.param("docs://Files/*", "write 'docs://files/*'", id="uppercase-host"),
        pytest.param("docs://[A-Z]*/x", "write 'docs://[a-z]*/x'", id="uppercase-class-in-host"),
        pytest.param("docs://files/%70rivate", "write 'docs://files/private'", id="escaped-letter"),
        pytest.param("docs://files/caf%C3%A9", "write 'docs://files/caf\u00e9'", id="escaped-utf8"),
        pytest.param("docs://files/a%2Fb", "can never match", id="escaped-slash"),
        pytest.param("docs://files/../x", "can never match", id="dot-segment"),
        pytest.param("docs://files/x#*", "can never match", id="fragment"),
        pytest.param("docs://files/a\\*", "can never match", id="backslash"),
    ],
)
def test_pattern_problem(pattern: str, problem: str | None) -> None:
    """A resource rule pattern must be written in normal form; the problem says what to write instead."""
    found = pattern_problem(pattern)
    if problem is None:
        assert found is None
    else:
        assert found is not None and problem in found


def test_uris_longer_than_the_sdk_matches_are_refused_and_checks_stay_fast() -> None:
    """Past the SDK's own template-matching limit a URI has no normal form; the worst spelling below
    it is still normalised in milliseconds (the check runs on the event loop)."""
    import time

    from gateway.mcp.uris import MAX_URI_LENGTH

    assert normal_form_or_none("docs://x/" + "a" * MAX_URI_LENGTH) is None
    worst = "docs://x/" + "%C3%A9a" * ((MAX_URI_LENGTH - 9) // 7)
    started = time.perf_counter()
    assert normal_form(worst) == "docs://x/" + "\u00e9a" * ((MAX_URI_LENGTH - 9) // 7)
    assert time.perf_counter() - started < 0.5
