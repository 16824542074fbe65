"""mTLS service identities: the forwarded certificate is verified again and named by its SAN."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import pytest

from extauthz.authn.authenticator import Authenticator
from extauthz.authn.mtls import CertificateVerifier, MtlsAuthenticator
from extauthz.dev.certs import cert_pem, issue, new_ca
from extauthz.handler import CheckHandler
from extauthz.request import parse_check_request
from extauthz.types import Denied, Reason, Status
from tests.unit.checkrequests import check_request

NOW = 1_800_000_000.0
SPIFFE = "spiffe://extauthz.dev/ns/ops/sa/batch-scorer"


def clock() -> float:
    return NOW


@pytest.fixture(scope="module")
def ca():  # type: ignore[no-untyped-def]
    return new_ca("test CA", clock=clock)


def pem_of(ca, **kw: Any) -> str:  # type: ignore[no-untyped-def]
    kw.setdefault("clock", clock)
    return cert_pem(issue(ca, "peer", **kw)[1]).decode()


class Identities:
    def __init__(self, entries: dict[str, dict[str, Any]]) -> None:
        self.entries = entries

    async def get(self, identity: str) -> dict[str, Any] | None:
        return self.entries.get(identity)


def verifier(ca) -> CertificateVerifier:  # type: ignore[no-untyped-def]
    return CertificateVerifier([ca[1]], clock=clock)


def test_identity_is_the_spiffe_uri_then_any_uri_then_dns(ca) -> None:  # type: ignore[no-untyped-def]
    v = verifier(ca)
    both = pem_of(ca, uris=("https://x.test/id", SPIFFE), dns=("svc.test",))
    assert v.verify(both).identity == SPIFFE
    assert v.verify(pem_of(ca, uris=("urn:x:y",), dns=("svc.test",))).identity == "urn:x:y"
    assert v.verify(pem_of(ca, dns=("svc.test",))).identity == "svc.test"


def test_a_certificate_from_another_ca_is_refused(ca) -> None:  # type: ignore[no-untyped-def]
    other = new_ca("attacker CA", clock=clock)
    with pytest.raises(Denied) as info:
        verifier(ca).verify(pem_of(other, uris=(SPIFFE,)))
    assert info.value.reason is Reason.MTLS_UNTRUSTED_CERT


def test_an_expired_certificate_is_refused(ca) -> None:  # type: ignore[no-untyped-def]
    old = pem_of(ca, uris=(SPIFFE,), days=1, clock=lambda: NOW - 3 * 86400)
    with pytest.raises(Denied) as info:
        verifier(ca).verify(old)
    assert info.value.reason is Reason.MTLS_UNTRUSTED_CERT


def test_a_server_certificate_is_no_client_certificate(ca) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(Denied) as info:
        verifier(ca).verify(pem_of(ca, dns=("svc.test",), server=True))
    assert info.value.reason is Reason.MTLS_UNTRUSTED_CERT


def test_garbage_is_refused(ca) -> None:  # type: ignore[no-untyped-def]
    for bad in ("", "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"):
        with pytest.raises(Denied) as info:
            verifier(ca).verify(bad)
        assert info.value.reason is Reason.MTLS_UNTRUSTED_CERT


def test_a_certificate_without_a_name_is_refused(ca) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(Denied) as info:
        verifier(ca).verify(pem_of(ca, ips=("10.0.0.1",)))
    assert info.value.reason is Reason.MTLS_NO_IDENTITY


async def test_mapped_identity_becomes_a_principal(ca) -> None:  # type: ignore[no-untyped-def]
    identities = Identities(
        {SPIFFE: {"roles": ["operator"], "projects": ["ops"], "tier": "standard"}}
    )
    auth = Authenticator(None, mtls=MtlsAuthenticator(verifier(ca), identities))  # type: ignore[arg-type]
    req = check_request()
    req.attributes.source.certificate = quote(pem_of(ca, uris=(SPIFFE,)))
    p = await auth.authenticate(parse_check_request(req, 4096))
    assert (p.subject, p.roles, p.projects, p.tier) == (SPIFFE, ("operator",), ("ops",), "standard")
    assert p.credential == "mtls" and p.device.trust == "none"


async def test_an_unmapped_identity_is_refused(ca) -> None:  # type: ignore[no-untyped-def]
    auth = MtlsAuthenticator(verifier(ca), Identities({}))  # type: ignore[arg-type]
    req = check_request()
    req.attributes.source.certificate = quote(pem_of(ca, uris=(SPIFFE,)))
    with pytest.raises(Denied) as info:
        await auth.authenticate(parse_check_request(req, 4096))
    assert info.value.reason is Reason.MTLS_UNKNOWN_IDENTITY


async def test_a_foreign_ca_certificate_is_a_logged_401_through_the_handler(ca) -> None:  # type: ignore[no-untyped-def]
    """What a listener that accepted any client certificate would forward: the service refuses
    it on its own (Envoy's mTLS listener already refuses the handshake; see test_identity)."""
    from tests.unit.test_handler import FakeLimiter, FakeLog, FakePolicy

    identities = Identities({SPIFFE: {"roles": ["operator"], "projects": ["ops"], "tier": "t"}})
    auth = Authenticator(None, mtls=MtlsAuthenticator(verifier(ca), identities))  # type: ignore[arg-type]
    log = FakeLog()
    handler = CheckHandler(auth, FakePolicy(None), FakeLimiter(None), log, 4096)  # type: ignore[arg-type]
    req = check_request()
    req.attributes.source.certificate = quote(pem_of(new_ca("other", clock=clock), uris=(SPIFFE,)))
    resp = await handler.check(req)
    assert resp.denied_response.status.code == int(Status.UNAUTHENTICATED)
    assert resp.denied_response.body == '{"error":"unauthenticated"}'
    assert log.records[0][1].reason is Reason.MTLS_UNTRUSTED_CERT
