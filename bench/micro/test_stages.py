"""One benchmark per decision stage, in-process, against the real Redis and OPA.

Stage names (the test names) are what bench/report.py's "where time goes" table lists.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path
from typing import Any

import pytest

from bench.micro.conftest import bench_async
from extauthz.authn.apikeys import ApiKeyAuthenticator, KeyStore
from extauthz.decisionlog import DecisionLog
from extauthz.handler import upstream_headers
from extauthz.limits.config import LimiterConfig
from extauthz.limits.limiter import Limiter
from extauthz.policy.input import build_input
from extauthz.policy.opa import OpaClient
from extauthz.request import parse_check_request
from extauthz.response import build_response
from extauthz.settings import Settings
from extauthz.threat import ThreatWatcher
from extauthz.types import Decision, Principal, Reason, Status
from extauthz.wiring import build_service, key_pepper, redis_client
from tests.e2e.payloads import DIGITS
from tests.unit.checkrequests import check_request

BODY = json.dumps(DIGITS).encode()


def request_for(key: str, **headers: str):  # type: ignore[no-untyped-def]
    return check_request(
        headers={
            "authorization": f"Bearer {key}",
            "content-type": "application/json",
            "x-request-id": str(uuid.uuid4()),
            **headers,
        },
        body=BODY,
    )


@pytest.fixture(scope="module")
def redis(settings: Settings, loop: asyncio.AbstractEventLoop):  # type: ignore[no-untyped-def]
    client = redis_client(settings)
    yield client
    loop.run_until_complete(client.aclose())


@pytest.fixture(scope="module")
def opa(settings: Settings, loop: asyncio.AbstractEventLoop):  # type: ignore[no-untyped-def]
    client = OpaClient(settings.opa_url, settings.opa_decision_path, settings.opa_timeout)
    loop.run_until_complete(client.start())
    yield client
    loop.run_until_complete(client.close())


def authenticator(settings: Settings, redis: Any, cache_ttl: float) -> ApiKeyAuthenticator:
    pepper = key_pepper(settings)
    return ApiKeyAuthenticator(KeyStore(redis, pepper), pepper, cache_ttl=cache_ttl)


@pytest.fixture(scope="module")
def principal(settings, redis, loop, api_key) -> Principal:  # type: ignore[no-untyped-def]
    return loop.run_until_complete(authenticator(settings, redis, 30).authenticate(api_key))


@pytest.fixture(scope="module")
def view(settings: Settings, api_key: str):  # type: ignore[no-untyped-def]
    return parse_check_request(request_for(api_key), settings.max_body_bytes)


@pytest.fixture(scope="module")
def policy(opa, view, principal, loop):  # type: ignore[no-untyped-def]
    return loop.run_until_complete(opa.decide(build_input(view, principal)))


# ---- 1. parse
def test_parse(benchmark, settings, api_key) -> None:  # type: ignore[no-untyped-def]
    request = request_for(api_key)
    view = benchmark(parse_check_request, request, settings.max_body_bytes)
    assert view.route.name == "digits"


# ---- 2. authenticate
def test_authn_apikey_cache_hit(benchmark, settings, redis, loop, api_key) -> None:  # type: ignore[no-untyped-def]
    authn = authenticator(settings, redis, cache_ttl=3600)
    loop.run_until_complete(authn.authenticate(api_key))  # warm the cache
    principal = bench_async(benchmark, loop, lambda: authn.authenticate(api_key))
    assert principal.subject == "bench"


def test_authn_apikey_cache_miss_redis(benchmark, settings, redis, loop, api_key) -> None:  # type: ignore[no-untyped-def]
    authn = authenticator(settings, redis, cache_ttl=0)  # every lookup reads Redis
    principal = bench_async(benchmark, loop, lambda: authn.authenticate(api_key))
    assert principal.tier == "bench"


@pytest.fixture(scope="module")
def jwt_setup(run_dir: Path, loop):  # type: ignore[no-untyped-def]
    from extauthz.authn.jwks import JwksSource
    from extauthz.authn.jwt import JwtVerifier, TokenRules
    from extauthz.dev.issuer import DevIssuer, make_proof, new_device_key

    issuer = DevIssuer(run_dir / "dev-issuer", "bench-issuer", "extauthz")
    issuer.ensure()
    device = new_device_key()
    jkt = device.thumbprint()
    bearer = issuer.mint("bench", ("analyst",), ("vision",), "bench")
    bound = issuer.mint("bench", ("analyst",), ("vision",), "bench", dpop_jkt=jkt)
    rules = TokenRules(issuer="bench-issuer", audience="extauthz")
    jwks = JwksSource(str(issuer.jwks_file))
    uri = "http://gateway/v2/models/digits/infer"
    proof = make_proof(device, "POST", uri, bound)
    return {
        "hit": JwtVerifier(jwks, rules, cache_size=10_000),
        "miss": JwtVerifier(jwks, rules, cache_size=0),
        "bearer": bearer,
        "bound": bound,
        "proof": proof,
        "uri": uri,
    }


def test_authn_jwt_cache_hit(benchmark, jwt_setup, loop) -> None:  # type: ignore[no-untyped-def]
    verifier, token = jwt_setup["hit"], jwt_setup["bearer"]
    loop.run_until_complete(verifier.verify(token))
    assert bench_async(benchmark, loop, lambda: verifier.verify(token)).subject == "bench"


def test_authn_jwt_verify_miss(benchmark, jwt_setup, loop) -> None:  # type: ignore[no-untyped-def]
    verifier, token = jwt_setup["miss"], jwt_setup["bearer"]
    assert bench_async(benchmark, loop, lambda: verifier.verify(token), batch=20).subject == "bench"


def test_authn_dpop_proof_verify(benchmark, jwt_setup, loop) -> None:  # type: ignore[no-untyped-def]
    from extauthz.authn.dpop import ProofRules, ProofVerifier

    verified = loop.run_until_complete(jwt_setup["hit"].verify(jwt_setup["bound"]))
    proofs = ProofVerifier(ProofRules(("ES256",)))
    proof = benchmark(
        proofs.verify, jwt_setup["proof"], "POST", jwt_setup["uri"], verified.ath, verified.jkt
    )
    assert proof.jkt == verified.jkt


# ---- 3. policy
def test_policy_input(benchmark, view, principal) -> None:  # type: ignore[no-untyped-def]
    doc = benchmark(build_input, view, principal)
    assert doc["request"]["model"] == "digits"


def test_policy_sticky_bucket(benchmark, principal) -> None:  # type: ignore[no-untyped-def]
    """The caller's bucket on a model (model versions): a keyed BLAKE2b per decision."""
    from extauthz.policy.rollout import StickyBucket, bucket_key

    bucket = StickyBucket(bucket_key(b"bench pepper"))
    assert 0 <= benchmark(bucket, principal.subject, "digits") < 100  # a caller seen lately


def test_policy_sticky_bucket_first_time(benchmark, principal) -> None:  # type: ignore[no-untyped-def]
    """The keyed hash itself (a caller not seen lately)."""
    from extauthz.policy.rollout import StickyBucket, bucket_key

    bucket = StickyBucket(bucket_key(b"bench pepper"))
    assert 0 <= benchmark(bucket.compute, principal.subject, "digits") < 100


def test_policy_opa_call(benchmark, opa, view, principal, loop) -> None:  # type: ignore[no-untyped-def]
    """One POST to OPA (a decision-cache miss), the input built once outside the loop."""
    policy_input = build_input(view, principal)
    decision = bench_async(benchmark, loop, lambda: opa.decide(policy_input), batch=20)
    assert decision.allow


def test_policy_decision_cache_hit(benchmark, opa, view, principal, loop) -> None:  # type: ignore[no-untyped-def]
    """The policy stage in steady traffic: input, cache key, a hit (the revision confirmed)."""
    from extauthz.policy.cache import DecisionCache
    from extauthz.policy.engine import PolicyEngine
    from extauthz.policy.revision import RevisionWatcher

    watcher = RevisionWatcher(opa, interval=3600, max_age=3600)  # confirmed once, for the bench
    loop.run_until_complete(watcher.poll_once())
    engine = PolicyEngine(opa, watcher, DecisionCache(1000))
    loop.run_until_complete(engine.decide(view, principal))  # the one miss
    decision = bench_async(benchmark, loop, lambda: engine.decide(view, principal))
    assert decision.allow and decision.source == "cache"


# ---- 4. state: the one Lua round trip
def test_limits_lua_round_trip(benchmark, settings, redis, principal, policy, view, loop) -> None:  # type: ignore[no-untyped-def]
    limiter = Limiter(
        redis, settings.redis_timeout, config=LimiterConfig(), threat=ThreatWatcher(redis)
    )
    result = bench_async(
        benchmark, loop, lambda: limiter.check(principal, policy.quota, view, policy)
    )
    assert result.allowed


# ---- 5. respond
def test_response_build(benchmark, view, principal, policy, settings, redis, loop) -> None:  # type: ignore[no-untyped-def]
    limits = loop.run_until_complete(
        Limiter(
            redis, settings.redis_timeout, config=LimiterConfig(), threat=ThreatWatcher(redis)
        ).check(principal, policy.quota, view, policy)
    )
    decision_id = uuid.uuid4().hex
    decision = Decision(
        status=Status.OK,
        reason=Reason.OK,
        decision_id=decision_id,
        principal=principal,
        policy=policy,
        limits=limits,
        upstream_headers=upstream_headers(principal, policy, decision_id),
    )
    response = benchmark(build_response, decision, view.headers)
    assert response.status.code == 0


# ---- 6. log (the on-path half: the record is built and queued; a thread writes it)
def test_decision_log_record(benchmark, view, principal, policy, run_dir) -> None:  # type: ignore[no-untyped-def]
    log = DecisionLog(str(run_dir / "logs" / "micro-decisions.log"))
    log.start()
    decision = Decision(Status.OK, Reason.OK, uuid.uuid4().hex, principal, policy)
    try:
        benchmark(log.record, view, decision, 1_000_000)
    finally:
        log.stop()


# ---- the whole handler, as the gRPC servicer calls it
def test_handler_check(benchmark, settings, loop, api_key) -> None:  # type: ignore[no-untyped-def]
    service = build_service(settings)
    loop.run_until_complete(service.start())
    request = request_for(api_key)
    try:
        loop.run_until_complete(service.handler.check(request))  # warm key and decision caches
        response = bench_async(benchmark, loop, lambda: service.handler.check(request))
    finally:
        loop.run_until_complete(service.close())
    assert response.status.code == 0


# ---- 7. the analytics query event (the on-path half: one append; sent in the background)
def test_analytics_emit(benchmark, view, principal, policy, settings, redis) -> None:  # type: ignore[no-untyped-def]
    from extauthz.analytics.events import QueryEmitter

    emitter = QueryEmitter(redis, settings.analytics_shards, settings.analytics_stream_maxlen)
    emitter._size = 1 << 62  # measure the append, not the drop path  # noqa: SLF001
    emitter._max_bytes = 1 << 62  # noqa: SLF001
    decision = Decision(Status.OK, Reason.OK, uuid.uuid4().hex, principal, policy)
    benchmark(emitter.emit, view, decision)


def test_handler_check_without_events(benchmark, settings, loop, api_key) -> None:  # type: ignore[no-untyped-def]
    """test_handler_check with EXTAUTHZ_ANALYTICS_EVENTS off: the difference is what emitting
    costs the decision, the background sends included (they run on the same loop)."""
    service = build_service(settings.model_copy(update={"analytics_events": False}))
    loop.run_until_complete(service.start())
    request = request_for(api_key)
    try:
        loop.run_until_complete(service.handler.check(request))
        response = bench_async(benchmark, loop, lambda: service.handler.check(request))
    finally:
        loop.run_until_complete(service.close())
    assert response.status.code == 0
