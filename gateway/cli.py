"""``mcp-auth-gateway``: serve, check-config, explain, simulate, audit verify, demo."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from collections.abc import MutableMapping, Sequence
from typing import Any

import structlog

from .config import LOG_LEVELS, ConfigError, GatewayConfig, LimitsConfig, RouteConfig, load_config
from .eventloop import LOOP_CHOICES, LoopUnavailable, loop_factory
from .eventloop import run as run_on_loop
from .logs import configure_logging
from .mcp.policy import Default, ListVisibility, RoutePolicy, Rule
from .ratelimit.spec import FixedWindow, LimitSpec, MemoryBackend, TokenBucket
from .web.limits import open_file_limit, process_limits

EXIT_CONFIG_ERROR = 2


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mcp-auth-gateway", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the gateway")
    serve.add_argument("--config", required=True, help="path to the YAML config")
    # Default: the config's `logging:` section (json, info); a flag given here wins.
    serve.add_argument("--log-format", choices=("json", "console"), default=None)
    serve.add_argument("--log-level", choices=LOG_LEVELS, type=str.lower, default=None)
    serve.add_argument(
        "--workers",
        type=_positive_int,
        default=1,
        help="worker processes sharing the listen port (SO_REUSEPORT); default 1: no workers",
    )
    serve.add_argument(
        "--loop",
        choices=LOOP_CHOICES,
        default="auto",
        help="event loop: uvloop if installed (auto, the default), uvloop, or asyncio",
    )
    serve.add_argument("--worker-index", type=int, default=None, help=argparse.SUPPRESS)  # set by the parent

    check = commands.add_parser("check-config", help="validate a config and summarise its routes")
    check.add_argument("path")
    check.add_argument(
        "--upstream",
        action="store_true",
        help="also ask each upstream for its tools and check the conditions' arguments.X against them",
    )

    explain = commands.add_parser(
        "explain",
        help="show, offline, what the gateway would answer to one POST and which rule decides",
    )
    explain.add_argument("--config", required=True, help="path to the YAML config")
    explain.add_argument("--route", required=True, help="a route path from the config, e.g. /mcp")
    caller = explain.add_mutually_exclusive_group(required=True)
    caller.add_argument("--scopes", help='the caller\'s scopes, space-separated: "a b"')
    caller.add_argument("--token", help="a JWT access token (decoded, NOT verified)")
    explain.add_argument(
        "--claims", help="with --scopes: the token claims conditions read, as a JSON object (iss, sub, ...)"
    )
    explain.add_argument(
        "--request", required=True, help="the JSON-RPC body as a client would POST it, or @file"
    )
    explain.add_argument(
        "--header", action="append", default=[], metavar="'NAME: VALUE'", help="a request header (repeatable)"
    )
    explain.add_argument("--json", action="store_true", help="print one JSON object")

    simulate = commands.add_parser(
        "simulate", help="replay recorded policy decisions against a candidate config and say what changes"
    )
    simulate.add_argument("--config", required=True, help="path to the candidate YAML config")
    simulate.add_argument(
        "--decisions", required=True, help="a gateway log (JSON lines) with policy_decision events, or -"
    )
    simulate.add_argument(
        "--enforce-observed", action="store_true", help="decide with the observed rules enforced"
    )
    simulate.add_argument(
        "--fail-on",
        choices=("allow", "deny", "any"),
        default="any",
        help="exit 1 only for changes to this answer (allow: the candidate loosens); default any",
    )
    simulate.add_argument(
        "--strict", action="store_true", help="exit 1 also when some decision cannot be replayed"
    )
    simulate.add_argument("--json", action="store_true", help="print one JSON object")

    audit = commands.add_parser("audit", help="work with the tamper-evident audit trail")
    audit_commands = audit.add_subparsers(dest="audit_command", required=True)
    audit_verify = audit_commands.add_parser(
        "verify", help="check an audit file's hash chain and seals; report the first break"
    )
    audit_verify.add_argument("file", help="the audit file (JSON lines)")
    audit_verify.add_argument("--public-key", required=True, help="the seals' Ed25519 public key (PEM)")
    audit_verify.add_argument(
        "--previous-hash",
        default=None,
        help="the last hash of the file this one continues (default: a new chain, 64 zeros)",
    )

    pin = commands.add_parser("pin", help="ask a route's upstream for its tools and write its tool lock")
    pin.add_argument("--config", required=True, help="the gateway config")
    pin.add_argument("--route", required=True, help="the route path, e.g. /mcp")
    pin.add_argument(
        "--output", default=None, help="where to write the lock (default: the route's pinning.lock)"
    )

    demo = commands.add_parser("demo", help="run a demo upstream, a development issuer and the gateway")
    demo.add_argument(
        "--port", type=int, default=8000, help="gateway port (upstream and issuer use the next two)"
    )

    args = parser.parse_args(argv)
    if args.command == "check-config":
        return check_config(args.path, upstream=args.upstream)
    if args.command == "explain":
        config = _load_or_report(args.config)
        if config is None:
            return EXIT_CONFIG_ERROR
        from .explain import run as run_explain

        return run_explain(
            config,
            config_name=args.config,
            route_path=args.route,
            scopes=args.scopes,
            token=args.token,
            request=args.request,
            headers=args.header,
            claims=args.claims,
            as_json=args.json,
        )
    if args.command == "simulate":
        config = _load_or_report(args.config)
        if config is None:
            return EXIT_CONFIG_ERROR
        from .simulate import run as run_simulate

        return run_simulate(
            config,
            decisions=args.decisions,
            enforce_observed=args.enforce_observed,
            fail_on=args.fail_on,
            strict=args.strict,
            as_json=args.json,
        )
    if args.command == "audit":
        from .audit_trail.chain import ZERO_HASH
        from .audit_trail.verify import run as run_audit_verify

        return run_audit_verify(
            args.file, public_key_path=args.public_key, previous_hash=args.previous_hash or ZERO_HASH
        )
    if args.command == "pin":
        config = _load_or_report(args.config)
        if config is None:
            return EXIT_CONFIG_ERROR
        from .pin_command import run as run_pin

        return run_pin(config, args.route, args.output)
    if args.command == "serve":
        config = _load_or_report(args.config)
        if config is None:
            return EXIT_CONFIG_ERROR
        configure_logging(
            json=(args.log_format or config.logging.format) == "json",
            level=args.log_level or config.logging.level,
            include_subject=config.logging.include_subject,
            batched=True,
        )
        return _serve(config, args)
    from .demo.run import run_demo

    return run_demo(args.port)


def _positive_int(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"{value} is not a positive integer")
    return number


def _serve(config: GatewayConfig, args: argparse.Namespace) -> int:
    from .server import serve, supervise_workers

    # Until the server's own handler is in place, a SIGHUP (reload) must not end the process.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        loop_name, _factory = loop_factory(args.loop)
    except LoopUnavailable as exc:
        print(f"--loop {args.loop}: {exc}", file=sys.stderr)
        return EXIT_CONFIG_ERROR
    if args.worker_index is not None:
        _tag_logs_with_worker(args.worker_index)
        return run_on_loop(serve(config, worker=args.worker_index, loop_name=loop_name), args.loop)
    if args.workers == 1:
        return run_on_loop(serve(config, loop_name=loop_name), args.loop)
    if config.listen.port == 0:
        print("--workers needs a fixed listen.port (with 0 each worker picks its own)", file=sys.stderr)
        return EXIT_CONFIG_ERROR
    worker_args = [
        "--loop",
        args.loop,
        *(["--log-format", args.log_format] if args.log_format else []),
        *(["--log-level", args.log_level] if args.log_level else []),
    ]
    return asyncio.run(supervise_workers(config, args.workers, worker_args))


def _tag_logs_with_worker(index: int) -> None:
    """Every event of a worker process names the worker and its pid."""
    pid = os.getpid()

    def add_worker(_logger: Any, _method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        event.setdefault("worker", index)
        event.setdefault("pid", pid)
        return event

    processors = structlog.get_config()["processors"]
    structlog.configure(processors=[add_worker, *processors])


def _load_or_report(path: str) -> GatewayConfig | None:
    try:
        return load_config(path)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        print(f"{len(exc.problems)} problem(s) in {path}", file=sys.stderr)
        return None


def check_config(path: str, *, upstream: bool = False) -> int:
    config = _load_or_report(path)
    if config is None:
        return EXIT_CONFIG_ERROR
    print(f"{config.source}: OK")
    print(f"listen {config.listen.host}:{config.listen.port}, public_url {config.public_url}")
    for issuer in config.issuers:
        print(f"issuer {issuer.issuer} ({', '.join(issuer.algorithms)})")
    for route in config.routes:
        scopes = " ".join(route.scopes) or "(none)"
        print(f"route {route.path} -> {route.upstream}  resource={route.resource}  scopes={scopes}")
        for line in policy_summary(route.policy):
            print(f"  {line}")
        print(f"  {route_limits_summary(route)}")
        if route.pinning is not None:
            from .pinning.lock import lock_summary

            print(f"  {lock_summary(route.pinning.mode, route.pinning.lock, route.pinning.tools)}")
    for route in config.routes:
        for warning in stranded_scopes_warnings(route.policy):
            print(f"warning: route {route.path}: {warning}")
    for line in rate_limits_summary(config):
        print(line)
    print(state_keys_summary(config))
    print(limits_summary(config.limits, open_file_limit(after_raise=True)))
    print(audit_summary(config))
    if upstream:
        lines, failed = asyncio.run(upstream_schema_report(config, path))
        for line in lines:
            print(line)
        return 1 if failed else 0
    return 0


async def upstream_schema_report(config: GatewayConfig, path: str) -> tuple[list[str], bool]:
    """``--upstream``: each route whose conditions read tool arguments, its upstream's tools
    against them (``gateway.mcp.schema_check``); whether anything is wrong or unreachable."""
    from .mcp.schema_check import mismatches, reads_tool_arguments, unchecked
    from .upstream.tools_probe import NeedsCaller, ProbeError, list_tools

    lines: list[str] = []
    failed = False
    routes = [route for route in config.routes if reads_tool_arguments(route.policy)]
    if not routes:
        return ["upstream check: no condition reads tool arguments; no upstream asked"], False
    for route in routes:
        where = f"upstream check: route {route.path} -> {route.upstream}"
        try:
            tools = await list_tools(route)
        except ProbeError as exc:
            lines.append(f"{where}: unreachable: {exc}")
            failed = True
            continue
        if isinstance(tools, NeedsCaller):
            lines.append(f"{where}: skipped: {tools.reason}")
            continue
        found = mismatches(route.policy, tools)
        lines.append(f"{where}: {len(tools)} tools listed, {len(found)} mismatch(es)")
        for mismatch in found:
            lines.append(
                f"  {path}:{mismatch.rule.line}: {mismatch.rule.label}: tool {mismatch.tool!r} has no "
                f"argument {mismatch.argument!r} in its inputSchema (the condition reads "
                f"arguments.{mismatch.argument})"
            )
        for note in unchecked(route.policy, tools):
            where_rule = f"{path}:{note.rule.line}: {note.rule.label}"
            lines.append(f"  note: {where_rule}: tool {note.tool!r}: {note.why}, not checked")
        failed = failed or bool(found)
    return lines, failed


def _scopes_text(scopes: Sequence[str]) -> str:
    return " ".join(scopes) if scopes else "no scope beyond the route's"


def policy_summary(policy: RoutePolicy) -> list[str]:
    """What a route's rules let through, section by section, with what happens to the rest."""
    lines = []
    for section in ("tools", "resources", "prompts", "methods"):
        rules: tuple[Rule, ...] = getattr(policy, section)
        shown = "; ".join(_rule_text(rule) for rule in rules)
        lines.append(f"{section}: {shown or '(no rules)'}; {_unmatched_text(policy, section)}")
    if policy.shadow is not None:
        observed = [_rule_text(rule) for rule in policy.shadow.all_rules if rule not in policy.all_rules]
        if policy.shadow.route_scopes != policy.route_scopes:
            observed.insert(0, f"route scopes {_scopes_text(policy.shadow.route_scopes)}")
        lines.append(f"observed (mode: observe, logged as would_deny, not enforced): {'; '.join(observed)}")
    visibility = (
        "lists show what a rule allows, also to callers without its scopes, who get a 403 step-up"
        if policy.list_visibility is ListVisibility.STEP_UP
        else "lists show only what the caller may use now"
    )
    lines.append(f"list_visibility: {policy.list_visibility.value}: {visibility}")
    first = " ".join(policy.first_challenge) or "(no scope)"
    lines.append(
        f"a 401 names: {first}; a 403 step-up: what the call needs and the scopes held that the route uses"
    )
    return lines


def _rule_text(rule: Rule) -> str:
    """``'delete_*': repo:write if <condition>``."""
    condition = f" if {rule.condition.source}" if rule.condition is not None else ""
    return f"{rule.pattern!r}: {_scopes_text(rule.scopes)}{condition}"


def _unmatched_text(policy: RoutePolicy, section: str) -> str:
    """What happens to what no rule of ``section`` names (``decide``'s default, in words)."""
    other = "every" if not getattr(policy, section) else "any other"
    kind = section[:-1]
    if policy.default is not None:
        how = "allowed with the route scopes" if policy.default is Default.ALLOW else "refused"
        return f"{other} {kind}: {how} (default: {policy.default.value})"
    if section == "methods":
        return f"{other} method: allowed with the route scopes"
    if policy.restricts_use:
        return f"{other} {kind}: refused (no rule names it, no default written)"
    return f"{other} {kind}: allowed with the route scopes (the route has no rules)"


def stranded_scopes_warnings(policy: RoutePolicy) -> list[str]:
    """Scopes some rule needs that a client registering with the first challenge's scopes may
    never be offered: no 401 names them, and ``list_visibility: usable`` hides what needs them,
    so a host that calls only what it lists never gets the 403 that would name them."""
    if policy.list_visibility is not ListVisibility.USABLE:
        return []
    first = set(policy.first_challenge)
    warnings = []
    for rule in (*policy.tools, *policy.resources, *policy.prompts):
        unnamed = [scope for scope in rule.scopes if scope not in first]
        if unnamed:
            warnings.append(
                f"{rule.label} needs {' '.join(unnamed)}, which no 401 names, and list_visibility: "
                "usable hides it from callers without it: add the scopes to challenge_scopes, or "
                "use list_visibility: step_up"
            )
    return warnings


def limits_summary(limits: LimitsConfig, open_files: int) -> str:
    """The ``limits:`` a process started here would enforce (the caps sized from ``open_files``)."""
    resolved = process_limits(limits, open_files)
    connections = f"max_connections {resolved.max_connections}"
    if limits.max_connections is None:
        connections += f" (sized from the {open_files} open files serve will have here)"
    elif resolved.capped_by_open_files:
        connections += f" (lowered from {limits.max_connections}: {open_files} open files here)"
    return (
        f"limits: header {limits.header_timeout_s:g}s, body {limits.body_timeout_s:g}s, "
        f"keep-alive {limits.keepalive_timeout_s:g}s; {connections}, max_streams "
        f"{resolved.max_streams}, buffered bodies {limits.max_buffered_body_bytes} bytes"
    )


def route_limits_summary(route: RouteConfig) -> str:
    """The rate limits a route's requests count against: the route's, the rules', and the 401s'."""
    parts = [f"every request: {', '.join(route.limits)}"] if route.limits else []
    parts += [f"{rule.label}: {', '.join(rule.limits)}" for rule in route.policy.all_rules if rule.limits]
    if route.unauthenticated_limits:
        parts.append(f"a 401: {', '.join(route.unauthenticated_limits)}")
    return f"rate limits: {'; '.join(parts) or '(none)'}"


_UNITS = {1.0: "s", 60.0: "min", 3600.0: "hour", 86400.0: "day"}


def _window_text(count: int, window_s: float) -> str:
    """``10/min``: as the config writes a count per window."""
    return f"{count}/{_UNITS[window_s]}" if window_s in _UNITS else f"{count}/{window_s:g}s"


def _rate_text(rate_per_s: float) -> str:
    """``10/min`` for 1/6 a second: the smallest unit with a whole count (``100/30s`` reads
    ``200/min``)."""
    for window_s, unit in _UNITS.items():
        count = rate_per_s * window_s
        if count >= 1 and abs(count - round(count)) < 1e-6:
            return f"{round(count)}/{unit}"
    return f"{rate_per_s:.4g}/s"


def limit_text(limit: LimitSpec, *, shared_store: bool) -> str:
    """One limit in words: what it allows, per what, and (with Redis) what a store failure does."""
    algorithm = limit.algorithm
    if isinstance(algorithm, TokenBucket):
        what = f"{_rate_text(algorithm.rate_per_s)}, bursts of {algorithm.burst} (token bucket)"
    elif isinstance(algorithm, FixedWindow):
        what = f"{_window_text(algorithm.count, algorithm.window_s)} (fixed window)"
    else:
        what = f"{algorithm.max_in_flight} in flight at once"
    per = f"per {', '.join(limit.key)}" if limit.key else "one counter for everyone"
    fail = f"; Redis unreachable: fail {limit.fail}" if shared_store else ""
    return f"rate limit {limit.name}: {what}, {per}{fail}"


def rate_limits_summary(config: GatewayConfig) -> list[str]:
    """The store, a line per limit, and a warning for each limit nothing uses."""
    if not config.rate_limits.limits:
        return []
    backend = config.rate_limits.backend
    if isinstance(backend, MemoryBackend):
        store = "memory: exact in one process, counted per worker with --workers N"
    else:  # never the URL: it may hold a password
        store = (
            f"redis: shared by every process and replica; timeout {backend.timeout_s:g}s, "
            f"{backend.pool_size} in flight, key prefix {backend.key_prefix!r}"
        )
    shared = not isinstance(backend, MemoryBackend)
    lines = [f"rate_limits: {store}"]
    lines += [limit_text(limit, shared_store=shared) for limit in config.rate_limits.limits]
    used = {
        name
        for route in config.routes
        for name in (
            *route.limits,
            *route.unauthenticated_limits,
            *(name for rule in (route.policy.shadow or route.policy).all_rules for name in rule.limits),
        )
    }
    lines += [
        f"warning: rate limit {limit.name!r} (line {limit.line}) is declared, but no route or rule uses it"
        for limit in config.rate_limits.limits
        if limit.name not in used
    ]
    return lines


def audit_summary(config: GatewayConfig) -> str:
    """Where the audit trail goes, which key seals it, and what a failure to record does."""
    audit = config.audit
    if audit is None:
        return "audit: none (policy_decision events are only logged)"
    if audit.otlp is not None:  # the config has exactly one of file, otlp
        destination = f"OTLP logs to {audit.otlp.endpoint}/v1/logs (a chain per process)"
    else:
        file = audit.file
        destination = (
            f"file {file} (with --workers N: {file.stem}.worker-<i>{file.suffix} each)" if file else ""
        )
    failure = "requests are refused (503)" if audit.on_failure == "deny" else "requests go on unrecorded"
    return (
        f"audit: {destination}; sealed every {audit.segment_size} records by key {audit.key_id!r} "
        f"({audit.signing_key}); fsync {audit.fsync}; if a write fails: {failure}; "
        "a change needs a restart (a reload keeps the running trail)"
    )


def state_keys_summary(config: GatewayConfig) -> str:
    """What the sealing of sessions and task ids will hold across (``gateway.sealing``)."""
    if config.state_keys is not None:
        ids = ", ".join(key.id for key in config.state_keys.keys)
        return (
            f"state_keys: active {config.state_keys.active!r} of {ids}; sessions and task ids "
            "hold across workers, replicas with the same keys, and restarts"
        )
    return (
        "state_keys: none configured, so a random key per start seals sessions and task ids: they "
        "hold across the workers of one `serve --workers N`, but not across a restart or other "
        "replicas behind a load balancer (clients get 404 and must initialize again); configure "
        "state_keys to share them"
    )
