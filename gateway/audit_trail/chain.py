"""Building the hash chain: one record per audited event, a signed seal every N records.

A record is one JSON line (RFC 8785 canonical form, ``canonical.py``) with exactly these fields:

- ``seq``: 1, 2, 3, ... in the file, with no gap; a deleted or reordered line breaks it;
- ``time``: the recorder's clock, RFC 3339 UTC with milliseconds and ``Z``;
- ``kind``: ``policy_decision`` or ``credential_issued`` (an audited event), or ``segment_close``;
- ``event``: the event's own fields (for ``segment_close``: the seal, below);
- ``prev``: the ``hash`` of the record before, 64 zeros for a chain's first record (or, for a
  file that continues an older one, the older file's last hash);
- ``hash``: hex SHA-256 of the canonical JSON of every other field of this record, ``prev``
  included, so a change anywhere in a record shows at that record, and a change to one record
  cannot be hidden without rewriting every later one.

Rewriting every later record is possible for whoever can write the file, so a ``segment_close``
record follows every ``segment_size`` events and ends the file at close: its ``event`` holds
``first_seq``, ``last_seq`` and ``last_hash`` (the range it seals and the hash of its last record),
``key_id``, and ``signature``: Ed25519 (RFC 8032) over the canonical JSON of those four, unpadded
base64url. Without the private key a rewritten chain has no valid seal.

How this maps onto SEP-3004 ("Tamper-Evident Audit Record Contract", a draft MCP SEP, read from
modelcontextprotocol/modelcontextprotocol PR #3004): ``seq`` is ``event_id`` (unique in the
chain); ``time`` is ``occurred_at`` in the same form (§2.3); ``kind`` is ``event_type``; the
event's ``subject``, tool or resource name and allow/deny decision are ``principal_id``,
``tool_name`` and ``outcome``, and the rest of ``event`` is what the SEP puts under an
``extensions`` entry; ``prev`` and ``hash`` are ``previous_hash`` and ``event_hash``, computed the
same way (§2.4: SHA-256 over the canonical body without the hash, own ``previous_hash``
included). Differences an exporter would bridge: the SEP's first record has ``previous_hash:
null`` where this has 64 zeros; its v1 canonical form allows no bare numbers (``seq`` is one
here; RFC 8785 gives numbers one form, which is why this chain uses it); and it defines no
signature (§2.8 leaves anchoring open), which the seals add.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Final, Literal, TypeAlias, get_args

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from .canonical import HASH_HEX_LENGTH, JSONValue, canonical_json

EventKind: TypeAlias = Literal["policy_decision", "credential_issued"]
EVENT_KINDS: Final = frozenset(get_args(EventKind))
SEGMENT_CLOSE: Final = "segment_close"
RECORD_KINDS: Final = EVENT_KINDS | {SEGMENT_CLOSE}
RECORD_FIELDS: Final = frozenset({"seq", "time", "kind", "event", "prev", "hash"})
SEAL_FIELDS: Final = frozenset({"first_seq", "last_seq", "last_hash", "key_id", "signature"})
ZERO_HASH: Final = "0" * HASH_HEX_LENGTH
DEFAULT_SEGMENT_SIZE: Final = 1000
_HEX_DIGITS: Final = frozenset("0123456789abcdef")


class MalformedRecord(ValueError):
    """A line is not a record of this chain's shape; the message says what is wrong."""


@dataclass(frozen=True, slots=True)
class Record:
    """One line of the audit file."""

    seq: int
    time: str
    kind: str
    event: Mapping[str, JSONValue]
    prev: str
    hash: str
    # The line, when the record was built here (``_record``); a parsed record computes its own.
    built_line: bytes | None = field(default=None, repr=False, compare=False)

    def body(self) -> dict[str, JSONValue]:
        """Every field the hash covers: all of them but ``hash``."""
        return {
            "seq": self.seq,
            "time": self.time,
            "kind": self.kind,
            "event": dict(self.event),
            "prev": self.prev,
        }

    def to_json(self) -> dict[str, JSONValue]:
        return {**self.body(), "hash": self.hash}

    def line(self) -> bytes:
        """The record as the file holds it: canonical JSON and a newline."""
        if self.built_line is not None:
            return self.built_line
        return canonical_json(self.to_json()) + b"\n"


@dataclass(frozen=True, slots=True)
class Seal:
    """What a ``segment_close`` record vouches for."""

    first_seq: int
    last_seq: int
    last_hash: str
    key_id: str

    def payload(self) -> bytes:
        """The bytes the signature is over."""
        return canonical_json(
            {
                "first_seq": self.first_seq,
                "last_seq": self.last_seq,
                "last_hash": self.last_hash,
                "key_id": self.key_id,
            }
        )


@dataclass(frozen=True, slots=True)
class SegmentSigner:
    """The Ed25519 key that seals segments, and the id the seals name it by."""

    key_id: str
    private_key: Ed25519PrivateKey = field(repr=False)

    def public_key(self) -> Ed25519PublicKey:
        return self.private_key.public_key()


@dataclass(frozen=True, slots=True)
class ChainState:
    """Where the next record goes: its ``seq``, its ``prev``, and where the open segment began."""

    next_seq: int
    prev: str
    segment_first_seq: int

    @property
    def open_records(self) -> int:
        """Records since the last seal (0: nothing to seal)."""
        return self.next_seq - self.segment_first_seq


def start(prev: str = ZERO_HASH) -> ChainState:
    """A new file's chain: ``prev`` is 64 zeros, or the last hash of the file it continues."""
    return ChainState(next_seq=1, prev=prev, segment_first_seq=1)


def resumed(last: Record, segment_first_seq: int) -> ChainState:
    """The chain after ``last``, the open segment having begun at ``segment_first_seq``."""
    return ChainState(next_seq=last.seq + 1, prev=last.hash, segment_first_seq=segment_first_seq)


def format_time(now: float) -> str:
    """``2026-06-02T12:00:00.000Z``: RFC 3339, UTC, milliseconds (SEP-3004 §2.3's form)."""
    return datetime.fromtimestamp(now, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _record(state: ChainState, kind: str, event: Mapping[str, JSONValue], now: float) -> Record:
    """The record, hashed, with its line. The event is serialised once: the body and the line
    are the same RFC 8785 object but for ``hash``, whose key sorts between ``event`` and
    ``kind``, so both are put together around the event's canonical bytes (the other members
    are the chain's own: an int, ASCII strings). tests/unit/test_audit_trail_runtime.py holds
    the result to ``canonical_json`` of ``body()`` and ``to_json()``."""
    event = dict(event)
    time = format_time(now)
    head = b'{"event":' + canonical_json(event)
    tail = (
        b'"kind":' + canonical_json(kind) + b',"prev":' + canonical_json(state.prev)
        + b',"seq":' + str(state.next_seq).encode("ascii") + b',"time":' + canonical_json(time) + b"}"
    )  # fmt: skip
    digest = hashlib.sha256(head + b"," + tail).hexdigest()
    line = head + b',"hash":"' + digest.encode("ascii") + b'",' + tail + b"\n"
    return Record(state.next_seq, time, kind, event, state.prev, digest, built_line=line)


def append(
    state: ChainState, kind: EventKind, event: Mapping[str, JSONValue], *, now: float
) -> tuple[Record, ChainState]:
    """The record of one event and the chain after it (raises ``NotCanonicalizable`` for an
    event with no RFC 8785 form, before anything is written)."""
    if kind not in EVENT_KINDS:
        raise ValueError(f"not an audited event kind: {kind!r}")
    record = _record(state, kind, event, now)
    return record, ChainState(record.seq + 1, record.hash, state.segment_first_seq)


def close_segment(
    state: ChainState, signer: SegmentSigner, *, now: float
) -> tuple[Record, ChainState] | None:
    """The ``segment_close`` record sealing the open segment, and the chain after it; ``None``
    when no record is open (a seal over nothing would only add noise)."""
    if state.open_records == 0:
        return None
    seal = Seal(state.segment_first_seq, state.next_seq - 1, state.prev, signer.key_id)
    signature = signer.private_key.sign(seal.payload())
    event: dict[str, JSONValue] = {
        "first_seq": seal.first_seq,
        "last_seq": seal.last_seq,
        "last_hash": seal.last_hash,
        "key_id": seal.key_id,
        "signature": _b64url(signature),
    }
    record = _record(state, SEGMENT_CLOSE, event, now)
    return record, ChainState(record.seq + 1, record.hash, record.seq + 1)


def is_hash(value: object) -> bool:
    return isinstance(value, str) and len(value) == HASH_HEX_LENGTH and set(value) <= _HEX_DIGITS


def _positive_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def parse_record(value: object) -> Record:
    """A parsed JSON line as a ``Record``, or ``MalformedRecord`` naming the first wrong field."""
    if not isinstance(value, dict):
        raise MalformedRecord("not a JSON object")
    if set(value) != RECORD_FIELDS:
        missing, extra = sorted(RECORD_FIELDS - set(value)), sorted(set(value) - RECORD_FIELDS)
        raise MalformedRecord(f"fields missing {missing}, unexpected {extra}")
    if not _positive_int(value["seq"]):
        raise MalformedRecord("seq is not a positive integer")
    if not isinstance(value["time"], str):
        raise MalformedRecord("time is not a string")
    if value["kind"] not in RECORD_KINDS:
        raise MalformedRecord(f"kind is not one of {sorted(RECORD_KINDS)}")
    if not isinstance(value["event"], dict):
        raise MalformedRecord("event is not an object")
    for name in ("prev", "hash"):
        if not is_hash(value[name]):
            raise MalformedRecord(f"{name} is not 64 lower-case hex digits")
    return Record(value["seq"], value["time"], value["kind"], value["event"], value["prev"], value["hash"])


def _b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def parse_seal(record: Record) -> tuple[Seal, bytes]:
    """The seal a ``segment_close`` record carries and its signature bytes."""
    event = record.event
    if set(event) != SEAL_FIELDS:
        raise MalformedRecord(f"segment_close event fields are not {sorted(SEAL_FIELDS)}")
    if not (_positive_int(event["first_seq"]) and _positive_int(event["last_seq"])):
        raise MalformedRecord("first_seq and last_seq are not positive integers")
    if not is_hash(event["last_hash"]) or not isinstance(event["key_id"], str):
        raise MalformedRecord("last_hash is not a hash or key_id not a string")
    signature = event["signature"]
    if not isinstance(signature, str):
        raise MalformedRecord("signature is not a string")
    try:
        raw = base64.urlsafe_b64decode(signature + "=" * (-len(signature) % 4))
    except (binascii.Error, ValueError) as exc:
        raise MalformedRecord("signature is not base64url") from exc
    # One spelling per signature: unused low bits set, padding or other alphabets would let a
    # seal be re-spelled (and its record re-hashed) without the key.
    if _b64url(raw) != signature:
        raise MalformedRecord("signature is not canonical unpadded base64url")
    seal = Seal(event["first_seq"], event["last_seq"], event["last_hash"], event["key_id"])  # type: ignore[arg-type]
    return seal, raw


def signature_holds(seal: Seal, signature: bytes, public_key: Ed25519PublicKey) -> bool:
    try:
        public_key.verify(signature, seal.payload())
    except InvalidSignature:
        return False
    return True
