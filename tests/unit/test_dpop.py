"""DPoP proofs (RFC 9449 §4.3): every check, one attack each, with an injected clock."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import warnings
from typing import Any

import pytest
from joserfc.jwk import ECKey, Key, OKPKey

from extauthz.authn.dpop import (
    NonceIssuer,
    ProofRules,
    ProofVerifier,
    normalize_uri,
    parse_origins,
    replay_key,
    request_uris,
)
from extauthz.authn.jwt import b64url
from extauthz.dev.issuer import make_proof
from extauthz.types import Denied, Reason, Status

NOW = 1_800_000_000
PATH = "/v2/models/diabetes/infer"
URL = "http://127.0.0.1:10000" + PATH
TOKEN = "header.payload.signature"  # the access token the proof is presented with
ATH = b64url(hashlib.sha256(TOKEN.encode()).digest())


class Clock:
    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def key() -> Key:
    return ECKey.generate_key("P-256")


def proof(key: Key, **kw: Any) -> str:
    kw.setdefault("iat", NOW)
    return make_proof(key, kw.pop("method", "POST"), kw.pop("url", URL), TOKEN, **kw)


def verify(
    value: str,
    key: Key,
    clock: Clock | None = None,
    nonces: NonceIssuer | None = None,
    method: str = "POST",
    uri: str | tuple[str, ...] = URL,
    ath: str = ATH,
) -> Any:
    v = ProofVerifier(ProofRules(window=60, leeway=5), nonces, clock or Clock())
    return v.verify(value, method, uri, ath, key.thumbprint())


def reason_of(value: str, key: Key, **kw: Any) -> Reason:
    with pytest.raises(Denied) as info:
        verify(value, key, **kw)
    assert info.value.status is Status.UNAUTHENTICATED
    return info.value.reason


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def test_a_good_proof_passes(key: Key) -> None:
    p = verify(proof(key, jti="j1"), key)
    assert p.jkt == key.thumbprint() and p.jti == "j1" and p.iat == NOW


def test_ed25519_proofs_pass_too() -> None:
    ed = OKPKey.generate_key("Ed25519")
    with warnings.catch_warnings():  # joserfc warns when *signing* with EdDSA
        warnings.simplefilter("ignore")
        value = proof(ed, alg="EdDSA")
    assert verify(value, ed).jkt == ed.thumbprint()


# 1. not more than one DPoP header (Envoy joins repeated headers with ",")
def test_two_dpop_headers_are_refused(key: Key) -> None:
    value = f"{proof(key)},{proof(key)}"
    assert reason_of(value, key) is Reason.DPOP_MULTIPLE_PROOFS


# 2. a single, well-formed JWT
@pytest.mark.parametrize("value", ["", "nope", "a.b", "a.b.c.d", "!!.??.**", "x" * 5000])
def test_a_malformed_proof_is_refused(value: str, key: Key) -> None:
    assert reason_of(value, key) is Reason.DPOP_MALFORMED


# 3. every required member
@pytest.mark.parametrize("claim", ["jti", "htm", "htu", "iat", "ath"])
def test_a_proof_missing_a_claim_is_refused(claim: str, key: Key) -> None:
    value = proof(key, claims={claim: None})
    assert reason_of(value, key) is Reason.DPOP_MALFORMED


def test_a_proof_without_jwk_is_refused(key: Key) -> None:
    assert reason_of(proof(key, header={"jwk": None}), key) is Reason.DPOP_MALFORMED


# 4. typ
@pytest.mark.parametrize("typ", ["JWT", "at+jwt", "DPOP+JWT"])
def test_a_proof_of_another_typ_is_refused(typ: str, key: Key) -> None:
    assert reason_of(proof(key, header={"typ": typ}), key) is Reason.DPOP_BAD_TYP


# 5. alg: asymmetric and allowed
@pytest.mark.parametrize("alg", ["none", "HS256", "ES384"])
def test_a_proof_with_a_disallowed_alg_is_refused(alg: str, key: Key) -> None:
    header = {"typ": "dpop+jwt", "alg": alg, "jwk": key.as_dict(private=False)}
    body = {"jti": "j", "htm": "POST", "htu": URL, "iat": NOW, "ath": ATH}
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(body).encode())}"
    sig = b64(hmac.new(b"k" * 32, signing_input.encode(), hashlib.sha256).digest())
    assert reason_of(f"{signing_input}.{sig}", key) is Reason.DPOP_ALG_NOT_ALLOWED


# 6. signature under the jwk
def test_a_proof_signed_by_another_key_than_its_jwk_is_refused(key: Key) -> None:
    other = ECKey.generate_key("P-256")
    value = proof(other, header={"jwk": key.as_dict(private=False)})
    assert reason_of(value, key) is Reason.DPOP_BAD_SIGNATURE


def test_a_proof_whose_jwk_does_not_fit_the_alg_is_refused(key: Key) -> None:
    ed = OKPKey.generate_key("Ed25519")
    value = proof(key, header={"jwk": ed.as_dict(private=False)})
    assert reason_of(value, ed) is Reason.DPOP_BAD_SIGNATURE


# 7. no private key in the jwk
def test_a_jwk_with_its_private_d_is_refused(key: Key) -> None:
    value = proof(key, header={"jwk": key.as_dict(private=True)})
    assert reason_of(value, key) is Reason.DPOP_PRIVATE_KEY


# 8. htm
def test_htm_must_match_the_method(key: Key) -> None:
    assert reason_of(proof(key, method="GET"), key) is Reason.DPOP_HTM_MISMATCH
    assert reason_of(proof(key, method="post"), key) is Reason.DPOP_HTM_MISMATCH


# 9. htu, ignoring query and fragment, after syntax-based normalisation
@pytest.mark.parametrize(
    "htu",
    [
        "http://127.0.0.1:10000/v2/models/cancer/infer",
        "https://127.0.0.1:10000/v2/models/diabetes/infer",
        "http://127.0.0.1:10001/v2/models/diabetes/infer",
        "http://evil.test:10000/v2/models/diabetes/infer",
        "http://127.0.0.1:10000//v2/models/diabetes/infer",
        "/v2/models/diabetes/infer",
        "ftp://127.0.0.1:10000/v2/models/diabetes/infer",
    ],
)
def test_htu_must_match_the_request_uri(htu: str, key: Key) -> None:
    assert reason_of(proof(key, url=htu), key) is Reason.DPOP_HTU_MISMATCH


@pytest.mark.parametrize(
    "htu",
    [
        URL + "?verbose=1",
        URL + "#frag",
        "HTTP://127.0.0.1:10000/v2/models/diabetes/infer",
    ],
)
def test_htu_ignores_query_fragment_and_case_of_scheme_and_host(htu: str, key: Key) -> None:
    assert verify(proof(key, url=htu), key).jkt == key.thumbprint()


def test_uri_normalisation() -> None:
    assert normalize_uri("HTTPS://API.Example.com:443/a?b#c") == "https://api.example.com/a"
    assert normalize_uri("http://h:80") == "http://h/"
    assert normalize_uri("http://[::1]:8080/x") == "http://[::1]:8080/x"
    assert normalize_uri("http://h:notaport/") is None
    assert normalize_uri("mailto:x@y") is None


def test_origins_are_parsed_strictly_and_normalised() -> None:
    assert parse_origins("") == ()
    assert parse_origins(" HTTPS://API.Example.com:443/ , http://127.0.0.1:10000") == (
        "https://api.example.com",
        "http://127.0.0.1:10000",
    )
    assert parse_origins("https://a.test,https://a.test:443") == ("https://a.test",)
    for bad in (
        "api.example.com",
        "ftp://a.test",
        "https://a.test/prefix",
        "https://user@a.test",
        "https://a.test?x=1",
        "https://a.test:notaport",
    ):
        with pytest.raises(ValueError):
            parse_origins(bad)
    assert request_uris(("https://a.test", "http://b.test:8080"), "/v2/x") == (
        "https://a.test/v2/x",
        "http://b.test:8080/v2/x",
    )


def test_htu_may_name_any_configured_origin_and_no_other(key: Key) -> None:
    uris = request_uris(("https://api.example.com", "http://127.0.0.1:10000"), PATH)
    assert verify(proof(key, url="https://api.example.com" + PATH), key, uri=uris).jti
    assert verify(proof(key, url=URL), key, uri=uris).jti
    other = proof(key, url="https://evil.example" + PATH)
    assert reason_of(other, key, uri=uris) is Reason.DPOP_HTU_MISMATCH


# 10. the server nonce, when required
def test_a_required_nonce_missing_gets_use_dpop_nonce_with_a_fresh_nonce(key: Key) -> None:
    clock = Clock()
    nonces = NonceIssuer(b"s" * 32, lifetime=300, clock=clock)
    with pytest.raises(Denied) as info:
        verify(proof(key), key, clock=clock, nonces=nonces)
    assert info.value.reason is Reason.DPOP_NONCE_REQUIRED
    headers = dict(info.value.headers)
    assert headers["www-authenticate"] == 'DPoP error="use_dpop_nonce"'
    nonce = headers["dpop-nonce"]
    assert nonces.valid(nonce)
    assert verify(proof(key, nonce=nonce), key, clock=clock, nonces=nonces)


def test_a_stale_or_forged_nonce_is_refused(key: Key) -> None:
    clock = Clock()
    nonces = NonceIssuer(b"s" * 32, lifetime=300, clock=clock)
    old = nonces.issue()
    clock.now += 301
    assert reason_of(proof(key, nonce=old, iat=clock.now), key, clock=clock, nonces=nonces) is (
        Reason.DPOP_NONCE_REQUIRED
    )
    forged = NonceIssuer(b"x" * 32, clock=clock).issue()
    for bad in (forged, "A" * 32, "short", "!" * 32):
        assert not nonces.valid(bad)


# 11. iat within the window (60 s back, 5 s ahead)
@pytest.mark.parametrize(("offset", "ok"), [(-60, True), (-61, False), (5, True), (6, False)])
def test_iat_must_be_within_the_window(offset: int, ok: bool, key: Key) -> None:
    value = proof(key, iat=NOW + offset)
    if ok:
        assert verify(value, key).iat == NOW + offset
    else:
        assert reason_of(value, key) is Reason.DPOP_IAT_OUT_OF_WINDOW


# 12. ath and the key binding
def test_ath_must_hash_the_presented_token(key: Key) -> None:
    other_ath = b64url(hashlib.sha256(b"another.access.token").digest())
    assert reason_of(proof(key), key, ath=other_ath) is Reason.DPOP_ATH_MISMATCH


def test_the_proof_key_must_be_the_one_the_token_is_bound_to(key: Key) -> None:
    other = ECKey.generate_key("P-256")
    v = ProofVerifier(ProofRules(), None, Clock())
    with pytest.raises(Denied) as info:
        v.verify(proof(other), "POST", URL, ATH, key.thumbprint())
    assert info.value.reason is Reason.DPOP_KEY_MISMATCH


def test_replay_keys_share_the_subjects_hash_tag_and_hide_the_jti(key: Key) -> None:
    p = verify(proof(key, jti="secret-ish"), key)
    name = replay_key("bob", p)
    assert name.startswith("ea:{sub:") and ":jti:" in name and "secret-ish" not in name
    assert replay_key("bob", p) == name and replay_key("alice", p) != name
