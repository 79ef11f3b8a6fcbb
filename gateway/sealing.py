"""State handles an upstream gives a client, sealed to the caller they were given to.

An upstream hands a client handles to come back with: ``Mcp-Session-Id`` and the SSE event ids
a client resumes from with ``Last-Event-ID`` (MCP 2025-03-26 … 2025-11-25), and task ids
(2025-11-25 tasks). Whoever holds one can use it, and the upstreams
behind the gateway cannot tell users apart, so the gateway binds each handle to its principal:
the client only ever sees the handle *sealed*, and every handle a client sends back is opened
and checked before the upstream sees it.

Sealing is AES-SIV (RFC 5297), a deterministic AEAD: the plaintext is the upstream's handle, the
associated data are the kind of handle, the route, and the (issuer, subject) of the caller. A
handle opened with another caller's associated data fails exactly as a forged, truncated or
unknown one does, so another user's session and no session get the same answer. Deterministic,
so one upstream session is one sealed id for its owner on every response (clients compare them).
Stateless: any gateway process holding the key opens it, so ``--workers N``, replicas behind a
load balancer without sticky sessions and restarts all keep working, with no shared store.

A sealed handle reads ``<key id>.<base64url>``: the key id picks the key (rotation: new handles
use the active key, the others still open), and base64url (RFC 4648 §5, unpadded, canonical) is
visible ASCII, as ``Mcp-Session-Id`` must be.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
from collections.abc import Sequence
from typing import Final, Literal, TypeAlias

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESSIV
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

__all__ = [
    "EPHEMERAL_KEY_ID",
    "KEY_ID",
    "MIN_SECRET_BYTES",
    "PROCESS_KEY_ENV",
    "HandleKind",
    "StateSealer",
    "process_sealer",
]

# "dpop-nonce": not a handle of the upstream's but the gateway's own RFC 9449 §8 server nonce,
# a sealed timestamp (gateway.auth.dpop.DpopNonces), stateless for the same reasons.
HandleKind: TypeAlias = Literal["session", "event", "task", "dpop-nonce"]

KEY_ID: Final = re.compile(r"[A-Za-z0-9_-]{1,32}")
"""What a configured key id may be: it is written into every handle, before the dot."""

MIN_SECRET_BYTES: Final = 32
"""A configured secret is stretched by HKDF, not made stronger by it: 256 bits at least."""

EPHEMERAL_KEY_ID: Final = "ephemeral"
"""The key id of the random key used when no ``state_keys`` are configured."""

PROCESS_KEY_ENV: Final = "MCP_GATEWAY_EPHEMERAL_STATE_KEY"
"""How ``serve --workers N`` hands its workers one random key (hex), so they open each other's
handles: a client's next connection may land on any worker (SO_REUSEPORT)."""

# The longest sealed handle opened: a longer one is refused without decoding (cheap refusal).
_MAX_SEALED_CHARS: Final = 2048
_HKDF_INFO: Final = b"mcp-auth-gateway state handle v1"
_BASE64URL: Final = re.compile(r"[A-Za-z0-9_-]+")


def _derive(secret: bytes) -> AESSIV:
    """AES-256-SIV keyed from a configured secret (HKDF-SHA256, RFC 5869)."""
    key = HKDF(algorithm=hashes.SHA256(), length=64, salt=None, info=_HKDF_INFO).derive(secret)
    return AESSIV(key)


def _encode(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _decode(text: str) -> bytes | None:
    """Canonical unpadded base64url only: one handle, one spelling."""
    if not _BASE64URL.fullmatch(text) or len(text) % 4 == 1:
        return None
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        return None
    return raw if _encode(raw) == text else None


class StateSealer:
    """Seals and opens state handles with a key set: one active key, older ones still opening."""

    __slots__ = ("_active", "_ciphers", "ephemeral")

    def __init__(self, keys: Sequence[tuple[str, bytes]], active: str, *, ephemeral: bool = False) -> None:
        ciphers: dict[str, AESSIV] = {}
        for key_id, secret in keys:
            if not KEY_ID.fullmatch(key_id) or key_id in ciphers:
                raise ValueError(f"bad or repeated state key id {key_id!r}")
            if len(secret) < MIN_SECRET_BYTES:
                raise ValueError(f"state key {key_id!r} is shorter than {MIN_SECRET_BYTES} bytes")
            ciphers[key_id] = _derive(secret)
        if active not in ciphers:
            raise ValueError(f"no state key has id {active!r}")
        self._ciphers = ciphers
        self._active = active
        # True for the random key of one process: handles do not survive it or reach its siblings.
        self.ephemeral = ephemeral

    def seal(self, kind: HandleKind, handle: str, binding: Sequence[str]) -> str:
        """``handle`` as only a caller with the same ``binding`` can send it back."""
        cipher = self._ciphers[self._active]
        sealed = cipher.encrypt(handle.encode("utf-8", "surrogatepass"), _associated(kind, binding))
        return f"{self._active}.{_encode(sealed)}"

    def open(self, kind: HandleKind, sealed: str, binding: Sequence[str]) -> str | None:
        """The upstream's handle, or None for anything not sealed by us for this ``binding``."""
        if len(sealed) > _MAX_SEALED_CHARS:
            return None
        key_id, dot, payload = sealed.partition(".")
        cipher = self._ciphers.get(key_id) if dot else None
        raw = _decode(payload) if cipher is not None else None
        if cipher is None or raw is None:
            return None
        try:
            return cipher.decrypt(raw, _associated(kind, binding)).decode("utf-8", "surrogatepass")
        except (InvalidTag, UnicodeDecodeError):
            return None


def _associated(kind: HandleKind, binding: Sequence[str]) -> list[bytes]:
    # Separate components (S2V MACs each one): ("a", "bc") and ("ab", "c") never collide.
    # surrogatepass: header values and JSON strings may hold lone surrogates; they still bind.
    return [kind.encode("ascii"), *(part.encode("utf-8", "surrogatepass") for part in binding)]


_process_sealer: StateSealer | None = None


def process_sealer() -> StateSealer:
    """The sealer of a gateway without ``state_keys``: one random key for this process's life.

    The same across config reloads (a reload must not end every session). The supervisor of
    ``--workers N`` passes its workers one key in ``PROCESS_KEY_ENV``; otherwise it is new
    here. Either way it dies with the process: a restart or another replica cannot open the
    handles it sealed (``check-config`` says so).
    """
    global _process_sealer  # one key per process is the point
    if _process_sealer is None:
        handed = os.environ.get(PROCESS_KEY_ENV)
        secret = bytes.fromhex(handed) if handed else os.urandom(MIN_SECRET_BYTES)
        _process_sealer = StateSealer([(EPHEMERAL_KEY_ID, secret)], EPHEMERAL_KEY_ID, ephemeral=True)
    return _process_sealer
