"""JWT access tokens: the attack catalogue and the good paths, with an injected clock."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import warnings
from pathlib import Path
from typing import Any

import pytest
from joserfc import jwt
from joserfc.jwk import ECKey, Key, OKPKey, RSAKey

from extauthz.authn import jwt as jwtmod
from extauthz.authn.jwks import JwksSource, parse_jwks
from extauthz.authn.jwt import JwtVerifier, TokenRules
from extauthz.types import Denied, Reason, Status

NOW = 1_800_000_000
ISS, AUD = "https://issuer.test", "extauthz"


class Clock:
    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def keys() -> dict[str, Key]:
    return {
        "ec1": ECKey.generate_key("P-256", parameters={"kid": "ec1"}),
        "rsa1": RSAKey.generate_key(2048, parameters={"kid": "rsa1"}),
        "ed1": OKPKey.generate_key("Ed25519", parameters={"kid": "ed1"}),
    }


def write_jwks(path: Path, keys: list[Key], extra: list[dict[str, Any]] | None = None) -> None:
    doc = {"keys": [k.as_dict(private=False) for k in keys] + (extra or [])}
    path.write_text(json.dumps(doc))


@pytest.fixture
def jwks_file(tmp_path: Path, keys: dict[str, Key]) -> Path:
    path = tmp_path / "jwks.json"
    write_jwks(path, list(keys.values()))
    return path


def claims(**overrides: Any) -> dict[str, Any]:
    base = {
        "iss": ISS,
        "aud": AUD,
        "sub": "alice",
        "iat": NOW,
        "nbf": NOW,
        "exp": NOW + 600,
        "roles": ["analyst"],
        "projects": ["vision"],
        "tier": "standard",
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def sign(key: Key, alg: str = "ES256", header: dict[str, Any] | None = None, **over: Any) -> str:
    protected = {"alg": alg, "kid": key.kid, "typ": "at+jwt", **(header or {})}
    protected = {k: v for k, v in protected.items() if v is not None}
    with warnings.catch_warnings():  # joserfc warns when *signing* with EdDSA
        warnings.simplefilter("ignore")
        return jwt.encode(protected, claims(**over), key, algorithms=[protected["alg"]])


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def verifier(path: Path, clock: Clock, **rules: Any) -> JwtVerifier:
    source = JwksSource(str(path), refresh_interval=300, min_refresh_interval=10, clock=clock)
    return JwtVerifier(source, TokenRules(ISS, AUD, **rules), cache_size=100, clock=clock)


async def reason_of(v: JwtVerifier, token: str) -> Reason:
    with pytest.raises(Denied) as info:
        await v.verify(token)
    assert info.value.status is Status.UNAUTHENTICATED
    return info.value.reason


@pytest.mark.parametrize(("kid", "alg"), [("ec1", "ES256"), ("rsa1", "RS256"), ("ed1", "EdDSA")])
async def test_each_allowed_algorithm_verifies(
    kid: str, alg: str, keys: dict[str, Key], jwks_file: Path
) -> None:
    token = sign(keys[kid], alg)
    verified = await verifier(jwks_file, Clock()).verify(token)
    assert verified.subject == "alice"
    assert verified.roles == ("analyst",) and verified.projects == ("vision",)
    assert verified.tier == "standard" and verified.jkt == ""
    digest = hashlib.sha256(token.encode()).digest()
    assert verified.token_hash == digest.hex() and verified.ath == b64(digest)


async def test_alg_none_is_refused(keys: dict[str, Key], jwks_file: Path) -> None:
    header = b64(json.dumps({"alg": "none", "kid": "ec1", "typ": "JWT"}).encode())
    for sig in ("", "c2ln"):
        token = f"{header}.{b64(json.dumps(claims()).encode())}.{sig}"
        assert await reason_of(verifier(jwks_file, Clock()), token) is Reason.ALG_NOT_ALLOWED


async def test_hs256_signed_with_the_rsa_public_key_is_refused(
    keys: dict[str, Key], jwks_file: Path
) -> None:
    """The classic key-confusion attack: HMAC keyed with the issuer's public key."""
    secret = keys["rsa1"].as_pem(private=False)
    header = b64(json.dumps({"alg": "HS256", "kid": "rsa1", "typ": "JWT"}).encode())
    payload = b64(json.dumps(claims()).encode())
    sig = b64(hmac.new(secret, f"{header}.{payload}".encode(), hashlib.sha256).digest())
    v = verifier(jwks_file, Clock())
    assert await reason_of(v, f"{header}.{payload}.{sig}") is Reason.ALG_NOT_ALLOWED


@pytest.mark.parametrize(("kid", "alg"), [("rsa1", "ES256"), ("ec1", "EdDSA"), ("ed1", "RS256")])
async def test_a_key_of_another_type_than_the_alg_is_refused(
    kid: str, alg: str, keys: dict[str, Key], jwks_file: Path
) -> None:
    # signed with a key that fits the alg, but naming the issuer's key of another type
    signer = {"ES256": keys["ec1"], "EdDSA": keys["ed1"], "RS256": keys["rsa1"]}[alg]
    token = sign(signer, alg, header={"kid": kid})
    assert await reason_of(verifier(jwks_file, Clock()), token) is Reason.KEY_ALG_MISMATCH


async def test_an_algorithm_off_the_configured_list_is_refused(
    keys: dict[str, Key], jwks_file: Path
) -> None:
    v = verifier(jwks_file, Clock(), algorithms=("ES256",))
    assert await reason_of(v, sign(keys["rsa1"], "RS256")) is Reason.ALG_NOT_ALLOWED


def test_hmac_and_none_cannot_even_be_configured() -> None:
    for bad in ("HS256", "none", "PS256"):
        with pytest.raises(ValueError):
            jwtmod.AllowListRegistry(("ES256", bad))


async def test_unknown_kid_is_refused(keys: dict[str, Key], jwks_file: Path) -> None:
    other = ECKey.generate_key("P-256", parameters={"kid": "nowhere"})
    assert await reason_of(verifier(jwks_file, Clock()), sign(other)) is Reason.UNKNOWN_KID
    token = sign(keys["ec1"], header={"kid": None})
    assert await reason_of(verifier(jwks_file, Clock()), token) is Reason.UNKNOWN_KID


@pytest.mark.parametrize(
    ("over", "reason"),
    [
        ({"exp": NOW - 31, "iat": NOW - 600, "nbf": NOW - 600}, Reason.TOKEN_EXPIRED),
        ({"nbf": NOW + 31}, Reason.TOKEN_NOT_YET_VALID),
        ({"iat": NOW + 31}, Reason.TOKEN_NOT_YET_VALID),
        ({"exp": NOW + 901}, Reason.TOKEN_LIFETIME_TOO_LONG),
        ({"aud": "someone-else"}, Reason.WRONG_AUDIENCE),
        ({"aud": ["a", "b"]}, Reason.WRONG_AUDIENCE),
        ({"iss": "https://evil.test"}, Reason.WRONG_ISSUER),
        ({"exp": None}, Reason.BAD_CLAIMS),
        ({"iat": None}, Reason.BAD_CLAIMS),
        ({"iss": None}, Reason.BAD_CLAIMS),
        ({"sub": None}, Reason.BAD_CLAIMS),
        ({"exp": "tomorrow"}, Reason.BAD_CLAIMS),
        ({"roles": "analyst", "projects": {"x": 1}}, Reason.BAD_CLAIMS),
        ({"cnf": {"x5t#S256": "abc"}}, Reason.BAD_CLAIMS),
    ],
)
async def test_claims_are_checked(
    over: dict[str, Any], reason: Reason, keys: dict[str, Key], jwks_file: Path
) -> None:
    assert await reason_of(verifier(jwks_file, Clock()), sign(keys["ec1"], **over)) is reason


async def test_leeway_admits_small_skew(keys: dict[str, Key], jwks_file: Path) -> None:
    v = verifier(jwks_file, Clock())
    await v.verify(sign(keys["ec1"], exp=NOW - 29, iat=NOW - 600, nbf=NOW - 600))
    await v.verify(sign(keys["ec1"], nbf=NOW + 29, iat=NOW + 29))
    await v.verify(sign(keys["ec1"], exp=NOW + 900))  # exactly the maximum lifetime


async def test_tampered_payload_is_a_bad_signature(keys: dict[str, Key], jwks_file: Path) -> None:
    header, _, sig = sign(keys["ec1"]).split(".")
    forged = b64(json.dumps(claims(roles=["admin"])).encode())
    v = verifier(jwks_file, Clock())
    assert await reason_of(v, f"{header}.{forged}.{sig}") is Reason.BAD_SIGNATURE


@pytest.mark.parametrize(
    "token", ["", "abc", "a.b", "a.b.c.d", "x" * 9000 + ".a.b", "!!!.???.***", "e30.e30.e30"]
)
async def test_garbage_is_malformed(token: str, jwks_file: Path) -> None:
    assert await reason_of(verifier(jwks_file, Clock()), token) is Reason.MALFORMED_CREDENTIAL


async def test_a_dpop_proof_is_no_access_token(keys: dict[str, Key], jwks_file: Path) -> None:
    token = sign(keys["ec1"], header={"typ": "dpop+jwt"})
    assert await reason_of(verifier(jwks_file, Clock()), token) is Reason.MALFORMED_CREDENTIAL


async def test_a_cache_hit_is_not_verified_again(
    keys: dict[str, Key], jwks_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []
    real = jwtmod.verify_signature

    def counting(*args: Any) -> tuple[bool, str]:
        calls.append(1)
        return real(*args)

    monkeypatch.setattr(jwtmod, "verify_signature", counting)
    clock = Clock()
    v = verifier(jwks_file, clock)
    token = sign(keys["ec1"])
    first = await v.verify(token)
    for _ in range(5):
        assert await v.verify(token) is first
    assert len(calls) == 1
    # cached only until exp (+ leeway): then it is verified again, and refused
    clock.now = NOW + 600 + 30
    assert await reason_of(v, token) is Reason.TOKEN_EXPIRED
    assert len(calls) == 2


async def test_the_cache_is_bounded(keys: dict[str, Key], jwks_file: Path) -> None:
    clock = Clock()
    source = JwksSource(str(jwks_file), clock=clock)
    v = JwtVerifier(source, TokenRules(ISS, AUD), cache_size=3, clock=clock)
    for i in range(10):
        await v.verify(sign(keys["ec1"], sub=f"user{i}"))
    assert len(v._cache) == 3


async def test_claim_names_are_configurable(keys: dict[str, Key], jwks_file: Path) -> None:
    v = verifier(
        jwks_file,
        Clock(),
        subject_claim="email",
        roles_claim="realm_access.roles",
        projects_claim="scope",
        tier_claim="plan",
    )
    token = sign(
        keys["ec1"],
        email="a@example.com",
        realm_access={"roles": ["analyst", "viewer"]},
        scope="vision ops",
        plan="trial",
    )
    verified = await v.verify(token)
    assert verified.subject == "a@example.com"
    assert verified.roles == ("analyst", "viewer") and verified.projects == ("vision", "ops")
    assert verified.tier == "trial"


async def test_a_bound_token_carries_its_jkt(keys: dict[str, Key], jwks_file: Path) -> None:
    verified = await verifier(jwks_file, Clock()).verify(sign(keys["ec1"], cnf={"jkt": "abc"}))
    assert verified.jkt == "abc"


# --------------------------------------------------------------------------- JWKS


def test_parse_jwks_keeps_public_signing_keys_only(keys: dict[str, Key]) -> None:
    doc = {
        "keys": [
            keys["ec1"].as_dict(private=True),  # a private key published by mistake
            {"kty": "oct", "k": "c2VjcmV0", "kid": "hmac"},
            {"kty": "EC", "kid": "broken"},
            keys["rsa1"].as_dict(private=False),
            {"kty": "RSA", "n": "x", "e": "AQAB"},  # no kid
        ]
    }
    parsed = parse_jwks(json.dumps(doc).encode())
    assert set(parsed) == {"ec1", "rsa1"}
    assert not parsed["ec1"].is_private


async def test_rotation_is_picked_up_on_an_unknown_kid_rate_limited(
    tmp_path: Path, keys: dict[str, Key]
) -> None:
    path = tmp_path / "jwks.json"
    write_jwks(path, [keys["ec1"]])
    clock = Clock()
    v = verifier(path, clock)
    await v.verify(sign(keys["ec1"]))  # first load
    new = ECKey.generate_key("P-256", parameters={"kid": "ec2"})
    write_jwks(path, [keys["ec1"], new])
    token = sign(new)
    # within min_refresh_interval of the last load: no reload yet
    assert await reason_of(v, token) is Reason.UNKNOWN_KID
    clock.now += 10
    assert (await v.verify(token)).subject == "alice"


async def test_scheduled_refresh_drops_retired_keys(tmp_path: Path, keys: dict[str, Key]) -> None:
    path = tmp_path / "jwks.json"
    write_jwks(path, [keys["ec1"]])
    clock = Clock()
    source = JwksSource(str(path), refresh_interval=300, min_refresh_interval=10, clock=clock)
    assert await source.get("ec1") is not None
    write_jwks(path, [keys["rsa1"]])
    clock.now += 300
    await source.get("rsa1")  # stale: reloads (and finds the new kid)
    await source.refresh()
    assert await source.get("ec1") is None


async def test_no_jwks_at_all_fails_closed_with_503(tmp_path: Path, keys: dict[str, Key]) -> None:
    v = verifier(tmp_path / "missing.json", Clock())
    with pytest.raises(Denied) as info:
        await v.verify(sign(keys["ec1"]))
    assert info.value.status is Status.UNAVAILABLE and info.value.reason is Reason.JWKS_UNAVAILABLE


async def test_a_failed_refresh_keeps_the_keys_it_had(tmp_path: Path, keys: dict[str, Key]) -> None:
    path = tmp_path / "jwks.json"
    write_jwks(path, [keys["ec1"]])
    clock = Clock()
    v = verifier(path, clock)
    await v.verify(sign(keys["ec1"]))
    path.write_text("{not json")
    clock.now += 400
    await v.verify(sign(keys["ec1"], iat=NOW + 400, nbf=NOW + 400, exp=NOW + 900))


def test_plain_http_jwks_urls_are_refused() -> None:
    with pytest.raises(ValueError):
        JwksSource("http://issuer.test/jwks.json")
