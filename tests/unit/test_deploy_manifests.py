"""The deployment files (Dockerfile, deploy/) agree with the code.

Nothing here builds an image or talks to a cluster: the files are parsed and compared with what
the gateway actually does — its config parser, the routes its listeners serve, its metric names.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import importlib.util
import json
import re
import shlex
import tomllib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from gateway.config import GatewayConfig, parse_config_text
from gateway.metrics import METRIC_FAMILIES
from gateway.web.app import build_app

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
DOCKERFILE = ROOT / "Dockerfile"
CONFIG_PATH = "/etc/mcp-auth-gateway/gateway.yaml"  # documented in the Dockerfile and deploy/README.md
HISTOGRAMS = frozenset(
    {"mcp_gateway_request_duration_seconds", "mcp_gateway_upstream_duration_seconds"}
) & frozenset(METRIC_FAMILIES)
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")
# The one series outside the gateway's own families that alerts.yaml may use: readiness as the
# cluster sees it (kube-state-metrics), for "no ready replica".
EXTERNAL_SERIES = frozenset({"kube_deployment_status_replicas_ready"})
DEFAULT_SHUTDOWN_GRACE_S = 30.0
# Keys of the gateway config that other work adds; until the parser knows one, it is taken out of
# the text before parsing (and its raw value used), so every other key is still checked for real.
PENDING_TOP_LEVEL_KEYS = ("shutdown_grace_s", "admin")


# =========================================================================== helpers


def gateway_config_fields() -> set[str]:
    return {field.name for field in dataclasses.fields(GatewayConfig)}


def pending_keys() -> tuple[str, ...]:
    known = gateway_config_fields()
    return tuple(key for key in PENDING_TOP_LEVEL_KEYS if key not in known)


class DeployedConfig:
    """A gateway config from deploy/, parsed by the gateway's own parser."""

    def __init__(self, name: str, text: str, env: Mapping[str, str]) -> None:
        self.name = name
        self.raw: dict[str, Any] = yaml.safe_load(text)
        kept = text
        for key in pending_keys():
            # Blank the key's line(s) rather than delete them, so problems keep their line numbers.
            kept = re.sub(rf"(?m)^{key}:.*(\n[ \t]+.*)*$", "#", kept)
        self.config = parse_config_text(kept, Path(CONFIG_PATH), env)

    @property
    def listen_port(self) -> int:
        return self.config.listen.port

    @property
    def admin_port(self) -> int:
        admin = getattr(self.config, "admin", None)
        if admin is not None:
            return int(admin.port)
        assert "admin" in self.raw, f"{self.name}: no admin listener configured"
        return int(self.raw["admin"]["port"])

    @property
    def shutdown_grace_s(self) -> float:
        if hasattr(self.config, "shutdown_grace_s"):
            return float(self.config.shutdown_grace_s)
        return float(self.raw.get("shutdown_grace_s", DEFAULT_SHUTDOWN_GRACE_S))


async def resolves_to_own_route(app: web.Application, path: str) -> bool:
    request = make_mocked_request("GET", path, app=app)
    match = await app.router.resolve(request)
    return (
        match.http_exception is None
        and match.route.resource is not None
        and (match.route.resource.canonical == path)
    )


def client_app(config: GatewayConfig) -> web.Application:
    return build_app(config)


def admin_app_for(config: GatewayConfig) -> web.Application | None:
    try:
        from gateway.web.admin import admin_app
    except ImportError:
        return None
    return admin_app(build_app(config))


def yaml_documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def k8s_objects(folder: Path) -> list[dict[str, Any]]:
    return [doc for path in sorted(folder.glob("*.yaml")) for doc in yaml_documents(path)]


def one(objects: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [obj for obj in objects if obj["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def of_kind(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [obj for obj in objects if obj["kind"] == kind]


def gateway_container(pod_spec: dict[str, Any]) -> dict[str, Any]:
    """The container that runs the gateway: its config is mounted at CONFIG_PATH's folder."""
    found: list[dict[str, Any]] = [
        container
        for container in pod_spec["containers"]
        if any(
            mount["mountPath"] == str(Path(CONFIG_PATH).parent) for mount in container.get("volumeMounts", [])
        )
    ]
    assert len(found) == 1, "exactly one container mounts the gateway config"
    return found[0]


def container_env(container: dict[str, Any], objects: list[dict[str, Any]]) -> dict[str, str]:
    """The container's environment, with secretKeyRef values looked up in the folder's Secrets."""
    secrets = {
        secret["metadata"]["name"]: secret.get("stringData", {}) for secret in of_kind(objects, "Secret")
    }
    env: dict[str, str] = {}
    for entry in container.get("env", []):
        if "value" in entry:
            env[entry["name"]] = str(entry["value"])
            continue
        ref = entry["valueFrom"]["secretKeyRef"]
        assert ref["name"] in secrets, f"env {entry['name']}: no Secret {ref['name']} in the folder"
        assert ref["key"] in secrets[ref["name"]], f"env {entry['name']}: Secret has no key {ref['key']}"
        env[entry["name"]] = secrets[ref["name"]][ref["key"]]
    return env


def mounted_config(pod_spec: dict[str, Any], container: dict[str, Any], objects: list[dict[str, Any]]) -> str:
    """The text of the config file the container sees at CONFIG_PATH (from a ConfigMap)."""
    mount = next(m for m in container["volumeMounts"] if m["mountPath"] == str(Path(CONFIG_PATH).parent))
    assert "subPath" not in mount, "a subPath mount never sees ConfigMap updates (SIGHUP reload)"
    volume = next(v for v in pod_spec["volumes"] if v["name"] == mount["name"])
    config_map = next(
        cm for cm in of_kind(objects, "ConfigMap") if cm["metadata"]["name"] == volume["configMap"]["name"]
    )
    file_name = Path(CONFIG_PATH).name
    assert file_name in config_map["data"], f"ConfigMap has no key {file_name}"
    text: str = config_map["data"][file_name]
    return text


def named_port(container: dict[str, Any], port: int | str) -> int:
    if isinstance(port, int):
        return port
    number: int = next(p["containerPort"] for p in container.get("ports", []) if p.get("name") == port)
    return number


def prestop_sleep_s(container: dict[str, Any]) -> float:
    pre_stop = container.get("lifecycle", {}).get("preStop")
    if pre_stop is None:
        return 0.0
    if "sleep" in pre_stop:
        return float(pre_stop["sleep"]["seconds"])
    command = pre_stop["exec"]["command"]
    assert command[0] == "sleep", f"unexpected preStop {command}"
    return float(command[1])


# --------------------------------------------------------------------------- Dockerfile


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        whole = pending + stripped
        pending = ""
        keyword, _, arguments = whole.partition(" ")
        instructions.append((keyword.upper(), arguments.strip()))
    assert not pending, "a line continuation runs off the end of the Dockerfile"
    return instructions


def dockerfile_stages() -> tuple[dict[str, str], list[list[tuple[str, str]]]]:
    """Global ARG defaults, and the instructions of each stage (FROM first)."""
    global_args: dict[str, str] = {}
    stages: list[list[tuple[str, str]]] = []
    for keyword, arguments in dockerfile_instructions(DOCKERFILE.read_text()):
        if keyword == "FROM":
            stages.append([(keyword, arguments)])
        elif stages:
            stages[-1].append((keyword, arguments))
        elif keyword == "ARG":
            name, _, default = arguments.partition("=")
            global_args[name] = default
    return global_args, stages


def exec_form(arguments: str) -> list[str]:
    value = json.loads(arguments)
    assert isinstance(value, list), "use the exec (JSON) form, so signals reach the gateway"
    return [str(item) for item in value]


def last(stage: list[tuple[str, str]], keyword: str) -> str | None:
    values = [arguments for kw, arguments in stage if kw == keyword]
    return values[-1] if values else None


def dockerfile_uid() -> int:
    _, stages = dockerfile_stages()
    user = last(stages[-1], "USER")
    assert user is not None, "the final stage sets USER"
    uid = user.split(":")[0]
    assert uid.isdigit(), "USER is numeric, so runAsNonRoot can check it"
    return int(uid)


def dockerignore_excludes(path: str) -> bool:
    """Docker's rule: the last matching pattern wins, '!' re-includes."""
    excluded = False
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        pattern = line.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").rstrip("/")
        parts = path.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        regex = re.escape(pattern).replace(r"\*\*", ".*").replace(r"\*", "[^/]*")
        if any(re.fullmatch(regex, prefix) for prefix in prefixes):
            excluded = not negate
    return excluded


# --------------------------------------------------------------------------- PromQL


_PROMQL_KEYWORDS = frozenset(
    {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset"}
)


def promql_metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression: identifiers that are not functions, keywords or labels."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # strings (label values, regexes)
    text = re.sub(r"\{[^}]*\}", " ", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)  # ranges and subqueries
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    text = re.sub(r"\boffset\s+\S+", " ", text)
    text = re.sub(r"(?<![\w:])\d+(\.\d*)?([eE][+-]?\d+)?", " ", text)  # numbers (1e3, 0.95)
    names = set()
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", text):
        name = match.group()
        after = text[match.end() :].lstrip()
        if name in _PROMQL_KEYWORDS or after.startswith("("):
            continue
        if name in ("Inf", "NaN", "inf", "nan"):
            continue
        names.add(name)
    return names


def family_of(name: str) -> str | None:
    if name in METRIC_FAMILIES:
        return name
    for suffix in HISTOGRAM_SUFFIXES:
        if name.endswith(suffix) and name.removesuffix(suffix) in HISTOGRAMS:
            return name.removesuffix(suffix)
    return None


def alert_rules() -> list[dict[str, Any]]:
    document = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yaml").read_text())
    return [rule for group in document["groups"] for rule in group["rules"]]


def dashboard() -> dict[str, Any]:
    value: dict[str, Any] = json.loads((DEPLOY / "grafana" / "dashboard.json").read_text())
    return value


def dashboard_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from dashboard_panels(panel.get("panels", []))


def dashboard_queries() -> list[tuple[str, str]]:
    """(where, PromQL) for every panel target and every query variable."""
    board = dashboard()
    queries = [
        (f"panel {panel['title']!r}", target["expr"])
        for panel in dashboard_panels(board["panels"])
        for target in panel.get("targets", [])
    ]
    for variable in board.get("templating", {}).get("list", []):
        if variable.get("type") != "query":
            continue
        query = variable["query"]
        query = query["query"] if isinstance(query, dict) else query
        label_values = re.fullmatch(r"\s*label_values\((.*),\s*\w+\)\s*", query)
        queries.append((f"variable {variable['name']!r}", label_values.group(1) if label_values else query))
    return queries


# =========================================================================== fixtures


@pytest.fixture(scope="module")
def edge() -> dict[str, Any]:
    objects = k8s_objects(DEPLOY / "kubernetes" / "edge")
    deployment = one(objects, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    container = gateway_container(pod)
    text = mounted_config(pod, container, objects)
    config = DeployedConfig("edge", text, container_env(container, objects))
    return {
        "objects": objects,
        "deployment": deployment,
        "pod": pod,
        "container": container,
        "config": config,
    }


@pytest.fixture(scope="module")
def sidecar() -> dict[str, Any]:
    objects = k8s_objects(DEPLOY / "kubernetes" / "sidecar")
    deployment = one(objects, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    container = gateway_container(pod)
    text = mounted_config(pod, container, objects)
    config = DeployedConfig("sidecar", text, container_env(container, objects))
    return {
        "objects": objects,
        "deployment": deployment,
        "pod": pod,
        "container": container,
        "config": config,
    }


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    document = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    text = (DEPLOY / "compose" / "gateway.yaml").read_text()
    return {"services": document["services"], "config": DeployedConfig("compose", text, {})}


@pytest.fixture(scope="module", params=["edge", "sidecar"])
def k8s(request: pytest.FixtureRequest) -> dict[str, Any]:
    value: dict[str, Any] = request.getfixturevalue(request.param)
    return value


@pytest.fixture(scope="module")
def all_configs(
    edge: dict[str, Any], sidecar: dict[str, Any], compose: dict[str, Any]
) -> list[DeployedConfig]:
    return [edge["config"], sidecar["config"], compose["config"]]


# =========================================================================== Dockerfile


def test_dockerfile_is_multi_stage_and_the_final_stage_holds_only_the_venv() -> None:
    """The final image is python:3.11-slim with only the builder's venv copied in and no build tools."""
    global_args, stages = dockerfile_stages()
    assert len(stages) >= 2
    builder_from = stages[0][0][1].split()
    assert builder_from[-2:] == ["AS", "builder"] or builder_from[-2:] == ["as", "builder"]
    final_image = stages[-1][0][1].split()[0]
    resolved = re.sub(r"\$\{(\w+)\}", lambda m: global_args.get(m.group(1), ""), final_image)
    assert resolved == "python:3.11-slim"
    final = stages[-1]
    copies = [arguments for keyword, arguments in final if keyword in ("COPY", "ADD")]
    assert copies == ["--from=builder /opt/venv /opt/venv"]
    final_runs = " ".join(arguments for keyword, arguments in final if keyword == "RUN")
    for build_tool in ("apt-get install", "pip install", "gcc", "build-essential", "curl", "wget"):
        assert build_tool not in final_runs
    env = " ".join(arguments for keyword, arguments in final if keyword == "ENV")
    assert '"/opt/venv/bin:' in env


def test_dockerfile_builder_installs_the_package_with_optional_extras() -> None:
    """The builder installs the package with uvloop (`fast`, so the image runs the faster loop)
    and `EXTRAS`, from sources that .dockerignore lets in."""
    _, stages = dockerfile_stages()
    builder = stages[0]
    assert ("ARG", 'EXTRAS=""') in builder
    runs = " ".join(arguments for keyword, arguments in builder if keyword == "RUN")
    assert "pip wheel" in runs and "[fast${EXTRAS:+,${EXTRAS}}]" in runs and "/opt/venv" in runs
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert "demo" in project["optional-dependencies"]  # the extra compose.yaml asks for
    assert any("uvloop" in dependency for dependency in project["optional-dependencies"]["fast"])
    # What the builder copies is in the build context (.dockerignore is an allowlist).
    sources = [arguments.split()[:-1] for keyword, arguments in builder if keyword == "COPY"]
    for source in (item for items in sources for item in items):
        assert (ROOT / source).exists(), source
        assert not dockerignore_excludes(source), f"{source} is excluded by .dockerignore"
    assert not dockerignore_excludes("gateway/app.py")
    for kept_out in (".git", ".venv", "tests/unit/test_config.py", "deploy/compose.yaml", "config/demo.yaml"):
        assert dockerignore_excludes(kept_out), kept_out


def test_dockerfile_runs_as_a_numeric_non_root_user() -> None:
    """The image runs as a numeric USER whose uid (and group, if given) is not 0."""
    assert dockerfile_uid() != 0
    user = last(dockerfile_stages()[1][-1], "USER")
    assert user is not None and user.split(":")[-1] != "0"


def test_dockerfile_healthcheck_uses_urllib_on_healthz_of_the_listen_port(
    all_configs: list[DeployedConfig],
) -> None:
    """The HEALTHCHECK fetches /healthz with urllib on 127.0.0.1 at every config's listen port."""
    final = dockerfile_stages()[1][-1]
    healthcheck = last(final, "HEALTHCHECK")
    assert healthcheck is not None
    command = exec_form(healthcheck[healthcheck.index("CMD") + 3 :].strip())
    assert command[:2] == ["python", "-c"] and "urllib.request.urlopen" in command[2]
    env = " ".join(arguments for keyword, arguments in final if keyword == "ENV")
    url = re.search(r'GATEWAY_HEALTHCHECK_URL="([^"]+)"', env)
    assert url is not None and "GATEWAY_HEALTHCHECK_URL" in command[2]
    parts = urlsplit(url.group(1))
    assert parts.hostname == "127.0.0.1" and parts.path == "/healthz"
    for deployed in all_configs:
        assert parts.port == deployed.listen_port, deployed.name  # /healthz: see the probe test


def test_dockerfile_exposes_the_listen_and_admin_ports(all_configs: list[DeployedConfig]) -> None:
    """The image exposes exactly every deployed config's listen and admin ports."""
    final = dockerfile_stages()[1][-1]
    exposed = {
        int(port.split("/")[0])
        for keyword, arguments in final
        if keyword == "EXPOSE"
        for port in arguments.split()
    }
    for deployed in all_configs:
        assert exposed == {deployed.listen_port, deployed.admin_port}, deployed.name


def test_dockerfile_entrypoint_serves_the_documented_config_path() -> None:
    """The entrypoint runs `mcp-auth-gateway serve --config` with the documented config path."""
    final = dockerfile_stages()[1][-1]
    entrypoint, cmd = last(final, "ENTRYPOINT"), last(final, "CMD")
    assert entrypoint is not None and cmd is not None
    assert exec_form(entrypoint) + exec_form(cmd) == ["mcp-auth-gateway", "serve", "--config", CONFIG_PATH]
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["mcp-auth-gateway"] == "gateway.cli:main"


# =========================================================================== gateway configs


def test_every_deployed_config_parses_with_the_gateway_parser(all_configs: list[DeployedConfig]) -> None:
    """Every deployed config parses, listens on 0.0.0.0:8080 with admin on 9090, and drains on stop."""
    # The fixtures parse them (parse_config_text raises ConfigError on any problem); the
    # Kubernetes ones with exactly the environment their container gets from the Secret.
    for deployed in all_configs:
        # A container listens on all of its interfaces.
        assert deployed.config.listen.host == "0.0.0.0", deployed.name  # noqa: S104
        assert deployed.listen_port == 8080 and deployed.admin_port == 9090, deployed.name
        assert deployed.shutdown_grace_s > 0


def test_deployed_configs_use_only_keys_the_parser_knows_now(all_configs: list[DeployedConfig]) -> None:
    """Once the parser knows every pending key, each deployed config parses whole with an admin listener."""
    missing = pending_keys()
    if missing:
        pytest.skip(f"the config parser does not know {', '.join(missing)} yet (being added)")
    for deployed in all_configs:
        assert deployed.config.admin is not None, deployed.name


async def test_probe_and_metrics_paths_are_served_by_the_gateway(all_configs: list[DeployedConfig]) -> None:
    """/healthz and /readyz are routes of the client listener; the admin listener adds /metrics."""
    for deployed in all_configs:
        app = client_app(deployed.config)
        for path in ("/healthz", "/readyz"):
            assert await resolves_to_own_route(app, path), f"client listener does not serve {path}"
        admin = admin_app_for(deployed.config)
        if admin is not None:
            for path in ("/healthz", "/readyz", "/metrics"):
                assert await resolves_to_own_route(admin, path), f"admin listener does not serve {path}"


# =========================================================================== Kubernetes


def test_every_manifest_file_is_listed_in_its_kustomization() -> None:
    """Each kustomization lists exactly its folder's manifests, each with an apiVersion and a name."""
    for folder in (DEPLOY / "kubernetes" / "edge", DEPLOY / "kubernetes" / "sidecar"):
        kustomization = yaml.safe_load((folder / "kustomization.yaml").read_text())
        listed = set(kustomization["resources"])
        files = {path.name for path in folder.glob("*.yaml")} - {"kustomization.yaml"}
        assert listed == files, folder.name
        for obj in k8s_objects(folder):
            if obj["kind"] != "Kustomization":
                assert obj["apiVersion"] and obj["metadata"]["name"], obj


def test_k8s_container_ports_probes_and_args_match_the_config(k8s: dict[str, Any]) -> None:
    """Container ports, args and probes match the config; readiness probes the traffic port."""
    container, deployed = k8s["container"], k8s["config"]
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert ports == {"http": deployed.listen_port, "admin": deployed.admin_port}
    assert container["args"] == ["serve", "--config", CONFIG_PATH]
    readiness, liveness = container["readinessProbe"]["httpGet"], container["livenessProbe"]["httpGet"]
    assert readiness["path"] == "/readyz" and liveness["path"] == "/healthz"
    for probe in (readiness, liveness):
        assert named_port(container, probe["port"]) in (deployed.listen_port, deployed.admin_port)
    # Readiness on the port that carries the traffic it gates.
    assert named_port(container, readiness["port"]) == deployed.listen_port


def test_k8s_service_exposes_only_the_gateway_client_port(k8s: dict[str, Any]) -> None:
    """The Service selects the gateway's pods and exposes only the client listen port."""
    service = one(k8s["objects"], "Service")
    labels = k8s["deployment"]["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    assert k8s["deployment"]["spec"]["selector"]["matchLabels"].items() <= labels.items()
    targets = [named_port(k8s["container"], port["targetPort"]) for port in service["spec"]["ports"]]
    assert targets == [k8s["config"].listen_port]
    assert [port["port"] for port in service["spec"]["ports"]] == [k8s["config"].listen_port]


def test_k8s_prometheus_scrapes_the_admin_port(k8s: dict[str, Any]) -> None:
    """The pod annotations tell Prometheus to scrape /metrics on the admin port."""
    annotations = k8s["deployment"]["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == k8s["config"].admin_port
    assert annotations["prometheus.io/path"] == "/metrics"


def test_k8s_grace_period_covers_prestop_and_the_drain(k8s: dict[str, Any]) -> None:
    """terminationGracePeriodSeconds outlasts the preStop sleep plus the gateway's shutdown drain."""
    grace = k8s["pod"]["terminationGracePeriodSeconds"]
    drain = k8s["config"].shutdown_grace_s
    assert grace > drain
    assert grace > prestop_sleep_s(k8s["container"]) + drain


def test_k8s_pods_run_non_root_with_a_read_only_root_filesystem(k8s: dict[str, Any]) -> None:
    """Pods run as the image's uid on a read-only root, with no SA token, escalation or capabilities."""
    pod = k8s["pod"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == dockerfile_uid()
    assert pod["automountServiceAccountToken"] is False
    for container in pod["containers"]:
        context = container["securityContext"]
        assert context["readOnlyRootFilesystem"] is True, container["name"]
        assert context["allowPrivilegeEscalation"] is False, container["name"]
        assert context["capabilities"]["drop"] == ["ALL"], container["name"]


def test_sidecar_upstream_is_the_other_container_on_loopback(sidecar: dict[str, Any]) -> None:
    """The sidecar's MCP server is unexposed, on loopback, at the address every route's upstream names."""
    servers = [c for c in sidecar["pod"]["containers"] if c is not sidecar["container"]]
    assert len(servers) == 1
    server = servers[0]
    assert "ports" not in server, "the MCP server must not be reachable from outside the pod"
    args = server["args"]
    host, port = args[args.index("--host") + 1], int(args[args.index("--port") + 1])
    assert host == "127.0.0.1"
    for route in sidecar["config"].config.routes:
        upstream = urlsplit(route.upstream)
        assert (upstream.hostname, upstream.port) == (host, port)


def test_edge_has_hpa_pdb_and_fake_secrets(edge: dict[str, Any]) -> None:
    """The edge deployment has an HPA (2+ replicas, a CPU request), a PDB and only fake Secret values."""
    objects, deployment = edge["objects"], edge["deployment"]
    name = deployment["metadata"]["name"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    hpa = one(objects, "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": name}
    assert hpa["spec"]["minReplicas"] >= 2
    container = edge["container"]
    assert "cpu" in container["resources"]["requests"], "the HPA's CPU target needs a CPU request"
    pdb = one(objects, "PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    for secret in of_kind(objects, "Secret"):
        for key, value in secret["stringData"].items():
            assert value.startswith("REPLACE-ME-fake-"), f"{key} must be a clearly fake placeholder"


# =========================================================================== compose


def test_compose_mounts_the_config_and_publishes_its_ports(compose: dict[str, Any]) -> None:
    """Compose mounts the config read-only, publishes its ports on loopback and outlasts the drain."""
    services, deployed = compose["services"], compose["config"]
    gateway = services["gateway"]
    assert "./compose/gateway.yaml:" + CONFIG_PATH + ":ro" in gateway["volumes"]
    assert gateway["command"][:3] == ["serve", "--config", CONFIG_PATH]
    published = {int(port.rsplit(":", 1)[1]) for port in gateway["ports"]}
    issuer_url = urlsplit(deployed.config.issuers[0].issuer)
    assert published == {deployed.listen_port, deployed.admin_port, issuer_url.port}
    assert all(port.startswith("127.0.0.1:") for port in gateway["ports"])
    stop_grace = int(gateway["stop_grace_period"].removesuffix("s"))
    assert stop_grace > deployed.shutdown_grace_s
    for name, service in services.items():
        assert service["read_only"] is True, name
        if name != "redis":  # the rate limits' store: the one service not built from our image
            assert service["build"]["args"]["EXTRAS"] == "demo", name


def test_compose_upstream_and_issuer_match_the_config(compose: dict[str, Any]) -> None:
    """Compose's upstream and issuer share the gateway's network at the addresses its config names."""
    services, config = compose["services"], compose["config"].config
    for name in ("upstream", "issuer"):
        assert services[name]["network_mode"] == "service:gateway", name
    upstream_args = services["upstream"]["command"]
    assert services["upstream"]["entrypoint"] == ["python", "-m", "gateway.demo.upstream"]
    (route,) = config.routes
    upstream = urlsplit(route.upstream)
    assert upstream.hostname == upstream_args[upstream_args.index("--host") + 1] == "127.0.0.1"
    assert upstream.port == int(upstream_args[upstream_args.index("--port") + 1])
    issuer_args = services["issuer"]["command"]
    (issuer,) = config.issuers
    assert issuer_args[issuer_args.index("--issuer") + 1] == issuer.issuer
    assert urlsplit(issuer.issuer).port == int(issuer_args[issuer_args.index("--port") + 1])
    script = services["issuer"]["entrypoint"][1]
    mounts = dict(volume.rsplit(":", 1)[0].split(":", 1)[::-1] for volume in services["issuer"]["volumes"])
    assert (DEPLOY / mounts[script]).is_file()
    for name in ("upstream", "issuer"):
        assert "CMD" in services[name]["healthcheck"]["test"], "not the image's: 8080 is the gateway's"
    assert shlex.join(services["upstream"]["healthcheck"]["test"]).count(str(upstream.port)) == 1


# =========================================================================== metrics


def test_promql_metric_name_extraction() -> None:
    """Metric names are picked out of PromQL, skipping functions, keywords, labels, ranges and numbers."""
    expr = (
        "histogram_quantile(0.95, sum by (le, route) "
        '(rate(a_bucket{route=~"$route",x="y{z}"}[5m] offset 1h)))'
        " / on(route) group_left b and ignoring(x) c > 3 * sum without (k) (d[1h:5m]) unless absent(e) == 1e3"
    )
    assert promql_metric_names(expr) == {"a_bucket", "b", "c", "d", "e"}


def test_alert_expressions_use_only_the_gateway_metric_families() -> None:
    """Alerts use only gateway families (plus replica readiness) and cover those the runbook names."""
    rules = alert_rules()
    assert rules
    used: set[str] = set()
    for rule in rules:
        assert rule["alert"] and rule["annotations"]["summary"], rule
        names = promql_metric_names(rule["expr"])
        assert names, rule["alert"]
        for name in names:
            assert family_of(name) is not None or name in EXTERNAL_SERIES, f"{rule['alert']}: {name}"
        used |= {family_of(name) for name in names} - {None}  # type: ignore[arg-type]
    # The alerts the runbook promises.
    for family in (
        "mcp_gateway_requests_total",
        "mcp_gateway_token_rejections_total",
        "mcp_gateway_upstream_errors_total",
        "mcp_gateway_jwks_fetches_total",
        "mcp_gateway_token_exchanges_total",
    ):
        assert family in used, family


def test_dashboard_queries_use_only_the_gateway_metric_families() -> None:
    """Dashboard queries use only gateway families, each with a panel; ids are unique, no fixed [5m]."""
    queries = dashboard_queries()
    assert queries
    used: set[str] = set()
    for where, expr in queries:
        names = promql_metric_names(expr)
        assert names, where
        for name in names:
            family = family_of(name)
            assert family is not None, f"{where}: {name} is not a gateway metric"
            used.add(family)
    assert used == set(METRIC_FAMILIES), f"families without a panel: {set(METRIC_FAMILIES) - used}"
    panels = list(dashboard_panels(dashboard()["panels"]))
    assert len({panel["id"] for panel in panels}) == len(panels)
    assert not any(fnmatch.fnmatch(expr, "*[[]5m[]]*") for _, expr in queries), "use $__rate_interval"


def test_compose_issuer_script_loads_the_gateway_dev_issuer() -> None:
    """The compose issuer script imports without running anything and uses the gateway's dev issuer."""
    spec = importlib.util.spec_from_file_location("compose_dev_issuer", DEPLOY / "compose" / "dev_issuer.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # defines main(); runs nothing
    assert callable(module.main)
    assert module.DevIssuer.__module__ == "gateway.demo.dev_issuer"


def test_compose_redis_is_the_store_the_config_names(compose: dict[str, Any]) -> None:
    """The compose gateway's rate limits use the redis service, in its namespace, at its address."""
    services, config = compose["services"], compose["config"].config
    redis = services["redis"]
    assert redis["network_mode"] == "service:gateway"
    command = redis["command"]
    url = urlsplit(config.rate_limits.backend.url.reveal())
    assert (url.hostname, url.port) == (
        command[command.index("--bind") + 1],
        int(command[command.index("--port") + 1]),
    )
    assert all(
        limit.fail == "open" for limit in config.rate_limits.limits
    )  # the demo works while redis starts
