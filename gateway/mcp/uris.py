"""One reading of a resource URI: the normal form the rules match, or a refusal.

The SDK upstream matches ``resources/read`` against its URI templates on the raw string and
percent-decodes what a variable captures (``mcp.shared.uri_template.UriTemplate.match``, the
TypeScript SDK's ``UriTemplate.match`` alike): ``docs://files/%70rivate`` is handed to the
handler of ``docs://files/{name}`` as ``name="private"``. Rules matched on the raw spelling would
let that walk past a rule on ``docs://files/private``. So the rules match the URI's *normal
form*, which reads the way the upstream's handler does, and a URI that different readers would
resolve differently has no normal form and is refused.

The normal form (RFC 3986 §6.2.2, pushed as far as the handler's view):

- scheme and host in lowercase (§6.2.2.1; §3.1, §3.2.2: both are case-insensitive); ASCII
  letters only, so a Kelvin sign never folds into ``k``;
- every percent-escape decoded: unreserved characters (§6.2.2.2), and also the characters that
  are neither reserved nor unreserved (``%20``, ``%22``, ``%3C``…) and escaped UTF-8 non-ASCII
  (``%C3%A9`` → ``é``), because that is what the SDK hands the handler (``urllib.parse.unquote``
  of the capture), and a raw ``é`` reaches it the same way. Rules are written in that decoded
  form. After this the normal form holds no ``%`` at all, which is why "uppercase the remaining
  hex" (§6.2.2.1) never applies: every escape that would remain is refused below.

Refused (``AmbiguousUri``), because their meaning depends on who decodes or resolves them:

- a percent-encoded reserved character (§2.2 gen-delims and sub-delims: ``%2F``, ``%3F``,
  ``%23``, ``%2C``…): a template variable may sit anywhere but in the scheme, so any position
  can be captured, and decoded it is a delimiter to one reader and data to another;
- ``%25`` (decoding twice yields a second URI), ``%5C`` and a raw backslash (WHATWG URL readers
  take ``\\`` for ``/``), ``%7B``/``%7D`` (a decoded brace reads as a template expression);
- an invalid escape (``%zz``, ``%4``), escapes that are not UTF-8 (``%FF``, overlong ``%C0%AF``)
  — the SDK turns those into U+FFFD, others refuse them — and any control character (Unicode
  category Cc), raw or escaped;
- a dot segment (``.``, ``..``, also spelled ``%2E``) or an empty segment (``a//b``) in the path,
  and a host that is ``.`` or ``..``: resolvers (RFC 3986 §5.2.4, file systems, ``posixpath``)
  remove them, the SDK does not, and a template may capture the host like a segment;
- a fragment (a raw ``#``): the SDK drops it before matching a template with a query tail and
  keeps it otherwise;
- more than one ``@`` in the authority (readers split userinfo at the first or the last one);
- braces that are not well-formed RFC 6570 expressions (``{``, ``{a/../b}``, ``{%70}``).

A resource *template* (``resources/templates/list`` items, a ``ref/resource`` completion) is read
with the same function: its ``{…}`` expressions are kept verbatim, its literal parts normalised.
Rule patterns are globs over normal forms; ``pattern_problem`` tells config loading whether a
pattern is written in normal form (see its docstring for why patterns are checked, not rewritten).

Known limit: a template that captures the host (``weather://{city}/x``) hands its handler the
spelling's case, while the rules see it folded; a rule on the host then applies to every case.

Pure: the standard library only.
"""

from __future__ import annotations

import re
from typing import Final

__all__ = ["AmbiguousUri", "normal_form", "normal_form_or_none", "pattern_problem"]


class AmbiguousUri(ValueError):
    """A URI (or pattern) whose meaning depends on who reads it; the message says why."""


MAX_URI_LENGTH: Final = 65_536
"""Longer URIs are refused: the SDK's template matching gives up on them (its
``DEFAULT_MAX_URI_LENGTH``) where other readers do not, and every check here stays a few
milliseconds of the event loop at most."""

# RFC 3986 §2.2: gen-delims and sub-delims.
RESERVED: Final = frozenset(":/?#[]@!$&'()*+,;=")
# Never decoded: reserved characters, a second round of decoding, a backslash, template braces.
_NOT_DECODED: Final = re.compile(r"[:/?#\[\]@!$&'()*+,;=%\\{}]")
_BAD_ESCAPE: Final = re.compile(r"%(?![0-9A-Fa-f]{2})")
_ESCAPES: Final = re.compile(r"(?:%[0-9A-Fa-f]{2})+")  # one run: a character may take several bytes

# RFC 6570 §2.2-2.4: "{" [operator] varspec *("," varspec) "}", varname = varchar *(["."] varchar).
# Without percent-encoded varchars (the SDK refuses them too) and without the operators RFC 6570
# reserves for future use. So a "/" or "?" inside an expression can only be its operator.
_VARSPEC: Final = r"[A-Za-z0-9_]+(?:\.[A-Za-z0-9_]+)*(?::[1-9][0-9]{0,3}|\*)?"
_EXPRESSION: Final = re.compile(rf"\{{[+#./;?&]?{_VARSPEC}(?:,{_VARSPEC})*\}}")
_BRACE_GROUP: Final = re.compile(r"\{[^{}]*\}")
_SCHEME: Final = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*:")
_UPPER_OUTSIDE_BRACES: Final = re.compile(r"\{[^{}]*\}|[A-Z]+")
# Category Cc (C0, DEL, C1) and lone surrogates (Cs), which no encoder writes the same way twice.
_CONTROL: Final = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
_DOT_SEGMENT: Final = re.compile(r"(?:^|/)\.\.?(?:/|$)")
_MASK: Final = "\x00"  # stands for what is inside an expression; a NUL is refused in any URI


def normal_form(uri: str) -> str:
    """The URI (or URI template) as the rules see it; raises AmbiguousUri when it has none."""
    return _normalise(uri, pattern=False)


def normal_form_or_none(uri: str) -> str | None:
    """``normal_form``, or None for a URI that has none (for callers that fail closed)."""
    try:
        return _normalise(uri, pattern=False)
    except AmbiguousUri:
        return None


def pattern_problem(pattern: str) -> str | None:
    """Why a resource rule pattern is not written in normal form, or None when it is.

    A pattern is a glob over normal forms, so one that is not in normal form (``DOCS://…``,
    ``…/%70rivate``) would silently never match, or match less than it says. Config loading
    refuses it with the spelling to write instead, rather than rewriting it: the pattern an
    operator reads in the file, the log and ``explain`` is then exactly what is matched. Glob
    characters are taken as written (``?`` is a wildcard here, not a query), and a ``{…}`` group
    may hold anything (``{*}`` matches any template expression).
    """
    try:
        normal = _normalise(pattern, pattern=True)
    except AmbiguousUri as exc:
        return f"can never match: the gateway refuses every URI with {exc}"
    if normal != pattern:
        return f"not in normal form (how the gateway reads URIs): write {normal!r}"
    return None


# --- Steps --------------------------------------------------------------------------------------


def _normalise(text: str, *, pattern: bool) -> str:
    if len(text) > MAX_URI_LENGTH:
        raise AmbiguousUri(f"more than {MAX_URI_LENGTH} characters")
    # What is left outside the template expressions (in a pattern: outside any brace group).
    literal = (_BRACE_GROUP if pattern else _EXPRESSION).sub("", text)
    if "{" in literal or "}" in literal:
        raise AmbiguousUri("a brace that is not part of an RFC 6570 expression")
    _check_raw(literal)
    if "%" in literal:
        if _BAD_ESCAPE.search(literal):
            raise AmbiguousUri("an invalid percent-escape")
        text = _ESCAPES.sub(_decoded, text)  # an expression holds no "%": only literals change
    return _fold_and_check(text, pattern=pattern)


def _check_raw(literal: str) -> None:
    if "\\" in literal:
        raise AmbiguousUri("a backslash")
    if "#" in literal:
        raise AmbiguousUri("a fragment")
    if _CONTROL.search(literal):
        raise AmbiguousUri("a control character or a lone surrogate")


def _decoded(escapes: re.Match[str]) -> str:
    """One run of percent-escapes, decoded; raises for what must not be decoded."""
    try:
        decoded = bytes.fromhex(escapes[0].replace("%", "")).decode("utf-8")  # strict: no overlongs
    except UnicodeDecodeError:
        raise AmbiguousUri("percent-escapes that are not UTF-8") from None
    kept = _NOT_DECODED.search(decoded)
    if kept is not None:
        raise AmbiguousUri(f"a percent-encoded {kept[0]!r}")
    if _CONTROL.search(decoded):
        raise AmbiguousUri("a percent-encoded control character")
    return decoded


def _fold_and_check(text: str, *, pattern: bool) -> str:
    """Scheme and host folded to lowercase; the path checked for segments resolvers remove.

    ``text`` is decoded (no ``%``) and its braces are expressions (in a pattern: groups), so a
    delimiter found outside them is a real one; in a pattern ``?`` is a glob wildcard, not a query.
    """
    scheme = _SCHEME.match(text)
    head = scheme.end() if scheme else 0
    masked = text.replace("{/", "{" + _MASK).replace("{?", "{" + _MASK)  # expression operators
    start = head
    authority = ""
    if text.startswith("//", head):
        start = _first_of(masked, "/" if pattern else "/?", head + 2)
        authority = _folded_authority(text[head:start])
    end = len(text) if pattern else _first_of(masked, "?", start)
    _check_path(masked[start:end])
    return text[:head].lower() + authority + text[start:]


def _first_of(text: str, stops: str, start: int) -> int:
    """Where the first of ``stops`` is in ``text`` from ``start``, or its end."""
    found = [index for index in (text.find(stop, start) for stop in stops) if index != -1]
    return min(found, default=len(text))


def _folded_authority(authority: str) -> str:
    """``//`` [userinfo ``@``] host [``:`` port], with the host in lowercase (userinfo keeps its case)."""
    userinfo, at, host = authority.rpartition("@")
    if "@" in userinfo:
        raise AmbiguousUri("more than one '@' in the authority")
    if host.lstrip("/").partition(":")[0] in (".", ".."):
        # A template may capture the host as it captures a segment (docs://{dir}/{name}).
        raise AmbiguousUri("a dot segment as the host")
    folded = _UPPER_OUTSIDE_BRACES.sub(lambda m: m[0] if m[0].startswith("{") else m[0].lower(), host)
    return userinfo + at + folded


def _check_path(path: str) -> None:
    segments = _BRACE_GROUP.sub(_MASK, path)
    if _DOT_SEGMENT.search(segments):
        raise AmbiguousUri("a dot segment in the path")
    if "//" in segments:
        raise AmbiguousUri("an empty segment in the path")
