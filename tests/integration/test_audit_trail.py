"""The audit trail through the real gateway: every decision and every downstream credential issued
in a signed hash chain that ``mcp-auth-gateway audit verify`` (the real command) checks.

In front of the SDK upstream, with the in-process issuer, on a route whose downstream credential
is a token the gateway mints (or exchanges, against the scriptable authorization server): 1,000
decisions verify as one chain, and an edit to a copy of the file is reported at the record
edited; no token is ever in the file; a restart continues the chain; each worker of ``serve
--workers 2`` writes its own; a write that fails (a file at its size limit: EFBIG, as on a full
disk) is handled as ``on_failure`` says; and the OTLP sink carries the same records.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import signal
import sys
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)

from gateway.audit_trail import SegmentSigner, verify_lines
from gateway.audit_trail.chain import append, close_segment, start
from gateway.config import load_config
from gateway.server import start_gateway
from tests.conftest import Upstream
from tests.integration.test_exchange_introspection import fake_as  # noqa: F401  (a fixture)
from tests.integration.test_lifecycle import free_port, modern_call
from tests.support.fake_as import FakeAuthorizationServer
from tests.support.issuer import TestIssuer
from tests.support.otlp_receiver import serving_otlp
from tests.support.processes import REPO_ROOT, GatewayProcess, record_header, start_gateway_process

RESOURCE = "http://127.0.0.1:8080/mcp"
UPSTREAM_AUDIENCE = "https://upstream.internal/mcp"
KEY_ID = "audit-2026"
MINTED = f"{{minted: {{audience: {UPSTREAM_AUDIENCE}, ttl_s: 120}}}}"


@dataclass(frozen=True)
class Keys:
    """The trail's Ed25519 key pair and the gateway's minting key, as files."""

    private: Path
    public: Path
    minting: Path
    signer: SegmentSigner


@pytest.fixture
def keys(tmp_path: Path) -> Keys:
    key = Ed25519PrivateKey.generate()
    private, public, minting = tmp_path / "audit.pem", tmp_path / "audit.pub.pem", tmp_path / "mint.pem"
    private.write_bytes(key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))
    public.write_bytes(key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo))
    minting_key = ec.generate_private_key(ec.SECP256R1())
    minting.write_bytes(minting_key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))
    return Keys(private, public, minting, SegmentSigner(KEY_ID, key))


def audit_config(
    issuer: TestIssuer,
    upstream: Upstream,
    keys: Keys,
    sink: str,
    *,
    credential: str = MINTED,
    extra: str = "",
    port: int = 0,
) -> str:
    """One route: echo allowed with the route scope, add needing math:write, a credential; the
    audit trail to ``sink`` (a YAML flow mapping's entries), sealed every 100 records."""
    return f"""
listen: {{host: 127.0.0.1, port: {port}}}
public_url: http://127.0.0.1:8080
issuers: [{{issuer: {issuer.issuer}, algorithms: [RS256], jwks: {{discover: true}}}}]
minting: {{keys: [{{kid: m1, alg: ES256, file: {keys.minting}}}]}}
audit: {{{sink}, signing_key: {{kid: {KEY_ID}, file: {keys.private}}}, segment_size: 100{extra}}}
routes:
  - path: /mcp
    upstream: {upstream.mcp_url}
    scopes: [mcp:access]
    audit_claims: [note]
    tools: {{echo: [], add: [math:write]}}
    credential: {credential}
"""


@asynccontextmanager
async def running_gateway(config_path: Path) -> AsyncIterator[str]:
    """The gateway in this process, ready; stopped (its trail sealed) when the block ends."""
    config = await asyncio.to_thread(load_config, config_path)
    runner, port = await start_gateway(config, host="127.0.0.1", port=0)
    url = f"http://127.0.0.1:{port}"
    try:
        await until_ready(url)
        yield url
    finally:
        await runner.cleanup()


async def until_ready(url: str, status: int = 200) -> None:
    async with aiohttp.ClientSession() as http:
        for _ in range(300):
            async with http.get(url + "/readyz") as response:
                if response.status == status:
                    return
            await asyncio.sleep(0.02)
    raise AssertionError(f"{url}/readyz never answered {status}")


async def write_text(path: Path, text: str) -> None:
    await asyncio.to_thread(path.write_text, text)


async def read_lines(path: Path) -> list[bytes]:
    data = await asyncio.to_thread(path.read_bytes)
    return data.splitlines(keepends=True)


async def calls(
    url: str, plan: Sequence[tuple[str, dict[str, str]]], *, concurrency: int = 24, fresh: bool = False
) -> list[tuple[int, Any]]:
    """POST each (tool, bearer headers) of ``plan`` as a 2026-07-28 tools/call; (status, body) each.
    ``fresh``: a new connection per call (so the kernel picks a worker for each)."""
    gate = asyncio.Semaphore(concurrency)
    connector = aiohttp.TCPConnector(force_close=fresh, limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as http:

        async def one(tool: str, bearer: dict[str, str]) -> tuple[int, Any]:
            arguments = {"text": "hi"} if tool == "echo" else {"a": 1, "b": 2}
            body, headers = modern_call(tool, arguments)
            async with gate, http.post(url + "/mcp", json=body, headers={**headers, **bearer}) as response:
                answer = await response.json() if response.content_type == "application/json" else None
                return response.status, answer

        return list(await asyncio.gather(*(one(tool, bearer) for tool, bearer in plan)))


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def audit_verify(path: Path, keys: Keys, *extra: str) -> tuple[int, str]:
    """``mcp-auth-gateway audit verify`` as a user runs it: its exit status and what it printed."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway",
        "audit",
        "verify",
        str(path),
        "--public-key",
        str(keys.public),
        *extra,
        cwd=REPO_ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, output.decode()


def records(lines: Sequence[bytes], kind: str) -> list[dict[str, Any]]:
    parsed = [json.loads(line) for line in lines]
    return [record for record in parsed if record["kind"] == kind]


def intact(output: str, lines: Sequence[bytes]) -> bool:
    seals = len(records(lines, "segment_close"))
    return f": OK: {len(lines)} records in {seals} sealed segments" in output


# =========================================================================== file sink


async def test_a_thousand_decisions_verify_and_every_edit_is_found_at_its_record(
    issuer: TestIssuer, upstream: Upstream, keys: Keys, tmp_path: Path
) -> None:
    """1,000 tool calls (900 allowed, 100 denied) by two callers: after the stop, `audit verify`
    says intact (1,000 decisions, 2 minted credentials, 11 seals); on copies, a flipped byte in
    record k, line k deleted, lines k and k+1 swapped each exit 1 naming line k; neither the
    callers' tokens nor the minted ones nor a token-shaped claim are in the file; a restart on
    the same file continues the chain, which still verifies."""
    audit_file = tmp_path / "audit.jsonl"
    config_path = tmp_path / "gateway.yaml"
    await write_text(config_path, audit_config(issuer, upstream, keys, f"file: {audit_file}"))
    canary = issuer.mint(audience="https://elsewhere.example", scope="x")
    alice = issuer.mint(audience=RESOURCE, subject="alice", client_id="app-a", claims={"note": canary})
    bob = issuer.mint(audience=RESOURCE, subject="bob", client_id="app-b")
    plan = [("add" if n % 10 == 9 else "echo", bearer(alice if n % 2 else bob)) for n in range(1000)]

    started = time.monotonic()
    async with running_gateway(config_path) as url:
        answers = await calls(url, plan)
    elapsed = time.monotonic() - started
    statuses = [status for status, _ in answers]
    assert statuses.count(200) == 900 and statuses.count(403) == 100, elapsed

    lines = await read_lines(audit_file)
    # Edits to copies, checked below (all four files verified at once: each run is a process).
    k = 437
    flipped = bytearray(lines[k - 1])
    flipped[len(flipped) // 2] ^= 0x01
    edits = {
        "flipped": [*lines[: k - 1], bytes(flipped), *lines[k:]],
        "deleted": [*lines[: k - 1], *lines[k:]],
        "swapped": [*lines[: k - 1], lines[k], lines[k - 1], *lines[k + 1 :]],
    }
    for name, edited in edits.items():
        await asyncio.to_thread((tmp_path / f"{name}.jsonl").write_bytes, b"".join(edited))
    (status, output), *verdicts = await asyncio.gather(
        audit_verify(audit_file, keys), *(audit_verify(tmp_path / f"{name}.jsonl", keys) for name in edits)
    )
    assert status == 0, output
    decisions = records(lines, "policy_decision")
    issued = records(lines, "credential_issued")
    assert (len(decisions), len(issued), len(records(lines, "segment_close"))) == (1000, 2, 11)
    assert intact(output, lines), output
    assert len(lines) == 1013
    outcomes = [record["event"]["decision"] for record in decisions]
    assert (outcomes.count("allow"), outcomes.count("deny")) == (900, 100)
    denied = next(record["event"] for record in decisions if record["event"]["decision"] == "deny")
    assert (denied["target"], denied["missing_scopes"], denied["route"]) == ("add", ["math:write"], "/mcp")
    # A claim shaped like a token is recorded as the log records it: masked.
    assert {
        record["event"]["claims"]["note"] for record in decisions if record["event"]["subject"] == "alice"
    } == {"***"}

    # The credentials: one minted per caller (reused after that), described, never the token.
    minted = {
        value.removeprefix("Bearer ")
        for value in (record_header(r, "authorization") for r in await upstream.requests())
        if value is not None
    }
    assert len(minted) == 2
    data = b"".join(lines)
    for token in (alice, bob, canary, *minted):
        assert token.encode() not in data and token.rsplit(".", 1)[-1].encode() not in data
    by_subject = {record["event"]["subject"]: record["event"] for record in issued}
    assert by_subject.keys() == {"alice", "bob"}
    event = by_subject["alice"]
    assert (event["kind"], event["client_id"], event["issuer"], event["route"]) == (
        "minted",
        "app-a",
        issuer.issuer,
        "/mcp",
    )
    assert (event["audience"], event["resource"], event["scope"]) == (UPSTREAM_AUDIENCE, None, "mcp:access")
    assert event["expires_at"].endswith("Z") and isinstance(event["jti"], str)
    assert {r["event"]["credential_sha256"] for r in issued} == {
        hashlib.sha256(t.encode()).hexdigest() for t in minted
    }

    # Each edit is reported at the line of the record edited, with exit status 1.
    for name, (status, output) in zip(edits, verdicts, strict=True):
        assert status == 1, (name, output)
        assert f": line {k}: " in output, (name, output)

    # A restart on the same file continues the chain: the whole file still verifies.
    async with running_gateway(config_path) as url:
        assert [status for status, _ in await calls(url, [("echo", bearer(alice))] * 10)] == [200] * 10
    after = await read_lines(audit_file)
    assert after[: len(lines)] == lines
    continued = json.loads(after[len(lines)])
    assert (continued["seq"], continued["prev"]) == (1014, json.loads(lines[-1])["hash"])
    status, output = await audit_verify(audit_file, keys)
    assert status == 0 and intact(output, after), output
    assert len(records(after, "policy_decision")) == 1010


async def test_an_exchanged_credential_is_recorded_once_and_without_the_token(
    issuer: TestIssuer,
    upstream: Upstream,
    keys: Keys,
    tmp_path: Path,
    fake_as: FakeAuthorizationServer,  # noqa: F811  (the imported fixture)
) -> None:
    """Token exchange: 5 calls, one exchange, one credential_issued record (kind exchanged, the
    audience asked for, its expiry) whose hash is the exchanged token's; neither token is in the file."""
    audit_file = tmp_path / "audit.jsonl"
    exchange = (
        f"{{token_exchange: {{token_endpoint: {fake_as.token_endpoint}, client_id: {fake_as.client_id}, "
        f"client_secret: {{env: AS_CLIENT_SECRET}}, audience: {UPSTREAM_AUDIENCE}}}}}"
    )
    config_path = tmp_path / "gateway.yaml"
    await write_text(
        config_path, audit_config(issuer, upstream, keys, f"file: {audit_file}", credential=exchange)
    )
    token = issuer.mint(audience=RESOURCE, subject="carol")
    fake_as.subject_tokens[token] = frozenset({"mcp:access"})
    async with running_gateway(config_path) as url:
        assert [status for status, _ in await calls(url, [("echo", bearer(token))] * 5)] == [200] * 5
    assert fake_as.exchange_calls == 1
    lines = await read_lines(audit_file)
    status, output = await audit_verify(audit_file, keys)
    assert status == 0 and intact(output, lines), output
    [record] = records(lines, "credential_issued")
    event = record["event"]
    [exchanged] = {record_header(r, "authorization") for r in await upstream.requests()}
    assert exchanged is not None
    exchanged = exchanged.removeprefix("Bearer ")
    assert (event["kind"], event["subject"], event["audience"]) == ("exchanged", "carol", UPSTREAM_AUDIENCE)
    assert event["credential_sha256"] == hashlib.sha256(exchanged.encode()).hexdigest()
    assert event["expires_at"] is not None
    data = b"".join(lines)
    assert token.encode() not in data and exchanged.encode() not in data


async def test_each_worker_writes_and_seals_its_own_chain(
    issuer: TestIssuer, upstream: Upstream, keys: Keys, tmp_path: Path
) -> None:
    """`serve --workers 2`: audit.jsonl becomes audit.worker-0.jsonl and audit.worker-1.jsonl, each
    intact after the stop, holding between them every one of 40 decisions."""
    audit_file = tmp_path / "audit.jsonl"
    config_path = tmp_path / "gateway.yaml"
    port = free_port()
    await write_text(config_path, audit_config(issuer, upstream, keys, f"file: {audit_file}", port=port))
    token = issuer.mint(audience=RESOURCE)
    async with start_gateway_process(config_path, tmp_path / "gateway.log", "--workers", "2") as gateway:
        await until_listening(gateway, 2)
        await until_ready(gateway.url)
        answers = await calls(gateway.url, [("echo", bearer(token))] * 40, concurrency=4, fresh=True)
        assert [status for status, _ in answers] == [200] * 40
        gateway.proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(gateway.proc.wait(), 15) == 0
    files = sorted(path.name for path in await asyncio.to_thread(lambda: list(tmp_path.glob("audit*.jsonl"))))
    assert files == ["audit.worker-0.jsonl", "audit.worker-1.jsonl"]
    verdicts = await asyncio.gather(*(audit_verify(tmp_path / name, keys) for name in files))
    total = 0
    for name, (status, output) in zip(files, verdicts, strict=True):
        lines = await read_lines(tmp_path / name)
        assert status == 0 and intact(output, lines), output
        total += len(records(lines, "policy_decision"))
    assert total == 40


async def until_listening(gateway: GatewayProcess, count: int) -> None:
    for _ in range(300):
        if len([e for e in await gateway.events() if e.get("event") == "listening"]) >= count:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"fewer than {count} workers listening:\n{(await gateway.log_text())[-3000:]}")


# =========================================================================== a write that fails


def full_audit_file(path: Path, keys: Keys, records_count: int = 1500) -> int:
    """A sealed chain of ``records_count`` decisions at ``path``; its size in bytes, which the
    gateway's file size limit is then set to: its first append fails (EFBIG, as on a full disk)."""
    lines: list[bytes] = []
    state = start()
    for n in range(records_count):
        record, state = append(state, "policy_decision", {"n": n, "padding": "x" * 400}, now=1.78e9 + n)
        lines.append(record.line())
    sealed = close_segment(state, keys.signer, now=1.79e9)
    assert sealed is not None
    lines.append(sealed[0].line())
    data = b"".join(lines)
    path.write_bytes(data)
    return len(data)


@pytest.mark.parametrize("on_failure", ["allow", "deny"])
async def test_a_failed_write_is_logged_once_counted_and_handled_as_on_failure_says(
    on_failure: str, issuer: TestIssuer, upstream: Upstream, keys: Keys, tmp_path: Path
) -> None:
    """The audit file cannot grow (its size is the process's RLIMIT_FSIZE): the first record's
    write fails. Logged once (audit_write_failed), counted, shown by the admin /readyz; then
    `allow` serves on (200, forwarded, /readyz 200) and `deny` refuses (503 with a JSON-RPC error,
    nothing forwarded, /readyz 503). The file is left exactly as it was: it still verifies."""
    audit_file = tmp_path / "audit.jsonl"
    size = await asyncio.to_thread(full_audit_file, audit_file, keys)
    admin_port = free_port()
    config_path = tmp_path / "gateway.yaml"
    config = (
        audit_config(issuer, upstream, keys, f"file: {audit_file}", extra=f", on_failure: {on_failure}")
        + f"admin: {{host: 127.0.0.1, port: {admin_port}}}\n"
    )
    await write_text(config_path, config)
    token = bearer(issuer.mint(audience=RESOURCE))
    log_path = tmp_path / "gateway.log"
    async with start_gateway_process(config_path, log_path, max_file_bytes=size) as gateway:
        await until_ready(gateway.url)
        # The first call's records are queued, then the first write fails on the writer's thread:
        # served, or (deny) refused if the failure is seen before its credential is recorded.
        first = (await calls(gateway.url, [("echo", token)]))[0][0]
        assert first == 200 if on_failure == "allow" else first in (200, 503)
        await until_logged(gateway, "audit_write_failed")
        await upstream.clear()
        answers = await calls(gateway.url, [("echo", token)] * 3)
        forwarded = await upstream.requests()
        async with aiohttp.ClientSession() as http:
            async with http.get(gateway.url + "/readyz") as response:
                ready_status = response.status
            admin = f"http://127.0.0.1:{admin_port}"
            async with http.get(admin + "/readyz") as response:
                details = await response.json()
            async with http.get(admin + "/metrics") as response:
                exposition = await response.text()
        failed_events = [e for e in await gateway.events() if e.get("event") == "audit_write_failed"]
    assert len(failed_events) == 1
    assert "File too large" in failed_events[0]["problem"] and failed_events[0]["on_failure"] == on_failure
    assert "mcp_gateway_audit_write_failures_total 1.0" in exposition
    assert details["audit"] == "failed"
    if on_failure == "allow":
        assert [status for status, _ in answers] == [200] * 3
        assert len([r for r in forwarded if '"tools/call"' in r.get("body", "")]) == 3
        assert ready_status == 200 and details["ready"] is True
    else:
        assert [status for status, _ in answers] == [503] * 3
        error = answers[0][1]["error"]
        assert error["code"] == -32000 and error["message"].startswith("Audit trail unavailable")
        assert forwarded == []
        assert ready_status == 503 and details["ready"] is False
    assert (await asyncio.to_thread(audit_file.stat)).st_size == size
    status, output = await audit_verify(audit_file, keys)
    assert status == 0, output


async def until_logged(gateway: GatewayProcess, name: str, within_s: float = 10.0) -> None:
    deadline = time.monotonic() + within_s
    while not any(event.get("event") == name for event in await gateway.events()):
        if time.monotonic() > deadline:
            raise AssertionError(f"no {name} logged:\n{(await gateway.log_text())[-3000:]}")
        await asyncio.sleep(0.05)


# =========================================================================== OTLP sink


async def test_the_otlp_sink_exports_the_same_chain_as_log_records(
    issuer: TestIssuer, upstream: Upstream, keys: Keys, tmp_path: Path
) -> None:
    """`audit: {otlp}`: 20 calls become OTLP log records at /v1/logs whose bodies, in audit.seq
    order, verify as an intact chain (20 decisions, a credential, a seal); attributes name the seq,
    kind, hash and chain; no token is in them."""
    async with serving_otlp() as receiver:
        config_path = tmp_path / "gateway.yaml"
        sink = f"otlp: {{endpoint: {receiver.endpoint}}}"
        await write_text(config_path, audit_config(issuer, upstream, keys, sink))
        token = issuer.mint(audience=RESOURCE, subject="dana")
        plan = [("add" if n % 5 == 4 else "echo", bearer(token)) for n in range(20)]
        async with running_gateway(config_path) as url:
            statuses = [status for status, _ in await calls(url, plan)]
        assert statuses.count(200) == 16 and statuses.count(403) == 4
        await receiver.wait_for(lambda r: len(r.logs) >= 22)
        received = list(receiver.logs)
    assert {post.path for post in receiver.posts} == {"/v1/logs"}
    by_seq = sorted(received, key=lambda log: int(log.attributes["audit.seq"]))
    lines = [log.body.encode() + b"\n" for log in by_seq]
    verdict = verify_lines(lines, keys.signer.public_key())
    assert verdict.__class__.__name__ == "ChainIntact", verdict
    kinds = [json.loads(line)["kind"] for line in lines]
    assert (kinds.count("policy_decision"), kinds.count("credential_issued"), kinds[-1]) == (
        20,
        1,
        "segment_close",
    )
    first = by_seq[0]
    record = json.loads(first.body)
    assert (
        first.attributes["audit.kind"] == record["kind"] and first.attributes["audit.hash"] == record["hash"]
    )
    assert len({log.attributes["audit.chain"] for log in received}) == 1
    assert first.scope == "mcp-auth-gateway.audit"
    assert all(token not in log.body for log in received)
