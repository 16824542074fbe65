"""Response shaping through real Envoy and MLServer (issue 13): the policy's plan and the
subject's degradation level enforced by the ext_proc processor, model-server errors made
generic, cache headers, and unshaped answers that never reach the processor."""

from __future__ import annotations

import http.server
import json
import secrets
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from extauthz.dev.devstack import Stack
from extauthz.dev.runner import free_ports
from tests.e2e.conftest import Keys, cli
from tests.e2e.payloads import CANCER, DIGITS, IRIS, infer
from tests.e2e.test_policy import metric

pytestmark = pytest.mark.e2e

SCORES = infer(CANCER["inputs"][0]["data"], outputs=["predict_proba"])
DIGIT_SCORES = infer(DIGITS["inputs"][0]["data"], outputs=["predict_proba"])


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def direct(stack: Stack, model: str, body: dict) -> httpx.Response:
    """The model server's own answer, past Envoy (what the gateway must not leak)."""
    url = f"http://127.0.0.1:{stack.settings.model_port}/v2/models/{model}/infer"
    return httpx.post(url, json=body, timeout=10)


def output(resp: httpx.Response, name: str) -> dict:
    return next(o for o in resp.json()["outputs"] if o["name"] == name)


def envoy_stat(stack: Stack, name: str) -> int:
    text = httpx.get(f"http://127.0.0.1:{stack.settings.envoy_admin_port}/stats").text
    for line in text.splitlines():
        key, _, value = line.partition(": ")
        if key == name:
            return int(value)
    return 0


STREAMS = "http.inference.ext_proc.streams_started"


def shaped_count(stack: Stack) -> float:
    return sum(
        metric(stack, "extauthz_shaping_total", f'{{outcome="{o}"}}')
        for o in ("shaped", "upstream_error", "failed")
    )


def decision_log(stack: Stack) -> list[dict]:
    lines = (stack.logs / "decisions.log").read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def wait_for_log(stack: Stack, request_id: str, event: str, timeout: float = 3.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        for record in decision_log(stack):
            if record.get("request_id") == request_id and record.get("event") == event:
                return record
        assert time.monotonic() < deadline, f"no {event} record for {request_id}"
        time.sleep(0.05)


def clinician(make_key: Keys) -> tuple[str, dict[str, str]]:
    subject = f"shape-bob-{secrets.token_hex(3)}"
    return subject, bearer(make_key(subject, "clinician", "clinical"))


def test_cancer_scores_come_back_rounded_and_top_1_for_a_clinician(
    stack: Stack, gateway: httpx.Client, make_key: Keys
) -> None:
    _, headers = clinician(make_key)
    raw = output(direct(stack, "cancer", SCORES), "predict_proba")["data"]
    assert any(round(v, 2) != v for v in raw)  # the model's own scores are finer than 2 places
    resp = gateway.post("/v2/models/cancer/infer", json=SCORES, headers=headers)
    assert resp.status_code == 200, resp.text
    scores, classes = output(resp, "predict_proba"), output(resp, "predict_proba_classes")
    best = max(range(len(raw)), key=raw.__getitem__)
    assert scores["shape"] == [1, 1] and scores["data"] == [round(raw[best], 2)]
    assert classes == {
        "name": "predict_proba_classes",
        "datatype": "INT64",
        "shape": [1, 1],
        "data": [best],
    }
    assert int(resp.headers["content-length"]) == len(resp.content)
    assert resp.headers["content-type"] == "application/json"
    assert resp.headers["cache-control"] == "no-store"  # confidential: never stored
    assert resp.headers["vary"] == "authorization, x-api-key, dpop"


def test_asking_for_a_compressed_answer_does_not_escape_shaping(
    stack: Stack, gateway: httpx.Client, make_key: Keys
) -> None:
    _, headers = clinician(make_key)
    resp = gateway.post(
        "/v2/models/cancer/infer", json=SCORES, headers={**headers, "accept-encoding": "gzip"}
    )
    assert resp.status_code == 200
    assert output(resp, "predict_proba")["shape"] == [1, 1]


def test_a_raised_risk_level_turns_the_same_callers_answers_into_labels_only(
    stack: Stack, gateway: httpx.Client, make_key: Keys
) -> None:
    subject, headers = clinician(make_key)
    cli(stack, "throttle", "degrade", "--subject", subject, "--level", "3", "--ttl", "60")
    assert "answers degraded to level 3 (labels only)" in cli(stack, "throttle", "show").stdout
    resp = gateway.post("/v2/models/cancer/infer", json=SCORES, headers=headers)
    assert resp.status_code == 200, resp.text
    raw = output(direct(stack, "cancer", SCORES), "predict_proba")["data"]
    label = max(range(len(raw)), key=raw.__getitem__)
    (only,) = resp.json()["outputs"]
    assert (only["name"], only["datatype"], only["shape"], only["data"]) == (
        "predict_proba",
        "INT64",
        [1, 1],
        [label],
    )
    # cleared: back to the policy's plan (rounded, top-1)
    cli(stack, "throttle", "degrade", "--subject", subject, "--level", "0")
    resp = gateway.post("/v2/models/cancer/infer", json=SCORES, headers=headers)
    assert output(resp, "predict_proba")["datatype"] == "FP64"
    assert output(resp, "predict_proba")["shape"] == [1, 1]


def test_degradation_shapes_a_model_the_policy_leaves_alone(
    stack: Stack, gateway: httpx.Client, make_key: Keys
) -> None:
    subject = f"shape-alice-{secrets.token_hex(3)}"
    headers = bearer(make_key(subject, "analyst", "vision"))
    plain = gateway.post("/v2/models/digits/infer", json=DIGIT_SCORES, headers=headers)
    assert output(plain, "predict_proba")["shape"] == [1, 10]  # digits has no plan
    cli(stack, "throttle", "degrade", "--subject", subject, "--level", "2", "--ttl", "60")
    resp = gateway.post("/v2/models/digits/infer", json=DIGIT_SCORES, headers=headers)
    scores = output(resp, "predict_proba")
    assert scores["shape"] == [1, 1]
    assert scores["data"] == [round(max(output(plain, "predict_proba")["data"]), 2)]


def test_unshaped_answers_never_reach_the_processor(
    stack: Stack, gateway: httpx.Client, make_key: Keys
) -> None:
    headers = bearer(make_key(f"shape-carl-{secrets.token_hex(3)}", "analyst", "vision"))
    _, bob = clinician(make_key)
    gateway.post("/v2/models/cancer/infer", json=SCORES, headers=bob)  # one shaped, warm
    streams, handled = envoy_stat(stack, STREAMS), shaped_count(stack)
    for _ in range(20):
        resp = gateway.post("/v2/models/digits/infer", json=DIGIT_SCORES, headers=headers)
        assert resp.status_code == 200
        assert output(resp, "predict_proba")["shape"] == [1, 10]
    # nor do Envoy's own replies that never had a route (a codec error)
    bad = gateway.post("/v2/models/digits/infer", json=DIGITS, headers={**headers, "x_a": "1"})
    assert (bad.status_code, bad.content) == (400, b'{"error":"bad_request"}')
    assert envoy_stat(stack, STREAMS) == streams  # Envoy opened no ext_proc stream
    assert shaped_count(stack) == handled  # and the processor saw nothing
    # the metrics do move when an answer is shaped (the assertion above can fail)
    gateway.post("/v2/models/cancer/infer", json=SCORES, headers=bob)
    assert envoy_stat(stack, STREAMS) == streams + 1
    assert shaped_count(stack) == handled + 1


def test_a_malformed_tensor_gets_a_generic_json_error_never_the_servers_text(
    stack: Stack, gateway: httpx.Client, make_key: Keys
) -> None:
    """Valid V2 the policy admits, but the wrong number of features for the model: MLServer
    answers with its own text/plain error page. Both routes hide it."""
    few = infer([1.0, 2.0, 3.0])
    leaked = direct(stack, "digits", few)
    assert leaked.status_code >= 400  # what a prober would read
    assert leaked.headers["content-type"].startswith("text/plain"), leaked.headers
    alice = bearer(make_key(f"shape-dan-{secrets.token_hex(3)}", "analyst", "vision"))
    _, bob = clinician(make_key)
    for model, headers in (("digits", alice), ("cancer", bob)):
        resp = gateway.post(f"/v2/models/{model}/infer", json=few, headers=headers)
        expected = (
            (503, {"error": "unavailable"})
            if leaked.status_code >= 500
            else (400, {"error": "bad_request"})
        )
        assert (resp.status_code, resp.json()) == expected, (model, resp.text)
        assert resp.headers["content-type"] == "application/json"
        assert resp.headers["cache-control"] == "no-store"
        assert leaked.text not in resp.text
    # on the shaped route the original is kept in the decision log, under the request id
    record = wait_for_log(stack, resp.headers["x-request-id"], "upstream_error")
    assert record["upstream_status"] == leaked.status_code
    assert record["upstream_body"] == leaked.text


def test_confidential_answers_are_not_stored_and_public_ones_only_per_caller(
    stack: Stack, gateway: httpx.Client, make_key: Keys
) -> None:
    alice = bearer(make_key(f"shape-eve-{secrets.token_hex(3)}", "analyst", "vision"))
    _, bob = clinician(make_key)
    for path, body, headers, cache in (
        ("/v2/models/cancer/infer", CANCER, bob, "no-store"),
        ("/v2/models/digits/infer", DIGITS, alice, "no-store"),
        ("/v2/models/iris/infer", IRIS, alice, "private"),
    ):
        resp = gateway.post(path, json=body, headers=headers)
        assert resp.status_code == 200
        assert resp.headers.get_list("cache-control") == [cache], path
        assert resp.headers["vary"] == "authorization, x-api-key, dpop"
    meta = gateway.get("/v2/models/cancer", headers=bob)
    assert meta.status_code == 200 and meta.headers["cache-control"] == "no-store"


# --------------------------------------------- chunked answers and the buffer limit


class ChunkedModel(http.server.BaseHTTPRequestHandler):
    """A V2 model server that always streams (Transfer-Encoding: chunked, no Content-Length);
    `x-test-rows` rows of 2 class scores each."""

    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:  # noqa: N802 - the http.server hook
        self.rfile.read(int(self.headers.get("content-length", "0")))
        rows = int(self.headers.get("x-test-rows", "1"))
        doc = {
            "model_name": "cancer",
            "outputs": [
                {
                    "name": "predict_proba",
                    "datatype": "FP64",
                    "shape": [rows, 2],
                    "data": [0.123456789, 0.876543211] * rows,
                }
            ],
        }
        body = json.dumps(doc).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("transfer-encoding", "chunked")
        self.end_headers()
        try:
            for i in range(0, len(body), 4096):
                piece = body[i : i + 4096]
                self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            self.wfile.write(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass  # Envoy stopped reading: the answer was too large

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def chunked_gateway(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A second Envoy (same extauthz, OPA, Redis) in front of ChunkedModel."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), ChunkedModel)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    envoy, admin, mtls, tls = free_ports(4)
    settings = stack.settings.model_copy(
        update={
            "run_dir": tmp_path_factory.mktemp("chunked"),
            "envoy_port": envoy,
            "envoy_admin_port": admin,
            "envoy_mtls_port": mtls,
            "envoy_tls_port": tls,
            "model_port": server.server_address[1],
        }
    )
    second = Stack(settings, redis_aof=False)
    second.up(["envoy"])
    try:
        yield second.envoy_url
    finally:
        second.down(["envoy"])
        server.shutdown()
        server.server_close()


def test_a_chunked_answer_is_shaped_whole_with_its_length_set(
    chunked_gateway: str, make_key: Keys
) -> None:
    _, headers = clinician(make_key)
    resp = httpx.post(
        f"{chunked_gateway}/v2/models/cancer/infer",
        json=SCORES,
        headers={**headers, "x-test-rows": "3"},
        timeout=10,
    )
    assert resp.status_code == 200, resp.text
    assert output(resp, "predict_proba")["data"] == [0.88, 0.88, 0.88]
    assert output(resp, "predict_proba_classes")["data"] == [1, 1, 1]
    assert "transfer-encoding" not in resp.headers
    assert int(resp.headers["content-length"]) == len(resp.content)


def test_an_answer_past_the_buffer_limit_is_a_generic_503_never_half_a_body(
    stack: Stack, chunked_gateway: str, make_key: Keys
) -> None:
    _, headers = clinician(make_key)
    rows = stack.settings.shape_max_body_bytes // 25  # ~30 bytes a row: past the limit
    resp = httpx.post(
        f"{chunked_gateway}/v2/models/cancer/infer",
        json=SCORES,
        headers={**headers, "x-test-rows": str(rows)},
        timeout=10,
    )
    assert (resp.status_code, resp.content) == (503, b'{"error":"unavailable"}')
    assert resp.headers["content-type"] == "application/json"


def test_a_model_server_404_is_the_gateways_not_found_and_denials_stay_as_they_are(
    stack: Stack, gateway: httpx.Client, make_key: Keys
) -> None:
    alice = bearer(make_key(f"shape-fay-{secrets.token_hex(3)}", "analyst", "vision"))
    leaked = httpx.get(f"http://127.0.0.1:{stack.settings.model_port}/v2/models/digits/versions/9")
    assert leaked.status_code == 404 and "digits" in leaked.text  # the server names the model
    resp = gateway.get("/v2/models/digits/versions/9", headers=alice)
    assert (resp.status_code, resp.content) == (404, b'{"error":"not_found"}')
    # extauthz's own denials are local replies: custom_response leaves them alone
    denied = gateway.post("/v2/models/cancer/infer", json=CANCER, headers=alice)
    assert (denied.status_code, denied.content) == (403, b'{"error":"forbidden"}')
    limited = gateway.post("/v2/models/digits/infer", json=DIGITS, headers={"x-api-key": "nope"})
    assert limited.status_code == 401 and "www-authenticate" in limited.headers
