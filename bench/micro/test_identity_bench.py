"""What identity costs per decision: JWT verification (cache miss / hit) and JWT+DPoP, for the
authentication stage alone and for a whole decision (CheckHandler.check against the real Redis
and OPA of the micro-bench stack, the policy decision cache warm).

    .venv/bin/python -m pytest bench/micro/test_identity_bench.py \\
        --benchmark-columns=median,mean,min,rounds --benchmark-sort=name

Every JWT+DPoP decision gets a fresh proof (a replayed jti would be refused in the Lua call);
the proofs and, for the cache-miss case, the tokens are signed before the clock starts.
"""

from __future__ import annotations

import asyncio
import json
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from joserfc.errors import SecurityWarning

from bench.micro.conftest import bench_async
from extauthz.authn.authenticator import TokenAuthenticator
from extauthz.authn.devices import DeviceRegistry, DeviceStore
from extauthz.authn.dpop import ProofRules, ProofVerifier
from extauthz.authn.jwks import JwksSource
from extauthz.authn.jwt import JwtVerifier, TokenRules
from extauthz.dev.issuer import DevIssuer, make_proof, new_device_key
from extauthz.request import parse_check_request
from extauthz.settings import Settings
from extauthz.wiring import build_service, redis_client
from tests.e2e.payloads import DIGITS
from tests.unit.checkrequests import check_request

PATH = "/v2/models/digits/infer"
ORIGIN = "http://gateway"  # the origin proofs are made for (EXTAUTHZ_DPOP_ORIGIN)
HTU = ORIGIN + PATH
BODY = json.dumps(DIGITS).encode()
BATCH, ROUNDS = 50, 20
NEEDED = BATCH * (ROUNDS + 4)


@pytest.fixture(scope="module")
def issuer(run_dir: Path, settings: Settings) -> DevIssuer:
    issuer = DevIssuer(run_dir / "identity-issuer", settings.jwt_issuer, settings.jwt_audience)
    issuer.ensure()
    return issuer


def mint(issuer: DevIssuer, **kw: Any) -> str:
    return issuer.mint("bench", ("analyst",), ("vision",), "bench", **kw)


def rules(settings: Settings) -> TokenRules:
    return TokenRules(settings.jwt_issuer, settings.jwt_audience)


def request(headers: dict[str, str]) -> Any:
    return check_request(
        headers={"content-type": "application/json", "x-request-id": str(uuid.uuid4()), **headers},
        body=BODY,
    )


# --------------------------------------------------------------------------- stage 2 alone


@pytest.mark.parametrize("alg", ["ES256", "RS256", "EdDSA"])
def test_authn_jwt_cache_miss(benchmark, issuer, settings, loop, tmp_path, alg) -> None:  # type: ignore[no-untyped-def]
    own = DevIssuer(tmp_path / alg, settings.jwt_issuer, settings.jwt_audience)
    own.rotate(alg)
    verifier = JwtVerifier(JwksSource(str(own.jwks_file)), rules(settings), cache_size=0)
    token = own.mint("bench", ("analyst",), ("vision",), "bench")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SecurityWarning)
        verified = bench_async(benchmark, loop, lambda: verifier.verify(token), batch=20)
    assert verified.subject == "bench"


def test_authn_jwt_cache_hit(benchmark, issuer, settings, loop) -> None:  # type: ignore[no-untyped-def]
    verifier = JwtVerifier(JwksSource(str(issuer.jwks_file)), rules(settings))
    token = mint(issuer)
    loop.run_until_complete(verifier.verify(token))
    assert bench_async(benchmark, loop, lambda: verifier.verify(token)).subject == "bench"


@pytest.fixture(scope="module")
def device_registry(settings: Settings, loop: asyncio.AbstractEventLoop) -> Iterator[Any]:
    redis = redis_client(settings)
    yield DeviceRegistry(DeviceStore(redis), cache_ttl=3600)
    loop.run_until_complete(redis.aclose())


def test_authn_jwt_dpop(benchmark, issuer, settings, loop, device_registry) -> None:  # type: ignore[no-untyped-def]
    """Token (cache hit) + proof checks 1–12 + device lookup (cached) + replay key."""
    device = new_device_key()
    token = mint(issuer, dpop_jkt=device.thumbprint())
    tokens = TokenAuthenticator(
        JwtVerifier(JwksSource(str(issuer.jwks_file)), rules(settings)),
        ProofVerifier(ProofRules()),
        device_registry,
        proof_window=65,
        origin=ORIGIN,
    )
    # the verifier does not see jtis (Redis does), so one proof serves every call here
    view = parse_check_request(
        request({"authorization": f"DPoP {token}", "dpop": make_proof(device, "POST", HTU, token)}),
        65536,
    )
    loop.run_until_complete(tokens.authenticate("dpop", token, view))
    principal = bench_async(benchmark, loop, lambda: tokens.authenticate("dpop", token, view))
    assert principal.credential == "jwt+dpop" and principal.device.trust == "none"


# --------------------------------------------------------------------------- whole decisions


@pytest.fixture(scope="module")
def service(issuer, settings, run_dir, loop):  # type: ignore[no-untyped-def]
    s = settings.model_copy(
        update={
            "jwt_jwks": str(issuer.jwks_file),
            "dpop_origin": ORIGIN,
            "decision_log": str(run_dir / "logs" / "identity-decisions.log"),
        }
    )
    service = build_service(s)
    loop.run_until_complete(service.start())
    yield SimpleNamespace(handler=service.handler)
    loop.run_until_complete(service.close())


def decide(loop, handler, requests: Iterator[Any]) -> Any:  # type: ignore[no-untyped-def]
    return lambda: handler.check(next(requests))


def assert_allowed(response: Any) -> None:
    assert response.status.code == 0, response.denied_response.body


def test_decision_api_key(benchmark, service, api_key, loop) -> None:  # type: ignore[no-untyped-def]
    """Baseline: the same decision with an API key (record cached)."""
    req = request({"authorization": f"Bearer {api_key}"})
    assert_allowed(loop.run_until_complete(service.handler.check(req)))
    assert_allowed(bench_async(benchmark, loop, lambda: service.handler.check(req), BATCH, ROUNDS))


def test_decision_jwt_cache_hit(benchmark, service, issuer, loop) -> None:  # type: ignore[no-untyped-def]
    req = request({"authorization": f"Bearer {mint(issuer)}"})
    assert_allowed(loop.run_until_complete(service.handler.check(req)))
    assert_allowed(bench_async(benchmark, loop, lambda: service.handler.check(req), BATCH, ROUNDS))


def test_decision_jwt_cache_miss(benchmark, service, issuer, loop) -> None:  # type: ignore[no-untyped-def]
    """A token never seen before on every decision (so its signature is verified)."""
    assert_allowed(
        loop.run_until_complete(
            service.handler.check(request({"authorization": f"Bearer {mint(issuer)}"}))
        )
    )
    requests = iter([request({"authorization": f"Bearer {mint(issuer)}"}) for _ in range(NEEDED)])
    response = bench_async(benchmark, loop, decide(loop, service.handler, requests), BATCH, ROUNDS)
    assert_allowed(response)


def test_decision_jwt_dpop(benchmark, service, issuer, loop) -> None:  # type: ignore[no-untyped-def]
    """Bound token (cache hit), a fresh proof per decision, its jti set in the one Lua call."""
    device = new_device_key()
    token = mint(issuer, dpop_jkt=device.thumbprint())

    def fresh() -> Any:
        proof = make_proof(device, "POST", HTU, token)
        return request({"authorization": f"DPoP {token}", "dpop": proof})

    assert_allowed(loop.run_until_complete(service.handler.check(fresh())))
    requests = iter([fresh() for _ in range(NEEDED)])
    response = bench_async(benchmark, loop, decide(loop, service.handler, requests), BATCH, ROUNDS)
    assert_allowed(response)
    # and a replayed proof is refused
    replay = fresh()
    assert_allowed(loop.run_until_complete(service.handler.check(replay)))
    assert loop.run_until_complete(service.handler.check(replay)).denied_response.status.code == 401
