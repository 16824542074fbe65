"""Identity through real Envoy: JWTs, DPoP-bound tokens with enrolled devices, mTLS service
identities, and API-key expiry and CIDR ranges. Every attack gets the same generic 401; the
decision log (looked up by the response's x-request-id) records the specific reason."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import ssl
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from joserfc import jwt
from joserfc.jwk import ECKey, Key

from extauthz.dev.certs import DevCA
from extauthz.dev.devstack import ROOT, Stack
from extauthz.dev.issuer import DevIssuer, make_proof, new_device_key, save_private_jwk
from extauthz.response import BODIES
from extauthz.types import Status
from tests.e2e.conftest import Keys, cli
from tests.e2e.payloads import DIABETES, DIGITS, ECHO
from tests.e2e.test_gateway import wait_for_decision

pytestmark = pytest.mark.e2e

DIGITS_PATH = "/v2/models/digits/infer"
DIABETES_PATH = "/v2/models/diabetes/infer"
ECHO_PATH = "/v2/models/echo/infer"
SPIFFE = "spiffe://extauthz.dev/ns/ops/sa/batch-scorer"  # in rego mtls_identities: ops operator


@pytest.fixture(scope="module")
def issuer(stack: Stack) -> DevIssuer:
    issuer = stack.dev_issuer
    issuer.ensure()
    return issuer


@pytest.fixture(scope="module")
def device() -> Key:
    return new_device_key()


def url(stack: Stack, path: str) -> str:
    return stack.envoy_url + path


def enroll(stack: Stack, tmp_path: Path, subject: str, key: Key, trust: str) -> None:
    path = tmp_path / f"{subject}-{key.thumbprint()[:8]}.jwk"
    save_private_jwk(path, key)
    cli(stack, "devices", "enroll", "--subject", subject, "--jwk-file", str(path), "--trust", trust)


def dpop(stack: Stack, token: str, key: Key, path: str, method: str = "POST", **kw: Any) -> dict:
    return {
        "authorization": f"DPoP {token}",
        "dpop": make_proof(key, method, url(stack, path), token, **kw),
    }


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def assert_denied(
    resp: httpx.Response, stack: Stack, reason: str, www: str = 'Bearer error="invalid_token"'
) -> None:
    """401 with the generic body and only the RFC challenge; the reason is in the log only."""
    assert resp.status_code == 401, resp.text
    assert resp.content == BODIES[Status.UNAUTHENTICATED]
    assert resp.headers["www-authenticate"] == www
    assert "dpop-nonce" not in resp.headers
    assert wait_for_decision(stack, resp.headers["x-request-id"])["reason"] == reason


def assert_forbidden_by(resp: httpx.Response, stack: Stack, policy_reason: str) -> None:
    assert resp.status_code == 403, resp.text
    assert resp.content == BODIES[Status.FORBIDDEN]
    record = wait_for_decision(stack, resp.headers["x-request-id"])
    assert record["reason"] == "policy_deny" and record["policy_reason"] == policy_reason


# --------------------------------------------------------------------------- positive paths


def test_a_jwt_reaches_an_internal_model(gateway: httpx.Client, stack: Stack) -> None:
    token = cli(
        stack, "dev", "token", "--subject", "alice", "--roles", "analyst", "--projects", "vision"
    ).stdout.strip()
    resp = gateway.post(DIGITS_PATH, json=DIGITS, headers=bearer(token))
    assert resp.status_code == 200, resp.text
    assert resp.json()["outputs"][0]["data"] == [0]
    record = wait_for_decision(stack, resp.headers["x-request-id"])
    assert record["credential"] == "jwt" and record["subject"] == "alice"
    assert token not in (stack.logs / "decisions.log").read_text()


def test_bob_reaches_diabetes_with_jwt_dpop_from_a_managed_device(
    gateway: httpx.Client, stack: Stack, tmp_path: Path
) -> None:
    key_file = tmp_path / "bob-device.jwk"
    out = cli(
        stack,
        "dev",
        "token",
        "--subject",
        "bob",
        "--roles",
        "clinician",
        "--projects",
        "clinical",
        "--dpop-key",
        str(key_file),
    )
    token = out.stdout.strip()
    cli(
        stack,
        "devices",
        "enroll",
        "--subject",
        "bob",
        "--jwk-file",
        str(key_file),
        "--trust",
        "managed",
    )
    key = json.loads(key_file.read_text())
    assert "d" in key and (key_file.stat().st_mode & 0o777) == 0o600
    listing = cli(stack, "devices", "list").stdout
    assert "bob" in listing and "managed" in listing and key["d"] not in listing
    from joserfc.jwk import JWKRegistry

    device = JWKRegistry.import_key(key)
    resp = gateway.post(
        DIABETES_PATH, json=DIABETES, headers=dpop(stack, token, device, DIABETES_PATH)
    )
    assert resp.status_code == 200, resp.text
    assert isinstance(resp.json()["outputs"][0]["data"][0], float)
    record = wait_for_decision(stack, resp.headers["x-request-id"])
    assert record["credential"] == "jwt+dpop"

    # the same token without its proof, or Bob's plain JWT or API key: 401 / 403
    assert_denied(
        gateway.post(DIABETES_PATH, json=DIABETES, headers={"authorization": f"DPoP {token}"}),
        stack,
        "dpop_proof_missing",
        'DPoP error="invalid_token"',
    )
    plain = stack.dev_issuer.mint("bob", ("clinician",), ("clinical",))
    assert_forbidden_by(
        gateway.post(DIABETES_PATH, json=DIABETES, headers=bearer(plain)),
        stack,
        "insufficient_assurance",
    )


def test_bob_without_dpop_or_from_a_registered_device_is_forbidden(
    gateway: httpx.Client, stack: Stack, issuer: DevIssuer, make_key: Keys, tmp_path: Path
) -> None:
    key = new_device_key()
    enroll(stack, tmp_path, "bob", key, "registered")
    token = issuer.mint("bob", ("clinician",), ("clinical",), dpop_jkt=key.thumbprint())
    resp = gateway.post(
        DIABETES_PATH, json=DIABETES, headers=dpop(stack, token, key, DIABETES_PATH)
    )
    assert_forbidden_by(resp, stack, "insufficient_assurance")
    unenrolled = new_device_key()
    token = issuer.mint("bob", ("clinician",), ("clinical",), dpop_jkt=unenrolled.thumbprint())
    resp = gateway.post(
        DIABETES_PATH, json=DIABETES, headers=dpop(stack, token, unenrolled, DIABETES_PATH)
    )
    assert_forbidden_by(resp, stack, "insufficient_assurance")
    api_key = make_key("bob", "clinician", "clinical")
    resp = gateway.post(DIABETES_PATH, json=DIABETES, headers={"x-api-key": api_key})
    assert_forbidden_by(resp, stack, "insufficient_assurance")


def test_a_key_enrolled_for_someone_else_is_trust_none(
    gateway: httpx.Client, stack: Stack, issuer: DevIssuer, tmp_path: Path
) -> None:
    key = new_device_key()
    enroll(stack, tmp_path, "carol", key, "attested")
    token = issuer.mint("bob", ("clinician",), ("clinical",), dpop_jkt=key.thumbprint())
    resp = gateway.post(
        DIABETES_PATH, json=DIABETES, headers=dpop(stack, token, key, DIABETES_PATH)
    )
    assert_forbidden_by(resp, stack, "insufficient_assurance")


def test_the_model_server_sees_neither_token_nor_proof(
    gateway: httpx.Client, stack: Stack, issuer: DevIssuer, device: Key
) -> None:
    token = issuer.mint("olga", ("operator",), ("ops",), dpop_jkt=device.thumbprint())
    resp = gateway.post(ECHO_PATH, json=ECHO, headers=dpop(stack, token, device, ECHO_PATH))
    assert resp.status_code == 200, resp.text
    seen = {k.lower(): v for k, v in json.loads(resp.json()["outputs"][0]["data"][0]).items()}
    assert seen["x-extauthz-subject"] == "olga"
    assert "authorization" not in seen and "dpop" not in seen
    assert token not in json.dumps(seen)


def test_jwks_rotation_is_picked_up_without_restart(
    gateway: httpx.Client, stack: Stack, issuer: DevIssuer
) -> None:
    old = issuer.mint("alice", ("analyst",), ("vision",))
    assert gateway.post(DIGITS_PATH, json=DIGITS, headers=bearer(old)).status_code == 200
    pid = stack.pid("extauthz")
    for alg in ("RS256", "EdDSA", "ES256"):
        kid = issuer.rotate(alg)
        new = issuer.mint("alice", ("analyst",), ("vision",))
        assert json.loads(base64.urlsafe_b64decode(new.split(".")[0] + "=="))["kid"] == kid
        time.sleep(0.3)  # the service reloads at most every jwks_min_refresh_interval
        resp = gateway.post(DIGITS_PATH, json=DIGITS, headers=bearer(new))
        assert resp.status_code == 200, (alg, resp.text)
    # tokens of the retired keys stay valid (their keys stay published), no restart happened
    assert gateway.post(DIGITS_PATH, json=DIGITS, headers=bearer(old)).status_code == 200
    assert stack.pid("extauthz") == pid


def test_the_example_client_sends_a_dpop_request(
    stack: Stack, issuer: DevIssuer, tmp_path: Path
) -> None:
    key = new_device_key()
    key_file = tmp_path / "client.jwk"
    save_private_jwk(key_file, key)
    enroll(stack, tmp_path, "bob", key, "managed")
    token = issuer.mint("bob", ("clinician",), ("clinical",), dpop_jkt=key.thumbprint())
    out = subprocess.run(
        [
            sys.executable,
            str(ROOT / "examples" / "dpop_client.py"),
            "--url",
            url(stack, DIABETES_PATH),
            "--token",
            token,
            "--key",
            str(key_file),
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.startswith("HTTP 200")


# --------------------------------------------------------------------------- JWT attacks


def test_alg_none_is_401(gateway: httpx.Client, stack: Stack, issuer: DevIssuer) -> None:
    header = b64(
        json.dumps({"alg": "none", "typ": "JWT", "kid": issuer.signing_key().kid}).encode()
    )
    body = b64(json.dumps(jwt_claims(issuer)).encode())
    resp = gateway.post(DIGITS_PATH, json=DIGITS, headers=bearer(f"{header}.{body}."))
    assert_denied(resp, stack, "alg_not_allowed")


def jwt_claims(issuer: DevIssuer, **over: Any) -> dict[str, Any]:
    now = int(time.time())
    claims = {
        "iss": issuer.issuer,
        "aud": issuer.audience,
        "sub": "alice",
        "iat": now,
        "exp": now + 300,
        "roles": ["analyst"],
        "projects": ["vision"],
        "tier": "standard",
    }
    claims.update(over)
    return claims


def test_hs256_signed_with_the_rsa_public_key_is_401(
    gateway: httpx.Client, stack: Stack, issuer: DevIssuer
) -> None:
    issuer.rotate("RS256")
    rsa = issuer.signing_key()
    header = b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": rsa.kid}).encode())
    body = b64(json.dumps(jwt_claims(issuer)).encode())
    for secret in (rsa.as_pem(private=False), json.dumps(rsa.as_dict()).encode()):
        sig = b64(hmac.new(secret, f"{header}.{body}".encode(), hashlib.sha256).digest())
        resp = gateway.post(DIGITS_PATH, json=DIGITS, headers=bearer(f"{header}.{body}.{sig}"))
        assert_denied(resp, stack, "alg_not_allowed")
    issuer.rotate("ES256")


def test_a_kid_pointing_nowhere_is_401(
    gateway: httpx.Client, stack: Stack, issuer: DevIssuer
) -> None:
    stranger = ECKey.generate_key("P-256", parameters={"kid": "nowhere"})
    token = jwt.encode({"alg": "ES256", "kid": "nowhere"}, jwt_claims(issuer), stranger)
    assert_denied(
        gateway.post(DIGITS_PATH, json=DIGITS, headers=bearer(token)), stack, "unknown_kid"
    )


@pytest.mark.parametrize(
    ("claims", "reason"),
    [
        ({"iat": -900, "nbf": -900, "exp": -60}, "token_expired"),
        ({"nbf": 120}, "token_not_yet_valid"),
        ({"exp": 3600}, "token_lifetime_too_long"),
        ({"aud": "another-api"}, "wrong_audience"),
        ({"iss": "https://evil.example"}, "wrong_issuer"),
    ],
)
def test_bad_claims_are_401(
    claims: dict[str, Any], reason: str, gateway: httpx.Client, stack: Stack, issuer: DevIssuer
) -> None:
    now = int(time.time())
    over = {k: (now + v if isinstance(v, int) else v) for k, v in claims.items()}
    token = issuer.mint("alice", ("analyst",), ("vision",), claims=over)
    assert_denied(gateway.post(DIGITS_PATH, json=DIGITS, headers=bearer(token)), stack, reason)


def test_a_tampered_payload_is_401(gateway: httpx.Client, stack: Stack, issuer: DevIssuer) -> None:
    header, _, sig = issuer.mint("alice", ("analyst",), ("vision",)).split(".")
    forged = b64(json.dumps(jwt_claims(issuer, roles=["admin"], projects=["clinical"])).encode())
    resp = gateway.post(DIGITS_PATH, json=DIGITS, headers=bearer(f"{header}.{forged}.{sig}"))
    assert_denied(resp, stack, "bad_signature")


# --------------------------------------------------------------------------- DPoP attacks


@pytest.fixture
def bound(issuer: DevIssuer, device: Key) -> str:
    """A token for alice bound to `device` (not enrolled: trust none, enough for digits)."""
    return issuer.mint("alice", ("analyst",), ("vision",), dpop_jkt=device.thumbprint())


DPOP_INVALID = 'DPoP error="invalid_token"'


def test_a_bound_token_as_plain_bearer_is_401(
    gateway: httpx.Client, stack: Stack, bound: str
) -> None:
    resp = gateway.post(DIGITS_PATH, json=DIGITS, headers=bearer(bound))
    assert_denied(resp, stack, "dpop_bound_token_as_bearer")


def test_a_replayed_proof_is_401(
    gateway: httpx.Client, stack: Stack, bound: str, device: Key
) -> None:
    headers = dpop(stack, bound, device, DIGITS_PATH)
    assert gateway.post(DIGITS_PATH, json=DIGITS, headers=headers).status_code == 200
    resp = gateway.post(DIGITS_PATH, json=DIGITS, headers=headers)
    assert_denied(resp, stack, "dpop_replay", DPOP_INVALID)


@pytest.mark.parametrize(
    ("kw", "reason"),
    [
        ({"method": "GET"}, "dpop_htm_mismatch"),
        ({"path": "/v2/models/echo/infer"}, "dpop_htu_mismatch"),
        ({"iat_offset": -120}, "dpop_iat_out_of_window"),
        ({"iat_offset": 60}, "dpop_iat_out_of_window"),
        ({"private_jwk": True}, "dpop_private_key"),
        ({"ath_of": "another.access.token"}, "dpop_ath_mismatch"),
        ({"typ": "JWT"}, "dpop_bad_typ"),
    ],
)
def test_a_bad_proof_is_401(
    kw: dict[str, Any],
    reason: str,
    gateway: httpx.Client,
    stack: Stack,
    bound: str,
    device: Key,
) -> None:
    header: dict[str, Any] = {}
    if kw.get("private_jwk"):
        header["jwk"] = device.as_dict(private=True)
    if "typ" in kw:
        header["typ"] = kw["typ"]
    proof = make_proof(
        device,
        kw.get("method", "POST"),
        url(stack, kw.get("path", DIGITS_PATH)),
        kw.get("ath_of", bound),
        iat=time.time() + kw.get("iat_offset", 0),
        header=header,
    )
    headers = {"authorization": f"DPoP {bound}", "dpop": proof}
    resp = gateway.post(DIGITS_PATH, json=DIGITS, headers=headers)
    assert_denied(resp, stack, reason, DPOP_INVALID)


def test_a_proof_for_another_origin_is_401_even_with_a_matching_forged_host(
    gateway: httpx.Client, stack: Stack, bound: str, device: Key
) -> None:
    """Envoy answers every Host; the proof must name one of EXTAUTHZ_DPOP_ORIGIN (the dev
    stack's own listeners), never whatever origin the client's Host claims."""
    for origin, host in (
        ("https://evil.example", "evil.example"),
        ("http://127.0.0.1:1", "127.0.0.1:1"),  # a loopback port that is not this gateway
    ):
        proof = make_proof(device, "POST", origin + DIGITS_PATH, bound)
        headers = {"authorization": f"DPoP {bound}", "dpop": proof, "host": host}
        resp = gateway.post(DIGITS_PATH, json=DIGITS, headers=headers)
        assert_denied(resp, stack, "dpop_htu_mismatch", DPOP_INVALID)
    # the same token and key with a proof for this gateway's origin is served
    resp = gateway.post(DIGITS_PATH, json=DIGITS, headers=dpop(stack, bound, device, DIGITS_PATH))
    assert resp.status_code == 200, resp.text


def test_a_proof_signed_by_another_key_than_cnf_jkt_is_401(
    gateway: httpx.Client, stack: Stack, bound: str
) -> None:
    thief = new_device_key()  # a stolen token, proved with the thief's own key
    resp = gateway.post(DIGITS_PATH, json=DIGITS, headers=dpop(stack, bound, thief, DIGITS_PATH))
    assert_denied(resp, stack, "dpop_key_mismatch", DPOP_INVALID)


def test_two_dpop_headers_are_401(
    gateway: httpx.Client, stack: Stack, bound: str, device: Key
) -> None:
    first = make_proof(device, "POST", url(stack, DIGITS_PATH), bound)
    second = make_proof(device, "POST", url(stack, DIGITS_PATH), bound)
    headers = [("authorization", f"DPoP {bound}"), ("dpop", first), ("dpop", second)]
    resp = gateway.post(DIGITS_PATH, json=DIGITS, headers=headers)
    assert_denied(resp, stack, "dpop_multiple_proofs", DPOP_INVALID)


def test_a_revoked_device_is_401_on_the_next_request(
    gateway: httpx.Client, stack: Stack, issuer: DevIssuer, tmp_path: Path
) -> None:
    key = new_device_key()
    enroll(stack, tmp_path, "bob", key, "managed")
    token = issuer.mint("bob", ("clinician",), ("clinical",), dpop_jkt=key.thumbprint())
    headers = lambda: dpop(stack, token, key, DIABETES_PATH)  # noqa: E731 - a fresh proof each
    assert gateway.post(DIABETES_PATH, json=DIABETES, headers=headers()).status_code == 200
    assert "revoked" in cli(stack, "devices", "revoke", "--", key.thumbprint()).stdout
    resp = gateway.post(DIABETES_PATH, json=DIABETES, headers=headers())  # record still cached
    assert_denied(resp, stack, "device_revoked", DPOP_INVALID)


def test_every_identity_failure_looks_the_same(
    gateway: httpx.Client, stack: Stack, bound: str, device: Key
) -> None:
    """Unknown kid, bad signature, expired, replayed, unbound, wrong key: one face."""
    faces = set()
    for headers in (
        {"authorization": "DPoP a.b.c", "dpop": "x.y.z"},
        {"authorization": f"DPoP {bound}"},
        dpop(stack, bound, new_device_key(), DIGITS_PATH),
        dpop(stack, bound, device, DIGITS_PATH, iat=time.time() - 3600),
    ):
        resp = gateway.post(DIGITS_PATH, json=DIGITS, headers=headers)
        kept = {k: v for k, v in resp.headers.items() if k not in ("x-request-id", "date")}
        faces.add((resp.status_code, resp.content, tuple(sorted(kept.items()))))
    assert len(faces) == 1, faces


# --------------------------------------------------------------------------- API keys


def test_an_expired_api_key_is_401(gateway: httpx.Client, stack: Stack, make_key: Keys) -> None:
    key = make_key("dave", "analyst", "vision", expires_in="1s")
    time.sleep(1.1)
    resp = gateway.post(DIGITS_PATH, json=DIGITS, headers=bearer(key))
    assert_denied(resp, stack, "key_expired")


def test_an_api_key_outside_its_cidr_is_401(gateway: httpx.Client, stack: Stack) -> None:
    def create(cidrs: str) -> str:
        out = cli(
            stack,
            "keys",
            "create",
            "--subject",
            "erin",
            "--roles",
            "analyst",
            "--projects",
            "vision",
            "--cidrs",
            cidrs,
            "--json",
        )
        return json.loads(out.stdout)["key"]

    outside = create("10.0.0.0/8,192.0.2.0/24")
    resp = gateway.post(DIGITS_PATH, json=DIGITS, headers={"x-api-key": outside})
    assert_denied(resp, stack, "key_source_not_allowed")
    # a spoofed forwarding header does not help: the address is the one Envoy saw
    resp = gateway.post(
        DIGITS_PATH, json=DIGITS, headers={"x-api-key": outside, "x-forwarded-for": "10.1.2.3"}
    )
    assert_denied(resp, stack, "key_source_not_allowed")
    inside = create("127.0.0.0/8")
    assert gateway.post(DIGITS_PATH, json=DIGITS, headers={"x-api-key": inside}).status_code == 200


def test_a_rotated_api_key_overlaps_then_ends(
    gateway: httpx.Client, stack: Stack, make_key: Keys
) -> None:
    old = make_key("frank", "analyst", "vision")
    key_id = old.split(".")[0].removeprefix("eak_")
    out = json.loads(cli(stack, "keys", "rotate", key_id, "--overlap", "1h", "--json").stdout)
    for key in (old, out["key"]):  # both work during the overlap
        assert gateway.post(DIGITS_PATH, json=DIGITS, headers=bearer(key)).status_code == 200
    assert out["old_expires"] - time.time() == pytest.approx(3600, abs=60)


# --------------------------------------------------------------------------- mTLS


def mtls_client(stack: Stack, cert: Path | None, key: Path | None) -> httpx.Client:
    ctx = ssl.create_default_context(cafile=str(stack.dev_ca.ca_file))
    if cert is not None and key is not None:
        ctx.load_cert_chain(str(cert), str(key))
    return httpx.Client(base_url=stack.envoy_mtls_url, verify=ctx, timeout=10)


def test_a_service_identity_reaches_its_model_over_mtls(stack: Stack) -> None:
    cert, key = stack.dev_ca.issue_client("batch-scorer", uri=SPIFFE)
    with mtls_client(stack, cert, key) as client:
        resp = client.post(ECHO_PATH, json=ECHO)
        assert resp.status_code == 200, resp.text
        seen = {k.lower(): v for k, v in json.loads(resp.json()["outputs"][0]["data"][0]).items()}
        assert seen["x-extauthz-subject"] == SPIFFE
        record = wait_for_decision(stack, resp.headers["x-request-id"])
        assert record["credential"] == "mtls"
        # the mapping gives ops/operator: the restricted model stays out of reach
        assert_forbidden_by(client.post(DIABETES_PATH, json=DIABETES), stack, "project_mismatch")


def test_an_unmapped_identity_is_401(stack: Stack) -> None:
    cert, key = stack.dev_ca.issue_client("stranger", uri="spiffe://extauthz.dev/ns/x/sa/nobody")
    with mtls_client(stack, cert, key) as client:
        resp = client.post(ECHO_PATH, json=ECHO)
    assert_denied(resp, stack, "mtls_unknown_identity", "Bearer")


def test_a_certificate_from_another_ca_never_gets_past_envoy(stack: Stack, tmp_path: Path) -> None:
    """Envoy's listener requires a client certificate from the configured CA: a certificate from
    another CA (or none) is refused in the handshake, so there is no HTTP exchange at all. The
    service's own re-verification (401 mtls_untrusted_cert) is tested in tests/unit/test_mtls.py."""
    rogue = DevCA(tmp_path / "rogue-ca")
    cert, key = rogue.issue_client("batch-scorer", uri=SPIFFE)
    for c, k in ((cert, key), (None, None)):
        with mtls_client(stack, c, k) as client, pytest.raises(httpx.TransportError):
            client.post(ECHO_PATH, json=ECHO)
