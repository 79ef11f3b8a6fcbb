"""Parse a ``WWW-Authenticate`` header the way RFC 9110 §11.6.1 / §5.6.4 defines it."""

from __future__ import annotations

import re

_TOKEN = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_PARAM = re.compile(rf'\s*({_TOKEN})\s*=\s*(?:({_TOKEN})|"((?:[^"\\]|\\.)*)")\s*(,|$)')


def parse_bearer_challenge(header: str) -> dict[str, str]:
    """Parameters of a single ``Bearer`` challenge; raises ValueError on anything malformed."""
    scheme, _, rest = header.partition(" ")
    if scheme.lower() != "bearer":
        raise ValueError(f"scheme {scheme!r} is not Bearer")
    params: dict[str, str] = {}
    position = 0
    while position < len(rest):
        match = _PARAM.match(rest, position)
        if match is None:
            raise ValueError(f"cannot parse auth-param at {rest[position:]!r}")
        name, token, quoted = match.group(1), match.group(2), match.group(3)
        if name.lower() in params:
            raise ValueError(f"duplicate parameter {name}")
        params[name.lower()] = token if token is not None else re.sub(r"\\(.)", r"\1", quoted)
        position = match.end()
    return params
