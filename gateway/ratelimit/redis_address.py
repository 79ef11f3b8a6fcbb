"""Where the Redis store is and how to log in: a ``redis://`` / ``rediss://`` URL read once.

``redis://[[user]:password@]host[:port][/db]``; ``rediss://`` is the same over TLS, verified
against the system's trust store (or ``?ssl_ca_certs=path``), the host name checked, with a
client certificate from ``ssl_certfile`` / ``ssl_keyfile`` for a server that asks for one. No
other query option is read, and none may turn verification off: an unknown option is a config
error, never ignored (``redis_url_problem``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final
from urllib.parse import parse_qsl, unquote, urlsplit

DEFAULT_PORT: Final = 6379
TLS_OPTIONS: Final = ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile")


@dataclass(frozen=True, slots=True)
class RedisAddress:
    """A Redis server's address and login; ``repr`` and ``target`` never show the password."""

    host: str
    port: int = DEFAULT_PORT
    tls: bool = False
    username: str | None = None
    password: str | None = None
    db: int = 0
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None

    @property
    def target(self) -> str:
        """``host:port``: what logs and messages name."""
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def __repr__(self) -> str:
        return f"RedisAddress({'rediss' if self.tls else 'redis'}://{self.target}/{self.db})"


def redis_address(url: str) -> RedisAddress:
    """``url`` read as above, or a ``ValueError`` saying what is wrong (never quoting the URL:
    it may hold a password)."""
    if any(char.isspace() for char in url):
        raise ValueError("must not contain whitespace")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise ValueError("is not a valid URL (check the host and port)") from None
    scheme = parts.scheme.lower()
    if scheme not in ("redis", "rediss") or not parts.hostname:
        raise ValueError("must be a redis:// or rediss:// URL with a host")
    if parts.fragment:
        raise ValueError("must not have a fragment")
    if parts.path not in ("", "/") and not re.fullmatch(r"/[0-9]+", parts.path):
        raise ValueError("the path is the database number (redis://host:6379/0)")
    try:
        query = parse_qsl(parts.query, keep_blank_values=True, strict_parsing=bool(parts.query))
    except ValueError:
        raise ValueError("has a malformed query") from None
    options: dict[str, str] = {}
    for name, value in query:
        if name not in TLS_OPTIONS or scheme != "rediss":
            # Not named: a password with an unencoded "?" would be read as the query.
            raise ValueError(
                f"has a query option the gateway does not read (rediss:// takes {', '.join(TLS_OPTIONS)})"
            )
        if name in options or not value:
            raise ValueError(f"names {name} more than once or without a value")
        options[name] = value
    try:
        parts.hostname.encode("idna")
    except UnicodeError:
        raise ValueError("has a host name that cannot be encoded (IDNA)") from None
    if ("ssl_certfile" in options) != ("ssl_keyfile" in options):
        raise ValueError("takes ssl_certfile and ssl_keyfile together")
    if port == 0:
        raise ValueError("has port 0")
    try:
        username = unquote(parts.username, errors="strict") if parts.username else None
        password = unquote(parts.password, errors="strict") if parts.password is not None else None
    except UnicodeDecodeError:
        raise ValueError("has a user or password that is not UTF-8 once percent-decoded") from None
    return RedisAddress(
        host=parts.hostname,
        port=port or DEFAULT_PORT,
        tls=scheme == "rediss",
        username=username,
        password=password,
        db=int(parts.path[1:]) if len(parts.path) > 1 else 0,
        ca_file=options.get("ssl_ca_certs"),
        cert_file=options.get("ssl_certfile"),
        key_file=options.get("ssl_keyfile"),
    )
