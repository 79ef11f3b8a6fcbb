"""``rate_limits``: the store, the named limits, the routes and rules that name them, check-config."""

from __future__ import annotations

from pathlib import Path

import jsonschema
import pytest
import yaml

from gateway.cli import limit_text, rate_limits_summary, route_limits_summary
from gateway.config.ratelimit_fields import parse_window
from gateway.config.schema import config_schema
from gateway.ratelimit.spec import (
    Algorithm,
    Concurrency,
    FixedWindow,
    LimitSpec,
    MemoryBackend,
    RateLimitsConfig,
    RedisBackend,
    TokenBucket,
)
from tests.unit.test_config import Bad, assert_single_problem, base_config, cases, parse

# BASE ends with routes[0] at line 10; ROUTE_LIMITS are lines 11-13 of that route, then
# rate_limits starts at line 14 and its first limit is at line 16.
ROUTE_LIMITS = (
    "    limits: [daily]\n"  # 11
    "    unauthenticated_limits: [guessers]\n"  # 12
    '    tools: {"send_*": {scopes: [mail:send], limits: [sends]}, "*": []}\n'  # 13
)
LIMITS = (
    "rate_limits:\n"  # 14
    "  limits:\n"  # 15
    "    sends: {rate: 10/min, key: [subject, tool]}\n"  # 16
    "    daily: {quota: 10000/day, key: [client_id]}\n"  # 17
    "    guessers: {rate: 5/s, burst: 20, key: [source_address], fail: open}\n"  # 18
)


def config_with(route: str = ROUTE_LIMITS, limits: str = LIMITS) -> str:
    return base_config(append=route + limits)


def limit_of(written: str, tmp_path: Path) -> LimitSpec:
    """The one limit ``x`` parsed from ``x: {written}``, used by the route."""
    config = parse(
        base_config(append=f"    limits: [x]\nrate_limits:\n  limits:\n    x: {written}\n"), tmp_path
    )
    (limit,) = config.rate_limits.limits
    return limit


@pytest.mark.parametrize(
    ("written", "algorithm"),
    [
        ("{rate: 10/min, key: [subject]}", TokenBucket(rate_per_s=10 / 60, burst=10)),
        ("{rate: 5/s, burst: 20, key: [subject]}", TokenBucket(rate_per_s=5.0, burst=20)),
        ("{rate: 7/sec, key: [subject]}", TokenBucket(rate_per_s=7.0, burst=7)),
        ("{rate: 3/hour, burst: 1, key: [subject]}", TokenBucket(rate_per_s=3 / 3600, burst=1)),
        ("{rate: 100/30s, key: [subject]}", TokenBucket(rate_per_s=100 / 30, burst=100)),
        ("{rate: '2 / day', key: [subject]}", TokenBucket(rate_per_s=2 / 86400, burst=2)),
        ("{quota: 10000/day, key: [subject]}", FixedWindow(count=10000, window_s=86400.0)),
        ("{quota: 50/90s, key: [subject]}", FixedWindow(count=50, window_s=90.0)),
        ("{concurrent: 4, key: [subject]}", Concurrency(max_in_flight=4)),
    ],
)
def test_each_algorithm_parses_to_its_spec(tmp_path: Path, written: str, algorithm: Algorithm) -> None:
    """rate (burst defaults to the rate's count), quota and concurrent, in every unit."""
    assert limit_of(written, tmp_path) == LimitSpec("x", algorithm, ("subject",), "closed", 14)


def test_key_and_fail_are_kept_as_written(tmp_path: Path) -> None:
    """The key fields in order; ``key: []`` is one counter for everyone; ``fail`` defaults to closed."""
    limit = limit_of(
        "{rate: 1/s, key: [issuer, subject, client_id, route, tool, method], fail: open}", tmp_path
    )
    assert limit.key == ("issuer", "subject", "client_id", "route", "tool", "method")
    assert limit.fail == "open"
    assert limit_of("{rate: 1/s, key: []}", tmp_path).key == ()


@pytest.mark.parametrize(
    ("written", "expected"),
    [
        ("1/s", (1, 1.0)),
        ("60/min", (60, 60.0)),
        ("9/hour", (9, 3600.0)),
        ("100/30s", (100, 30.0)),
        ("0/min", "the count must be a positive integer"),
        ("5/0s", "the window must be at least 1 second"),
        ("5/week", "is not a count per time"),
        ("-1/s", "is not a count per time"),
        ("1.5/s", "is not a count per time"),
        ("10", "is not a count per time"),
    ],
)
def test_windows(written: str, expected: object) -> None:
    """A count per time: the count and the window in seconds, or why it is not one."""
    parsed = parse_window(written)
    assert parsed == expected if isinstance(expected, tuple) else str(expected) in str(parsed)


def test_routes_and_rules_name_their_limits(tmp_path: Path) -> None:
    """The example from the issue: route limits, 401 limits and a rule's limits, memory by default."""
    config = parse(config_with(), tmp_path)
    assert config.rate_limits.backend == MemoryBackend()
    assert [limit.name for limit in config.rate_limits.limits] == ["sends", "daily", "guessers"]
    assert config.rate_limits.get("guessers") == LimitSpec(
        "guessers", TokenBucket(5.0, 20), ("source_address",), "open", 18
    )
    route = config.routes[0]
    assert (route.limits, route.unauthenticated_limits) == (("daily",), ("guessers",))
    assert [(rule.pattern, rule.limits) for rule in route.policy.tools] == [("send_*", ("sends",)), ("*", ())]


def test_without_rate_limits_nothing_is_limited(tmp_path: Path) -> None:
    """No section: the memory store and no limits; routes and rules name none."""
    config = parse(base_config(), tmp_path)
    assert config.rate_limits == RateLimitsConfig()
    assert config.routes[0].limits == config.routes[0].unauthenticated_limits == ()


def test_an_observed_candidate_takes_the_rules_limits(tmp_path: Path) -> None:
    """``observe: {scopes}`` replaces scopes only: the candidate counts against the same limits."""
    route = "    tools:\n      send: {scopes: [a], limits: [daily], observe: {scopes: [b]}}\n"
    config = parse(config_with(route=route), tmp_path)
    shadow = config.routes[0].policy.shadow
    assert shadow is not None
    assert [(rule.scopes, rule.limits) for rule in shadow.tools] == [
        (("b",), ("daily",)),
        (("a",), ("daily",)),
    ]
    assert [rule.limits for rule in config.routes[0].policy.tools] == [("daily",)]


@pytest.mark.parametrize(
    "route",
    [
        "    limits: [tools]\n",  # a route-level limit keyed on tool: "" when no tool is named
        '    tools: {"*": {limits: [streams]}}\n',  # a concurrency limit on a rule
        "    limits: [per_route]\n    unauthenticated_limits: [per_route]\n",  # route key only
    ],
    ids=["tool-key-on-route", "concurrency-on-rule", "route-key-both"],
)
def test_fitting_references_are_accepted(tmp_path: Path, route: str) -> None:
    """A tool-keyed route limit, a concurrency limit on a rule, a route-keyed limit for both."""
    limits = (
        "rate_limits:\n  limits:\n"
        "    tools: {rate: 1/s, key: [subject, tool]}\n"
        "    streams: {concurrent: 2, key: [subject]}\n"
        "    per_route: {quota: 100/min, key: [route]}\n"
    )
    parse(base_config(append=route + limits), tmp_path)


def test_redis_backend_with_every_setting(tmp_path: Path) -> None:
    """``{redis: {...}}``: the URL from the environment (kept a secret) and each setting."""
    backend = (
        "    limits: [daily]\nrate_limits:\n"
        "  backend: {redis: {url: {env: REDIS_URL}, timeout_s: 0.5, pool_size: 4, key_prefix: 'gw:',"
        " retry_s: 2, lease_s: 60}}\n"
        "  limits:\n    daily: {quota: 10/day, key: [subject]}\n"
    )
    url = "rediss://:hunter2@redis.internal:6380/2"
    config = parse(base_config(append=backend), tmp_path, {"REDIS_URL": url})
    redis = config.rate_limits.backend
    assert isinstance(redis, RedisBackend)
    assert redis.url.reveal() == url and "hunter2" not in repr(redis)
    assert (redis.timeout_s, redis.pool_size, redis.key_prefix, redis.retry_s, redis.lease_s) == (
        0.5, 4, "gw:", 2.0, 60.0,
    )  # fmt: skip


def test_redis_url_without_a_password_may_be_written_inline(tmp_path: Path) -> None:
    """A plain ``redis://host:port/db`` needs no secret; the defaults are the spec's; a file works too."""
    (tmp_path / "redis.url").write_text("redis://:pw@127.0.0.1:6379\n")
    for url in ("redis://127.0.0.1:6379/0", "{file: redis.url}"):
        config = parse(base_config(append=f"rate_limits:\n  backend: {{redis: {{url: {url}}}}}\n"), tmp_path)
        redis = config.rate_limits.backend
        assert isinstance(redis, RedisBackend)
        assert redis.url.reveal().startswith("redis://")
        assert (redis.timeout_s, redis.pool_size, redis.key_prefix) == (0.25, 64, "mcpgw:")


LIMIT_AT_14 = "    limits: [x]\nrate_limits:\n  limits:\n    x: "  # route line 11, x at line 14


def limit_case(name: str, written: str, key_path: str, message: str, line: int = 14) -> Bad:
    """A mistake in the limit ``x``, written at line 14 and used by routes[0]."""
    return Bad(name, line, f"rate_limits.limits.x{key_path}", message, append=LIMIT_AT_14 + written + "\n")


@pytest.mark.parametrize(
    "case",
    cases(
        limit_case("two-algorithms", "{rate: 1/s, quota: 5/min, key: []}", "", "choose exactly one of: rate"),
        limit_case("no-algorithm", "{key: [subject]}", "", "choose exactly one of: rate"),
        limit_case(
            "burst-without-rate", "{quota: 5/min, burst: 3, key: []}", ".burst", "burst goes with rate"
        ),
        limit_case("bad-unit", "{rate: 5/week, key: []}", ".rate", "'5/week' is not a count per time"),
        limit_case("zero-count", "{quota: 0/min, key: []}", ".quota", "count must be a positive integer"),
        limit_case("number-rate", "{rate: 10, key: []}", ".rate", "10 is not a count per time"),
        limit_case("zero-burst", "{rate: 1/s, burst: 0, key: []}", ".burst", "out of range"),
        limit_case("zero-concurrent", "{concurrent: 0, key: []}", ".concurrent", "out of range"),
        limit_case("no-key", "{rate: 1/s}", ".key", "required key is missing"),
        limit_case("unknown-key-field", "{rate: 1/s, key: [subjet]}", ".key[0]", "(did you mean 'subject'?)"),
        limit_case("duplicate-key-field", "{rate: 1/s, key: [tool, tool]}", ".key[1]", "duplicate key field"),
        limit_case("unknown-setting", "{rate: 1/s, brust: 2, key: []}", ".brust", "(did you mean 'burst'?)"),
        limit_case("bad-fail", "{rate: 1/s, key: [], fail: later}", ".fail", "not one of: closed, open"),
        Bad(
            "bad-name",
            13,
            "rate_limits.limits.1st",
            "a limit name is a letter",
            append="rate_limits:\n  limits:\n    1st: {rate: 1/s, key: []}\n",
        ),
        Bad(
            "unknown-route-limit",
            11,
            "routes[0].limits[0]",
            "unknown rate limit 'daly' (did you mean 'daily'?)",
            append="    limits: [daly]\nrate_limits:\n  limits:\n    daily: {quota: 1/day, key: []}\n",
        ),
        Bad(
            "unknown-401-limit",
            11,
            "routes[0].unauthenticated_limits[1]",
            "unknown rate limit 'other' (declared: ip)",
            append="    unauthenticated_limits: [ip, other]\nrate_limits:\n  limits:\n"
            "    ip: {rate: 1/s, key: [source_address]}\n",
        ),
        Bad(
            "unknown-rule-limit",
            12,
            "routes[0].tools.send_*.limits[0]",
            "unknown rate limit 'sendz' (did you mean 'sends'?)",
            append='    tools:\n      "send_*": {scopes: [], limits: [sendz]}\n'
            "rate_limits:\n  limits:\n    sends: {rate: 1/s, key: [subject]}\n",
        ),
        Bad(
            "none-declared",
            11,
            "routes[0].limits[0]",
            "rate_limits.limits declares none",
            append="    limits: [x]\n",
        ),
        Bad(
            "duplicate-reference",
            11,
            "routes[0].limits[1]",
            "duplicate limit 'x'",
            append="    limits: [x, x]\n",
        ),
        Bad(
            "source-address-authenticated",
            11,
            "routes[0].limits[0]",
            "keyed on source_address, which only unauthenticated_limits may use",
            append="    limits: [ip]\nrate_limits:\n  limits:\n    ip: {rate: 1/s, key: [source_address]}\n",
        ),
        Bad(
            "source-address-on-rule",
            11,
            "routes[0].tools.*.limits[0]",
            "keyed on source_address",
            append='    tools: {"*": {limits: [ip]}}\nrate_limits:\n  limits:\n'
            "    ip: {rate: 1/s, key: [source_address]}\n",
        ),
        Bad(
            "identity-unauthenticated",
            11,
            "routes[0].unauthenticated_limits[0]",
            "keyed on subject, tool, which a request refused with 401 does not have",
            append="    unauthenticated_limits: [who]\nrate_limits:\n  limits:\n"
            "    who: {rate: 1/s, key: [subject, route, tool]}\n",
        ),
        Bad(
            "concurrency-unauthenticated",
            11,
            "routes[0].unauthenticated_limits[0]",
            "'inflight' is a concurrency limit",
            append="    unauthenticated_limits: [inflight]\nrate_limits:\n  limits:\n"
            "    inflight: {concurrent: 3, key: [source_address]}\n",
        ),
        Bad(
            "observe-block-limits",
            12,
            "routes[0].tools.send.observe.limits",
            "an observe block has no limits",
            append="    tools:\n      send: {scopes: [a], limits: [x], observe: {scopes: [b], limits: [x]}}\n"
            "rate_limits:\n  limits:\n    x: {rate: 1/s, key: []}\n",
        ),
        Bad(
            "unknown-backend",
            12,
            "rate_limits.backend",
            "choose one of: memory, {redis: {url: …}}",
            append="rate_limits:\n  backend: memcached\n",
        ),
        Bad(
            "redis-url-missing",
            12,
            "rate_limits.backend.redis.url",
            "required key is missing",
            append="rate_limits:\n  backend: {redis: {pool_size: 2}}\n",
        ),
        Bad(
            "redis-url-scheme",
            12,
            "rate_limits.backend.redis.url",
            "the Redis URL must be a redis:// or rediss:// URL with a host",
            append="rate_limits:\n  backend: {redis: {url: {env: REDIS_URL}}}\n",
            env={"REDIS_URL": "https://user:s3cret@cache.internal"},
        ),
        Bad(
            "redis-url-database",
            12,
            "rate_limits.backend.redis.url",
            "the path is the database number",
            append="rate_limits:\n  backend: {redis: {url: 'redis://cache.internal/db'}}\n",
        ),
        Bad(
            "redis-unknown-option",
            12,
            "rate_limits.backend.redis.url",
            "has a query option the gateway does not read (rediss:// takes ssl_ca_certs, ",
            append="rate_limits:\n  backend: {redis: {url: 'rediss://cache.internal?ssl_cert_reqs=none'}}\n",
        ),
        Bad(
            "redis-tls-option-on-plain",
            12,
            "rate_limits.backend.redis.url",
            "has a query option the gateway does not read",
            append="rate_limits:\n  backend: {redis: {url: 'redis://cache.internal?ssl_ca_certs=/etc/ca.pem'}}\n",
        ),
        Bad(
            "redis-ca-file-missing",
            12,
            "rate_limits.backend.redis.url",
            "names an ssl_ca_certs file that does not exist",
            append="rate_limits:\n  backend: {redis: {url: 'rediss://cache.internal?ssl_ca_certs=/nonexistent/ca.pem'}}\n",
        ),
        Bad(
            "redis-client-cert-without-key",
            12,
            "rate_limits.backend.redis.url",
            "takes ssl_certfile and ssl_keyfile together",
            append="rate_limits:\n  backend: {redis: {url: 'rediss://cache.internal?ssl_certfile=/etc/c.pem'}}\n",
        ),
        Bad(
            "redis-password-inline",
            12,
            "rate_limits.backend.redis.url",
            "a URL with credentials is a secret: write {env: NAME} or {file: path}",
            append="rate_limits:\n  backend: {redis: {url: 'redis://:s3cret@cache.internal'}}\n",
        ),
        Bad(
            "redis-env-unset",
            12,
            "rate_limits.backend.redis.url.env",
            "environment variable REDIS_URL is not set",
            append="rate_limits:\n  backend: {redis: {url: {env: REDIS_URL}}}\n",
        ),
        Bad(
            "redis-bad-pool",
            12,
            "rate_limits.backend.redis.pool_size",
            "out of range",
            append="rate_limits:\n  backend: {redis: {url: 'redis://h', pool_size: 0}}\n",
        ),
    ),
)
def test_rate_limit_problems(tmp_path: Path, case: Bad) -> None:
    """Each mistake is one problem at its file, line and key path; a Redis URL is never echoed."""
    problem = assert_single_problem(case, tmp_path)
    assert "s3cret" not in str(problem)


def test_a_broken_limit_does_not_make_its_references_unknown(tmp_path: Path) -> None:
    """Only the limit's own problem is reported, not also 'unknown rate limit' where it is used."""
    case = limit_case("broken", "{rate: 1/week, key: []}", ".rate", "is not a count per time")
    assert_single_problem(case, tmp_path)


def test_check_config_shows_each_routes_limits_and_each_limit(tmp_path: Path) -> None:
    """A line per route (route, rules, 401s) and per limit, in the config's own units."""
    config = parse(config_with(), tmp_path)
    assert route_limits_summary(config.routes[0]) == (
        "rate limits: every request: daily; tools['send_*']: sends; a 401: guessers"
    )
    assert rate_limits_summary(config) == [
        "rate_limits: memory: exact in one process, counted per worker with --workers N",
        "rate limit sends: 10/min, bursts of 10 (token bucket), per subject, tool",
        "rate limit daily: 10000/day (fixed window), per client_id",
        "rate limit guessers: 5/s, bursts of 20 (token bucket), per source_address",
    ]
    assert route_limits_summary(parse(base_config(), tmp_path).routes[0]) == "rate limits: (none)"


def test_check_config_warns_of_a_limit_nothing_uses(tmp_path: Path) -> None:
    """Declared and never named: a warning with its line, not an error."""
    limits = LIMITS + "    spare: {concurrent: 2, key: []}\n"  # line 19
    lines = rate_limits_summary(parse(config_with(limits=limits), tmp_path))
    assert "rate limit spare: 2 in flight at once, one counter for everyone" in lines
    assert lines[-1] == "warning: rate limit 'spare' (line 19) is declared, but no route or rule uses it"
    assert not any("warning" in line for line in rate_limits_summary(parse(config_with(), tmp_path)))


def test_check_config_names_the_redis_store_never_its_url(tmp_path: Path) -> None:
    """With Redis: the store's settings and each limit's fail mode; the URL (a password) never."""
    append = (
        "    limits: [x]\nrate_limits:\n  backend: {redis: {url: {env: REDIS_URL}}}\n"
        "  limits:\n    x: {rate: 100/30s, key: [], fail: open}\n"
    )
    config = parse(base_config(append=append), tmp_path, {"REDIS_URL": "redis://:s3cret@h:6379/0"})
    lines = rate_limits_summary(config)
    assert lines[0].startswith("rate_limits: redis: shared by every process and replica; timeout 0.25s")
    assert (
        lines[1] == "rate limit x: 200/min, bursts of 100 (token bucket), one counter for everyone; "
        "Redis unreachable: fail open"
    )
    assert not any("s3cret" in line or "h:6379" in line for line in lines)
    assert limit_text(config.rate_limits.limits[0], shared_store=False).endswith("one counter for everyone")


def test_the_schema_accepts_the_issue_example_and_refuses_two_algorithms(tmp_path: Path) -> None:
    """Editors see the same section: the example validates; a limit with rate and quota does not."""
    text = config_with()
    parse(text, tmp_path)
    jsonschema.validate(yaml.safe_load(text), config_schema())
    wrong = yaml.safe_load(text)
    wrong["rate_limits"]["limits"]["sends"]["quota"] = "5/min"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(wrong, config_schema())
