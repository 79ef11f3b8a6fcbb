"""Protocol transparency: the official MCP conformance suite, directly and through the gateway.

Run from the repository root::

    python -m tests.conformance.run [--keep DIR]

What it does:

1. ``npm ci`` in ``tests/conformance`` when ``node_modules`` is missing or was installed from a
   different lockfile. That installs ``@modelcontextprotocol/conformance`` (stable), the 0.2.0
   pre-release as the alias ``conformance-next``, and Node 22 (npm package ``node``), whose
   ``bin`` goes first on ``PATH`` for every suite run (the suite needs Node >= 22).
2. Starts ``tests.conformance.fixture_server`` (the suite's fixture contract on the official SDK,
   with a request recorder), an in-process issuer, and the gateway in front of the fixture: every
   tool, resource and prompt allowed with ``mcp:access``, except ``GATED_TOOL``, which needs a
   scope the token lacks, so policy still has to bite.
3. Runs every server scenario of both suite releases against the fixture directly and through
   the gateway (``SUITES``). The token reaches the suite's requests through a Node preload
   (``bearer-preload.mjs``, ``NODE_OPTIONS=--import``): an interceptor on undici's global
   dispatcher (global ``fetch`` and undici ``request()``) plus a wrapper around ``node:http``
   ``request``/``get``, adding ``Authorization`` only for the gateway's origin.
4. Prints scenario x (direct, gateway). Results are compared check by check: a scenario differs
   when the set of failing checks differs, even if it fails both ways. Fails on any difference
   that ``baseline.yml`` does not list (with a reason, optionally per check), and on a baseline
   entry that no longer differs (stale). Also fails unless the gateway's log shows the policy
   denial of ``GATED_TOOL``.
5. Negative half: the stable suite again through the gateway with no token and with a bad
   token. Every scenario must fail (``dns-rebinding-protection`` aside: its "reject" half passes
   trivially on a 401), every response seen through ``fetch``/``node:http`` must be 401 (403
   allowed for a foreign ``Origin``, which the gateway refuses before the token), and the
   fixture must have recorded no request at all.

Exit status 0 when all of that holds, 1 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from gateway.config import load_config
from gateway.logs import configure_logging
from gateway.server import start_gateway
from tests.support.issuer import TestIssuer, serving

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parents[1]
NODE_MODULES = HERE / "node_modules"
INSTALL_STAMP = NODE_MODULES / ".conformance-installed-from"
NODE_BIN = NODE_MODULES / "node" / "bin"
PRELOAD = HERE / "bearer-preload.mjs"
BASELINE = HERE / "baseline.yml"

ROUTE_SCOPE = "mcp:access"
GATED_TOOL = "test_audio_content"
GATED_SCOPE = "conformance:audio"
SCENARIO_TIMEOUT_S = 300


@dataclass(frozen=True)
class Suite:
    """One suite run: a label, the package directory under node_modules, extra CLI arguments."""

    label: str
    package: str
    args: tuple[str, ...]

    @property
    def cli(self) -> Path:
        return NODE_MODULES / self.package / "dist" / "index.js"

    @property
    def version(self) -> str:
        return str(json.loads((NODE_MODULES / self.package / "package.json").read_text())["version"])


SUITES = (
    # Every server scenario of the stable release (2025-06-18 / 2025-11-25, session transport).
    Suite("stable", "@modelcontextprotocol/conformance", ("--suite", "all")),
    # The pre-release's 2026-07-28 scenarios (stateless transport, headers, caching, ...).
    Suite("next-2026", "conformance-next", ("--suite", "all", "--spec-version", "2026-07-28")),
    # server-session-lifecycle is new in the pre-release but only applies to the 2025 transport.
    Suite("next-session", "conformance-next", ("--scenario", "server-session-lifecycle")),
)


def say(message: str) -> None:
    print(f"[conformance] {message}", file=sys.stderr, flush=True)


# ---- node_modules ------------------------------------------------------------------------------


def _lock_digest() -> str:
    digest = hashlib.sha256()
    for name in ("package.json", "package-lock.json"):
        digest.update((HERE / name).read_bytes())
    return digest.hexdigest()


def ensure_node_modules() -> None:
    """``npm ci`` unless node_modules was installed from exactly this lockfile already."""
    npm = shutil.which("npm")
    if npm is None:
        raise SystemExit("the conformance run needs npm on PATH (it installs Node 22 and the suite with it)")
    wanted = _lock_digest()
    lock_path = (
        Path(tempfile.gettempdir())
        / f"mcp-gateway-conformance-npm-{hashlib.sha256(bytes(HERE)).hexdigest()[:16]}.lock"
    )
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if INSTALL_STAMP.is_file() and INSTALL_STAMP.read_text().strip() == wanted:
            return
        say(f"npm ci in {HERE} (node_modules missing or stale) ...")
        started = time.monotonic()
        result = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"],
            cwd=HERE,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        if result.returncode != 0:
            raise SystemExit(f"npm ci failed (exit {result.returncode}):\n{result.stdout}\n{result.stderr}")
        INSTALL_STAMP.write_text(wanted + "\n")
        say(f"npm ci done in {time.monotonic() - started:.1f} s")
    node = NODE_BIN / "node"
    version = (
        subprocess.run([node, "--version"], capture_output=True, text=True, check=False).stdout.strip()
        if node.is_file()
        else ""
    )
    if not re.fullmatch(r"v(2[2-9]|[3-9]\d)\..*", version):
        # The npm package `node` fetches its binary in a preinstall script; an npm that refuses
        # install scripts leaves it out.
        raise SystemExit(
            f"{node} is not Node >= 22 ({version or 'missing'}): was the `node` package's install script run?"
        )


# ---- servers -------------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def fixture_server(stderr_path: Path) -> AsyncIterator[str]:
    """The fixture in a subprocess; yields its base URL (``/mcp`` and ``/__records`` below it).
    Its stderr (the SDK logs tracebacks for the scenarios it does not implement) goes to a file."""
    stderr = open(stderr_path, "wb")  # noqa: ASYNC230 - a local file, once; closed below
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.conformance.fixture_server",
        "--port",
        "0",
        cwd=REPO_ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=stderr,
    )
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 20)).decode().strip()
        word, _, port = line.partition(" ")
        if word != "LISTENING":
            raise RuntimeError(f"fixture server failed to start (exit {proc.returncode})")
        yield f"http://127.0.0.1:{port}"
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 5)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        stderr.close()


def free_port() -> int:
    """A port that was free a moment ago: the gateway's public_url must name its real origin,
    since that origin is the one a browser-style ``Origin`` header is allowed to carry."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def gateway_yaml(issuer: TestIssuer, upstream_mcp_url: str, public_url: str) -> str:
    return f"""\
listen: {{host: 127.0.0.1, port: 0}}
public_url: {public_url}
issuers:
  - issuer: {issuer.issuer}
    algorithms: [RS256]
    jwks: {{discover: true}}
routes:
  - path: /mcp
    upstream: {upstream_mcp_url}
    scopes: [{ROUTE_SCOPE}]
    response_timeout_s: 60
    tools:
      "{GATED_TOOL}": [{GATED_SCOPE}]
      "*": []
    resources:
      "*": []
    prompts:
      "*": []
"""


@contextlib.asynccontextmanager
async def gateway(issuer: TestIssuer, upstream_mcp_url: str, workdir: Path) -> AsyncIterator[str]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    config_path = workdir / "gateway.yaml"
    config_path.write_text(gateway_yaml(issuer, upstream_mcp_url, url))
    runner, _ = await start_gateway(load_config(config_path), host="127.0.0.1", port=port)
    try:
        async with aiohttp.ClientSession() as http:
            for _ in range(250):
                async with http.get(url + "/readyz") as response:
                    if response.status == 200:
                        break
                await asyncio.sleep(0.02)
            else:
                raise RuntimeError("gateway never became ready")
        yield url
    finally:
        await runner.cleanup()


# ---- running the suite -----------------------------------------------------------------------------


@dataclass
class Outcome:
    """One scenario in one run: its checks that failed, as ``check id`` -> error message."""

    checks: int
    failed: dict[str, str] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return self.checks > 0 and not self.failed

    def mark(self) -> str:
        return "pass" if self.passed else f"FAIL {len(self.failed)}/{self.checks}"


_RESULT_DIR = re.compile(r"^server-(?P<scenario>.+)-\d{4}-\d\d-\d\dT[\d-]+Z$")


def read_results(out_dir: Path) -> dict[str, Outcome]:
    results: dict[str, Outcome] = {}
    for entry in sorted(out_dir.iterdir()):
        match = _RESULT_DIR.match(entry.name)
        checks_file = entry / "checks.json"
        if match is None or not checks_file.is_file():
            continue
        checks: list[dict[str, Any]] = json.loads(checks_file.read_text())
        failed: dict[str, str] = {}
        for check in checks:
            if check.get("status") == "FAILURE":
                # A check id can repeat (one per probe): the name tells the probes apart.
                key = str(check.get("id"))
                key = key if key not in failed else f"{key}:{check.get('name')}"
                failed[key] = str(check.get("errorMessage"))
        results[match.group("scenario")] = Outcome(checks=len(checks), failed=failed)
    return results


async def run_suite(
    suite: Suite, url: str, out_dir: Path, *, token: str | None = None, status_log: Path | None = None
) -> dict[str, Outcome]:
    """One CLI run; the per-scenario results from its output directory."""
    out_dir.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 - local, instant
    env = dict(os.environ)
    env["PATH"] = f"{NODE_BIN}{os.pathsep}{env.get('PATH', '')}"
    env["NODE_OPTIONS"] = f"--import={PRELOAD.as_uri()}"
    for name in ("CONFORMANCE_BEARER", "CONFORMANCE_BEARER_ORIGIN", "CONFORMANCE_STATUS_LOG"):
        env.pop(name, None)
    if token is not None:
        env["CONFORMANCE_BEARER"] = token
        env["CONFORMANCE_BEARER_ORIGIN"] = url.split("/mcp", 1)[0]
    if status_log is not None:
        env["CONFORMANCE_STATUS_LOG"] = str(status_log)
    proc = await asyncio.create_subprocess_exec(
        str(NODE_BIN / "node"),
        str(suite.cli),
        "server",
        "--url",
        url,
        *suite.args,
        "-o",
        str(out_dir),
        cwd=HERE,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        output, _ = await asyncio.wait_for(proc.communicate(), SCENARIO_TIMEOUT_S)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise RuntimeError(
            f"suite {suite.label} against {url} did not finish in {SCENARIO_TIMEOUT_S} s"
        ) from None
    (out_dir / "cli-output.txt").write_bytes(output)
    results = read_results(out_dir)
    if not results:
        raise RuntimeError(
            f"suite {suite.label} against {url} produced no results:\n{output.decode()[-3000:]}"
        )
    return results


async def fixture_requests(base_url: str) -> list[dict[str, Any]]:
    async with aiohttp.ClientSession() as http, http.get(base_url + "/__records") as response:
        records: list[dict[str, Any]] = await response.json()
    return [record for record in records if "event" not in record]


async def clear_fixture(base_url: str) -> None:
    async with aiohttp.ClientSession() as http, http.post(base_url + "/__records/clear") as response:
        response.raise_for_status()


# ---- comparing -------------------------------------------------------------------------------------------


@dataclass
class BaselineEntry:
    """A scenario allowed to differ through the gateway; with ``checks``, only those checks may."""

    reason: str
    checks: frozenset[str] | None


def load_baseline(path: Path) -> dict[tuple[str, str], BaselineEntry]:
    data = yaml.safe_load(path.read_text()) or {}
    entries: dict[tuple[str, str], BaselineEntry] = {}
    for entry in data.get("gateway_differs", []):
        reason = " ".join(str(entry.get("reason", "")).split())
        if not reason:
            raise SystemExit(f"{path}: entry {entry!r} has no reason")
        key = (str(entry["suite"]), str(entry["scenario"]))
        checks = frozenset(map(str, entry["checks"])) if entry.get("checks") is not None else None
        if key in entries:  # several entries for one scenario, each for some of its checks
            previous = entries[key]
            if previous.checks is None or checks is None:
                raise SystemExit(f"{path}: {key[0]}/{key[1]} is listed twice, once for the whole scenario")
            entries[key] = BaselineEntry(f"{previous.reason} | {reason}", previous.checks | checks)
        else:
            entries[key] = BaselineEntry(reason, checks)
    return entries


def _differing_checks(d: Outcome | None, g: Outcome | None) -> set[str]:
    """Checks that failed on one side only; a scenario missing on one side differs entirely."""
    if d is None or g is None:
        return {"<scenario did not run on one side>"}
    return set(d.failed) ^ set(g.failed)


def compare(
    results: dict[str, tuple[dict[str, Outcome], dict[str, Outcome]]],
    baseline: dict[tuple[str, str], BaselineEntry],
) -> list[str]:
    """Print the table; return the problems (empty: transparent, baseline up to date).

    Results are compared check by check, not only pass/fail: a scenario that fails both ways
    but with different failing checks differs."""
    problems: list[str] = []
    width = max(len(name) for _, (direct, gated) in results.items() for name in {*direct, *gated})
    for label, (direct, gated) in results.items():
        suite = label.split(" ", 1)[0]
        print(f"\n{label}")
        print(f"  {'scenario':<{width}}  {'direct':<11}  {'gateway':<11}  note")
        for scenario in sorted({*direct, *gated}):
            d, g = direct.get(scenario), gated.get(scenario)
            differing = _differing_checks(d, g)
            entry = baseline.get((suite, scenario))
            note = ""
            if entry is not None:
                allowed = entry.checks
                unexpected = differing - allowed if allowed is not None else set()
                stale = (allowed - differing) if allowed is not None else set() if differing else {"<all>"}
                if unexpected:
                    note = f"DIFFERS beyond baseline: {sorted(unexpected)}"
                    problems.append(
                        f"{suite}/{scenario}: checks differ beyond the baseline: {sorted(unexpected)}"
                    )
                elif stale:
                    note = f"STALE baseline (no longer differs: {sorted(stale)})"
                    problems.append(
                        f"{suite}/{scenario}: baseline entry is stale: {sorted(stale)} no longer differ"
                    )
                else:
                    note = f"baseline: {entry.reason}"
            elif differing:
                note = f"DIFFERS: {sorted(differing)}"
                messages = [
                    f"{key}: {(g.failed if g and key in g.failed else d.failed if d else {}).get(key)}"
                    for key in sorted(differing)[:3]
                ]
                problems.append(f"{suite}/{scenario}: differs: {'; '.join(messages)}")
            dm, gm = (d.mark() if d else "-"), (g.mark() if g else "-")
            print(f"  {scenario:<{width}}  {dm:<11}  {gm:<11}  {note}")
    ran = {label.split(" ", 1)[0]: {*direct, *gated} for label, (direct, gated) in results.items()}
    for suite, scenario in sorted(baseline):
        if suite not in ran or scenario not in ran[suite]:
            problems.append(f"{suite}/{scenario}: baseline entry names a scenario that did not run (stale)")
    return problems


async def negative(suite: Suite, gateway_mcp: str, fixture: str, workdir: Path) -> list[str]:
    """No token, then a bad one: everything fails at the gateway and nothing reaches the fixture."""
    problems: list[str] = []
    other_key_token = TestIssuer().mint(
        audience=gateway_mcp, scope=ROUTE_SCOPE
    )  # signed by a key nobody trusts
    for name, token in (("no-token", None), ("bad-token", other_key_token)):
        await clear_fixture(fixture)
        status_log = workdir / f"{name}-statuses.txt"
        results = await run_suite(suite, gateway_mcp, workdir / name, token=token, status_log=status_log)
        passed = sorted(s for s, o in results.items() if o.passed and s != "dns-rebinding-protection")
        statuses = (
            [line.split(" ", 2) for line in status_log.read_text().splitlines()]
            if status_log.exists()
            else []
        )
        codes = {code for code, *_ in statuses}
        reached = await fixture_requests(fixture)
        print(
            f"\nnegative {name}: {len(results)} scenarios, passed {passed or 'none'}"
            f" (dns-rebinding-protection not counted), HTTP statuses {sorted(codes)}"
            f" over {len(statuses)} responses,"
            f" fixture requests {len(reached)}"
        )
        if passed:
            problems.append(f"negative {name}: scenarios passed without a valid token: {passed}")
        if "401" not in codes or not codes <= {"401", "403"}:
            problems.append(
                f"negative {name}: expected only 401 (and 403 for foreign Origin), saw {sorted(codes)}"
            )
        if reached:
            problems.append(f"negative {name}: the fixture recorded {len(reached)} requests, expected none")
    return problems


def policy_bit(log_path: Path) -> list[str]:
    """The gated tool must have been refused by the gateway's policy, not by anything else."""
    denials = 0
    for line in log_path.read_text().splitlines():
        event = json.loads(line)
        if (
            event.get("event") == "policy_decision"
            and event.get("target") == GATED_TOOL
            and event.get("decision") == "deny"
            and GATED_SCOPE in (event.get("missing_scopes") or [])
        ):
            denials += 1
    print(f"\npolicy: {denials} tools/call {GATED_TOOL} denied for missing {GATED_SCOPE}")
    return (
        [] if denials else [f"policy: no deny of {GATED_TOOL} for missing {GATED_SCOPE} in the gateway log"]
    )


async def amain(keep: Path | None, baseline_path: Path) -> int:
    started = time.monotonic()
    ensure_node_modules()
    workdir = keep or Path(tempfile.mkdtemp(prefix="mcp-conformance-"))
    workdir.mkdir(parents=True, exist_ok=True)
    log_file = open(workdir / "gateway-log.jsonl", "w")  # noqa: ASYNC230 - closed below
    configure_logging(json=True, level="info", stream=log_file)
    baseline = load_baseline(baseline_path)
    try:
        async with (
            fixture_server(workdir / "fixture-stderr.txt") as fixture,
            serving() as issuer,
            gateway(issuer, fixture + "/mcp", workdir) as gw,
        ):
            token = issuer.mint(audience=gw + "/mcp", scope=ROUTE_SCOPE, lifetime_s=3600)
            direct_url, gateway_url = fixture + "/mcp", gw + "/mcp"
            results: dict[str, tuple[dict[str, Outcome], dict[str, Outcome]]] = {}
            for suite in SUITES:
                args = " ".join(suite.args)
                say(f"{suite.label} ({suite.package} {suite.version} {args}): direct and through the gateway")
                direct, gated = await asyncio.gather(
                    run_suite(suite, direct_url, workdir / suite.label / "direct"),
                    run_suite(suite, gateway_url, workdir / suite.label / "gateway", token=token),
                )
                results[f"{suite.label} ({suite.package}@{suite.version})"] = (direct, gated)
            problems = compare(results, baseline)
            log_file.flush()
            problems += policy_bit(workdir / "gateway-log.jsonl")
            problems += await negative(SUITES[0], gateway_url, fixture, workdir)
    finally:
        log_file.close()
    print(f"\nresults in {workdir}; {time.monotonic() - started:.1f} s")
    if problems:
        print("\nPROBLEMS:")
        for problem in problems:
            print(f"  - {problem}")
        return 1
    print("OK: every scenario has the same result directly and through the gateway (baseline aside)")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--keep", type=Path, help="write the suite's results and logs here (default: a temp dir)"
    )
    parser.add_argument(
        "--baseline", type=Path, default=BASELINE, help="expected differences (default: %(default)s)"
    )
    args = parser.parse_args(argv)
    return asyncio.run(amain(args.keep, args.baseline))


if __name__ == "__main__":
    sys.exit(main())
