"""What the gateway knows about each MCP method, in one table, and the targets a method acts on.

A target is one of a closed set: ``Tool(name)``, ``Prompt(name)`` or ``Resource(uri)``, spelled
exactly as the body spells it (its ``identifier``: what the log shows and ``Mcp-Name`` must equal);
the rules match its ``rule_key``, for a resource the URI's normal form (``uris``). ``METHODS``
says for every client-to-server method of MCP 2025-03-26 … 2026-07-28 what it acts on, whether it
lists targets, whether it is the method that *uses* a kind of target (what a list item's
visibility and a completion's scopes are judged by) and whether it is session plumbing; every
other table in ``gateway.mcp`` is derived from it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import ClassVar, Final, Literal, TypeAlias

from .uris import normal_form_or_none

__all__ = [
    "COMPLETION_REFS",
    "KNOWN_METHODS",
    "LIFECYCLE_METHODS",
    "LIST_METHODS",
    "METHODS",
    "REMOVED_IN_MODERN",
    "RESPONSE_METHOD",
    "USE_METHOD",
    "Listing",
    "Method",
    "Prompt",
    "Resource",
    "Target",
    "TargetKind",
    "Tool",
    "target_type",
]

TargetKind: TypeAlias = Literal["tool", "prompt", "resource"]


@dataclass(frozen=True, slots=True)
class Tool:
    """A tool, as ``tools/call`` names it in ``params.name``."""

    name: str
    kind: ClassVar[TargetKind] = "tool"
    param: ClassVar[str] = "name"  # the key of params (or of a completion ref) that names it

    @property
    def identifier(self) -> str:
        """The name as the body spells it: what the log shows and ``Mcp-Name`` must equal."""
        return self.name

    @property
    def rule_key(self) -> str:
        """What the rules match: the name exactly (no strip, no Unicode normalisation)."""
        return self.name


@dataclass(frozen=True, slots=True)
class Prompt:
    """A prompt, as ``prompts/get`` names it in ``params.name`` (a completion in ``ref.name``)."""

    name: str
    kind: ClassVar[TargetKind] = "prompt"
    param: ClassVar[str] = "name"

    @property
    def identifier(self) -> str:
        """The name as the body spells it: what the log shows and ``Mcp-Name`` must equal."""
        return self.name

    @property
    def rule_key(self) -> str:
        """What the rules match: the name exactly (no strip, no Unicode normalisation)."""
        return self.name


@dataclass(frozen=True, slots=True)
class Resource:
    """A resource (or a resource template), by the URI in ``params.uri`` (a completion: ``ref.uri``)."""

    uri: str
    # The normal form, once: a list filter judges every item by it. None: the URI has none.
    normal: str | None = field(init=False, repr=False, compare=False)
    kind: ClassVar[TargetKind] = "resource"
    param: ClassVar[str] = "uri"

    def __post_init__(self) -> None:
        object.__setattr__(self, "normal", normal_form_or_none(self.uri))  # frozen: derived once

    @property
    def identifier(self) -> str:
        """The URI as the body spells it: what the log shows and ``Mcp-Name`` must equal."""
        return self.uri

    @property
    def rule_key(self) -> str | None:
        """What the rules match: the URI's normal form, so that ``docs://files/%70rivate`` meets
        the rule on ``docs://files/private`` as the upstream's template does; None when the URI
        reads differently to different readers (no rule may match it: fail closed)."""
        return self.normal


Target: TypeAlias = Tool | Prompt | Resource


@dataclass(frozen=True, slots=True)
class Listing:
    """A ``*/list`` method's result: the key holding the items, the item key naming one, its kind."""

    result_key: str
    item_key: str
    target: type[Target]


@dataclass(frozen=True, slots=True)
class Method:
    """The facts about one client-to-server method that the gateway acts on."""

    target: type[Target] | None = None  # acts on one target, named by ``params[target.param]``
    uses: bool = False  # THE method that uses its kind of target: visibility and completions follow it
    lists: Listing | None = None
    # completion/complete: the target is in ``params.ref``; completing reveals the target's data,
    # so it also needs what using the target needs (spec-notes E5).
    completes: bool = False
    # Session plumbing every client needs first: a route `default: deny` allows it (a `methods`
    # rule can still refuse it).
    lifecycle: bool = False
    name_header: bool = False  # MCP 2026-07-28: ``Mcp-Name`` is required and equals the target
    # subscriptions/listen (MCP 2026-07-28): ``params.notifications.resourceSubscriptions`` names
    # the resources whose updates the stream carries, the successor of resources/subscribe.
    watches: bool = False
    # MCP 2026-07-28 removed it (SEP-2575): the upstream answers -32601, so its target is optional;
    # one it names is still decided on (a client may claim 2026-07-28 to a server that serves it).
    removed_in_modern: bool = False
    # It lists state handles of every user (tasks/list): the gateway cannot tell whose, so only
    # a `methods` rule naming it literally allows it, never a default or a glob.
    needs_literal_rule: bool = False


METHODS: Final[Mapping[str, Method]] = MappingProxyType(
    {
        "initialize": Method(lifecycle=True),
        "ping": Method(lifecycle=True),
        "server/discover": Method(lifecycle=True),
        "subscriptions/listen": Method(watches=True),
        "tools/list": Method(lists=Listing("tools", "name", Tool)),
        "tools/call": Method(target=Tool, uses=True, name_header=True),
        "prompts/list": Method(lists=Listing("prompts", "name", Prompt)),
        "prompts/get": Method(target=Prompt, uses=True, name_header=True),
        "resources/list": Method(lists=Listing("resources", "uri", Resource)),
        "resources/templates/list": Method(lists=Listing("resourceTemplates", "uriTemplate", Resource)),
        "resources/read": Method(target=Resource, uses=True, name_header=True),
        "resources/subscribe": Method(target=Resource, removed_in_modern=True),
        "resources/unsubscribe": Method(target=Resource, removed_in_modern=True),
        "completion/complete": Method(completes=True),
        "logging/setLevel": Method(),
        "tasks/get": Method(),
        "tasks/result": Method(),
        "tasks/cancel": Method(),
        "tasks/list": Method(needs_literal_rule=True),
        "notifications/initialized": Method(lifecycle=True),
        "notifications/cancelled": Method(lifecycle=True),
        "notifications/progress": Method(),
        "notifications/roots/list_changed": Method(),
    }
)
"""Every client-to-server method and notification of MCP 2025-03-26 … 2026-07-28."""

# completion/complete ``params.ref``: a PromptReference names a prompt by ``name``, a
# ResourceTemplateReference a resource template by ``uri``.
COMPLETION_REFS: Final[Mapping[str, type[Target]]] = MappingProxyType(
    {"ref/prompt": Prompt, "ref/resource": Resource}
)

RESPONSE_METHOD: Final = "(response)"
"""How a client's JSON-RPC response (to sampling, elicitation) is named as an operation."""

KNOWN_METHODS: Final = frozenset(METHODS)
LIFECYCLE_METHODS: Final = frozenset(
    {RESPONSE_METHOD, *(name for name, method in METHODS.items() if method.lifecycle)}
)
REMOVED_IN_MODERN: Final = frozenset(name for name, method in METHODS.items() if method.removed_in_modern)
LIST_METHODS: Final[Mapping[str, Listing]] = MappingProxyType(
    {name: method.lists for name, method in METHODS.items() if method.lists is not None}
)
USE_METHOD: Final[Mapping[type[Target], str]] = MappingProxyType(
    {method.target: name for name, method in METHODS.items() if method.uses and method.target is not None}
)


def target_type(method: str) -> type[Target] | None:
    """The kind of target ``method`` acts on, or None (a completion's ref is not its own target)."""
    spec = METHODS.get(method)
    return spec.target if spec is not None else None
