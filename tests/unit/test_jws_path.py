"""A JWS of a JWKS issuer is checked strictly as a JWT even when introspection is configured: a
respelled or otherwise non-strict JWS of ours is refused locally, never handed to the AS."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.auth.authenticator import Authenticator
from gateway.auth.introspection import Introspector
from gateway.auth.jwks import IssuerKeys
from gateway.auth.tokens import JwtAuthenticator, jws_issuer_hint
from gateway.config import IntrospectionConfig, IssuerConfig, JwksFile
from gateway.errors import InvalidToken
from gateway.secret import PresentedToken, Secret
from tests.support.fake_as import FakeAuthorizationServer, serving_fake_as
from tests.support.issuer import SigningKey, TestIssuer
from tests.support.jws import json_segment, set_unused_bits, sign, standard_alphabet, with_tildes

JWT_ISSUER = "https://as.jwt.example"
RESOURCE = "https://gw.example/a/mcp"


@pytest.fixture
def issuer() -> TestIssuer:
    return TestIssuer(keys=[SigningKey.generate("ES256", kid="k1")], base_url=JWT_ISSUER)


@pytest.fixture
def jwks_file(issuer: TestIssuer, tmp_path: Path) -> Path:
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps(issuer.jwks()))  # before any event loop runs
    return path


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


@pytest.fixture
async def fake() -> AsyncIterator[FakeAuthorizationServer]:
    async with serving_fake_as() as server:
        yield server


@pytest.fixture
async def authenticator(
    jwks_file: Path, session: aiohttp.ClientSession, fake: FakeAuthorizationServer
) -> AsyncIterator[Authenticator]:
    """JWT issuer from a JWKS file, plus the fake AS as the introspection issuer."""
    config = IssuerConfig(issuer=JWT_ISSUER, algorithms=("ES256",), jwks=JwksFile(jwks_file), leeway_s=30)
    keys = IssuerKeys(config, session)
    introspection = IntrospectionConfig(
        endpoint=fake.introspection_endpoint,
        client_id=fake.client_id,
        client_secret=Secret(fake.client_secret),
        timeout_s=2,
    )
    opaque_issuer = IssuerConfig(issuer=fake.issuer, algorithms=(), jwks=None, introspection=introspection)
    yield Authenticator(JwtAuthenticator({JWT_ISSUER: keys}), Introspector(opaque_issuer, session))
    await keys.aclose()


def respell_signature(token: str, spell: Callable[[str], str | None]) -> str:
    head, body, signature = token.split(".")
    new = spell(signature)
    assert new is not None
    return f"{head}.{body}.{new}"


def exp_1e400(issuer: TestIssuer) -> str:
    claims = {"iss": JWT_ISSUER, "sub": "alice", "aud": RESOURCE, "scope": "mcp:access"}
    payload = json.dumps(claims)[:-1] + ', "exp": 1e400}'
    header = json_segment({"alg": "ES256", "typ": "at+jwt", "kid": "k1"})
    return sign(header, json_segment(payload), issuer.active.private, "ES256")


def signature_with_standard_alphabet(issuer: TestIssuer) -> str:
    for _ in range(50):  # ECDSA signatures are random: one in a few has a `-` or `_` to respell
        token = issuer.mint(audience=RESOURCE)
        if standard_alphabet(token.rsplit(".", 1)[1]) is not None:
            return respell_signature(token, standard_alphabet)
    raise AssertionError("no signature with - or _ in 50 tries")


BAD_JWS: list[tuple[str, Callable[[TestIssuer], str]]] = [
    ("signature_unused_bits", lambda i: respell_signature(i.mint(audience=RESOURCE), set_unused_bits)),
    ("signature_tildes", lambda i: respell_signature(i.mint(audience=RESOURCE), with_tildes)),
    ("signature_standard_alphabet", signature_with_standard_alphabet),
    ("exp_1e400", exp_1e400),
    ("scope_with_tab", lambda i: i.mint(audience=RESOURCE, scope="mcp:access\tadmin")),
]


@pytest.mark.parametrize(("case", "make_token"), BAD_JWS, ids=[case for case, _ in BAD_JWS])
async def test_a_non_strict_jws_of_ours_is_refused_without_asking_the_as(
    case: str,
    make_token: Callable[[TestIssuer], str],
    issuer: TestIssuer,
    authenticator: Authenticator,
    fake: FakeAuthorizationServer,
) -> None:
    """A respelled, 1e400 or tab-scoped JWS of a JWKS issuer: invalid_token locally, the AS never asked."""
    token = make_token(issuer)
    fake.introspection[token] = {"active": True, "iss": fake.issuer, "sub": "x", "aud": RESOURCE}
    fake.introspection[token]["exp"] = int(time.time() + 600)
    with pytest.raises(InvalidToken) as refused:
        await authenticator.authenticate(PresentedToken(token), RESOURCE)
    assert refused.value.status == 401 and refused.value.oauth_error == "invalid_token", case
    assert fake.introspection_calls == 0


async def test_the_canonical_jws_and_opaque_tokens_still_take_their_paths(
    issuer: TestIssuer, authenticator: Authenticator, fake: FakeAuthorizationServer
) -> None:
    """The canonical JWS verifies locally; an opaque token, even one with two dots, is introspected."""
    caller = await authenticator.authenticate(PresentedToken(issuer.mint(audience=RESOURCE)), RESOURCE)
    assert caller.issuer == JWT_ISSUER and fake.introspection_calls == 0
    for opaque in ("opaque-token-1", "opaque.with.dots~", "a.b.c"):
        answer: dict[str, Any] = {"active": True, "iss": fake.issuer, "sub": "bob", "aud": RESOURCE}
        fake.introspection[opaque] = answer | {"exp": int(time.time() + 600)}
        assert (await authenticator.authenticate(PresentedToken(opaque), RESOURCE)).subject == "bob"
    assert fake.introspection_calls == 3


@pytest.mark.parametrize(
    ("token", "hint"),
    [
        (f"x.{json_segment({'iss': JWT_ISSUER})}.y", JWT_ISSUER),
        (f"x.{with_tildes(json_segment({'iss': JWT_ISSUER}))}.y", JWT_ISSUER),
        (f"x.{json_segment({'iss': 7})}.y", None),
        (f"x.{json_segment('[1]')}.y", None),
        ("x.!!!.y", None),
        ("only-one-part", None),
        (f"x.{json_segment({'iss': JWT_ISSUER})}", None),
    ],
)
def test_jws_issuer_hint_reads_leniently_and_never_raises(token: str, hint: str | None) -> None:
    """The path hint reads `iss` from any base64 spelling; anything that is no such JWS gives None."""
    assert jws_issuer_hint(token) == hint
