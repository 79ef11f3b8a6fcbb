"""``mcp-auth-gateway``: serve, check-config, explain, demo."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence

from .config import ConfigError, GatewayConfig, load_config
from .logs import configure_logging

EXIT_CONFIG_ERROR = 2


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mcp-auth-gateway", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the gateway")
    serve.add_argument("--config", required=True, help="path to the YAML config")
    serve.add_argument("--log-format", choices=("json", "console"), default="json")
    serve.add_argument("--log-level", default="info")

    check = commands.add_parser("check-config", help="validate a config and summarise its routes")
    check.add_argument("path")

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
        "--request", required=True, help="the JSON-RPC body as a client would POST it, or @file"
    )
    explain.add_argument(
        "--header", action="append", default=[], metavar="'NAME: VALUE'", help="a request header (repeatable)"
    )
    explain.add_argument("--json", action="store_true", help="print one JSON object")

    demo = commands.add_parser("demo", help="run a demo upstream, a development issuer and the gateway")
    demo.add_argument(
        "--port", type=int, default=8000, help="gateway port (upstream and issuer use the next two)"
    )

    args = parser.parse_args(argv)
    if args.command == "check-config":
        return check_config(args.path)
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
            as_json=args.json,
        )
    if args.command == "serve":
        config = _load_or_report(args.config)
        if config is None:
            return EXIT_CONFIG_ERROR
        configure_logging(json=args.log_format == "json", level=args.log_level)
        from .server import serve as serve_forever

        asyncio.run(serve_forever(config))
        return 0
    from .demo import run_demo

    return run_demo(args.port)


def _load_or_report(path: str) -> GatewayConfig | None:
    try:
        return load_config(path)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        print(f"{len(exc.problems)} problem(s) in {path}", file=sys.stderr)
        return None


def check_config(path: str) -> int:
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
    return 0
