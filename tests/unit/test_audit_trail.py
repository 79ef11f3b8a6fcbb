"""The audit trail (gateway/audit_trail/): RFC 8785 bytes, the chain, the writer, and verification."""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from gateway.audit_trail import (
    ZERO_HASH,
    AuditFileDamaged,
    AuditWriter,
    ChainBreak,
    ChainIntact,
    FsyncPolicy,
    SegmentSigner,
    verify_lines,
)
from gateway.audit_trail.canonical import JSONValue, NotCanonicalizable, canonical_json, sha256_hex
from gateway.audit_trail.chain import ChainState, append, close_segment, start
from gateway.cli import main

KEY = Ed25519PrivateKey.generate()
SIGNER = SegmentSigner("audit-2026", KEY)
OTHER_KEY = Ed25519PrivateKey.generate()


def _clock() -> Callable[[], float]:
    ticks = itertools.count(1_780_000_000_000)
    return lambda: next(ticks) / 1000


def decision(n: int) -> dict[str, JSONValue]:
    return {"subject": f"user-{n}", "route": "/mcp", "tool": "search", "outcome": "allowed", "rule": n % 7}


def chain_lines(count: int, *, segment_size: int = 10, seal_at_end: bool = True) -> list[bytes]:
    """The lines a writer would produce for ``count`` decisions (built with the pure chain)."""
    lines: list[bytes] = []
    state, clock = start(), _clock()
    for n in range(count):
        record, state = append(state, "policy_decision", decision(n), now=clock())
        lines.append(record.line())
        if state.open_records >= segment_size:
            state = _seal(state, lines, clock())
    if seal_at_end:
        _seal(state, lines, clock())
    return lines


def _seal(state: ChainState, lines: list[bytes], now: float) -> ChainState:
    sealed = close_segment(state, SIGNER, now=now)
    if sealed is None:
        return state
    lines.append(sealed[0].line())
    return sealed[1]


def verify(lines: list[bytes], key: Ed25519PrivateKey = KEY) -> ChainIntact | ChainBreak:
    return verify_lines(lines, key.public_key())


def flipped(line: bytes, position: int) -> bytes:
    return line[:position] + bytes([line[position] ^ 0x01]) + line[position + 1 :]


def forged(lines: list[bytes], index: int, edit: Callable[[dict[str, object]], None]) -> list[bytes]:
    """``lines`` with record ``index`` edited and it and every later record re-hashed, as someone
    who can write the file but has no private key would do."""
    result = lines[:index]
    prev = json.loads(lines[index - 1])["hash"] if index else ZERO_HASH
    for position, line in enumerate(lines[index:], start=index):
        record = json.loads(line)
        if position == index:
            edit(record)
        record["prev"] = prev
        del record["hash"]
        record["hash"] = prev = sha256_hex(record)
        result.append(canonical_json(record) + b"\n")
    return result


# -- RFC 8785 ----------------------------------------------------------------------------------


def test_keys_sort_by_utf16_code_units_as_rfc8785_says() -> None:
    """Object keys come out in RFC 8785 §3.2.3's example order (UTF-16, not code points)."""
    keys = ["\u20ac", "\r", "\ufb33", "1", "\U0001f600", "\u0080", "\u00f6"]
    out = canonical_json(dict.fromkeys(keys, 0)).decode("utf-8")
    assert [key for key in json.loads(out)] == [
        "\r",
        "1",
        "\u0080",
        "\u00f6",
        "\u20ac",
        "\U0001f600",
        "\ufb33",
    ]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (1.0, b"1"),
        (1e-7, b"1e-7"),
        (1e21, b"1e+21"),
        (4.50, b"4.5"),
        (-0.0, b"0"),
        ("\u2028", b'"\xe2\x80\xa8"'),
    ],
)
def test_numbers_and_strings_take_their_rfc8785_form(value: object, expected: bytes) -> None:
    """Numbers are written as ECMAScript writes them, strings escaped minimally."""
    assert canonical_json(value) == expected  # type: ignore[arg-type]


@pytest.mark.parametrize("value", [float("nan"), float("inf"), 2**53, {1: "x"}])
def test_a_value_without_a_canonical_form_is_refused(value: object) -> None:
    """NaN, infinity, integers past 2**53 - 1 and non-string keys have no RFC 8785 form."""
    with pytest.raises(NotCanonicalizable):
        canonical_json(value)  # type: ignore[arg-type]


# -- a whole chain -----------------------------------------------------------------------------


def _write(path: Path, count: int, **options: object) -> None:
    async def go() -> None:
        writer = await AuditWriter.open(path, SIGNER, clock=_clock(), **options)  # type: ignore[arg-type]
        for n in range(count):
            writer.record("policy_decision" if n % 3 else "credential_issued", decision(n))
        await writer.aclose()

    asyncio.run(go())


def test_a_thousand_decisions_written_by_the_writer_verify(tmp_path: Path) -> None:
    """1,000 decisions through the writer, then a seal: the file verifies as one intact segment."""
    path = tmp_path / "audit.jsonl"
    _write(path, 1000)
    lines = path.read_bytes().splitlines(keepends=True)
    assert len(lines) == 1001
    assert json.loads(lines[-1])["kind"] == "segment_close"
    verdict = verify(lines)
    assert verdict == ChainIntact(records=1001, segments=1, last_hash=json.loads(lines[-1])["hash"])


def test_a_seal_follows_every_segment_size_records_and_the_close(tmp_path: Path) -> None:
    """With segment_size 10, 25 records get seals after 10, 20 and (at close) 25."""
    path = tmp_path / "audit.jsonl"
    _write(path, 25, segment_size=10, fsync=FsyncPolicy.EVERY_RECORD)
    kinds = [json.loads(line)["kind"] for line in path.read_bytes().splitlines()]
    assert [number for number, kind in enumerate(kinds, start=1) if kind == "segment_close"] == [11, 22, 28]
    seal = json.loads(path.read_bytes().splitlines()[21])["event"]
    assert (seal["first_seq"], seal["last_seq"], seal["key_id"]) == (12, 21, "audit-2026")
    assert verify(path.read_bytes().splitlines(keepends=True)) == ChainIntact(
        records=28, segments=3, last_hash=json.loads(path.read_bytes().splitlines()[-1])["hash"]
    )


def test_records_carry_the_documented_fields() -> None:
    """Each line holds seq, time (RFC 3339 UTC, ms, Z), kind, event, prev, hash, in canonical form."""
    first = json.loads(chain_lines(1)[0])
    assert set(first) == {"seq", "time", "kind", "event", "prev", "hash"}
    assert first["seq"] == 1 and first["prev"] == ZERO_HASH
    assert first["time"] == "2026-05-28T20:26:40.000Z"
    assert first["event"] == decision(0)
    body = {key: value for key, value in first.items() if key != "hash"}
    assert first["hash"] == sha256_hex(body)


# -- tampering is found where it was done ------------------------------------------------------


THOUSAND = chain_lines(1000, segment_size=100)


def test_the_built_chain_is_intact() -> None:
    """The unedited 1,000-decision chain (with its 10 seals) verifies."""
    assert isinstance(verify(THOUSAND), ChainIntact)


@pytest.mark.parametrize("k", [1, 2, 50, 101, 500, 1010])
def test_flipping_a_byte_in_a_record_is_reported_at_that_line(k: int) -> None:
    """One bit changed in the middle of line k (a value, a hash, a seal) is reported at line k."""
    lines = list(THOUSAND)
    lines[k - 1] = flipped(lines[k - 1], len(lines[k - 1]) // 2)
    verdict = verify(lines)
    assert isinstance(verdict, ChainBreak)
    assert (verdict.line, verdict.kind) in {(k, "bad_hash"), (k, "malformed")}


def test_flipping_any_byte_of_a_record_is_reported_at_that_line() -> None:
    """Every single byte of line 7, its newline included, when flipped, breaks the chain at line 7."""
    lines = chain_lines(12, segment_size=5)
    for position in range(len(lines[6])):
        edited = [*lines[:6], flipped(lines[6], position), *lines[7:]]
        verdict = verify(edited)
        assert isinstance(verdict, ChainBreak), position
        assert verdict.line == 7, (position, verdict)


@pytest.mark.parametrize("k", [1, 2, 500, 101, 999])
def test_deleting_a_line_is_reported_at_its_place(k: int) -> None:
    """With line k deleted, line k holds the wrong seq: bad_sequence at line k."""
    lines = THOUSAND[: k - 1] + THOUSAND[k:]
    assert verify(lines) == ChainBreak(k, "bad_sequence", f"seq {k + 1} where {k} comes next")


def test_deleting_the_last_seal_leaves_its_segment_unsealed() -> None:
    """Without the final segment_close the last segment is truncated_segment, at its first line."""
    verdict = verify(THOUSAND[:-1])
    assert isinstance(verdict, ChainBreak)
    assert (verdict.line, verdict.kind) == (910, "truncated_segment")
    assert "records 910-1009 (lines 910-1009)" in verdict.detail


@pytest.mark.parametrize("k", [1, 42, 100, 101, 1009])
def test_swapping_two_lines_is_reported_at_the_first(k: int) -> None:
    """Lines k and k+1 swapped: bad_sequence at line k."""
    lines = list(THOUSAND)
    lines[k - 1], lines[k] = lines[k], lines[k - 1]
    verdict = verify(lines)
    assert isinstance(verdict, ChainBreak)
    assert (verdict.line, verdict.kind) == (k, "bad_sequence")


def test_a_line_respelled_with_the_same_values_is_malformed() -> None:
    """A line that parses to the same record but is not its canonical bytes is an edit."""
    lines = list(THOUSAND)
    lines[9] = json.dumps(json.loads(lines[9])).encode() + b"\n"
    assert verify(lines) == ChainBreak(10, "malformed", "not in RFC 8785 canonical form: the line was edited")


def test_a_half_written_last_line_is_malformed() -> None:
    """A last line with no newline (a write cut short) is malformed at that line."""
    lines = [*THOUSAND[:-1], THOUSAND[-1][:-1]]
    verdict = verify(lines)
    assert isinstance(verdict, ChainBreak)
    assert (verdict.line, verdict.kind) == (1010, "malformed")


def test_a_rewritten_chain_fails_at_the_next_seal() -> None:
    """Editing record 5 and re-hashing everything after it passes the hashes, not the seal."""
    lines = forged(THOUSAND, 4, lambda record: record["event"].update(outcome="denied"))  # type: ignore[attr-defined]
    verdict = verify(lines)
    assert isinstance(verdict, ChainBreak)
    assert (verdict.line, verdict.kind) == (101, "bad_signature")


def test_a_forged_signature_is_bad_signature() -> None:
    """A seal whose signature was changed (and the chain re-hashed over it) is bad_signature."""

    def corrupt(record: dict[str, object]) -> None:
        event = record["event"]
        assert isinstance(event, dict)
        event["signature"] = (
            "A" + event["signature"][1:] if event["signature"][0] != "A" else "B" + event["signature"][1:]
        )

    verdict = verify(forged(THOUSAND, 201, corrupt))
    assert isinstance(verdict, ChainBreak)
    assert (verdict.line, verdict.kind) == (202, "bad_signature")
    assert "'audit-2026'" in verdict.detail


def test_a_seal_respelled_without_the_key_is_malformed() -> None:
    """The same signature bytes spelled another way (the unused low bits of the last base64url
    character set, padding added), the chain re-hashed over it: not the one spelling, refused."""

    def respell(last: str, padding: str) -> Callable[[dict[str, object]], None]:
        def edit(record: dict[str, object]) -> None:
            event = record["event"]
            assert isinstance(event, dict)
            event["signature"] = event["signature"][:-1] + last + padding

        return edit

    original = json.loads(THOUSAND[201])["event"]["signature"]
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    low_bits = alphabet[alphabet.index(original[-1]) ^ 1]  # an 86-character signature: 2 unused bits
    for edit in (respell(low_bits, ""), respell(original[-1], "==")):
        verdict = verify(forged(THOUSAND, 201, edit))
        assert isinstance(verdict, ChainBreak) and verdict.line == 202
        assert verdict.kind == "malformed" and "canonical" in verdict.detail


def test_a_seal_over_another_range_is_bad_signature() -> None:
    """A seal that names a range other than the records it closes does not vouch for them."""
    verdict = verify(forged(THOUSAND, 100, lambda record: record["event"].update(first_seq=2)))  # type: ignore[attr-defined]
    assert isinstance(verdict, ChainBreak)
    assert (verdict.line, verdict.kind) == (101, "bad_signature")


def test_the_wrong_public_key_is_bad_signature_at_the_first_seal() -> None:
    """Checked with another key, the first seal fails."""
    verdict = verify(THOUSAND, OTHER_KEY)
    assert isinstance(verdict, ChainBreak)
    assert (verdict.line, verdict.kind) == (101, "bad_signature")


def test_a_file_that_continues_another_needs_its_previous_hash() -> None:
    """A chain started from an older file's last hash verifies with that hash, and not without."""
    older_last = json.loads(THOUSAND[-1])["hash"]
    record, state = append(start(older_last), "policy_decision", decision(1), now=1.0)
    lines = [record.line()]
    _seal(state, lines, 2.0)
    assert isinstance(verify_lines(lines, KEY.public_key(), first_prev=older_last), ChainIntact)
    verdict = verify(lines)
    assert isinstance(verdict, ChainBreak)
    assert (verdict.line, verdict.kind) == (1, "bad_hash")


# -- resuming ----------------------------------------------------------------------------------


def test_reopening_a_closed_file_continues_its_chain(tmp_path: Path) -> None:
    """A second writer on the same file goes on from the last seal: one chain, two segments."""
    path = tmp_path / "audit.jsonl"
    _write(path, 5)
    last_hash = json.loads(path.read_bytes().splitlines()[-1])["hash"]
    _write(path, 3)
    lines = path.read_bytes().splitlines(keepends=True)
    assert (json.loads(lines[6])["seq"], json.loads(lines[6])["prev"]) == (7, last_hash)
    assert verify(lines) == ChainIntact(records=10, segments=2, last_hash=json.loads(lines[-1])["hash"])


def test_reopening_after_a_crash_seals_the_unsealed_tail_too(tmp_path: Path) -> None:
    """Records left unsealed by a crash are covered by the next writer's first seal."""
    path = tmp_path / "audit.jsonl"
    path.write_bytes(b"".join(chain_lines(4, seal_at_end=False)))
    _write(path, 2)
    lines = path.read_bytes().splitlines(keepends=True)
    seal = json.loads(lines[-1])["event"]
    assert (seal["first_seq"], seal["last_seq"]) == (1, 6)
    assert isinstance(verify(lines), ChainIntact)


def test_a_writer_that_never_closes_leaves_a_truncated_segment(tmp_path: Path) -> None:
    """Without aclose, the records since the last seal are reported as truncated_segment."""
    path = tmp_path / "audit.jsonl"

    async def go() -> None:
        writer = await AuditWriter.open(path, SIGNER, segment_size=4, clock=_clock())
        for n in range(6):
            writer.record("policy_decision", decision(n))
        await writer.flush()

    asyncio.run(go())
    verdict = verify(path.read_bytes().splitlines(keepends=True))
    assert isinstance(verdict, ChainBreak)
    assert (verdict.line, verdict.kind) == (6, "truncated_segment")


@pytest.mark.parametrize(
    "tail",
    [b'{"seq":', b"not json\n"],
)
def test_a_damaged_end_stops_the_writer_from_opening(tmp_path: Path, tail: bytes) -> None:
    """A half-written or unparsable last line: the writer refuses to chain onto it."""
    path = tmp_path / "audit.jsonl"
    path.write_bytes(b"".join(chain_lines(3)) + tail)
    with pytest.raises(AuditFileDamaged):
        asyncio.run(AuditWriter.open(path, SIGNER))


def test_an_edited_last_record_stops_the_writer_from_opening(tmp_path: Path) -> None:
    """A last record whose hash no longer holds is not continued."""
    lines = chain_lines(3)
    record = json.loads(lines[-1])
    record["time"] = "2030-01-01T00:00:00.000Z"
    path = tmp_path / "audit.jsonl"
    path.write_bytes(b"".join(lines[:-1]) + canonical_json(record) + b"\n")
    with pytest.raises(AuditFileDamaged, match="hash"):
        asyncio.run(AuditWriter.open(path, SIGNER))


def test_an_event_without_a_canonical_form_is_refused_and_nothing_written(tmp_path: Path) -> None:
    """record() raises for a NaN in an event, before the chain moves on or the file changes."""
    path = tmp_path / "audit.jsonl"

    async def go() -> ChainState:
        writer = await AuditWriter.open(path, SIGNER)
        with pytest.raises(NotCanonicalizable):
            writer.record("policy_decision", {"score": float("nan")})
        state = writer.state
        await writer.aclose()
        return state

    assert asyncio.run(go()) == start()
    assert path.read_bytes() == b""


# -- the command -------------------------------------------------------------------------------


@pytest.fixture
def public_key_pem(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "audit-public.pem"
    path.write_bytes(KEY.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo))
    yield path


def test_audit_verify_exits_0_for_an_intact_file(
    tmp_path: Path, public_key_pem: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`audit verify` on an intact file prints OK with the counts and exits 0."""
    path = tmp_path / "audit.jsonl"
    path.write_bytes(b"".join(THOUSAND))
    assert main(["audit", "verify", str(path), "--public-key", str(public_key_pem)]) == 0
    assert f"{path}: OK: 1010 records in 10 sealed segments" in capsys.readouterr().out


def test_audit_verify_exits_1_and_names_the_line(
    tmp_path: Path, public_key_pem: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A broken file: exit 1 and "line N: <kind>: <detail>"."""
    path = tmp_path / "audit.jsonl"
    path.write_bytes(b"".join(THOUSAND[:41] + THOUSAND[42:]))
    assert main(["audit", "verify", str(path), "--public-key", str(public_key_pem)]) == 1
    assert capsys.readouterr().out == f"{path}: line 42: bad_sequence: seq 43 where 42 comes next\n"


def test_audit_verify_takes_the_previous_files_hash(
    tmp_path: Path, public_key_pem: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--previous-hash lets a file that continues another verify; a bad value is a usage error."""
    older_last = json.loads(THOUSAND[-1])["hash"]
    record, state = append(start(older_last), "credential_issued", {"audience": "x"}, now=1.0)
    lines = [record.line()]
    _seal(state, lines, 2.0)
    path = tmp_path / "next.jsonl"
    path.write_bytes(b"".join(lines))
    argv = ["audit", "verify", str(path), "--public-key", str(public_key_pem)]
    assert main([*argv, "--previous-hash", older_last]) == 0
    assert main(argv) == 1
    assert main([*argv, "--previous-hash", "zz"]) == 2


def test_audit_verify_exits_2_for_unusable_input(
    tmp_path: Path, public_key_pem: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A missing file, a key that is not an Ed25519 PEM, or no --public-key: exit 2."""
    path = tmp_path / "audit.jsonl"
    path.write_bytes(b"".join(THOUSAND))
    not_a_key = tmp_path / "junk.pem"
    not_a_key.write_text("hello")
    assert main(["audit", "verify", str(tmp_path / "absent"), "--public-key", str(public_key_pem)]) == 2
    assert main(["audit", "verify", str(path), "--public-key", str(not_a_key)]) == 2
    assert main(["audit", "verify", str(path), "--public-key", str(tmp_path / "absent.pem")]) == 2
    # A public key of a type cryptography does not know (an unknown algorithm OID): no traceback.
    unknown = tmp_path / "unknown.pem"
    der = bytes.fromhex("3012300506032a03040309000102030405060708")  # OID 1.2.3.4, 8 key bytes
    unknown.write_text(
        "-----BEGIN PUBLIC KEY-----\n" + base64.b64encode(der).decode() + "\n-----END PUBLIC KEY-----\n"
    )
    assert main(["audit", "verify", str(path), "--public-key", str(unknown)]) == 2
    with pytest.raises(SystemExit) as exited:
        main(["audit", "verify", str(path)])
    assert exited.value.code == 2
