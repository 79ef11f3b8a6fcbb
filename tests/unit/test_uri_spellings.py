"""Property: however a client spells a resource URI, the gateway decides on what the official SDK
hands the upstream's handler.

The SDK side is the real thing: ``mcp.server.mcpserver.resources.ResourceTemplate.matches`` (RFC
6570 matching, percent-decoding of what a variable captures, its path-safety checks), for the
templates an upstream typically registers. The gateway side is its own body reading and decision,
``gateway.mcp.messages.parse_post`` then ``gateway.mcp.policy.decide``, on every method that names
a resource (read, subscribe, unsubscribe, a ``ref/resource`` completion), in both protocol eras.

Spellings are built from a URI by re-encoding characters (either hex case), changing the case of
the scheme and host, and, for attacks, inserting tokens that decoders disagree on (``%2F``,
``%2e%2e``, ``%25``, ``\\``, ``#``, invalid escapes, control characters…).
"""

from __future__ import annotations

import base64
import json
import posixpath
from pathlib import Path
from typing import Any, Literal

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from mcp.server.mcpserver.resources import ResourceTemplate
from mcp.server.mcpserver.resources.templates import ResourceSecurityError

from gateway.config import parse_config_text
from gateway.mcp.messages import MODERN_VERSION, McpRejected, parse_post
from gateway.mcp.policy import RoutePolicy, decide, operation_of
from gateway.mcp.uris import normal_form_or_none

RULES = """
public_url: https://gw.example
issuers: [{issuer: https://as.example, algorithms: [RS256], jwks: {discover: true}}]
routes:
  - path: /mcp
    upstream: http://127.0.0.1:9000/mcp
    scopes: [mcp]
    resources:
      "docs://files/private": [admin]
      "docs://files/private/*": [admin]
      "docs://files/*": []
"""
POLICY: RoutePolicy = parse_config_text(RULES, Path("/tmp/rules.yaml"), {}).routes[0].policy
CALLER = frozenset({"mcp"})  # the route scope, not admin: "private" is denied, the rest allowed
META = {
    "io.modelcontextprotocol/protocolVersion": MODERN_VERSION,
    "io.modelcontextprotocol/clientCapabilities": {},
}


# --- The SDK side -------------------------------------------------------------------------------


def _by_name(name: str) -> str:
    return name


def _by_path(path: str) -> str:
    return path


def _by_segments(path: list[str]) -> str:
    return "/".join(path)


def _by_host_and_name(host: str, name: str) -> str:
    return f"{host}:{name}"


def _is_private(path: str) -> bool:
    """Whether a handler that opens ``<root>/<path>`` opens the private file or something under it."""
    resolved = posixpath.normpath(path)
    return resolved == "private" or resolved.startswith("private/")


# (template, handler, does this capture reach the private file, does the template capture the host)
TEMPLATES: list[tuple[ResourceTemplate, Any, bool]] = [
    (
        ResourceTemplate.from_function(_by_name, "docs://files/{name}"),
        lambda p: p["name"] == "private",
        False,
    ),
    (
        ResourceTemplate.from_function(_by_path, "docs://files/{+path}"),
        lambda p: _is_private(p["path"]),
        False,
    ),
    (
        ResourceTemplate.from_function(_by_segments, "docs://files{/path*}"),
        lambda p: _is_private("/".join(p["path"])),
        False,
    ),
    (
        ResourceTemplate.from_function(_by_host_and_name, "docs://{host}/{name}"),
        lambda p: p["host"] == "files" and p["name"] == "private",
        True,
    ),
]

Served = dict[str, Any] | Literal["refused"] | None


def sdk_reads(template: ResourceTemplate, uri: str) -> Served:
    """What the SDK upstream hands this template's handler for ``uri``; "refused" by its safety checks."""
    try:
        return template.matches(uri)
    except ResourceSecurityError:
        return "refused"


# --- The gateway side ---------------------------------------------------------------------------

Outcome = Literal["refused", "allowed", "denied"]
METHODS = ("resources/read", "resources/subscribe", "resources/unsubscribe", "completion/complete")


def _header_safe(value: str) -> str:
    if value and value == value.strip() and all(" " <= char <= "~" for char in value):
        return value
    return "=?base64?" + base64.b64encode(value.encode()).decode() + "?="


def gateway_decides(method: str, uri: str, modern: bool) -> Outcome:
    """The gateway's answer to a POST naming ``uri``: refused (400), allowed or denied (403)."""
    if method == "completion/complete":
        params: dict[str, Any] = {
            "ref": {"type": "ref/resource", "uri": uri},
            "argument": {"name": "n", "value": ""},
        }
    else:
        params = {"uri": uri}
    headers: dict[str, str] = {}
    if modern:
        params["_meta"] = META
        headers = {"mcp-protocol-version": MODERN_VERSION, "mcp-method": method}
        if method == "resources/read":
            headers["mcp-name"] = _header_safe(uri)
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params}).encode()
    try:
        post = parse_post(body, lambda name: [headers[name.lower()]] if name.lower() in headers else [])
    except McpRejected as exc:
        assert exc.reason == "ambiguous_uri", exc.reason
        assert (exc.status, exc.jsonrpc_code) == (400, -32602)
        return "refused"
    decision = decide(POLICY, operation_of(post.messages[0]), CALLER)
    return "allowed" if decision.allowed else "denied"


# --- Spellings ----------------------------------------------------------------------------------

RESERVED = frozenset(":/?#[]@!$&'()*+,;=")  # RFC 3986 §2.2: encoding one changes the meaning

BASES = (
    "docs://files/private",
    "docs://files/private/key",
    "docs://files/readme",
    "docs://files/pub/x.txt",
    "docs://files/caf\u00e9",
    "docs://files/a b",
    "docs://files/~v1-2_3",
)
# Tokens decoders disagree on, and some they agree on, to be put anywhere in a spelling.
JUNK = (
    "%2F", "%2f", "/", "%2E", "%2e", ".", "..", "%2E%2E", "%2e%2E", "./", "../", "%25", "%2570",
    "%", "%zz", "%4", "%C3", "%FF", "%C0%AF", "%ED%A0%80", "%00", "%0A", "%7F", "%C2%85", "\\",
    "%5C", "#", "#x", "?", "?q=1", "//", "%3F", "%23", "{", "}", "%7B", "%7D", "{name}", "&",
    ",", ";", "=", "%3D", "%2C", "%20", " ", "@", "%40", ":", "%3A", "A", "%41", "%70", "p",
    "\u00e9", "%C3%A9", "\u200b", "\u0085",
)  # fmt: skip


def _encoded(char: str, upper: bool) -> str:
    hexes = "".join(f"%{byte:02X}" for byte in char.encode("utf-8"))
    return hexes if upper else hexes.lower()


@st.composite
def respelled(draw: st.DrawFn, uri: str) -> str:
    """``uri`` with the same meaning: characters that are not reserved may be percent-encoded,
    scheme and host letters may change case."""
    absolute = "://" in uri
    scheme_end = uri.index(":") + 1 if absolute else 0  # a scheme cannot hold an escape
    host_end = uri.index("/", scheme_end + 2) if absolute else 0
    # Often leave scheme and host alone: templates match them literally, so the SDK then serves
    # the spelling and the property has something to compare.
    head = draw(st.booleans())
    pieces = []
    for index, char in enumerate(uri):
        choice = draw(st.sampled_from(("keep", "keep", "encode", "case")))
        if index < host_end and not head:
            pieces.append(char)
        elif choice == "encode" and char not in RESERVED and index >= scheme_end:
            pieces.append(_encoded(char, draw(st.booleans())))
        elif choice == "case" and index < host_end and char.isalpha():
            pieces.append(char.swapcase())
        else:
            pieces.append(char)
    return "".join(pieces)


@st.composite
def attacked(draw: st.DrawFn, uri: str) -> str:
    """A respelling of ``uri`` with a few junk tokens put in, and maybe reserved characters encoded."""
    spelling = list(draw(respelled(uri)))
    for _ in range(draw(st.integers(1, 3))):
        spelling.insert(draw(st.integers(0, len(spelling))), draw(st.sampled_from(JUNK)))
    if draw(st.booleans()):
        index = draw(st.integers(0, len(spelling) - 1))
        if spelling[index] in RESERVED:
            spelling[index] = _encoded(spelling[index], draw(st.booleans()))
    return "".join(spelling)


# Ways to reach "private" from another path, which some reader may resolve.
DETOURS = (
    "pub/../", "pub/%2e%2e/", "pub/.%2E/", "./", "%2E/", "pub%2F..%2F", "pub%2f%2e%2e%2f", "pub//../",
    ".//", "pub/..%2F", "a/b/../../", "pub\\..\\", "pub%5C..%5C", "%2Fprivate/../", "",
)  # fmt: skip
TAILS = ("", "/", "/key", "%2Fkey", "#x", "?q=1", "%00", "/.", "/..", "%3F")


@st.composite
def detours(draw: st.DrawFn) -> str:
    """``docs://files/<detour>private<tail>``, the name respelled: traversal by every spelling."""
    name = draw(respelled("private"))
    return f"docs://files/{draw(st.sampled_from(DETOURS))}{name}{draw(st.sampled_from(TAILS))}"


bases = st.sampled_from(BASES)
spellings = st.one_of(bases.flatmap(lambda uri: st.one_of(respelled(uri), attacked(uri))), detours())


# --- Properties ---------------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(uri=spellings, method=st.sampled_from(METHODS), modern=st.booleans())
@example(uri="docs://files/%70rivate", method="resources/read", modern=False)
@example(uri="docs://files/pub/%2e%2e/private", method="resources/read", modern=True)
@example(uri="docs://files/pub%2F..%2Fprivate", method="resources/subscribe", modern=True)
@example(uri="docs://%66iles/privat%65", method="completion/complete", modern=False)
def test_a_spelling_the_sdk_serves_as_the_private_file_is_never_allowed(
    uri: str, method: str, modern: bool
) -> None:
    """Whatever upstream template reads a spelling as the denied file, the gateway refuses or denies it."""
    outcome = gateway_decides(method, uri, modern)
    for template, private, _ in TEMPLATES:
        served = sdk_reads(template, uri)
        if isinstance(served, dict) and private(served):
            assert outcome != "allowed", (template.uri_template, served)


@settings(max_examples=300, deadline=None)
@given(uri=spellings)
def test_the_normal_form_reads_to_the_sdk_as_the_spelling_does(uri: str) -> None:
    """Where the gateway accepts a spelling, its normal form gives every template the same arguments.

    So a rule written on the normal form is a rule on what the handler receives. The one
    deliberate exception, a template that captures the host (the gateway folds host case, RFC
    3986 §3.2.2), is pinned in test_host_case_is_folded_even_where_a_template_captures_it.
    """
    normal = normal_form_or_none(uri)
    if normal is None:
        return
    for template, _, captures_host in TEMPLATES:
        served = sdk_reads(template, uri)
        if served is not None and not captures_host:
            assert sdk_reads(template, normal) == served, template.uri_template


@settings(max_examples=300, deadline=None)
@given(base=bases, data=st.data(), method=st.sampled_from(METHODS), modern=st.booleans())
def test_legitimate_spellings_keep_their_decision(
    base: str, data: st.DataObject, method: str, modern: bool
) -> None:
    """A re-encoding of unreserved characters or a change of scheme/host case is never refused, and
    is decided as the plain URI is: allowed files stay allowed, the private one stays denied."""
    uri = data.draw(respelled(base))
    expected: Outcome = "denied" if base.startswith("docs://files/private") else "allowed"
    assert gateway_decides(method, uri, modern) == expected
    assert gateway_decides(method, base, modern) == expected


@pytest.mark.parametrize(
    ("uri", "outcome"),
    [
        ("docs://files/%70rivate", "denied"),
        ("docs://files/privat%65", "denied"),
        ("docs://FILES/private", "denied"),
        ("DOCS://files/private/key", "denied"),
        ("docs://files/%2e%2e/private", "refused"),
        ("docs://files/pub/../private", "refused"),
        ("docs://files/pub%2F..%2Fprivate", "refused"),
        ("docs://files/a%2Fb", "refused"),
        ("docs://files/pub//private", "refused"),
        ("docs://files/private#x", "refused"),
        ("docs://files/%2570rivate", "refused"),
        ("docs://files/PRIVATE", "allowed"),  # another file to a case-sensitive handler, as to the rules
        ("docs://files/caf%C3%A9", "allowed"),
        ("docs://files/a%20b", "allowed"),
    ],
)
def test_spellings_of_the_private_file(uri: str, outcome: Outcome) -> None:
    """Pinned examples: escapes of letters meet the rule, decoder-dependent spellings are refused."""
    for method in METHODS:
        for modern in (False, True):
            assert gateway_decides(method, uri, modern) == outcome, (method, modern)


def test_host_case_is_folded_even_where_a_template_captures_it() -> None:
    """Deliberate: the rules see the host in lowercase (RFC 3986 §3.2.2), though a template that
    captures the host hands its handler the spelling's case; a rule on a host covers every case."""
    template = TEMPLATES[3][0]
    assert sdk_reads(template, "docs://FILES/private") == {"host": "FILES", "name": "private"}
    assert normal_form_or_none("docs://FILES/private") == "docs://files/private"
    assert gateway_decides("resources/read", "docs://FILES/private", False) == "denied"
