"""The package layout's rules, checked on the source: who may import whom, and module size.

The rules (README, "Layout"):

- layers point down: a module imports only from its own layer or lower ones (``LAYERS``);
- ``gateway.mcp`` (the protocol and the policy) never imports aiohttp, not even through
  another gateway module;
- inbound ``gateway.auth`` never imports the outbound ``gateway.upstream`` code;
- only the process layer (``gateway.server``, ``gateway.cli``, ``gateway.demo``) imports the
  aiohttp application, ``gateway.web.app``;
- no import cycle between modules, and no module over ``MAX_LINES`` lines.

The checker reads imports with ``ast`` (``TYPE_CHECKING`` imports included: a type-only
arrow is still a dependency), so the rules hold without importing anything.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "gateway"
MAX_LINES = 600

# Bottom to top. A module's layer is that of its longest listed prefix.
LAYERS: tuple[tuple[str, ...], ...] = (
    (
        "gateway",
        "gateway.errors",
        "gateway.reasons",
        "gateway.secret",
        "gateway.strictjson",
        "gateway.singleflight",
        "gateway.sealing",
        "gateway.log_lines",
    ),
    ("gateway.logs", "gateway.eventloop"),
    ("gateway.principal", "gateway.ratelimit.spec", "gateway.ratelimit.redis_address"),
    ("gateway.cel",),  # the condition language: parser and checker, nothing of the gateway's
    # Tool pins: JSON forms and files only; config reads lock files.
    ("gateway.mcp", "gateway.pinning"),
    ("gateway.config",),
    # gateway.telemetry: the span hooks that auth, upstream and web call (OpenTelemetry itself is
    # imported by gateway.telemetry.tracing alone, for a config that traces).
    ("gateway.auth", "gateway.metrics", "gateway.telemetry"),
    ("gateway.upstream", "gateway.ratelimit", "gateway.audit_trail"),
    ("gateway.web",),
    (
        "gateway.server",
        "gateway.explain",
        "gateway.explain_model",
        "gateway.explain_conditions",
        "gateway.explain_json",
        "gateway.simulate",
        "gateway.pin_command",
    ),
    ("gateway.demo",),
    ("gateway.cli", "gateway.__main__"),
)
PROCESS_LAYER = ("gateway.server", "gateway.cli", "gateway.demo")
APPLICATION = "gateway.web.app"


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path, root: Path) -> Iterator[str]:
    """Every module ``path`` imports, as absolute dotted names (relative imports resolved)."""
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            yield target
            # `from . import x` / `from .pkg import module`: the names may be modules too.
            yield from (f"{target}.{alias.name}" for alias in node.names)


def import_graph(root: Path) -> dict[str, set[str]]:
    """Module → the modules (gateway's own, and third-party roots) it imports."""
    paths = {module_name(path, root): path for path in root.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in paths.items():
        found: set[str] = set()
        for target in imports_of(path, root):
            if target.split(".")[0] == root.name:
                if target in paths:
                    found.add(target)
            else:
                found.add(target.split(".")[0])
        found.discard(name)
        graph[name] = found
    return graph


def layer_of(module: str) -> int:
    best, best_length = -1, -1
    for index, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            # The package itself ("gateway") is a layer of its own, not a prefix of every module.
            inside = module == prefix or (prefix != "gateway" and module.startswith(prefix + "."))
            if inside and len(prefix) > best_length:
                best, best_length = index, len(prefix)
    return best


def reachable(graph: Mapping[str, set[str]], start: str) -> set[str]:
    seen: set[str] = set()
    todo = [start]
    while todo:
        for target in graph.get(todo.pop(), ()):
            if target not in seen:
                seen.add(target)
                todo.append(target)
    return seen


def violations(graph: Mapping[str, set[str]]) -> list[str]:
    """Every broken layout rule, as a readable line; empty when the layout holds."""
    found: list[str] = []
    own = {module for module in graph if module.split(".")[0] == "gateway"}
    for module in sorted(own):
        if layer_of(module) < 0:
            found.append(f"{module}: in no layer (add it to LAYERS)")
        for target in sorted(graph[module] & own):
            if layer_of(target) > layer_of(module):
                found.append(f"{module} imports {target}, a higher layer")
            if module.startswith("gateway.auth") and target.startswith("gateway.upstream"):
                found.append(f"{module} imports {target}: inbound auth never uses the outbound code")
            if target == APPLICATION and not module.startswith(PROCESS_LAYER):
                found.append(f"{module} imports {APPLICATION}: only the process layer does")
        if module.startswith("gateway.mcp"):
            via = sorted(m for m in reachable(graph, module) | {module} if "aiohttp" in graph.get(m, ()))
            if via:
                found.append(f"{module} reaches aiohttp (through {', '.join(via)})")
        if module in reachable(graph, module):
            found.append(f"{module} is in an import cycle")
    return found


def test_the_gateway_package_keeps_its_layout() -> None:
    """The gateway's own imports break none of the layout rules."""
    assert violations(import_graph(PACKAGE)) == []


def test_no_module_is_over_the_size_limit() -> None:
    """Every module stays under MAX_LINES lines: one concern each."""
    sizes = {module_name(path, PACKAGE): len(path.read_text().splitlines()) for path in PACKAGE.rglob("*.py")}
    assert {name: size for name, size in sizes.items() if size > MAX_LINES} == {}


def test_every_subpackage_is_a_layer() -> None:
    """Each folder under gateway/ is named in LAYERS, so a new package has to pick its place."""
    folders = {f"gateway.{path.parent.name}" for path in PACKAGE.glob("*/__init__.py")}
    listed = {prefix for prefixes in LAYERS for prefix in prefixes}
    assert folders <= listed


def _tree(tmp_path: Path, files: Mapping[str, str]) -> Path:
    """A copy of the real package with ``files`` added or replaced (relative to gateway/)."""
    root = tmp_path / "gateway"
    for path in PACKAGE.rglob("*.py"):
        target = root / path.relative_to(PACKAGE)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(path.read_text())
    for relative, text in files.items():
        (root / relative).write_text(text)
    return root


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        ({"mcp/extra.py": "import aiohttp\n"}, "gateway.mcp.extra reaches aiohttp"),
        (
            {"mcp/extra.py": "from ..upstream import proxy\n"},
            "gateway.mcp.extra imports gateway.upstream.proxy, a higher layer",
        ),
        (
            {"auth/extra.py": "from ..upstream.exchange import TokenExchanger\n"},
            "inbound auth never uses the outbound code",
        ),
        (
            {"web/extra.py": "from .app import build_app\n"},
            "gateway.web.extra imports gateway.web.app: only the process layer does",
        ),
        (
            {"errors.py": (PACKAGE / "errors.py").read_text() + "\nfrom .mcp import policy\n"},
            "gateway.errors imports gateway.mcp.policy, a higher layer",
        ),
        (
            {"web/extra.py": "from . import extra2\n", "web/extra2.py": "from . import extra\n"},
            "gateway.web.extra is in an import cycle",
        ),
        ({"newpkg.py": "x = 1\n"}, "gateway.newpkg: in no layer"),
    ],
)
def test_a_forbidden_import_is_caught(tmp_path: Path, files: Mapping[str, str], expected: str) -> None:
    """Adding a forbidden import to a copy of the package makes the checker name it."""
    found = violations(import_graph(_tree(tmp_path, files)))
    assert any(expected in line for line in found), found


def test_a_mcp_module_reaching_aiohttp_through_another_module_is_caught(tmp_path: Path) -> None:
    """The aiohttp rule is transitive: mcp importing a gateway module that imports aiohttp fails."""
    files = {"mcp/extra.py": "from ..strictjson import loads_strict\n", "strictjson.py": "import aiohttp\n"}
    found = violations(import_graph(_tree(tmp_path, files)))
    assert any("gateway.mcp.extra reaches aiohttp (through gateway.strictjson)" in line for line in found)
