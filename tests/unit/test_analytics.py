"""Analytics without services: profiles, detectors, events, the emitter's bounds."""

from __future__ import annotations

import json
import math
import random
from typing import Any

import pytest

from extauthz.analytics.detectors import (
    WINDOW,
    Tenants,
    TenantState,
    ks_distance,
    score_row,
    tenant_scores,
)
from extauthz.analytics.events import QueryEmitter, QueryEvent, shard_of
from extauthz.analytics.profile import HISTORY, Profile, build_profile
from extauthz.metrics import ANALYTICS_EVENTS
from extauthz.store.schema import analytics_stream as stream_key
from extauthz.types import Decision, ModelRoute, Principal, RequestView, Status
from extauthz.v2body import read_body

WIDTH = 16


def _clusters(n: int, seed: int) -> tuple[list[list[float]], list[int]]:
    """Rows around 4 well separated centres (a stand-in for real data; the same centres for
    every seed), unit spread."""
    fixed = random.Random(0)
    centres = [[fixed.uniform(-10, 10) for _ in range(WIDTH)] for _ in range(4)]
    rng = random.Random(seed)
    rows, labels = [], []
    for i in range(n):
        c = i % 4
        rows.append([x + rng.gauss(0, 1) for x in centres[c]])
        labels.append(c)
    return rows, labels


@pytest.fixture(scope="module")
def profile() -> Profile:
    rows, labels = _clusters(400, seed=1)
    return build_profile("m", rows, labels)


def test_profile_round_trips_and_refuses_bad_samples(profile: Profile) -> None:
    assert Profile.from_json(profile.to_json()) == profile
    assert profile.features == WIDTH and len(profile.points) == 128 and profile.labels
    assert 0 < profile.step < profile.dmin[len(profile.dmin) // 2] < profile.ood_distance * 2
    with pytest.raises(ValueError, match="at least"):
        build_profile("m", [[1.0, 2.0]] * 10)
    with pytest.raises(ValueError, match="same"):
        build_profile("m", [[1.0, 2.0]] * 20 + [[1.0]])


def _scores(profile: Profile, rows: list[list[float]]) -> dict[str, float]:
    state = TenantState()
    for row in rows:
        score_row(profile, state, tuple(row), scores=False)
    return tenant_scores(profile, state)[0]


def test_benign_rows_score_low_and_noise_high(profile: Profile) -> None:
    benign, _ = _clusters(200, seed=2)  # the same distribution, other draws
    rng = random.Random(5)
    noise = [[rng.uniform(-15, 15) for _ in range(WIDTH)] for _ in range(200)]
    low, high = _scores(profile, benign), _scores(profile, noise)
    assert low["ood"] <= 0.1 and low["neardup"] == 0 and low["prada"] < 0.5
    assert high["ood"] >= 0.9 and high["prada"] >= 0.5


def test_a_small_step_walk_is_near_duplicates_but_exact_repeats_are_not(profile: Profile) -> None:
    start, end = profile.points[0], profile.points[1]
    # rows as the client sends them: undo the profile's standardisation
    raw = [
        tuple(x / s + c for x, s, c in zip(p, profile.scale, profile.center, strict=True))
        for p in (start, end)
    ]
    walk = []
    for i in range(80):
        a = 0.4 + 0.2 * i / 80
        walk.append([x * (1 - a) + y * a for x, y in zip(raw[0], raw[1], strict=True)])
    assert _scores(profile, walk)["neardup"] >= 0.9
    assert _scores(profile, [list(raw[0])] * 80)["neardup"] == 0


def test_state_is_bounded(profile: Profile) -> None:
    state = TenantState()
    for i in range(500):
        score_row(profile, state, (float(i),) * WIDTH, scores=True)
    assert len(state.history) == HISTORY and len(state.window) == WINDOW and state.rows == 500
    scores, evidence = tenant_scores(profile, state)
    assert evidence["window"] == WINDOW and evidence["score_outputs_share"] == 1.0
    tenants = Tenants(size=3)
    for s in "abcd":
        tenants.get(s, "m")
    assert len(tenants) == 3


def test_ks_distance() -> None:
    ref = tuple(sorted(float(i) for i in range(100)))
    assert ks_distance([float(i) for i in range(100)], ref) == pytest.approx(0.01, abs=0.011)
    assert ks_distance([1000.0] * 30, ref) == 1.0
    assert ks_distance([], ref) == 0.0
    assert 0.4 < ks_distance([float(i) for i in range(50)], ref) < 0.6


def test_events_round_trip_and_shards_are_stable() -> None:
    event = QueryEvent(1, "alice", "k1", "", "10.0.0.0/24", "digits", b'{"inputs":[]}', 13)
    raw = {
        k.encode(): v if isinstance(v, bytes) else str(v).encode()
        for k, v in event.fields().items()
    }
    assert QueryEvent.parse(raw) == event
    assert shard_of("alice", 8) == shard_of("alice", 8) and 0 <= shard_of("alice", 8) < 8
    assert len({shard_of(f"s{i}", 8) for i in range(200)}) == 8
    with pytest.raises(KeyError):
        QueryEvent.parse({b"t": b"1"})
    with pytest.raises(ValueError):
        QueryEvent.parse({b"e": b"[1]\n{}"})


class _Pipe:
    def __init__(self, sink: list[tuple[str, dict[str, Any], int, bool]]) -> None:
        self.sink = sink

    def xadd(self, key: str, fields: dict[str, Any], maxlen: int, approximate: bool) -> None:
        self.sink.append((key, fields, maxlen, approximate))

    async def execute(self) -> list[Any]:
        return []


class _Redis:
    def __init__(self) -> None:
        self.sent: list[tuple[str, dict[str, Any], int, bool]] = []

    def pipeline(self, transaction: bool = True) -> _Pipe:
        assert transaction is False
        return _Pipe(self.sent)


def _view(body: bytes, action: str = "infer") -> RequestView:
    return RequestView(
        "r",
        "POST",
        "/v2/models/digits/infer",
        "h",
        "10.1.2.3",
        {},
        ModelRoute("digits", "", action),
        body,
    )


def _decision(status: Status = Status.OK) -> Decision:
    from extauthz.types import Reason

    principal = Principal("alice", ("analyst",), ("vision",), "standard", "api_key", "k1")
    return Decision(status, Reason.OK, "d", principal)


async def test_the_emitter_queues_allowed_infers_only_and_drops_when_full() -> None:
    redis = _Redis()
    emitter = QueryEmitter(redis, shards=4, maxlen=100, queue_size=2, max_body=10)
    dropped = ANALYTICS_EVENTS.labels("dropped")._value.get()
    emitter.emit(_view(b"{}", action="metadata"), _decision())
    emitter.emit(_view(b"{}"), _decision(Status.RATE_LIMITED))
    emitter.emit(_view(b"{}"), _decision())
    emitter.emit(_view(b"x" * 50), _decision())  # over max_body, unreadable: sent without it
    emitter.emit(_view(b"{}"), _decision())  # the queue holds 2
    assert ANALYTICS_EVENTS.labels("dropped")._value.get() == dropped + 1
    assert redis.sent == []  # nothing is sent on the decision path
    assert await emitter.flush() == 2
    (key, fields, maxlen, approximate), (_, second, _, _) = redis.sent
    assert key == stream_key(shard_of("alice", 4)) and maxlen == 100 and approximate
    first = QueryEvent.parse({b"e": fields["e"]})
    assert first.subject == "alice" and first.prefix == "10.1.2.0/24" and first.body == b"{}"
    omitted = QueryEvent.parse({b"e": second["e"]})
    assert omitted.body == b"" and omitted.body_size == 50
    assert await emitter.flush() == 0


def test_standardise_uses_the_sample_spread(profile: Profile) -> None:
    z = profile.standardise(list(profile.center))
    assert all(math.isclose(v, 0.0, abs_tol=1e-9) for v in z)


async def test_a_large_or_padded_body_is_sent_as_a_sketch_of_its_rows() -> None:
    redis = _Redis()
    emitter = QueryEmitter(redis, shards=4, maxlen=100, max_body=200, sketch_rows=3)
    rows = [[float(r) + 0.000000000001 * c for c in range(4)] for r in range(10)]
    doc = {
        "inputs": [{"name": "x", "shape": [10, 4], "datatype": "FP64", "data": rows}],
        "outputs": [{"name": "predict_proba"}],
    }
    body = json.dumps(doc).encode()
    assert len(body) > 200
    emitter.emit(_view(body), _decision())
    await emitter.flush()
    sent = QueryEvent.parse({b"e": redis.sent[0][1]["e"]})
    assert sent.body_size == len(body) and len(sent.body) < len(body)
    sketch = read_body(sent.body)
    assert sketch.valid and sketch.outputs == ("predict_proba",)
    assert sketch.feature_rows() == tuple(tuple(rows[i]) for i in (0, 3, 6))
