"""Property-based fuzzing (hypothesis) of the V2 body reader and of the whole Check handler
with real parsing (request, credentials, body, policy input) and fake stores and stages.

Fixed budget: derandomized, a fixed number of examples per property, no deadline, no example
database; the file takes about 4 s on a quiet machine (20-26 s wall at a load average of 9)."""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, event, find, given, settings
from hypothesis import strategies as st

from extauthz.authn.apikeys import ApiKeyAuthenticator, KeyRecord, hash_key, new_key
from extauthz.authn.authenticator import CREDENTIAL_HEADERS, Authenticator, TokenAuthenticator
from extauthz.authn.dpop import ProofRules, ProofVerifier
from extauthz.authn.jwks import JwksSource
from extauthz.authn.jwt import JwtVerifier, TokenRules
from extauthz.dev.issuer import DevIssuer
from extauthz.handler import CheckHandler
from extauthz.response import BODIES, UPSTREAM_PREFIX
from extauthz.types import Device, PolicyDecision, Principal, Reason, RequestView, Window
from extauthz.v2body import MAX_ROW_VALUES, V2Body, read_body
from tests.unit.checkrequests import check_request
from tests.unit.test_handler import ADMIT, FakeLimiter, FakeLog, FakePolicy

BUDGET = settings(
    max_examples=300,
    deadline=None,
    derandomize=True,
    database=None,  # derandomized runs repeat themselves; nothing is written to disk
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
NOW = 1_800_000_000
CAP = 64  # the fake policy's batch cap, as digits has in the catalog

# --- the body reader -----------------------------------------------------------------------

SCALARS = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8)
JSON = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=30,
)
NAMES = st.sampled_from(["input-0", "input-1", "x", "y", "z", "predict", "predict_proba"])
# element strategies per datatype: what JSON must carry for it
ELEMENTS = {
    "FP64": st.integers(-(2**60), 2**60) | st.floats(-1e300, 1e300, allow_nan=False),
    "FP32": st.floats(-1e30, 1e30, allow_nan=False),
    "FP16": st.integers(-60000, 60000),
    "INT64": st.integers(-(2**63), 2**63 - 1),
    "INT8": st.integers(-128, 127),
    "UINT8": st.integers(0, 255),
    "BOOL": st.booleans(),
    "BYTES": st.text(max_size=3),
}
# one thing wrong with a body (or nothing): each is a way past a naive reader
MUTATIONS = [
    "none", "none", "none", "none", "none", "none",
    "pd_shape", "private_input", "private_request", "private_output", "first_dim",
    "data_len", "ragged", "element", "content_type", "duplicate", "extra_field",
    "zero_dim", "rank", "binary_data_size", "junk",
]  # fmt: skip


@st.composite
def tensors(draw: st.DrawFn, name: str, rows: int, content_type: str) -> dict[str, Any]:
    """A well-formed input with `rows` rows under the request's content type."""
    datatype = draw(st.sampled_from(["BYTES"] if content_type == "str" else sorted(ELEMENTS)))
    one_per_row = content_type in ("pd", "str")
    tail = draw(
        st.sampled_from([[], [1]]) if one_per_row else st.lists(st.integers(1, 4), max_size=2)
    )
    shape = [rows, *tail]
    flat = draw(st.lists(ELEMENTS[datatype], min_size=math.prod(shape), max_size=math.prod(shape)))
    data: Any = flat
    if not one_per_row and draw(st.booleans()):  # nested exactly as shape
        for dim in reversed(shape[1:]):
            data = [data[i : i + dim] for i in range(0, len(data), dim)]
    tensor = {"name": name, "shape": shape, "datatype": datatype, "data": data}
    codec = draw(st.sampled_from([None, "np", "str"] if datatype == "BYTES" else [None, "np"]))
    if codec == "str" and one_per_row or codec == "np":
        tensor["parameters"] = {"content_type": codec}
    return tensor


@st.composite
def v2_bodies(draw: st.DrawFn) -> dict[str, Any]:
    """A well-formed body (np, pd or str), then at most one thing wrong with it."""
    content_type = draw(st.sampled_from(["", "", "np", "pd", "pd", "str"]))
    rows = draw(st.integers(1, 6))
    count = 1 if content_type == "str" else draw(st.integers(1, 3))
    names = draw(st.lists(NAMES, min_size=count, max_size=count, unique=True))
    doc: dict[str, Any] = {"inputs": [draw(tensors(n, rows, content_type)) for n in names]}
    if content_type:
        doc["parameters"] = {"content_type": content_type}
    if draw(st.booleans()):
        outputs = draw(st.lists(st.sampled_from(["predict", "predict_proba"]), unique=True))
        doc["outputs"] = [{"name": n} for n in outputs]
    mutation = draw(st.sampled_from(MUTATIONS))
    first = doc["inputs"][0]
    if mutation == "pd_shape":  # the bypass: a [1, k] tensor, k rows under pandas
        doc["parameters"] = {"content_type": "pd"}
        first["shape"] = [1, leaves(first["data"])]
    elif mutation.startswith("private_"):
        where = {"input": first, "request": doc, "output": {}}[mutation[8:]]
        if mutation == "private_output":
            doc["outputs"] = [where := {"name": "predict"}]
        where["parameters"] = {**where.get("parameters", {}), "_decoded_payload": [[0.0] * 4] * 9}
    elif mutation == "first_dim":
        first["shape"][0] = draw(st.sampled_from([0, -1, rows + 1, True, "1", 1.0]))
    elif mutation == "data_len":
        first["data"] = (
            first["data"] + first["data"][:1] if draw(st.booleans()) else first["data"][:-1]
        )
    elif mutation == "ragged" and isinstance(first["data"][0], list):
        first["data"][0] = first["data"][0][:-1] or [[]]
    elif mutation == "element":
        first["data"][-1] = draw(st.sampled_from([None, "1", True, 2**70, [1.0], {"a": 1}, 1.5]))
    elif mutation == "content_type":
        where = draw(st.sampled_from([doc, first]))
        value = draw(st.sampled_from(["pd_json", "base64", "datetime", "", "PD", 1, None]))
        where["parameters"] = {"content_type": value}
    elif mutation == "duplicate" and count > 1:
        doc["inputs"][1]["name"] = first["name"]
    elif mutation == "extra_field":
        draw(st.sampled_from([doc, first]))["binary_data"] = True
    elif mutation == "zero_dim":
        first["shape"] = [*first["shape"], 0]
    elif mutation == "rank":
        first["shape"] = draw(st.sampled_from([[], [1] * 7]))
    elif mutation == "binary_data_size":
        first["parameters"] = {"binary_data_size": 8}
    elif mutation == "junk":
        key = draw(st.sampled_from(["inputs", "outputs", "parameters", "id"]))
        doc[key] = draw(JSON)
    return doc


def leaves(data: Any) -> int:
    return sum(leaves(x) for x in data) if isinstance(data, list) else 1


@BUDGET
@given(st.binary(max_size=512))
def test_random_bytes_never_raise(raw: bytes) -> None:
    got = read_body(raw)
    assert isinstance(got, V2Body) and (got.valid or got.rows == 0)


@settings(BUDGET, max_examples=200)
@given(JSON)
def test_random_json_never_raises(doc: Any) -> None:
    got = read_body(json.dumps(doc).encode())
    assert got.valid is False or got.rows >= 1


@BUDGET
@given(v2_bodies())
def test_valid_facts_are_what_every_reading_of_the_body_agrees_on(doc: dict[str, Any]) -> None:
    """Whenever the reader says valid, numpy's reading (shape[0]), pandas' reading (len(data)
    of each column) and the element count all give the rows it reports."""
    got = read_body(json.dumps(doc).encode())
    event(f"valid {got.content_type or 'default'}" if got.valid else f"invalid {got.reason}")
    if not got.valid:
        assert (got.rows, got.features, got.inputs, got.feature_rows()) == (0, 0, (), ())
        return
    inputs = doc["inputs"]
    assert got.rows >= 1 and got.features >= 1
    assert sum(leaves(t["data"]) for t in inputs) == got.rows * got.features
    for tensor in inputs:
        assert tensor["shape"][0] == got.rows  # numpy, Triton, KServe
        assert leaves(tensor["data"]) == math.prod(tensor["shape"])
        if got.content_type == "pd":
            assert len(tensor["data"]) == got.rows  # pandas: one column of len(data) rows
    names = [*got.parameters, *got.output_parameters, *got.inputs, *got.outputs]
    assert not any(name.startswith("_") for name in names)
    assert got.inputs == tuple(t["name"] for t in inputs)
    rows = got.feature_rows()
    if "BYTES" not in got.datatypes and got.rows * got.features <= MAX_ROW_VALUES:
        assert len(rows) == got.rows and {len(r) for r in rows} == {got.features}
    else:
        assert rows == ()


EDGE_NUMBERS = st.sampled_from(
    ["0", "-0", "1.5", "1e400", "-1e400", "1e308", "-1e308", "5e-324", "65504", "65505",
     "255", "256", "-1", "9223372036854775808", "1" + "0" * 400, "3.5e38", "true", "null"]
)  # fmt: skip
NUMBER_TOKENS = st.one_of(
    EDGE_NUMBERS,
    EDGE_NUMBERS,
    EDGE_NUMBERS,
    st.integers().map(str),
    st.floats(allow_nan=False, allow_infinity=False).map(repr),
)


@BUDGET
@given(
    st.lists(NUMBER_TOKENS, min_size=1, max_size=6),
    st.sampled_from(["FP64", "FP64", "FP64", *sorted(ELEMENTS)]),
)
def test_numbers_spelled_any_way_never_raise(tokens: list[str], datatype: str) -> None:
    """JSON number spellings the encoder never writes (1e400, -1e400, 400 digits) reach the
    reader only as raw text."""
    raw = b'{"inputs": [{"name": "x", "shape": [%d], "datatype": "%s", "data": [%s]}]}' % (
        len(tokens),
        datatype.encode(),
        ", ".join(tokens).encode(),
    )
    got = read_body(raw)
    if got.valid and datatype.startswith("FP"):
        assert all(math.isfinite(v) for row in got.feature_rows() for v in row)


def test_the_body_strategy_reaches_valid_numpy_and_pandas_bodies() -> None:
    """The property above is not vacuous: the strategy finds valid bodies of both kinds."""
    for content_type in ("", "pd"):
        found = find(
            v2_bodies(),
            lambda d, ct=content_type: read_body(json.dumps(d).encode()).content_type == ct
            and read_body(json.dumps(d).encode()).valid,
            settings=settings(max_examples=2000, derandomize=True, database=None),
        )
        assert read_body(json.dumps(found).encode()).valid


# --- the whole Check handler ---------------------------------------------------------------


class FakeStore:
    def __init__(self, records: dict[str, KeyRecord]) -> None:
        self.records = records

    async def get(self, key_id: str) -> KeyRecord | None:
        return self.records.get(key_id)


class FakeDevices:
    async def lookup(self, subject: str, thumbprint: str) -> Device:
        return Device(thumbprint=thumbprint, trust="managed")


class BodyPolicy(FakePolicy):
    """Builds the real policy input and decides like rego/extauthz/risk.rego's body checks."""

    async def decide(self, view: RequestView, principal: Principal) -> PolicyDecision:
        decided = await super().decide(view, principal)  # records build_input(view, principal)
        facts = self.inputs[-1]["request"]["body"]
        if facts["valid"] is not True or facts["batch_size"] > CAP:
            return PolicyDecision(False, 403, "malformed_body")
        return decided


ALLOW = PolicyDecision(True, 200, "ok", (Window("minute", 5, 60),))


class Credentials:
    def __init__(self, tmp: Path) -> None:
        self.key_id, self.key = new_key()
        self.issuer = DevIssuer(tmp / "issuer", "iss", "aud", clock=lambda: NOW)
        self.issuer.ensure()
        self.token = self.issuer.mint("alice", ("analyst",), ("vision",))
        record = KeyRecord(
            self.key_id, hash_key(b"pepper", self.key), "alice", ("analyst",), ("vision",),
            "standard", NOW, 0, "active",
        )  # fmt: skip
        verifier = JwtVerifier(
            JwksSource(str(self.issuer.jwks_file), clock=lambda: NOW),
            TokenRules("iss", "aud"),
            clock=lambda: NOW,
        )
        tokens = TokenAuthenticator(
            verifier,
            ProofVerifier(ProofRules(window=60, leeway=5), None, lambda: NOW),
            FakeDevices(),  # type: ignore[arg-type]
            proof_window=65,
        )
        keys = ApiKeyAuthenticator(FakeStore({self.key_id: record}), b"pepper")  # type: ignore[arg-type]
        self.authenticator = Authenticator(keys, tokens)

    def valid(self) -> st.SearchStrategy[dict[str, str]]:
        return st.sampled_from(
            [
                {"authorization": f"Bearer {self.key}"},
                {"x-api-key": self.key},
                {"authorization": f"Bearer {self.token}"},
                {"authorization": f"  bearer   {self.token} "},
            ]
        )

    def invalid(self) -> st.SearchStrategy[dict[str, str]]:
        header = st.sampled_from(["authorization", "x-api-key", "dpop"])
        value = st.text(max_size=40) | st.sampled_from(
            ["Bearer ", "DPoP ", "Bearer eak_", "Basic YTpi"]
        ).flatmap(lambda prefix: st.text(max_size=60).map(lambda tail: prefix + tail))
        key = st.builds(_mangle, st.just(self.key), st.integers(0, 200), st.characters())
        signed, _, signature = self.token.rpartition(".")
        # header and payload only: a signature has non-canonical base64url twins
        token = st.builds(_mangle, st.just(signed), st.integers(0, 2000), st.characters())
        return st.one_of(
            st.just({}),
            st.dictionaries(header, value, min_size=1, max_size=3),
            key.map(lambda k: {"authorization": f"Bearer {k}"}),
            key.map(lambda k: {"x-api-key": k}),
            token.map(lambda t: {"authorization": f"Bearer {t}.{signature}"}),
            st.text(max_size=60).map(lambda p: {"authorization": f"DPoP {self.token}", "dpop": p}),
            st.just({"authorization": self.token}),  # a JWT without a scheme
        )


def _mangle(credential: str, where: int, char: str) -> str:
    where %= len(credential)
    if credential[where] == char:
        char = "A" if char != "A" else "B"
    return credential[:where] + char + credential[where + 1 :]


@pytest.fixture(scope="module")
def credentials(tmp_path_factory: pytest.TempPathFactory) -> Credentials:
    return Credentials(tmp_path_factory.mktemp("fuzz"))


@pytest.fixture(scope="module")
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


HEADER_NAMES = st.text("abcdefghijklmnopqrstuvwxyz0123456789-_", min_size=1, max_size=20)
OTHER_HEADERS = st.dictionaries(
    HEADER_NAMES.filter(lambda n: n not in CREDENTIAL_HEADERS)
    | st.sampled_from(["x-extauthz-subject", "x-extauthz-tier", "x-request-id", "content-type"]),
    st.text(max_size=30),
    max_size=4,
)
INFER = "/v2/models/digits/infer"
PATHS = st.sampled_from(
    [INFER] * 6 + ["/v2/models/digits", "/v2/models/digits/ready", "/", "", INFER + "?x=1"]
) | st.text(max_size=40).map(lambda p: "/" + p)
DIGITS = {"inputs": [{"name": "input-0", "shape": [1, 64], "datatype": "FP64", "data": [0] * 64}]}
BODIES_RAW = st.one_of(
    st.binary(max_size=256),
    JSON.map(lambda d: json.dumps(d).encode()),
    v2_bodies().map(lambda d: json.dumps(d).encode()),
    st.just(json.dumps(DIGITS).encode()),
    st.integers(1, 60_000).map(lambda n: b"[" * n),
    st.just(json.dumps({**DIGITS, "parameters": {"content_type": "pd"}}).encode()),
    st.integers(1, 600).map(lambda n: json.dumps(pandas_bypass(n)).encode()),
)


def pandas_bypass(n: int) -> dict[str, Any]:
    """Issue 11: shape says one row; MLServer's pandas codec runs len(data) rows."""
    tensor = {"name": "input-0", "shape": [1, 64], "datatype": "FP64", "data": [0.0] * n}
    return {"inputs": [tensor], "parameters": {"content_type": "pd"}}


def server_rows(body: bytes) -> int:
    """Rows the model server runs, read independently of extauthz: MLServer's pandas codec
    takes len(data) per input; numpy (and Triton, KServe) take shape[0]."""
    doc = json.loads(body)
    pandas = (doc.get("parameters") or {}).get("content_type") == "pd"
    return max(len(t["data"]) if pandas else t["shape"][0] for t in doc["inputs"])


@BUDGET
@given(
    data=st.data(),
    route=st.sampled_from([("POST", INFER)] * 6 + [("GET", "/v2/models/digits")])
    | st.tuples(st.sampled_from(["POST", "GET", "PUT", "post"]) | st.text(max_size=8), PATHS),
    other=OTHER_HEADERS,
    body=BODIES_RAW,
    source_ip=st.sampled_from(["127.0.0.1", "::1", "10.0.0.1", ""]) | st.text(max_size=20),
    has_valid=st.sampled_from([True, True, False]),
)
def test_the_check_handler_never_raises_never_allows_without_a_credential(
    loop: asyncio.AbstractEventLoop,
    credentials: Credentials,
    data: st.DataObject,
    route: tuple[str, str],
    other: dict[str, str],
    body: bytes,
    source_ip: str,
    has_valid: bool,
) -> None:
    presented = data.draw(credentials.valid() if has_valid else credentials.invalid())
    headers = {**other, **presented}
    request = check_request(*route, headers, body, source_ip)
    policy, log = BodyPolicy(ALLOW), FakeLog()
    handler = CheckHandler(
        credentials.authenticator, policy, FakeLimiter(ADMIT), log, max_body_bytes=65_536
    )  # type: ignore[arg-type]
    response = loop.run_until_complete(handler.check(request))

    decision = log.records[0][1]
    event(f"{int(decision.status)} {decision.reason}")
    assert decision.reason is not Reason.INTERNAL_ERROR  # nothing raised inside the handler
    if response.status.code == 0:
        assert has_valid, "allowed without a valid credential"
        facts = policy.inputs[-1]["request"]["body"]
        assert facts["valid"] is True and facts["batch_size"] <= CAP
        if policy.inputs[-1]["request"]["action"] == "infer":
            assert server_rows(body) <= CAP, "the model would run more rows than the cap"
        removed = set(response.ok_response.headers_to_remove)
        set_names = {h.header.key for h in response.ok_response.headers}
        assert {h for h in CREDENTIAL_HEADERS if h in headers} <= removed
        spoofed = {h for h in headers if h.startswith(UPSTREAM_PREFIX)}
        assert spoofed <= removed | set_names
    else:
        denied = response.denied_response
        assert denied.body.encode() in BODIES.values()
        assert denied.status.code in (401, 403, 429, 503)
        if not has_valid:
            assert denied.status.code == 401
