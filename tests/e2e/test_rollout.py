"""Canary and blue-green per model version, through real Envoy to real MLServer (issue 15 part 4):
extauthz's policy picks the version per caller (sticky), sets x-extauthz-model-version, Envoy
routes on it to the version's cluster; `extauthz models` shifts, promotes, rolls back, adds and
removes versions; no request fails while it does, under steady load."""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from extauthz.dev.devstack import Stack
from extauthz.policy.versions import catalog_file, push_to_opa, read_catalog
from extauthz.response import MODEL_VERSION_HEADER
from tests.e2e.conftest import cli
from tests.e2e.payloads import DIGITS, infer

pytestmark = pytest.mark.e2e

CANARY = ("vision", "vision-beta")  # eligible for digits v2 (its `projects`)
PLAIN = ("vision",)  # not eligible
TESTER = "digits-qa"  # named in v2's testers: pinned to it


@pytest.fixture(scope="module")
def rollout(stack: Stack) -> Iterator[None]:
    """The session's stack, its catalog put back as it was afterwards (other modules use digits)."""
    path = catalog_file(stack.policy_dir)
    original = path.read_text()
    yield
    path.write_text(original)
    push_to_opa(stack.settings.opa_url, json.loads(original))
    cli(stack, "models", "sync")  # Envoy's routes and clusters as the catalog says
    time.sleep(1.0)  # every worker on the restored revision


def models(stack: Stack, *args: str) -> str:
    return cli(stack, "models", *args).stdout


def token(stack: Stack, subject: str, projects: tuple[str, ...] = CANARY) -> str:
    # the bench tier: no window of the shared 127.0.0.1 network fills during these runs
    return stack.dev_issuer.mint(subject, ("analyst",), projects, tier="bench", ttl=900)


@dataclass
class Served:
    status: int
    version: str  # MLServer's model_version of the answer ("" if none)
    request_id: str


def ask(
    gateway: httpx.Client,
    bearer: str,
    path: str = "/v2/models/digits/infer",
    headers: dict[str, str] | None = None,
) -> Served:
    resp = gateway.post(
        path, json=DIGITS, headers={"authorization": f"Bearer {bearer}", **(headers or {})}
    )
    version = resp.json().get("model_version", "") if resp.status_code == 200 else ""
    return Served(resp.status_code, version, resp.headers.get("x-request-id", ""))


def logged_versions(stack: Stack, request_ids: list[str], timeout: float = 5.0) -> dict[str, str]:
    """The decision log's `version` of each request (its lines land within ~50 ms)."""
    wanted, found = set(request_ids), {}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in (stack.logs / "decisions.log").read_text().splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if record.get("request_id") in wanted and "status" in record:
                found[record["request_id"]] = record.get("version")
        if wanted <= set(found):
            return found
        time.sleep(0.1)
    raise AssertionError(f"{len(wanted - set(found))} decisions missing from the log")


def callers(
    stack: Stack, gateway: httpx.Client, prefix: str, n: int, projects=CANARY
) -> list[Served]:  # type: ignore[no-untyped-def]
    return [ask(gateway, token(stack, f"{prefix}-{i}", projects)) for i in range(n)]


def test_digits_ships_v1_for_everyone_and_v2_for_its_tester(
    stack: Stack, gateway: httpx.Client, rollout: None
) -> None:
    listed = models(stack, "list")
    assert "digits: stable v1" in listed and "weight 100" in listed
    served = callers(stack, gateway, "default", 30)
    assert {s.status for s in served} == {200} and {s.version for s in served} == {"v1"}
    tester = [ask(gateway, token(stack, TESTER, PLAIN)) for _ in range(5)]
    assert [s.version for s in tester] == ["v2"] * 5
    logged = logged_versions(stack, [s.request_id for s in served + tester])
    assert [logged[s.request_id] for s in served + tester] == [s.version for s in served + tester]


def test_a_client_sent_version_header_chooses_nothing(
    stack: Stack, gateway: httpx.Client, rollout: None
) -> None:
    for i, projects in enumerate((CANARY, PLAIN)):
        bearer = token(stack, f"header-{i}", projects)
        for spelling in (MODEL_VERSION_HEADER, "X-ExtAuthz-Model-Version"):
            got = ask(gateway, bearer, headers={spelling: "v2"})
            assert (got.status, got.version) == (200, "v1")
    # an unversioned model: the header is stripped, not passed to the model server
    olga = stack.dev_issuer.mint("olga-r", ("operator",), ("ops",), tier="bench")
    resp = gateway.post(
        "/v2/models/echo/infer",
        json=infer([1.0]),
        headers={"authorization": f"Bearer {olga}", MODEL_VERSION_HEADER: "v2"},
    )
    assert resp.status_code == 200
    assert MODEL_VERSION_HEADER not in json.loads(resp.json()["outputs"][0]["data"][0])


def test_an_explicit_version_needs_eligibility(
    stack: Stack, gateway: httpx.Client, rollout: None
) -> None:
    path = "/v2/models/digits/versions/v2/infer"
    assert ask(gateway, token(stack, "explicit-beta"), path).version == "v2"
    denied = ask(gateway, token(stack, "explicit-plain", PLAIN), path)
    assert denied.status == 403
    assert (
        ask(gateway, token(stack, "explicit-v9"), "/v2/models/digits/versions/v9/infer").status
        == 403
    )
    assert (
        ask(
            gateway, token(stack, "explicit-v1", PLAIN), "/v2/models/digits/versions/v1/infer"
        ).version
        == "v1"
    )


def test_a_shaped_answer_comes_from_the_version_chosen(
    stack: Stack, gateway: httpx.Client, rollout: None
) -> None:
    """Shaping has its own route (ext_proc); for a versioned model it too goes by the header."""
    scores = infer(DIGITS["inputs"][0]["data"], ["predict_proba"])
    direct = httpx.post(
        f"http://127.0.0.1:{stack.settings.model_port}/v2/models/digits/versions/v2/infer",
        json=scores,
    ).json()
    top = round(max(direct["outputs"][0]["data"]), 2)
    v1 = httpx.post(
        f"http://127.0.0.1:{stack.settings.model_port}/v2/models/digits/versions/v1/infer",
        json=scores,
    ).json()
    assert round(max(v1["outputs"][0]["data"]), 2) != top  # the versions tell apart
    cli(stack, "throttle", "degrade", "--subject", TESTER, "--level", "2", "--ttl", "60")
    try:
        resp = gateway.post(
            "/v2/models/digits/infer",
            json=scores,
            headers={"authorization": f"Bearer {token(stack, TESTER, PLAIN)}"},
        )
    finally:
        cli(stack, "throttle", "degrade", "--subject", TESTER, "--level", "0")
    assert resp.status_code == 200, resp.text
    assert resp.json()["model_version"] == "v2"
    proba = next(o for o in resp.json()["outputs"] if o["name"] == "predict_proba")
    assert proba["shape"] == [1, 1] and proba["data"] == [top]  # v2's top score, shaped


def test_shift_promote_rollback(
    stack: Stack, gateway: httpx.Client, rollout: None, tmp_path: Path
) -> None:
    started = time.time()
    out = models(stack, "shift", "digits", "--version", "v2", "--weight", "50")
    assert "v1=50 v2=50" in out

    # 200 distinct eligible callers: about half on v2 (binomial(200, 0.5): 70-130 is > 4 sigma)
    served = callers(stack, gateway, "half", 200)
    assert {s.status for s in served} == {200}
    on_v2 = sum(s.version == "v2" for s in served)
    assert 70 <= on_v2 <= 130, on_v2
    logged = logged_versions(stack, [s.request_id for s in served])
    assert all(
        logged[s.request_id] == s.version for s in served
    )  # the log names the version served

    # each version is its own Envoy cluster: its answers and latency are counted apart
    stats = httpx.get(f"http://127.0.0.1:{stack.settings.envoy_admin_port}/stats?format=json")
    counters = {s["name"]: s.get("value") for s in stats.json()["stats"] if "value" in s}
    assert counters["cluster.model-digits-v2.upstream_rq_2xx"] >= on_v2

    # sticky: each caller's repeated requests see one version, a client header changes nothing
    for i in range(10):
        bearer = token(stack, f"half-{i}")
        first = served[i].version
        again = [
            ask(gateway, bearer, headers={MODEL_VERSION_HEADER: "v1" if first == "v2" else "v2"})
            for _ in range(4)
        ]
        assert {s.version for s in again} == {first}

    # a project not eligible for the canary never gets v2; the tester always does
    plain = callers(stack, gateway, "plain", 60, PLAIN)
    assert {s.version for s in plain} == {"v1"}
    assert ask(gateway, token(stack, TESTER, PLAIN)).version == "v2"

    # rollback of a canary: the stable version at 100, nobody on v2 (but its tester)
    assert "v1=100 v2=0" in models(stack, "rollback", "digits")
    after = callers(stack, gateway, "half", 100)
    assert {s.version for s in after} == {"v1"} and {s.status for s in after} == {200}

    # promote (blue-green): v2 for everyone, its canary restriction lifted
    assert "v1=0 v2=100 (stable v2)" in models(stack, "promote", "digits", "--version", "v2")
    promoted = callers(stack, gateway, "half", 50) + callers(stack, gateway, "plain", 50, PLAIN)
    assert {s.version for s in promoted} == {"v2"} and {s.status for s in promoted} == {200}

    # rollback after a promote: the previous stable again
    assert "v1=100 v2=0 (stable v1)" in models(stack, "rollback", "digits")
    back = callers(stack, gateway, "half", 50)
    assert {s.version for s in back} == {"v1"}

    # nothing left to roll back to: a clear error, nothing changed
    refused = cli_fails(stack, "models", "rollback", "digits")
    assert refused.returncode == 2 and "nothing to roll back" in refused.stderr

    # each change is on the audit trail's ops chain, with the weights before and after
    export = tmp_path / "ops.jsonl"
    cli(stack, "audit", "export", "--out", str(export))
    ops = [json.loads(line) for line in export.read_bytes().splitlines()]
    ops = [r for r in ops if r.get("kind") == "operator" and r["ts"] >= started]
    assert [(r["action"], r["target"], r["outcome"]) for r in ops] == [
        ("models.shift", "digits", "ok"),
        ("models.rollback", "digits", "ok"),
        ("models.promote", "digits", "ok"),
        ("models.rollback", "digits", "ok"),
    ]
    assert ops[0]["details"]["before"]["weights"] == {"v1": 100, "v2": 0}
    assert ops[0]["details"]["after"]["weights"] == {"v1": 50, "v2": 50}


def cli_fails(stack: Stack, *args: str):  # type: ignore[no-untyped-def]
    import os
    import subprocess
    import sys

    env = {**os.environ, **stack.service_env()}
    return subprocess.run(
        [sys.executable, "-m", "extauthz", *args], env=env, capture_output=True, text=True
    )


def test_unknown_model_or_version_is_refused(stack: Stack, rollout: None) -> None:
    before = catalog_file(stack.policy_dir).read_bytes()
    for args in (
        ("shift", "mnist", "--version", "v1", "--weight", "5"),
        ("shift", "digits", "--version", "v9", "--weight", "5"),
        ("promote", "iris", "--version", "v1"),
        ("remove", "digits", "--version", "v1"),
    ):
        got = cli_fails(stack, "models", *args)
        assert got.returncode == 2, (args, got.stderr)
        assert got.stderr.startswith("models "), got.stderr
    assert catalog_file(stack.policy_dir).read_bytes() == before


# ---- zero failed requests under steady load


@dataclass
class Load:
    """Paced callers: `rate` requests a second in total (open loop: a request starts on its
    schedule whatever the others do), at most `concurrency` in flight."""

    url: str
    bearers: list[str]
    rows: list[list[float]]
    rate: float = 40.0
    concurrency: int = 16
    statuses: Counter = field(default_factory=Counter)
    versions: Counter = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)
    late: int = 0  # requests that could not start on schedule (every slot busy)
    failures: list[str] = field(default_factory=list)
    started: float = 0.0
    stopped: float = 0.0
    _stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        asyncio.run(self._run())

    def stop(self) -> None:
        self._stop.set()

    async def _run(self) -> None:
        limits = httpx.Limits(max_connections=self.concurrency)
        slots = asyncio.Semaphore(self.concurrency)
        async with httpx.AsyncClient(base_url=self.url, timeout=10, limits=limits) as client:
            tasks = set()
            self.started = time.monotonic()
            i = 0
            while not self._stop.is_set():
                due = self.started + i / self.rate
                await asyncio.sleep(max(0.0, due - time.monotonic()))
                if slots.locked():
                    self.late += 1
                await slots.acquire()
                task = asyncio.create_task(self._one(client, i, slots))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                i += 1
            await asyncio.gather(*tasks)
            self.stopped = time.monotonic()

    async def _one(self, client: httpx.AsyncClient, i: int, slots: asyncio.Semaphore) -> None:
        t0 = time.perf_counter()
        try:
            bearer = self.bearers[i % len(self.bearers)]
            resp = await client.post(
                "/v2/models/digits/infer",
                json=infer(self.rows[i % len(self.rows)]),
                headers={"authorization": f"Bearer {bearer}"},
            )
            self.statuses[resp.status_code] += 1
            if resp.status_code == 200:
                self.versions[resp.json().get("model_version")] += 1
            else:
                self.failures.append(f"{resp.status_code} {resp.text[:80]}")
        except httpx.HTTPError as exc:
            self.statuses["error"] += 1
            self.failures.append(repr(exc))
        finally:
            self.latencies.append(time.perf_counter() - t0)
            slots.release()


def envoy_clusters(stack: Stack) -> set[str]:
    url = f"http://127.0.0.1:{stack.settings.envoy_admin_port}/clusters?format=json"
    return {c["name"] for c in httpx.get(url).json().get("cluster_statuses", [])}


def test_no_request_fails_during_shift_promote_rollback_remove_add(
    stack: Stack, rollout: None
) -> None:
    rows = json.loads((stack.heldout_dir / "digits.json").read_text())["replay"]["rows"]
    # 40 callers: 30 eligible for the canary, 9 not, and the tester pinned to v2
    bearers = [token(stack, f"load-{i}") for i in range(30)]
    bearers += [token(stack, f"load-plain-{i}", PLAIN) for i in range(9)]
    bearers.append(token(stack, TESTER, PLAIN))
    # the test's load; ROLLOUT_LOAD_RPS / ROLLOUT_LOAD_CONCURRENCY try others (README, Measured)
    rate = float(os.environ.get("ROLLOUT_LOAD_RPS", "40"))
    concurrency = int(os.environ.get("ROLLOUT_LOAD_CONCURRENCY", "16"))
    load = Load(stack.envoy_url, bearers, rows, rate, concurrency)
    thread = threading.Thread(target=load.run, daemon=True)
    thread.start()
    steps = []

    def step(*args: str) -> None:
        t0 = time.monotonic()
        models(stack, *args)
        steps.append((" ".join(args), round(time.monotonic() - t0, 2)))
        time.sleep(1.0)  # traffic between the steps

    try:
        time.sleep(2.0)
        step("shift", "digits", "--version", "v2", "--weight", "30")
        step("promote", "digits", "--version", "v2")
        step("rollback", "digits")
        assert "model-digits-v2" in envoy_clusters(stack)
        # v2 serves only its tester now: remove it (policy, drain, then Envoy's route and cluster)
        step("remove", "digits", "--version", "v2", "--drain", "2")
        assert "model-digits-v2" not in envoy_clusters(stack)
        # and add it back: Envoy's cluster and route first, then the policy may choose it
        step("add", "digits", "--version", "v2", "--projects", "vision-beta", "--testers", TESTER)
        assert "model-digits-v2" in envoy_clusters(stack)
        step("shift", "digits", "--version", "v2", "--weight", "50")
        step("rollback", "digits")
        time.sleep(1.0)
    finally:
        load.stop()
        thread.join(timeout=30)
    elapsed = load.stopped - load.started
    total = sum(load.statuses.values())
    p50 = statistics.median(load.latencies) * 1000
    p99 = sorted(load.latencies)[int(len(load.latencies) * 0.99)] * 1000
    report = {
        "requests": total,
        "seconds": round(elapsed, 1),
        "rps": round(total / elapsed, 1),
        "target_rps": load.rate,
        "concurrency": load.concurrency,
        "callers": len(bearers),
        "late_starts": load.late,
        "statuses": dict(load.statuses),
        "versions": dict(load.versions),
        "p50_ms": round(p50, 1),
        "p99_ms": round(p99, 1),
        "steps": steps,
    }
    print("\nrollout under load:", json.dumps(report))
    (stack.run_dir / "rollout-load.json").write_text(json.dumps(report, indent=1))
    assert load.statuses == Counter({200: total}), load.failures[:10]
    assert total >= 0.9 * load.rate * elapsed  # the load really was steady
    assert load.versions["v1"] > 0 and load.versions["v2"] > 0
    assert read_catalog(catalog_file(stack.policy_dir))["digits"]["versions"]["v2"]["weight"] == 0
    assert "follow the catalog" in models(stack, "sync")
    assert {"model-digits-v1", "model-digits-v2"} <= envoy_clusters(stack)
