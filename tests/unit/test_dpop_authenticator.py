"""Stage 2 with tokens: which credential counts, JWT vs JWT+DPoP, and what a 401 says."""

from __future__ import annotations

from pathlib import Path

import pytest
from joserfc.jwk import ECKey, Key

from extauthz.authn.authenticator import Authenticator, TokenAuthenticator
from extauthz.authn.dpop import ProofRules, ProofVerifier
from extauthz.authn.jwks import JwksSource
from extauthz.authn.jwt import JwtVerifier, TokenRules
from extauthz.dev.issuer import DevIssuer, make_proof
from extauthz.request import parse_check_request
from extauthz.response import build_response, challenge
from extauthz.types import Decision, Denied, Device, Reason, RequestView, Status
from tests.unit.checkrequests import check_request

NOW = 1_800_000_000
URL = "http://gateway/v2/models/diabetes/infer"  # checkrequests' host is "gateway"


class Clock:
    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class FakeDevices:
    def __init__(self, trust: str = "managed") -> None:
        self.trust = trust
        self.lookups: list[tuple[str, str]] = []

    async def lookup(self, subject: str, thumbprint: str) -> Device:
        self.lookups.append((subject, thumbprint))
        if self.trust == "revoked":
            raise Denied(Status.UNAUTHENTICATED, Reason.DEVICE_REVOKED)
        return Device(thumbprint=thumbprint, trust=self.trust, state_key="ea:{x}:dev")


class NoApiKeys:
    async def authenticate(self, key: str, source_ip: str = ""):  # type: ignore[no-untyped-def]
        raise Denied(Status.UNAUTHENTICATED, Reason.UNKNOWN_KEY)


@pytest.fixture
def issuer(tmp_path: Path) -> DevIssuer:
    return DevIssuer(tmp_path / "issuer", "iss", "aud", clock=Clock())


@pytest.fixture(scope="module")
def device() -> Key:
    return ECKey.generate_key("P-256")


def authenticator(
    issuer: DevIssuer, devices: FakeDevices | None = None, origin: str = "http://gateway"
) -> Authenticator:
    issuer.ensure()
    clock = Clock()
    verifier = JwtVerifier(
        JwksSource(str(issuer.jwks_file), clock=clock), TokenRules("iss", "aud"), clock=clock
    )
    tokens = TokenAuthenticator(
        verifier,
        ProofVerifier(ProofRules(window=60, leeway=5), None, clock),
        devices or FakeDevices(),  # type: ignore[arg-type]
        proof_window=65,
        origin=origin,
    )
    return Authenticator(NoApiKeys(), tokens)  # type: ignore[arg-type]


def view(
    headers: dict[str, str], path: str = "/v2/models/diabetes/infer", host: str = "gateway"
) -> RequestView:
    req = check_request("POST", path, headers=headers)
    req.attributes.request.http.host = host
    return parse_check_request(req, 4096)


async def reason_of(auth: Authenticator, headers: dict[str, str]) -> Reason:
    with pytest.raises(Denied) as info:
        await auth.authenticate(view(headers))
    assert info.value.status is Status.UNAUTHENTICATED
    return info.value.reason


async def test_a_plain_jwt_gives_credential_jwt(issuer: DevIssuer) -> None:
    auth = authenticator(issuer)
    token = issuer.mint("alice", ("analyst",), ("vision",))
    p = await auth.authenticate(view({"authorization": f"Bearer {token}"}))
    assert (p.subject, p.credential, p.tier) == ("alice", "jwt", "standard")
    assert p.device.trust == "none" and p.device.thumbprint == "" and not p.device.replay_key
    assert p.rate_key.startswith("sub:") and len(p.credential_id) == 12


async def test_jwt_with_dpop_gives_device_and_replay_key(issuer: DevIssuer, device: Key) -> None:
    devices = FakeDevices("managed")
    auth = authenticator(issuer, devices)
    token = issuer.mint("bob", ("clinician",), ("clinical",), dpop_jkt=device.thumbprint())
    proof = make_proof(device, "POST", URL, token, iat=NOW)
    p = await auth.authenticate(view({"authorization": f"DPoP {token}", "dpop": proof}))
    assert p.credential == "jwt+dpop"
    assert p.device.trust == "managed" and p.device.thumbprint == device.thumbprint()
    assert p.device.state_key and p.device.replay_key.startswith(f"ea:{{{p.rate_key}}}:jti:")
    assert p.device.replay_ttl == 65
    assert devices.lookups == [("bob", device.thumbprint())]


async def test_a_proof_for_another_origin_is_refused_whatever_host_the_client_sends(
    issuer: DevIssuer, device: Key
) -> None:
    """The client names the other origin in Host (Envoy answers every domain): htu is still
    checked against the configured origins only."""
    token = issuer.mint("bob", dpop_jkt=device.thumbprint())
    proof = make_proof(device, "POST", "https://evil.example/v2/models/diabetes/infer", token)
    headers = {"authorization": f"DPoP {token}", "dpop": proof}
    with pytest.raises(Denied) as info:
        await authenticator(issuer).authenticate(view(headers, host="evil.example"))
    assert info.value.reason is Reason.DPOP_HTU_MISMATCH


async def test_dpop_is_refused_without_a_configured_origin(issuer: DevIssuer, device: Key) -> None:
    token = issuer.mint("bob", dpop_jkt=device.thumbprint())
    proof = make_proof(device, "POST", URL, token, iat=NOW)  # right for the Host it sends
    headers = {"authorization": f"DPoP {token}", "dpop": proof}
    auth = authenticator(issuer, origin="")
    with pytest.raises(Denied) as info:
        await auth.authenticate(view(headers))
    assert info.value.reason is Reason.DPOP_ORIGIN_NOT_CONFIGURED
    # plain JWTs do not need an origin
    plain = issuer.mint("alice", ("analyst",), ("vision",))
    assert (await auth.authenticate(view({"authorization": f"Bearer {plain}"}))).credential == "jwt"


def test_a_malformed_origin_stops_the_start(issuer: DevIssuer) -> None:
    with pytest.raises(ValueError, match="origin"):
        authenticator(issuer, origin="https://api.example.com/prefix")


async def test_a_bound_token_as_bearer_is_refused(issuer: DevIssuer, device: Key) -> None:
    token = issuer.mint("bob", dpop_jkt=device.thumbprint())
    proof = make_proof(device, "POST", URL, token, iat=NOW)
    for headers in (
        {"authorization": f"Bearer {token}"},
        {"authorization": f"Bearer {token}", "dpop": proof},
    ):
        assert await reason_of(authenticator(issuer), headers) is Reason.DPOP_BOUND_TOKEN_AS_BEARER


async def test_a_bound_token_without_its_proof_is_refused(issuer: DevIssuer, device: Key) -> None:
    token = issuer.mint("bob", dpop_jkt=device.thumbprint())
    headers = {"authorization": f"DPoP {token}"}
    assert await reason_of(authenticator(issuer), headers) is Reason.DPOP_PROOF_MISSING


async def test_an_unbound_token_under_the_dpop_scheme_is_refused(
    issuer: DevIssuer, device: Key
) -> None:
    token = issuer.mint("bob")
    proof = make_proof(device, "POST", URL, token, iat=NOW)
    headers = {"authorization": f"DPoP {token}", "dpop": proof}
    assert await reason_of(authenticator(issuer), headers) is Reason.DPOP_TOKEN_NOT_BOUND


async def test_a_revoked_device_is_refused(issuer: DevIssuer, device: Key) -> None:
    token = issuer.mint("bob", dpop_jkt=device.thumbprint())
    proof = make_proof(device, "POST", URL, token, iat=NOW)
    headers = {"authorization": f"DPoP {token}", "dpop": proof}
    auth = authenticator(issuer, FakeDevices("revoked"))
    assert await reason_of(auth, headers) is Reason.DEVICE_REVOKED


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        ({}, Reason.NO_CREDENTIAL),
        ({"authorization": "Basic YWxpY2U6c2VjcmV0"}, Reason.MALFORMED_CREDENTIAL),
        ({"authorization": "Bearer not-a-key"}, Reason.MALFORMED_CREDENTIAL),
        ({"authorization": "DPoP"}, Reason.MALFORMED_CREDENTIAL),
        ({"authorization": "Bearer eak_0123456789ab.x"}, Reason.UNKNOWN_KEY),
        ({"x-api-key": "eak_whatever"}, Reason.UNKNOWN_KEY),
        ({"authorization": "Bearer a.b.c"}, Reason.MALFORMED_CREDENTIAL),
    ],
)
async def test_dispatch(headers: dict[str, str], reason: Reason, issuer: DevIssuer) -> None:
    assert await reason_of(authenticator(issuer), headers) is reason


async def test_jwt_without_a_configured_issuer_is_refused() -> None:
    auth = Authenticator(NoApiKeys())  # type: ignore[arg-type]
    with pytest.raises(Denied) as info:
        await auth.authenticate(view({"authorization": "Bearer a.b.c"}))
    assert info.value.reason is Reason.JWT_NOT_CONFIGURED


async def test_a_client_certificate_without_mtls_configured_is_refused() -> None:
    req = check_request()
    req.attributes.source.certificate = "-----BEGIN%20CERTIFICATE-----"
    auth = Authenticator(NoApiKeys())  # type: ignore[arg-type]
    with pytest.raises(Denied) as info:
        await auth.authenticate(parse_check_request(req, 4096))
    assert info.value.reason is Reason.MTLS_NOT_CONFIGURED


# ---- what a 401 says: only the scheme and error="invalid_token" (or use_dpop_nonce)


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({}, "Bearer"),
        ({"authorization": "Basic abc"}, "Bearer"),
        ({"authorization": "Bearer x.y.z"}, 'Bearer error="invalid_token"'),
        ({"x-api-key": "eak_x"}, 'Bearer error="invalid_token"'),
        ({"authorization": "DPoP x.y.z", "dpop": "p"}, 'DPoP error="invalid_token"'),
        ({"authorization": "dpop x.y.z"}, 'DPoP error="invalid_token"'),
    ],
)
def test_challenge(headers: dict[str, str], expected: str) -> None:
    assert challenge(headers) == expected


def test_every_dpop_failure_looks_the_same_to_the_client() -> None:
    headers = {"authorization": "DPoP x.y.z", "dpop": "p"}
    seen = set()
    for reason in (
        Reason.UNKNOWN_KID,
        Reason.BAD_SIGNATURE,
        Reason.TOKEN_EXPIRED,
        Reason.DPOP_REPLAY,
        Reason.DPOP_KEY_MISMATCH,
        Reason.DEVICE_REVOKED,
    ):
        resp = build_response(Decision(Status.UNAUTHENTICATED, reason, "d"), headers)
        denied = resp.denied_response
        seen.add(
            (
                denied.status.code,
                denied.body,
                tuple((h.header.key, h.header.value) for h in denied.headers),
            )
        )
    assert len(seen) == 1
    status, body, hdrs = seen.pop()
    assert status == 401 and body == '{"error":"unauthenticated"}'
    assert dict(hdrs)["www-authenticate"] == 'DPoP error="invalid_token"'


def test_a_nonce_challenge_carries_the_nonce() -> None:
    decision = Decision(
        Status.UNAUTHENTICATED,
        Reason.DPOP_NONCE_REQUIRED,
        "d",
        denial_headers=(
            ("www-authenticate", 'DPoP error="use_dpop_nonce"'),
            ("dpop-nonce", "n0nce"),
        ),
    )
    resp = build_response(decision, {"authorization": "DPoP x.y.z"})
    hdrs = {h.header.key: h.header.value for h in resp.denied_response.headers}
    assert hdrs["www-authenticate"] == 'DPoP error="use_dpop_nonce"'
    assert hdrs["dpop-nonce"] == "n0nce"
    assert resp.denied_response.body == '{"error":"unauthenticated"}'
