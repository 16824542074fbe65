"""Issue 11, findings 1 and 2 through real Envoy to the real MLServer: the policy sees the rows
the model server runs, bodies the gateway cannot read unambiguously never reach the model, and
deeply nested JSON is a generic 403 without a traceback."""

from __future__ import annotations

import json
import re
import subprocess
from typing import Any

import httpx
import pytest

from extauthz.dev.devstack import ROOT, Stack
from extauthz.response import BODIES
from extauthz.types import Status
from extauthz.v2body import read_body
from tests.e2e.conftest import Keys
from tests.e2e.payloads import DIGITS

pytestmark = pytest.mark.e2e

URL = "/v2/models/digits/infer"
ROW = [float(v) for v in DIGITS["inputs"][0]["data"]]
JSON_HEADERS = {"content-type": "application/json"}


def upstream_requests(stack: Stack) -> int:
    """Requests Envoy has sent to the model server so far (its admin stats)."""
    stats = httpx.get(
        f"http://127.0.0.1:{stack.settings.envoy_admin_port}/stats",
        params={"filter": r"^cluster\.model_server\.upstream_rq_total$"},
    ).text
    found = re.search(r"upstream_rq_total: (\d+)", stats)
    return int(found.group(1)) if found else 0


def pandas_columns(rows: int, shape: list[int] | None = None) -> dict[str, Any]:
    """The digits features as 64 pandas columns of `rows` values each."""
    inputs = [
        {
            "name": f"f{i}",
            "shape": shape or [rows],
            "datatype": "FP64",
            "data": [ROW[i]] * rows,
        }
        for i in range(64)
    ]
    return {"parameters": {"content_type": "pd"}, "inputs": inputs}


def with_input(**fields: Any) -> dict[str, Any]:
    return {"inputs": [{**DIGITS["inputs"][0], **fields}]}


REFUSED = {
    # the policy saw shape[0] = 1; MLServer's pandas codec runs len(data) = 120 rows (cap 64;
    # 120 keeps the body under Envoy's 64 KiB)
    "pandas_rows_beyond_the_shape": pandas_columns(120, shape=[1]),
    # MLServer would use this instead of decoding `data`
    "decoded_payload_parameter": with_input(parameters={"_decoded_payload": [ROW] * 120}),
    "shape_disagrees_with_data": with_input(shape=[1, 64], data=ROW * 2),
    "pandas_over_the_cap": pandas_columns(65),
}


@pytest.fixture(scope="module")
def alice(make_key: Keys) -> dict[str, str]:
    return {"authorization": f"Bearer {make_key('body-alice', 'analyst', 'vision', 'bench')}"}


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_bodies_the_server_would_read_differently_never_reach_it(
    stack: Stack, gateway: httpx.Client, alice: dict[str, str], name: str
) -> None:
    before = upstream_requests(stack)
    resp = gateway.post(URL, json=REFUSED[name], headers=alice)
    assert resp.status_code == 403 and resp.content == BODIES[Status.FORBIDDEN]
    assert upstream_requests(stack) == before  # the model server never saw it


def test_deep_nesting_is_a_generic_403_without_a_traceback(
    stack: Stack, gateway: httpx.Client, alice: dict[str, str]
) -> None:
    log = stack.logs / "extauthz.log"
    log_size = log.stat().st_size
    before = upstream_requests(stack)
    resp = gateway.post(URL, content=b"[" * 50_000, headers={**alice, **JSON_HEADERS})
    assert resp.status_code == 403 and resp.content == BODIES[Status.FORBIDDEN]
    assert upstream_requests(stack) == before
    with log.open("rb") as f:
        f.seek(log_size)
        written = f.read()
    assert b"Traceback" not in written and b"RecursionError" not in written


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(DIGITS, id="digits"),
        pytest.param(with_input(shape=[3, 64], data=ROW * 3), id="numpy-flat-3-rows"),
        pytest.param(with_input(shape=[2, 64], data=[ROW, ROW]), id="numpy-nested-2-rows"),
        pytest.param(pandas_columns(64), id="pandas-64-rows"),
        pytest.param(pandas_columns(5, shape=[5, 1]), id="pandas-5-rows-as-n-by-1"),
    ],
)
def test_the_rows_the_gateway_counts_are_the_rows_the_model_runs(
    gateway: httpx.Client, alice: dict[str, str], body: dict[str, Any]
) -> None:
    facts = read_body(json.dumps(body).encode())
    resp = gateway.post(URL, json=body, headers=alice)
    assert resp.status_code == 200, resp.text
    predictions = resp.json()["outputs"][0]
    assert predictions["shape"][0] == facts.rows  # one prediction per row the policy capped
    assert predictions["data"][0] == 0  # it is a zero, whatever the encoding


# What MLServer's own codecs make of a body (run in its venv): the rows its sklearn runtime
# would predict on, or the error it would answer with.
MLSERVER_ROWS = """
import json, sys
from mlserver.codecs import NumpyRequestCodec
from mlserver.codecs.utils import decode_inference_request
from mlserver.types import InferenceRequest
for line in sys.stdin:
    try:
        request = InferenceRequest.model_validate(json.loads(line))
        decoded = decode_inference_request(request)
        if decoded is request:  # no request content type: the sklearn runtime's default
            decoded = NumpyRequestCodec.decode_request(request)
        rows = len(decoded)  # DataFrame rows, ndarray first dimension, list of strings
    except Exception as exc:
        rows = type(exc).__name__
    print(json.dumps(rows))
"""


def body_grid() -> list[dict[str, Any]]:
    """Bodies of every request content type, input codec, datatype, shape and layout."""
    values = {"FP64": [0.5, 1.0, 2.0, 3.0], "INT32": [1, 2, 3, 4], "BYTES": ["a", "b", "c", "d"]}
    bodies = []
    for content_type in ("", "np", "pd", "str"):
        for datatype, codec in [("FP64", ""), ("INT32", "np"), ("BYTES", "str"), ("BYTES", "")]:
            for rows in (1, 3):
                for tail in ([], [1], [2], [2, 2]):
                    for count in (1, 2):
                        for nested in (False, True):
                            shape = [rows, *tail]
                            size = rows * (tail[0] * tail[-1] if tail else 1)
                            data: Any = (values[datatype] * size)[:size]
                            if nested and tail:
                                width = size // rows
                                data = [data[i : i + width] for i in range(0, size, width)]
                            tensor: dict[str, Any] = {"shape": shape, "datatype": datatype}
                            if codec:
                                tensor["parameters"] = {"content_type": codec}
                            body: dict[str, Any] = {
                                "inputs": [
                                    {**tensor, "name": f"i{n}", "data": data} for n in range(count)
                                ]
                            }
                            if content_type:
                                body["parameters"] = {"content_type": content_type}
                            bodies.append(body)
    return bodies


def test_the_reader_counts_the_rows_mlservers_codecs_decode() -> None:
    """Every body the gateway accepts decodes, in MLServer's own code, to the rows the policy
    capped, or is refused by MLServer itself; never to another row count."""
    bodies = body_grid()
    python = ROOT / ".venv-model" / "bin" / "python"  # as bench/facts.py finds it
    lines = "\n".join(json.dumps(b) for b in bodies) + "\n"
    out = subprocess.run(
        [str(python), "-c", MLSERVER_ROWS], input=lines, capture_output=True, text=True, check=True
    ).stdout.splitlines()
    accepted = agreed = 0
    for body, line in zip(bodies, out, strict=True):
        facts = read_body(json.dumps(body).encode())
        server = json.loads(line)
        if facts.valid:
            accepted += 1
            assert server == facts.rows or isinstance(server, str), (body, server, facts)
            agreed += server == facts.rows
    print(f"{len(bodies)} bodies, {accepted} accepted, {agreed} decoded to the same rows")
    assert accepted > 50 and agreed > 50
