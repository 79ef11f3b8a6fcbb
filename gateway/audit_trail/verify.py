"""Checking an audit file: the first place its chain or its seals break, or that it is intact.

``verify_lines`` is pure: lines in (as read from the file, newlines kept), one verdict out. Each
line is checked in this order, and the first failure is the answer, so a single edit is reported
where it was made:

1. ``malformed``: not strict JSON, not a record's shape, or not byte for byte the record's RFC 8785
   form (the writer writes nothing else, so any other spelling is an edit even if it parses to
   the same values), or cut short with no newline (a partial write);
2. ``bad_sequence``: ``seq`` is not one more than the line before's (a deleted, inserted or
   reordered line);
3. ``bad_hash``: ``hash`` is not the SHA-256 of the record's other fields (an edited record), or
   ``prev`` is not the hash of the line before (a record replaced along with its ``seq``);
4. ``bad_signature``: a ``segment_close`` whose seal is not over exactly the records since the one
   before, or whose signature does not verify with the given public key (a rewritten chain, or the
   wrong key).

At the end, records after the last seal are ``truncated_segment``, reported at the first of them:
nothing vouches for them (the writer stopped before sealing, or the file was cut). The command
``mcp-auth-gateway audit verify`` is ``run``: exit 0 intact, 1 broken, 2 for unusable input.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final, Literal, TypeAlias

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from ..strictjson import StrictJSONError, loads_strict
from .canonical import NotCanonicalizable, canonical_json, sha256_hex
from .chain import (
    SEGMENT_CLOSE,
    ZERO_HASH,
    MalformedRecord,
    Record,
    is_hash,
    parse_record,
    parse_seal,
    signature_holds,
)

BreakKind: TypeAlias = Literal["bad_hash", "bad_sequence", "bad_signature", "malformed", "truncated_segment"]

EXIT_INTACT: Final = 0
EXIT_BROKEN: Final = 1
EXIT_USAGE: Final = 2


@dataclass(frozen=True, slots=True)
class ChainBreak:
    """The first place the file stops being trustworthy."""

    line: int
    kind: BreakKind
    detail: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.kind}: {self.detail}"


@dataclass(frozen=True, slots=True)
class ChainIntact:
    """Every record is chained and sealed."""

    records: int  # all lines, seals included
    segments: int
    last_hash: str


def _check_line(raw: bytes) -> Record | str:
    """The line's record, or why it is malformed."""
    if not raw.endswith(b"\n"):
        return "cut short (no newline at the end): a partial write"
    try:
        record = parse_record(loads_strict(raw[:-1]))
        canonical = canonical_json(record.to_json())
    except (StrictJSONError, MalformedRecord, NotCanonicalizable) as exc:
        return str(exc)
    if canonical != raw[:-1]:
        return "not in RFC 8785 canonical form: the line was edited"
    return record


def verify_lines(
    lines: Iterable[bytes], public_key: Ed25519PublicKey, *, first_prev: str = ZERO_HASH
) -> ChainIntact | ChainBreak:
    """The first break in the chain of ``lines``, or ``ChainIntact``. ``first_prev`` is what the
    first record's ``prev`` must be: 64 zeros, or the last hash of the file this one continues."""
    prev, expected_seq, segments = first_prev, 1, 0
    segment_first_seq, segment_first_line = 1, 0  # line 0: no open record
    number = 0
    for number, raw in enumerate(lines, start=1):
        record = _check_line(raw)
        if isinstance(record, str):
            return ChainBreak(number, "malformed", record)
        if record.seq != expected_seq:
            return ChainBreak(number, "bad_sequence", f"seq {record.seq} where {expected_seq} comes next")
        if sha256_hex(record.body()) != record.hash:
            return ChainBreak(number, "bad_hash", "the record's hash does not match its contents")
        if record.prev != prev:
            where = f"line {number - 1}'s hash" if number > 1 else f"the chain's start ({prev[:12]}…)"
            return ChainBreak(number, "bad_hash", f"prev does not match {where}")
        if record.kind == SEGMENT_CLOSE:
            problem = _seal_problem(record, segment_first_seq, public_key)
            if problem is not None:
                return ChainBreak(number, *problem)
            segments += 1
            segment_first_seq, segment_first_line = record.seq + 1, 0
        elif segment_first_line == 0:
            segment_first_line = number
        prev, expected_seq = record.hash, record.seq + 1
    if segment_first_line:
        return ChainBreak(
            segment_first_line,
            "truncated_segment",
            f"records {segment_first_seq}-{expected_seq - 1} (lines {segment_first_line}-{number}) "
            "are not sealed by a segment_close: the writer stopped before sealing, or the file was cut",
        )
    return ChainIntact(records=number, segments=segments, last_hash=prev)


def _seal_problem(
    record: Record, segment_first_seq: int, public_key: Ed25519PublicKey
) -> tuple[BreakKind, str] | None:
    """Why a ``segment_close`` record does not vouch for the segment it ends, if it does not."""
    try:
        seal, signature = parse_seal(record)
    except MalformedRecord as exc:
        return "malformed", str(exc)
    covers = (segment_first_seq, record.seq - 1, record.prev)
    if (seal.first_seq, seal.last_seq, seal.last_hash) != covers:
        return "bad_signature", (
            f"the seal covers records {seal.first_seq}-{seal.last_seq}, but closes "
            f"{segment_first_seq}-{record.seq - 1}"
            + ("" if seal.last_hash == record.prev else " and names another last hash")
        )
    if not signature_holds(seal, signature, public_key):
        return (
            "bad_signature",
            f"the signature by key {seal.key_id!r} does not verify with the given public key",
        )
    return None


def load_public_key(pem: bytes) -> Ed25519PublicKey:
    """An Ed25519 public key from PEM (``ValueError`` for anything else)."""
    key = load_pem_public_key(pem)
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError("not an Ed25519 public key")
    return key


def run(path: str, *, public_key_path: str, previous_hash: str = ZERO_HASH) -> int:
    """``audit verify``: print the verdict; exit 0 intact, 1 broken, 2 unusable input."""
    if not is_hash(previous_hash):
        print(f"--previous-hash: {previous_hash!r} is not 64 lower-case hex digits", file=sys.stderr)
        return EXIT_USAGE
    try:
        with open(public_key_path, "rb") as pem:
            public_key = load_public_key(pem.read())
    except (OSError, ValueError, UnsupportedAlgorithm) as exc:
        print(f"--public-key {public_key_path}: {exc or type(exc).__name__}", file=sys.stderr)
        return EXIT_USAGE
    try:
        with open(path, "rb") as lines:
            verdict = verify_lines(lines, public_key, first_prev=previous_hash)
    except OSError as exc:
        print(f"{path}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if isinstance(verdict, ChainBreak):
        print(f"{path}: {verdict}")
        return EXIT_BROKEN
    print(
        f"{path}: OK: {verdict.records} records in {verdict.segments} sealed segments, "
        f"last hash {verdict.last_hash}"
    )
    return EXIT_INTACT
