"""The audit trail at run time (gateway/audit_trail/trail.py, otlp.py, the writer's sinks) and the
credentials it is told of (``IssuedCredential``)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import threading
from pathlib import Path
from typing import Any

import pytest
import rfc8785
import structlog
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.audit_trail import (
    AuditKeyChanged,
    AuditWriteFailed,
    AuditWriter,
    ChainIntact,
    SegmentSigner,
    verify_lines,
)
from gateway.audit_trail.canonical import MAX_EXACT_INTEGER, canonical_json, json_safe, sha256_hex
from gateway.audit_trail.chain import ChainState, Record, append, parse_record
from gateway.audit_trail.otlp import OtlpSink
from gateway.audit_trail.trail import AuditTrail, replace_audit_file, worker_audit_file
from gateway.audit_trail.writer import FailureReport
from gateway.cli import audit_summary
from gateway.config import AuditConfig, MintedCredential, OtlpConfig, parse_config_text
from gateway.metrics import GatewayMetrics
from gateway.principal import Principal
from gateway.upstream.credentials import IssuedCredential, MintedCredentialStrategy
from gateway.upstream.exchange import unverified_jti
from gateway.upstream.minting import TokenMinter
from tests.support.otlp_receiver import serving_otlp
from tests.unit.test_credentials import AUDIENCE, caller, key_path, minter  # noqa: F401  (fixtures)

KEY = Ed25519PrivateKey.generate()
SIGNER = SegmentSigner("audit-unit", KEY)


def lines_of(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


class ListSink:
    """A line sink keeping what it gets; ``fail_at``: the write (1-based) that raises."""

    def __init__(self, fail_at: int | None = None) -> None:
        self.lines: list[bytes] = []
        self.records: list[Record] = []
        self.fail_at = fail_at
        self.closed_with_sync: bool | None = None

    def write(self, record: Record, line: bytes, sync: bool) -> None:
        if self.fail_at is not None and len(self.lines) + 1 == self.fail_at:
            raise OSError(28, "No space left on device")
        self.lines.append(line)
        self.records.append(record)

    def close(self, sync: bool) -> None:
        self.closed_with_sync = sync


# --- json_safe and worker files (pure) -----------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ({"a": (1, 2), 3: None}, {"a": [1, 2], "3": None}),
        ({"big": 2**60, "edge": MAX_EXACT_INTEGER}, {"big": str(2**60), "edge": MAX_EXACT_INTEGER}),
        ([float("nan"), float("inf"), 1.5], ["nan", "inf", 1.5]),
        (frozenset({"b", "a"}), ["a", "b"]),
        ({"nested": [{"x": object}]}, {"nested": [{"x": str(object)}]}),
        (True, True),
    ],
)
def test_json_safe_gives_every_value_an_rfc8785_form(value: Any, expected: Any) -> None:
    """Tuples and sets become lists, keys strings; numbers JSON cannot hold exactly become strings."""
    assert json_safe(value) == expected
    canonical_json(json_safe(value))  # and it has a canonical form


@pytest.mark.parametrize(
    ("name", "worker", "expected"),
    [
        ("audit.jsonl", 0, "audit.worker-0.jsonl"),
        ("trail", 3, "trail.worker-3"),
        ("a.b.log", 1, "a.b.worker-1.log"),
    ],
)
def test_each_worker_has_its_own_file_named_by_its_index(name: str, worker: int, expected: str) -> None:
    """`audit.jsonl` → `audit.worker-<i>.jsonl`, in the same folder, the same for every start of i."""
    path = Path("/var/log/gw") / name
    assert worker_audit_file(path, worker) == Path("/var/log/gw") / expected
    config = AuditConfig(signing_key=Path("/k.pem"), key_id="k", file=path)
    replaced = replace_audit_file(config, worker)
    assert replaced is not None and replaced.file == Path("/var/log/gw") / expected
    otlp = AuditConfig(signing_key=Path("/k.pem"), key_id="k", otlp=OtlpConfig("http://c:4318"))
    assert replace_audit_file(otlp, worker) == otlp


# --- the writer over a sink ----------------------------------------------------------------------


def test_a_writer_over_any_sink_builds_the_same_verifiable_chain() -> None:
    """`AuditWriter.over` chains and seals as for a file: the sink's lines verify, seals included."""
    sink = ListSink()

    async def go() -> None:
        writer = await AuditWriter.over(lambda _fail: sink, SIGNER, segment_size=5)
        for n in range(12):
            writer.record("policy_decision", {"n": n})
        await writer.aclose()

    asyncio.run(go())
    verdict = verify_lines(sink.lines, KEY.public_key())
    assert verdict == ChainIntact(records=15, segments=3, last_hash=sink.records[-1].hash)
    assert sink.closed_with_sync is True


def test_the_first_failed_write_stops_the_writer_and_is_reported_once() -> None:
    """The 3rd write fails: on_failure hears of it once, nothing after is handed to the sink (no
    gap hidden), record() then raises, and the close does not sync."""
    sink = ListSink(fail_at=3)
    reports: list[OSError] = []

    async def go() -> None:
        writer = await AuditWriter.over(lambda _fail: sink, SIGNER, on_failure=reports.append)
        for n in range(5):
            writer.record("policy_decision", {"n": n})
        with pytest.raises(AuditWriteFailed, match="No space left"):
            await writer.flush()
        with pytest.raises(AuditWriteFailed):
            writer.record("policy_decision", {"n": 99})
        with pytest.raises(AuditWriteFailed):
            await writer.aclose()

    asyncio.run(go())
    assert [json.loads(line)["event"]["n"] for line in sink.lines] == [0, 1]
    assert len(reports) == 1 and reports[0].errno == 28
    assert sink.closed_with_sync is False


def test_a_sink_reports_a_later_failure_from_its_own_thread() -> None:
    """A sink that learns of a loss on another thread (an exporter) calls `fail`: the writer stops."""
    handed: list[FailureReport] = []
    sink = ListSink()

    def make(fail: FailureReport) -> ListSink:
        handed.append(fail)
        return sink

    async def go() -> AuditWriter:
        writer = await AuditWriter.over(make, SIGNER)
        writer.record("policy_decision", {"n": 1})
        await writer.flush()
        thread = threading.Thread(target=handed[0], args=(OSError("export refused"),))
        thread.start()
        await asyncio.to_thread(thread.join)
        with pytest.raises(AuditWriteFailed, match="export refused"):
            writer.record("policy_decision", {"n": 2})
        return writer

    writer = asyncio.run(go())
    assert isinstance(writer.failure, OSError) and len(sink.lines) == 1


# --- the trail ---------------------------------------------------------------------------------


@pytest.fixture
def signing_key(tmp_path: Path) -> Path:
    path = tmp_path / "audit.pem"
    path.write_bytes(KEY.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))
    return path


def test_the_trail_records_what_the_log_would_show_and_counts_it(tmp_path: Path, signing_key: Path) -> None:
    """A recorded event is redacted as the log redacts it (a JWT-shaped value, a secret-named key),
    made canonicalizable, carries the request id, and is counted by kind; the file verifies."""
    path = tmp_path / "audit.jsonl"
    metrics = GatewayMetrics()
    trail = AuditTrail(AuditConfig(signing_key=signing_key, key_id="k1", file=path), metrics)
    jwt_shaped = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl"

    async def go() -> None:
        await trail.open()
        structlog.contextvars.bind_contextvars(request_id="r-1")
        try:
            trail.record(
                "policy_decision",
                {"subject": "alice", "arguments": {"note": jwt_shaped, "api_key": "k", "n": 2**60}},
            )
        finally:
            structlog.contextvars.clear_contextvars()
        await trail.aclose()

    asyncio.run(go())
    lines = lines_of(path)
    assert isinstance(verify_lines(lines, KEY.public_key()), ChainIntact)
    event = json.loads(lines[0])["event"]
    assert event == {
        "subject": "alice",
        "arguments": {"note": "***", "api_key": "***", "n": str(2**60)},
        "request_id": "r-1",
    }
    assert jwt_shaped.encode() not in path.read_bytes()
    assert metrics.audit_records.labels("policy_decision")._value.get() == 1
    assert (trail.status, trail.ready) == ("ok", True)


def test_without_include_subject_the_trail_leaves_out_who_as_the_log_does(
    tmp_path: Path, signing_key: Path
) -> None:
    """`logging.include_subject: false`: no subject, client_id or actor in the trail either."""
    path = tmp_path / "audit.jsonl"
    config = AuditConfig(signing_key=signing_key, key_id="k1", file=path)
    trail = AuditTrail(config, GatewayMetrics(), include_subject=False)

    async def go() -> None:
        await trail.open()
        trail.record(
            "credential_issued", {"subject": "a", "client_id": "c", "actor": {"sub": "x"}, "kind": "m"}
        )
        await trail.aclose()

    asyncio.run(go())
    assert json.loads(lines_of(path)[0])["event"] == {"kind": "m"}


def test_no_trail_configured_records_nothing_and_is_always_ready() -> None:
    """Without `audit:`, the trail is disabled: record is a no-op, check_recording never refuses."""
    trail = AuditTrail(None, GatewayMetrics())

    async def go() -> None:
        await trail.open()
        trail.record("policy_decision", {"x": 1})
        trail.check_recording()
        await trail.aclose()

    asyncio.run(go())
    assert (trail.enabled, trail.status, trail.ready) == (False, None, True)


# --- the OTLP sink -----------------------------------------------------------------------------


def test_the_otlp_sink_exports_each_record_with_its_line_as_body() -> None:
    """Through a real OTLP/HTTP receiver: bodies in seq order verify; attributes and time match."""

    async def go() -> list[Any]:
        async with serving_otlp() as receiver:
            config = OtlpConfig(endpoint=receiver.endpoint, timeout_s=5)
            writer = await AuditWriter.over(lambda fail: OtlpSink(config, fail), SIGNER, segment_size=3)
            for n in range(7):
                writer.record("policy_decision", {"n": n})
            await writer.aclose()
            await receiver.wait_for(lambda r: len(r.logs) >= 10)
            return list(receiver.logs)

    logs = asyncio.run(go())
    ordered = sorted(logs, key=lambda log: log.attributes["audit.seq"])
    lines = [log.body.encode() + b"\n" for log in ordered]
    assert isinstance(verify_lines(lines, KEY.public_key()), ChainIntact)
    record = json.loads(ordered[0].body)
    assert ordered[0].attributes["audit.hash"] == record["hash"]
    assert ordered[0].attributes["audit.kind"] == "policy_decision"
    assert ordered[0].time_ns % 1_000_000 == 0 and ordered[0].time_ns > 0


def test_an_export_the_collector_refuses_stops_the_writer() -> None:
    """A collector answering 400: the export fails, on_failure is told, the writer stops."""
    reports: list[OSError] = []

    async def go() -> AuditWriter:
        async with serving_otlp() as receiver:
            receiver.status = 400
            config = OtlpConfig(endpoint=receiver.endpoint, timeout_s=2)
            writer = await AuditWriter.over(
                lambda fail: OtlpSink(config, fail), SIGNER, segment_size=1, on_failure=reports.append
            )
            writer.record("policy_decision", {"n": 0})  # its seal syncs: the export is awaited
            with pytest.raises(AuditWriteFailed):
                await writer.aclose()
            return writer

    writer = asyncio.run(go())
    assert len(reports) == 1 and "/v1/logs" in str(reports[0])
    assert writer.failure is reports[0]


# --- credentials issued --------------------------------------------------------------------------


async def test_a_minted_credential_is_reported_once_while_it_is_reused(minter: TokenMinter) -> None:  # noqa: F811
    """Three requests reuse one minted token: on_issued hears of it once, with its jti, expiry and
    the SHA-256 of the token sent (never the token)."""
    issued: list[tuple[Principal, IssuedCredential]] = []
    strategy = MintedCredentialStrategy(
        MintedCredential(audience=AUDIENCE), minter, on_issued=lambda who, what: issued.append((who, what))
    )
    principal = caller()
    sent = [await strategy.headers(principal, ("mcp:access",)) for _ in range(3)]
    token = sent[0]["Authorization"].removeprefix("Bearer ")
    [(who, what)] = issued
    claims = json.loads(base64.urlsafe_b64decode(token.split(".")[1] + "=="))
    assert who is principal
    assert (what.kind, what.audience, what.scope, what.jti) == (
        "minted",
        AUDIENCE,
        "mcp:access",
        claims["jti"],
    )
    assert what.expires_at == claims["exp"]
    assert what.sha256 == hashlib.sha256(token.encode()).hexdigest()
    assert token not in repr(what)


@pytest.mark.parametrize(
    ("token", "expected"),
    [
        (
            "eyJhbGciOiJub25lIn0." + base64.urlsafe_b64encode(b'{"jti":"j-1"}').decode().rstrip("=") + ".sig",
            "j-1",
        ),
        ("eyJhbGciOiJub25lIn0." + base64.urlsafe_b64encode(b'{"jti":5}').decode().rstrip("=") + ".", None),
        ("opaque-token-value", None),
        ("a.!!!.c", None),
    ],
)
def test_an_exchanged_tokens_jti_is_read_only_when_it_is_a_jwt(token: str, expected: str | None) -> None:
    """The jti of a JWT-shaped exchanged token (unverified, for correlation); None otherwise."""
    assert unverified_jti(token) == expected


# --- check-config ------------------------------------------------------------------------------


def test_check_config_names_the_trails_destination_and_key(tmp_path: Path, signing_key: Path) -> None:
    """The summary line: the file (and the per-worker names), the seal key id, the failure policy."""
    text = """
public_url: https://mcp.example.com
issuers: [{issuer: https://auth.example.com, algorithms: [RS256], jwks: {discover: true}}]
audit: {file: audit.jsonl, signing_key: {kid: audit-2026, file: audit.pem}, on_failure: deny}
routes: [{path: /mcp, upstream: "http://127.0.0.1:9000/mcp", scopes: [mcp:access]}]
"""
    config = parse_config_text(text, tmp_path / "gateway.yaml", {})
    line = audit_summary(config)
    assert f"file {tmp_path / 'audit.jsonl'} (with --workers N: audit.worker-<i>.jsonl each)" in line
    assert "key 'audit-2026'" in line and "requests are refused (503)" in line and "restart" in line


def test_a_file_sealed_by_another_key_is_not_continued(tmp_path: Path) -> None:
    """A new key on an old file: the open is refused (one file verifies with one public key)."""
    path = tmp_path / "audit.jsonl"

    async def write(signer: SegmentSigner) -> None:
        writer = await AuditWriter.open(path, signer)
        writer.record("policy_decision", {"n": 1})
        await writer.aclose()

    asyncio.run(write(SIGNER))
    with pytest.raises(AuditKeyChanged, match="sealed by key 'audit-unit', not 'audit-next'"):
        asyncio.run(write(SegmentSigner("audit-next", Ed25519PrivateKey.generate())))
    asyncio.run(write(SIGNER))  # the same key continues it
    assert isinstance(verify_lines(lines_of(path), KEY.public_key()), ChainIntact)
    # Another key under the same id: its seals would not verify with the file's public key.
    before = path.read_bytes()
    with pytest.raises(AuditKeyChanged, match="by another key than the configured one"):
        asyncio.run(write(SegmentSigner("audit-unit", Ed25519PrivateKey.generate())))
    assert path.read_bytes() == before


# --- the fast canonical path -----------------------------------------------------------------

_TEXT = st.text(st.characters(codec="utf-8"), max_size=12) | st.sampled_from(
    ["\x7f", "\u2028", "\x00\x1f", '"\\']
)
_KEYS = st.text(st.characters(max_codepoint=0x7F), max_size=6) | st.text(max_size=4)
_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53) + 1, 2**53 - 1) | _TEXT,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_KEYS, inner, max_size=4),
    max_leaves=20,
)


@settings(max_examples=400, deadline=None)
@given(_VALUES)
def test_the_fast_path_writes_exactly_the_rfc8785_bytes(value: Any) -> None:
    """Whatever path canonical_json takes, its bytes are rfc8785's, for every shape a record holds."""
    assert canonical_json(value) == rfc8785.dumps(value)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(_KEYS, _VALUES, max_size=6), st.integers(1, 2**40))
def test_a_built_record_is_its_canonical_line_and_hash(event: dict[str, Any], seq: int) -> None:
    """The line and hash `append` puts together are those canonical_json gives the record."""
    state = ChainState(next_seq=seq, prev="ab" * 32, segment_first_seq=1)
    record, _ = append(state, "credential_issued", event, now=1_780_000_000.123)
    assert record.line() == canonical_json(record.to_json()) + b"\n"
    assert record.hash == sha256_hex(record.body())
    assert parse_record(json.loads(record.line())) == record
