"""``tracing``, ``metrics``, ``audit`` and ``admin.per_worker_ports``: parsed, defaulted, refused clearly."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway.config import AuditConfig, MetricsExportConfig, OtlpConfig, TracingConfig
from tests.unit.test_config import Bad, assert_single_problem, base_config, cases, parse

# base_config ends at line 10; an appended section starts at line 11.


def write_ed25519(path: Path) -> Path:
    pem = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    path.write_bytes(pem)
    return path


@pytest.fixture
def audit_key(tmp_path: Path) -> Path:
    return write_ed25519(tmp_path / "audit.pem")


def test_without_the_sections_nothing_is_exported(tmp_path: Path) -> None:
    """No section: no spans, no metric push, no audit trail."""
    config = parse(base_config(), tmp_path)
    assert config.tracing is None and config.metrics is None and config.audit is None


def test_tracing_with_every_setting(tmp_path: Path) -> None:
    """Every tracing key is kept; the endpoint loses its slash, header values stay secret."""
    text = base_config(
        append="tracing:\n"
        "  otlp:\n"
        "    endpoint: http://collector:4318/\n"
        "    headers: {X-Api-Key: {env: OTLP_KEY}}\n"
        "    timeout_s: 2\n"
        "  sample_ratio: 0.01\n"
        "  service_name: edge-gateway\n"
    )
    config = parse(text, tmp_path, {"OTLP_KEY": "k-123"})
    tracing = config.tracing
    assert isinstance(tracing, TracingConfig)
    assert tracing.sample_ratio == 0.01 and tracing.service_name == "edge-gateway"
    otlp = tracing.otlp
    assert isinstance(otlp, OtlpConfig)
    assert otlp.endpoint == "http://collector:4318" and otlp.timeout_s == 2.0
    ((name, value),) = otlp.headers
    assert name == "x-api-key" and value.reveal() == "k-123"
    assert "k-123" not in repr(config)


def test_tracing_defaults(tmp_path: Path) -> None:
    """Only an endpoint: every trace is sampled, under the default service name."""
    config = parse(base_config(append="tracing: {otlp: {endpoint: 'https://otel.example'}}\n"), tmp_path)
    assert config.tracing == TracingConfig(otlp=OtlpConfig(endpoint="https://otel.example"))
    assert config.tracing.sample_ratio == 1.0


def test_otlp_compression(tmp_path: Path) -> None:
    """Exports are gzip-compressed unless ``compression: none`` (a collector beside the gateway)."""
    append = "tracing: {otlp: {endpoint: 'http://127.0.0.1:4318', compression: none}}\n"
    config = parse(base_config(append=append), tmp_path)
    assert config.tracing is not None and config.tracing.otlp.compression == "none"
    assert OtlpConfig(endpoint="http://c").compression == "gzip"


def test_metrics_export(tmp_path: Path) -> None:
    """The OTLP metric push takes an endpoint and an interval."""
    config = parse(
        base_config(append="metrics: {otlp: {endpoint: 'http://c:4318'}, interval_s: 15}\n"), tmp_path
    )
    assert config.metrics == MetricsExportConfig(otlp=OtlpConfig(endpoint="http://c:4318"), interval_s=15.0)


def test_audit_file_with_defaults(tmp_path: Path, audit_key: Path) -> None:
    """A file trail: paths relative to the config, a seal every 1000 records, fsync per segment, fail open."""
    text = base_config(append="audit:\n  file: audit.jsonl\n  signing_key: {kid: audit-1, file: audit.pem}\n")
    audit = parse(text, tmp_path).audit
    assert audit == AuditConfig(signing_key=audit_key, key_id="audit-1", file=tmp_path / "audit.jsonl")
    assert (audit.segment_size, audit.fsync, audit.on_failure) == (1000, "segment", "allow")


def test_audit_otlp_with_every_setting(tmp_path: Path, audit_key: Path) -> None:
    """An OTLP trail with every setting written."""
    text = base_config(
        append="audit:\n"
        "  otlp: {endpoint: 'http://c:4318'}\n"
        "  signing_key: {kid: k, file: audit.pem}\n"
        "  segment_size: 10\n"
        "  fsync: every_record\n"
        "  on_failure: deny\n"
    )
    audit = parse(text, tmp_path).audit
    assert audit is not None and audit.file is None
    assert audit.otlp == OtlpConfig(endpoint="http://c:4318")
    assert (audit.segment_size, audit.fsync, audit.on_failure) == (10, "every_record", "deny")


def test_admin_per_worker_ports(tmp_path: Path) -> None:
    """Workers' own admin ports only when asked."""
    default = parse(base_config(append="admin: {port: 9100}\n"), tmp_path).admin
    assert default is not None and default.per_worker_ports is False
    config = parse(base_config(append="admin: {port: 9100, per_worker_ports: true}\n"), tmp_path)
    assert config.admin is not None and config.admin.per_worker_ports is True


KEY = "  signing_key: {kid: k, file: audit.pem}\n"


@pytest.mark.parametrize(
    "case",
    cases(
        Bad("tracing-no-otlp", 11, "tracing.otlp", "required key is missing", append="tracing: {}\n"),
        Bad(
            "tracing-ratio-high",
            11,
            "tracing.sample_ratio",
            "a ratio from 0 to 1",
            append="tracing: {otlp: {endpoint: 'http://c'}, sample_ratio: 1.5}\n",
        ),
        Bad(
            "tracing-ratio-text",
            11,
            "tracing.sample_ratio",
            "a number from 0 to 1",
            append="tracing: {otlp: {endpoint: 'http://c'}, sample_ratio: all}\n",
        ),
        Bad(
            "otlp-compression-unknown",
            11,
            "tracing.otlp.compression",
            "gzip",
            append="tracing: {otlp: {endpoint: 'http://c', compression: brotli}}\n",
        ),
        Bad(
            "otlp-not-a-url",
            11,
            "tracing.otlp.endpoint",
            "URL",
            append="tracing: {otlp: {endpoint: 'collector:4318'}}\n",
        ),
        Bad(
            "otlp-header-inline",
            11,
            "tracing.otlp.headers.x-key",
            "never written inline",
            append="tracing: {otlp: {endpoint: 'http://c', headers: {x-key: plain}}}\n",
        ),
        Bad(
            "otlp-header-env-unset",
            11,
            "tracing.otlp.headers.x-key.env",
            "OTLP_KEY is not set",
            append="tracing: {otlp: {endpoint: 'http://c', headers: {x-key: {env: OTLP_KEY}}}}\n",
        ),
        Bad(
            "otlp-header-bad-name",
            11,
            "tracing.otlp.headers.bad name",
            "not a valid HTTP header name",
            append="tracing: {otlp: {endpoint: 'http://c', headers: {'bad name': {env: K}}}}\n",
            env={"K": "v"},
        ),
        Bad(
            "metrics-unknown-key",
            11,
            "metrics.interval",
            "unknown key",
            append="metrics: {otlp: {endpoint: 'http://c'}, interval: 5}\n",
        ),
        Bad("audit-no-sink", 11, "audit", "exactly one of file, otlp", append="audit:\n" + KEY),
        Bad(
            "audit-two-sinks",
            11,
            "audit",
            "exactly one of file, otlp",
            append="audit:\n  file: a.jsonl\n  otlp: {endpoint: 'http://c'}\n" + KEY,
        ),
        Bad(
            "audit-folder-missing",
            12,
            "audit.file",
            "does not exist",
            append="audit:\n  file: nowhere/a.jsonl\n" + KEY,
        ),
        Bad(
            "audit-no-key",
            11,
            "audit.signing_key",
            "required key is missing",
            append="audit: {file: a.jsonl}\n",
        ),
        Bad(
            "audit-key-missing-file",
            12,
            "audit.signing_key.file",
            "cannot read",
            append="audit:\n  signing_key: {kid: k, file: absent.pem}\n  file: a.jsonl\n",
        ),
        Bad(
            "audit-bad-fsync",
            13,
            "audit.fsync",
            "is not one of: segment, every_record",
            append="audit:\n  file: a.jsonl\n  fsync: never\n" + KEY,
        ),
        Bad(
            "audit-segment-zero",
            13,
            "audit.segment_size",
            "out of range",
            append="audit:\n  file: a.jsonl\n  segment_size: 0\n" + KEY,
        ),
        Bad(
            "admin-ports-not-bool",
            11,
            "admin.per_worker_ports",
            "true or false",
            append="admin: {per_worker_ports: yes please}\n",
        ),
    ),
)
def test_observability_problems(tmp_path: Path, audit_key: Path, case: Bad) -> None:
    """Each mistake is one problem at its file, line and key path."""
    assert_single_problem(case, tmp_path)


def test_an_audit_key_that_is_not_ed25519_is_refused_with_how_to_make_one(tmp_path: Path) -> None:
    """A P-256 key is refused, and the message says how to make an Ed25519 one."""
    pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    (tmp_path / "p256.pem").write_bytes(pem)
    case = Bad(
        "not-ed25519",
        12,
        "audit.signing_key.file",
        "signed with Ed25519 (`openssl genpkey -algorithm ed25519",
        append="audit:\n  signing_key: {kid: k, file: p256.pem}\n  file: a.jsonl\n",
    )
    assert_single_problem(case, tmp_path)
