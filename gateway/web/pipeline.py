"""One request through the gateway, step by step.

``dispatch`` routes a request to the metadata documents or to an MCP route; ``handle_mcp`` is
the MCP pipeline, in the order the spec needs:

1. ``check_origin``   a present ``Origin`` must be allowed (DNS-rebinding defence), before the
                      token, so a hostile page learns nothing from 401 vs 403;
2. ``check_method``   GET, POST, DELETE (and a CORS preflight);
3. ``authenticate``   the bearer token (or DPoP token and proof) → ``Principal``, or 401 with
                      the route's challenge (429 past the route's ``unauthenticated_limits``);
   ``open_session``   a sealed ``Mcp-Session-Id`` opened for this caller (``gateway.sealing``):
                      another user's session is answered as an unknown one, 404;
   audit trail        with ``audit: {on_failure: deny}`` and a trail that cannot record, 503
                      (``gateway.audit_trail.trail``); every decision below is chained into it;
4. ``read_body``      only once the caller is known, bounded by the route's ``max_body_bytes``,
                      ``limits.body_timeout_s`` and the process's body budget (``web.limits``);
   ``parse_strictly`` the strict MCP reading of the body (``gateway.mcp.messages``);
5. ``authorize``      every message against the route's rules, audited; 403 on a denial;
   ``check_pinned_calls`` a call to a tool whose definition drifted from the route's lock: 403
                      (``web.pins``; ``pinning: {mode: enforce}``);
   ``admit_messages`` the rate limits of the route and of the rules that allowed each call
                      (``web.ratelimits``): 429 past them, nothing forwarded;
   ``open_task_ids``  every task id the body names opened for this caller, or 400;
6. credential         the route's downstream credential, narrowed to this operation;
7. forward            within the process's ``max_streams``, ``Upstream.forward``: a new
                      request built from a header allowlist (the client's token stops there),
                      the answer streamed back and inspected (``gateway.mcp.answers``):
                      tools that drifted from their pins hidden, ``*/list`` results filtered
                      to what the caller may use, session and task
                      ids sealed to the caller;
8. ``send_answer``    a buffered answer written at once, before the request's own bookkeeping
                      (rate-limit slots, the request line, metrics) that the client need not
                      wait for, if its write cannot wait on the client.

Everything a step refuses is raised as a ``GatewayError``; ``error_responses`` renders it.
With ``tracing:`` the whole pipeline runs in the request's SERVER span and the steps open its
children through the hooks of ``gateway.telemetry.spans`` (no-ops without it).
"""

from __future__ import annotations

import asyncio
from urllib.parse import unquote_plus

from aiohttp import HttpVersion11, web
from aiohttp.http_exceptions import HttpProcessingError

from ..audit_trail.trail import AuditTrail
from ..auth.dpop import DpopNonces, ProofContext, bound_key, route_htu
from ..auth.tokens import AuthScheme, presented_token_from
from ..config import RouteConfig
from ..errors import (
    AuthError,
    BodyTimeout,
    BodyTooLarge,
    InsufficientScope,
    InvalidDpopProof,
    InvalidToken,
    MalformedBody,
    MethodNotAllowed,
    MissingToken,
    OriginForbidden,
)
from ..logs import mask_presented_token
from ..mcp.answers import chain
from ..mcp.conditions import Facts
from ..mcp.handles import TaskIdSealer
from ..mcp.listing import ListFilter
from ..mcp.messages import (
    HANDSHAKE_VERSIONS,
    McpMessage,
    McpPost,
    McpRejected,
    decode_header_value,
    parse_post,
)
from ..mcp.policy import Decision, challenge_scopes, combine, decide, kept_scopes, operation_of, refusal
from ..metrics import GatewayMetrics
from ..principal import Principal
from ..ratelimit.limiter import Admission
from ..telemetry.attributes import TOKEN_CACHE_HIT, TOKEN_SCHEME
from ..telemetry.spans import calling_upstream, deciding, span
from ..upstream.proxy import STREAMED_STATUS
from .audit import audit_decision, audit_observed_route_scopes
from .handles import CallerHandles
from .limits import ADMISSION, RequestHold
from .metadata import WELL_KNOWN_PRM, prm_document
from .middleware import MCP_METHOD, PRINCIPAL, REQUEST_ID, ROUTE, RPC_ID, TARGET, jsonrpc_error_response
from .pins import check_pinned_calls, pin_view
from .ratelimits import admit, admit_unauthenticated, check_unauthenticated, request_keys, request_limits
from .resources import Gateway, ServedRoute

MCP_METHODS = ("GET", "POST", "DELETE")
_CORS_EXPOSED = "Mcp-Session-Id, MCP-Protocol-Version, WWW-Authenticate, DPoP-Nonce"
# A fresh RFC 9449 §8 nonce for the answer to an accepted request on a `dpop_nonce` route.
DPOP_NONCE = web.RequestKey("dpop_nonce", str)


async def dispatch(gateway: Gateway, request: web.Request) -> web.StreamResponse:
    """Route a request: protected resource metadata, the minted tokens' keys, or an MCP route."""
    path = request.path
    if path == WELL_KNOWN_PRM or path.startswith(WELL_KNOWN_PRM + "/"):
        return handle_metadata(gateway, request, path[len(WELL_KNOWN_PRM) :])
    minter = gateway.minter
    if minter is not None and path in (minter.jwks_path, minter.metadata_path):
        # The gateway as issuer of minted upstream tokens: public keys and issuer metadata.
        document = minter.jwks() if path == minter.jwks_path else minter.metadata()
        return web.json_response(document, headers={"Cache-Control": "public, max-age=300"})
    served = gateway.routes.get(path)
    if served is None:
        return jsonrpc_error_response(404, None, -32601, "Not found")
    request[ROUTE] = route = served.config
    # What the request holds of the process's budgets (a stream, body bytes) ends with it.
    with request.app[ADMISSION].hold() as held:
        if gateway.tracing is None:
            return await handle_mcp(gateway, served, request, held)
        # The request's SERVER span around the whole pipeline (gateway.telemetry.tracing).
        return await gateway.tracing.serve(request, route, handle_mcp(gateway, served, request, held))


async def handle_mcp(
    gateway: Gateway, served: ServedRoute, request: web.Request, held: RequestHold
) -> web.StreamResponse:
    """The MCP pipeline for one request on one route (see the module docstring)."""
    route = served.config
    origin = check_origin(gateway, request)
    if request.method == "OPTIONS" and origin is not None:
        return cors_preflight(request, origin)
    check_method(request)
    principal = await authenticate(gateway, route, request)
    if gateway.audit is not None:  # fail closed before anything is decided or sent upstream
        gateway.audit.check_recording()
    handles = CallerHandles(gateway.sealer, route, principal)
    upstream_session = handles.open_session(request)

    body: bytes | None = None
    facts = Facts(principal, route.path)  # who asks, for rule conditions
    required = route.scopes
    post: McpPost | None = None
    if request.method == "POST":
        # Decide on the body, never on headers.
        body = await read_body(
            request, route.max_body_bytes, held, request.app[ADMISSION].limits.body_timeout_s
        )
        post = parse_strictly(request, body)
        required, decisions = authorize(route, principal, post, gateway.metrics, gateway.audit)
        check_pinned_calls(served.pins, post)  # a drifted tool is refused (403) like a denied one
        body = handles.open_task_ids(body)
        list_filter = ListFilter.for_post(post, route.policy, principal.scopes, facts)
        admissions = await admit_messages(gateway, route, principal, post, decisions, request)
    else:  # GET stream, DELETE session: the route scopes alone
        # Every answer is filtered, a GET stream (and its Last-Event-ID replay) too: by the shape of
        # its results, since a stateless gateway cannot know which request an id there answers.
        list_filter = ListFilter(route.policy, principal.scopes, facts=facts)
        check_route_scopes(route, principal, request.method, gateway.metrics)
        admissions = await admit_request(gateway, route, principal, (), request.method, None, request)

    # From here the request holds its rate-limit slots: every way out gives them back.
    try:
        # The client's token stops in gateway/upstream/proxy.py: Upstream.forward builds the upstream
        # request from a header allowlist (upstream_request_headers) that leaves Authorization out.
        # Until then it rides in principal.token, for a token exchange only. The route's own
        # credential takes its place, narrowed to what this operation needs.
        credential = await served.credential.headers(principal, required)
        # Then every task id the upstream hands out is sealed to this caller (gateway.mcp.handles).
        # Pinned tools first: a drifted tool leaves the list before the caller's filter sees it.
        pins = () if served.pins is None else (pin_view(served.pins, post),)
        response_filter = chain(
            *served.answer_watches, *pins, list_filter, TaskIdSealer(handles.seal_task_id)
        )
        upstream_headers = {**credential, **upstream_session}
        response_headers = {"X-Request-Id": request[REQUEST_ID], **(cors_headers(origin) if origin else {})}
        if (nonce := request.get(DPOP_NONCE)) is not None:  # §8: the nonce for the client's next proof
            response_headers["DPoP-Nonce"] = nonce
        for admission in admissions:
            response_headers.update(admission.headers)  # RateLimit-Policy / RateLimit on answers too
        held.stream()  # one of the process's streams, or 503 before the upstream sees anything
        # Traced: a CLIENT span until the answer is relayed, its traceparent sent in place of the
        # client's, and a watch of the answer for errors (gateway.telemetry.spans).
        with calling_upstream(request.method) as traced:
            answer = await served.upstream.forward(
                request,
                body,
                {**upstream_headers, **traced.headers},
                response_headers,
                chain(*traced.watches, response_filter),
                seal_session_id=handles.seal_session,
                seal_event_id=handles.seal_event_id,
                body_sent=held.release_body,  # a long answer does not keep its request's body counted
            )
        return await send_answer(request, answer)
    finally:
        await release_all(admissions)  # a concurrency slot is held until the answer ends


# --- the steps, in order ----------------------------------------------------------------------


def check_origin(gateway: Gateway, request: web.Request) -> str | None:
    """The request's ``Origin`` if it is allowed (or None if absent); else 403 (MCP transports)."""
    origin = request.headers.get("Origin")
    if origin is not None and origin.lower() not in gateway.allowed_origins:
        raise OriginForbidden(detail="origin not in allowed_origins")
    return origin


def check_method(request: web.Request) -> None:
    """Streamable HTTP uses POST, GET (the server's stream) and DELETE (end a session)."""
    if request.method not in MCP_METHODS:
        raise MethodNotAllowed(MCP_METHODS)


async def authenticate(gateway: Gateway, route: RouteConfig, request: web.Request) -> Principal:
    """The caller, from ``Authorization: Bearer`` or (route ``dpop``) ``DPoP`` with its proof;
    a refusal names the scopes to ask for."""
    authorization = request.headers.getall("Authorization", [])
    limits = gateway.config.rate_limits
    try:
        in_query = query_carries_token(request.query_string, authorization)
        scheme, token = presented_token_from(authorization, in_query, dpop=route.dpop != "off")
        mask_presented_token(token.reveal())  # whatever its shape, it reads *** in logs and spans
        if scheme == "bearer" and route.dpop == "required":
            raise InvalidDpopProof("dpop_required", "scheme Bearer, route dpop: required")
        known = gateway.authenticator.known(token)
        await check_unauthenticated(gateway.rate_limiter, route, limits, request, known, gateway.metrics)
        with span("verify token", {TOKEN_CACHE_HIT: known, TOKEN_SCHEME: scheme}):
            principal = await gateway.authenticator.authenticate(token, route.resource)
            nonces = DpopNonces(gateway.sealer) if route.dpop_nonce else None
            check_binding(gateway, route, request, scheme, principal, nonces)
    except AuthError as exc:
        exc.scopes = exc.scopes or challenge_hint(route, request)
        # A presented token that failed counts against the route's unauthenticated limits (429
        # past them). No token at all costs no check and must still get the 401 that starts
        # discovery, so it counts nothing.
        if exc.status == 401 and not isinstance(exc, MissingToken):
            await admit_unauthenticated(gateway.rate_limiter, route, limits, request, gateway.metrics)
        raise
    request[PRINCIPAL] = principal
    if nonces is not None:
        request[DPOP_NONCE] = nonces.issue(route.path, gateway.authenticator.dpop.now())
    return principal


def check_binding(
    gateway: Gateway,
    route: RouteConfig,
    request: web.Request,
    scheme: AuthScheme,
    principal: Principal,
    nonces: DpopNonces | None = None,
) -> None:
    """A DPoP-bound token only with a valid proof of its key, a ``DPoP`` request only with a bound
    token (RFC 9449 §7.1), its proof with a server nonce where ``nonces`` (§9); the proof's own
    checks are ``gateway.auth.dpop``'s."""
    jkt = bound_key(principal.claims)
    if scheme == "bearer":
        if jkt is not None:  # a leaked bound token must not work without its key
            raise (InvalidToken if route.dpop == "off" else InvalidDpopProof)("dpop_bound_token_as_bearer")
        return
    if jkt is None:
        raise InvalidDpopProof("dpop_unbound_token", "scheme DPoP, token without cnf.jkt")
    # The principal's issuer is a configured one: both authentication paths only know those.
    issuer = next(issuer for issuer in gateway.config.issuers if issuer.issuer == principal.issuer)
    context = ProofContext(
        method=request.method,
        htu=route_htu(gateway.config.public_url, route.path),  # never from the Host header
        token=principal.token,
        jkt=jkt,
        algorithms=issuer.algorithms,
        iat_window_s=issuer.dpop_iat_window_s,
    )
    gateway.authenticator.dpop.verify(route.path, request.headers.getall("DPoP", []), context, nonces)


def query_carries_token(query: str, authorization: list[str]) -> bool:
    """An ``access_token`` parameter, or the header's token anywhere in the query, raw or decoded.

    MCP endpoints take no query, and a token in a URL ends up in access logs and browser history
    (OAuth 2.1 §5.1.1): such a request is refused, never forwarded with the query stripped.
    """
    if not query:
        return False
    decoded = unquote_plus(query)
    # Anywhere, not only as a name parse_qs finds: `a=1;access_token=…`, `access_token[]=…` and
    # `access%5Ftoken` are all read as the parameter by some server framework.
    if "access_token" in decoded.lower():
        return True
    for value in authorization:
        token = value.strip().partition(" ")[2].strip()
        if len(token) >= _SHORTEST_TOKEN_IN_QUERY and (token in query or token in decoded):
            return True
    return False


# A shorter "token" is no bearer token anyone issues; matching it would refuse innocent queries.
_SHORTEST_TOKEN_IN_QUERY = 16


def challenge_hint(route: RouteConfig, request: web.Request) -> tuple[str, ...]:
    """What a 401 asks for; 2026-07-28 headers name the operation (a hint, see challenge_scopes)."""
    version = request.headers.get("MCP-Protocol-Version")
    if request.method != "POST" or version is None or version in HANDSHAKE_VERSIONS:
        return route.policy.first_challenge
    name = request.headers.get("Mcp-Name")
    decoded = decode_header_value(name) if name is not None else None
    return challenge_scopes(route.policy, request.headers.get("Mcp-Method"), decoded)


async def read_body(request: web.Request, limit: int, held: RequestHold, timeout_s: float) -> bytes:
    """The request body within ``timeout_s``, refused with 413 past ``limit`` bytes without reading
    the rest, and with 503 if the bodies all requests hold would pass the process's budget.

    A declared length is held before the first byte is read (it is what the body will cost);
    a chunked body is held as it arrives. A broken framing is a 400, a slow body a 408.
    """
    declared = request.content_length
    if declared is not None and declared > limit:
        raise BodyTooLarge(detail=f"Content-Length {declared} > {limit}")
    if declared:
        held.body_bytes(declared)
    if request.version >= HttpVersion11 and request.headers.get("Expect", "").lower() == "100-continue":
        # Deferred until now (app.defer_continue): the caller is known and its body is wanted.
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        request.writer.output_size = 0  # the interim answer is not the response's
    chunks: list[bytes] = []
    size = 0
    content = request.content
    try:
        if content.is_eof():  # the whole body came with the headers, as it mostly does: no timer
            chunks.append(content.read_nowait())
            size = len(chunks[0])
            if size > limit:
                raise BodyTooLarge(detail=f"more than {limit} bytes")
            if declared is None:
                held.body_bytes(size)
            return chunks[0]
        async with asyncio.timeout(timeout_s):
            while chunk := await content.readany():
                size += len(chunk)
                if size > limit:
                    raise BodyTooLarge(detail=f"more than {limit} bytes")
                if declared is None:
                    held.body_bytes(len(chunk))
                chunks.append(chunk)
    except TimeoutError as exc:
        raise BodyTimeout(detail=f"{size} bytes within {timeout_s}s") from exc
    except HttpProcessingError as exc:
        raise MalformedBody(detail=type(exc).__name__) from exc
    return b"".join(chunks)


def parse_strictly(request: web.Request, body: bytes) -> McpPost:
    """The strict reading of the body (gateway.mcp.messages); the request id is kept for error bodies."""
    try:
        post = parse_post(body, lambda name: request.headers.getall(name, []))
    except McpRejected as exc:
        request[RPC_ID] = exc.rpc_id
        raise
    request[RPC_ID] = post.messages[0].id
    if not post.is_batch:  # for the request's log line and metrics labels
        message = post.messages[0]
        if message.method is not None:
            request[MCP_METHOD] = message.method
        if message.target is not None:
            request[TARGET] = message.target.identifier
    return post


def authorize(
    route: RouteConfig,
    principal: Principal,
    post: McpPost,
    metrics: GatewayMetrics | None = None,
    trail: AuditTrail | None = None,
) -> tuple[tuple[str, ...], tuple[Decision, ...]]:
    """Decide every message; one denied message refuses the whole POST (a batch included).

    Returns every scope the allowed POST needs, for narrowing the downstream credential, and the
    decisions (their rules name the rate limits that apply).
    """
    decisions = []
    facts = Facts(principal, route.path)
    shadow = route.policy.shadow
    for message in post.messages:
        operation = operation_of(message)
        with deciding(message) as traced:  # a `decide policy` span when traced
            decision = decide(route.policy, operation, principal.scopes, facts)
            # Observe mode: also decided as written, every rule enforced; only logged (would_deny).
            observed = decide(shadow, operation, principal.scopes, facts) if shadow is not None else None
            traced.decided(decision, observed)
        audit_decision(route, principal, message, decision, observed, trail)
        if metrics is not None:
            metrics.policy_decision(route, decision.allowed, message.target)
            if observed is not None and observed.allowed != decision.allowed:
                outcome = "would_allow" if observed.allowed else "would_deny"
                metrics.policy_observed(route, outcome, " + ".join(rule.label for rule in observed.rules))
        decisions.append(decision)
    verdict = combine(decisions)
    if (refused := refusal(verdict, kept_scopes(route.policy, principal.scopes))) is not None:
        raise refused
    return verdict.required, tuple(decisions)


async def admit_request(
    gateway: Gateway,
    route: RouteConfig,
    principal: Principal,
    decisions: tuple[Decision, ...],
    method: str,
    message: McpMessage | None,
    request: web.Request,
) -> tuple[Admission, ...]:
    """The rate limits of the route and of the rules that allowed it (gateway.web.ratelimits)."""
    limits = request_limits(gateway.config.rate_limits, route, decisions)
    if not limits:
        return ()
    keys = request_keys(route, principal, method, message, request)
    admission = await admit(gateway.rate_limiter, limits, keys, route, gateway.metrics)
    return () if admission is None else (admission,)


async def admit_messages(
    gateway: Gateway,
    route: RouteConfig,
    principal: Principal,
    post: McpPost,
    decisions: tuple[Decision, ...],
    request: web.Request,
) -> tuple[Admission, ...]:
    """Every call of a POST counts, each with its own method and tool: ten calls in one 2025-03-26
    batch count ten times. A client's responses count against nothing. One refused call refuses
    the POST (what the calls before it took of concurrency limits is given back)."""
    admitted: list[Admission] = []
    try:
        for message, decision in zip(post.messages, decisions, strict=True):
            if message.kind == "response":
                continue
            method = message.method or ""
            admitted += await admit_request(gateway, route, principal, (decision,), method, message, request)
    except BaseException:
        await release_all(admitted)
        raise
    return tuple(admitted)


async def release_all(admissions: tuple[Admission, ...] | list[Admission]) -> None:
    for admission in admissions:
        await admission.release()


async def send_answer(request: web.Request, answer: web.StreamResponse) -> web.StreamResponse:
    """``answer`` written now if it is still to be sent (a buffered one; a stream went out as it
    came) and writing it cannot wait for the client, so the client does not wait for what follows
    it in this task: the rate-limit slots given back, the request line, the metrics, each layer's
    own finishing. At a fixed rate that was 25 µs of every answer's latency (docs/performance.md,
    seventh pass).

    An answer that might wait (too large for the connection's write buffer, or a client that has
    not read what it was sent before) is left to aiohttp, which writes it after the handler
    returns, as every answer was written before: a client that stops reading must not keep its
    rate-limit slots and the process's stream while the gateway waits on it.

    aiohttp, to which the answer is then returned, finds it sent. A client that left meanwhile
    is aiohttp's case too: the answer is marked sent with its status, like a stream's, and the
    next write aiohttp tries finds the connection gone and closes it."""
    if answer.prepared or not written_without_waiting(request, answer):
        return answer
    try:
        await answer.prepare(request)
        request[STREAMED_STATUS] = answer.status
        await answer.write_eof()
    except ConnectionError:  # aiohttp's ClientConnectionResetError, a broken pipe, a lost connection
        pass
    return answer


# What aiohttp writes of an answer beyond its headers' names and values: the status line, Date,
# Server, Content-Length and Content-Type, the separators.
_HEAD_BEYOND_FIELDS = 512


def written_without_waiting(request: web.Request, answer: web.StreamResponse) -> bool:
    """True if ``answer`` can be written whole without its write waiting for the client to read:
    with what of this connection still waits in its write buffer, it stays within the buffer's
    high-water mark (past it, the transport pauses the writer until the client has read)."""
    transport = request.transport
    if transport is None:
        return False
    body = answer.body if isinstance(answer, web.Response) else None
    if body is not None and not isinstance(body, bytes | bytearray):
        return False  # a payload object: its size is not known before it is written
    # Four bytes per character: the most UTF-8 takes for one.
    head = 4 * sum(len(name) + len(value) for name, value in answer.headers.items()) + _HEAD_BEYOND_FIELDS
    waiting = transport.get_write_buffer_size()
    return waiting + head + (len(body) if body else 0) <= transport.get_write_buffer_limits()[1]


def check_route_scopes(
    route: RouteConfig, principal: Principal, method: str, metrics: GatewayMetrics | None = None
) -> None:
    """A GET stream or a DELETE needs the route scopes (and, observed, the written route's)."""
    shadow = route.policy.shadow
    if (
        shadow is not None
        and not principal.has_scopes(shadow.route_scopes)
        and principal.has_scopes(route.scopes)
    ):
        missing = tuple(scope for scope in shadow.route_scopes if scope not in principal.scopes)
        audit_observed_route_scopes(route, principal, method, missing)
        if metrics is not None:
            metrics.policy_observed(route, "would_deny", "route scopes")
    if not principal.has_scopes(route.scopes):
        kept = kept_scopes(route.policy, principal.scopes)
        raise InsufficientScope(scopes=tuple(dict.fromkeys(route.scopes + kept)))


# --- discovery and CORS -----------------------------------------------------------------------


def handle_metadata(gateway: Gateway, request: web.Request, route_path: str) -> web.StreamResponse:
    """RFC 9728 metadata: public, no token, readable by browser-based clients (CORS)."""
    cors = {
        "Access-Control-Allow-Origin": "*",
        "Access-Control-Allow-Methods": "GET, OPTIONS",
        "Access-Control-Allow-Headers": "*",
    }
    if request.method == "OPTIONS":
        return web.Response(status=204, headers=cors)
    if request.method not in ("GET", "HEAD"):
        return web.Response(status=405, headers={"Allow": "GET, OPTIONS", **cors})
    route = gateway.root_route if route_path == "" else _route_for_metadata(gateway, route_path)
    if route is None:
        return web.json_response({"error": "not_found"}, status=404, headers=cors)
    return web.json_response(
        prm_document(gateway.config, route),
        headers={**cors, "Cache-Control": "public, max-age=300"},
    )


def _route_for_metadata(gateway: Gateway, suffix: str) -> RouteConfig | None:
    # With public_url https://x.example/base the metadata path is .../base/<route>
    # (RFC 9728 §3.1); a proxy in front that strips /base may also send .../<route>.
    suffix = suffix.rstrip("/")
    base_path = gateway.base_path
    served = None
    if base_path and suffix.startswith(base_path + "/"):
        served = gateway.routes.get(suffix[len(base_path) :])
    served = served or gateway.routes.get(suffix)
    return served.config if served is not None else None


def cors_preflight(request: web.Request, origin: str) -> web.Response:
    """The answer to a browser's preflight from an allowed origin."""
    return web.Response(
        status=204,
        headers={
            "Access-Control-Allow-Origin": origin,
            "Access-Control-Allow-Methods": ", ".join(MCP_METHODS),
            "Access-Control-Allow-Headers": request.headers.get(
                "Access-Control-Request-Headers", "Authorization, Content-Type"
            ),
            "Access-Control-Max-Age": "600",
            "Vary": "Origin",
        },
    )


def cors_headers(origin: str) -> dict[str, str]:
    """What an answer to an allowed cross-origin request carries, so the page can read it."""
    return {
        "Access-Control-Allow-Origin": origin,
        "Access-Control-Expose-Headers": _CORS_EXPOSED,
        "Vary": "Origin",
    }
