"""The paced caller of the red-team harness: one API key, one source address, through Envoy.

Stdlib only: it runs in `.venv-redteam` (the attacks) and its record reading (`first_action`)
in the project venv (the report). A caller behaves like a careful attacker who wants no 429:

- it spaces its requests by the tightest of its short windows: `w / q` seconds for every
  window of `RateLimit-Policy` shorter than its own remaining run (a day window only has to
  have room: `r > 0`), and never faster than `max_rate`;
- a 429 is waited out (`Retry-After`), unless the wait reaches past the caller's deadline: then
  it stops (`Blocked`) — that is what a quarantine does to it; a 403 or 401 stops it at once;
- it binds its own source address (`127.0.1.7`: loopback holds all of 127/8), which is the
  address extauthz sees (the peer; no trusted proxies in front of Envoy).

Each request leaves a record (`Caller.records`): rows before it, rows, status, Retry-After, the
limits the client was shown, whether the outputs differed from the victim's (the evaluator's
`check`), and what Redis held for the caller afterwards (`Probe`: risk multiplier, `degrade`
level, quarantines). The attacker uses only what a client sees; the probe and the check are
the evaluator's, used to say when and how the defense acted.
"""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

Outputs = tuple[list[int], list[list[float]] | None]
Check = Callable[[Sequence[Sequence[float]], list[int], "list[list[float]] | None", bool], bool]


class Stopped(Exception):
    """The caller cannot go on."""


class Blocked(Stopped):
    """Refused for longer than the caller's run (a quarantine), or forbidden."""


class Exhausted(Stopped):
    """The query budget is spent."""


def _parse_items(value: str, first: str, second: str) -> dict[str, tuple[int, int]]:
    """`"name";<first>=1;<second>=2, ...` → {name: (1, 2)}; malformed items are skipped."""
    out: dict[str, tuple[int, int]] = {}
    for item in value.split(","):
        parts = [p.strip() for p in item.split(";")]
        if not parts or not parts[0]:
            continue
        fields = dict(p.split("=", 1) for p in parts[1:] if "=" in p)
        try:
            out[parts[0].strip('"')] = (int(fields[first]), int(fields[second]))
        except (KeyError, ValueError):
            continue
    return out


def parse_policy(value: str) -> dict[str, tuple[int, int]]:
    """`"minute";q=1000;w=60, "second";q=50;w=1` → {name: (q, w)}."""
    return _parse_items(value, "q", "w")


def parse_state(value: str) -> dict[str, tuple[int, int]]:
    """`"minute";r=3;t=41, ...` → {name: (r, t)}."""
    return _parse_items(value, "r", "t")


class Probe:
    """The evaluator's view of one caller's defensive state in Redis (plain RESP over a socket):
    the subject's risk hash (`multiplier`, `degrade`) and whether any of `quarantine_keys`
    exists. Never used by the attacker's decisions."""

    def __init__(
        self,
        port: int,
        risk_key: str,
        quarantine_keys: Sequence[str],
        fields: Sequence[str] = ("multiplier", "degrade"),
    ) -> None:
        self.port = port
        self.risk_key = risk_key
        self.fields = list(fields)  # the risk hash's (multiplier, degrade) field names
        self.quarantine_keys = list(quarantine_keys)
        self._sock: socket.socket | None = None
        self._buf = b""
        self._lock = threading.Lock()

    @staticmethod
    def _command(*args: str) -> bytes:
        out = [f"*{len(args)}\r\n".encode()]
        for arg in args:
            data = arg.encode()
            out.append(b"$%d\r\n%s\r\n" % (len(data), data))
        return b"".join(out)

    def _line(self) -> bytes:
        assert self._sock is not None
        while b"\r\n" not in self._buf:
            chunk = self._sock.recv(65536)
            if not chunk:
                raise ConnectionError("redis closed")
            self._buf += chunk
        line, self._buf = self._buf.split(b"\r\n", 1)
        return line

    def _reply(self) -> Any:
        line = self._line()
        kind, rest = line[:1], line[1:]
        if kind in (b"+", b"-"):
            return rest.decode()
        if kind == b":":
            return int(rest)
        if kind == b"$":
            n = int(rest)
            if n < 0:
                return None
            while len(self._buf) < n + 2:
                assert self._sock is not None
                self._buf += self._sock.recv(65536)
            data, self._buf = self._buf[:n], self._buf[n + 2 :]
            return data.decode()
        if kind == b"*":
            return [self._reply() for _ in range(int(rest))]
        raise ConnectionError(f"unexpected reply {line!r}")

    def state(self) -> dict[str, Any]:
        with self._lock:
            try:
                if self._sock is None:
                    self._sock = socket.create_connection(("127.0.0.1", self.port), timeout=2)
                self._sock.sendall(
                    self._command("HMGET", self.risk_key, *self.fields)
                    + self._command("EXISTS", *self.quarantine_keys)
                )
                multiplier, degrade = self._reply()
                quarantined = self._reply()
            except (OSError, ValueError):
                self._sock, self._buf = None, b""
                return {"multiplier": None, "degrade": None, "quarantined": None}
        return {
            "multiplier": float(multiplier) if multiplier else 1.0,
            "degrade": int(degrade) if degrade else 0,
            "quarantined": bool(quarantined),
        }


def infer_body(rows: Sequence[Sequence[float]], proba: bool) -> bytes:
    body: dict[str, Any] = {
        "inputs": [
            {
                "name": "input-0",
                "shape": [len(rows), len(rows[0])],
                "datatype": "FP64",
                "data": [float(v) for row in rows for v in row],
            }
        ]
    }
    if proba:
        body["outputs"] = [{"name": "predict"}, {"name": "predict_proba"}]
    return json.dumps(body).encode()


def decode_outputs(payload: bytes, n: int, n_classes: int = 10) -> Outputs:
    """The V2 response's labels and (if present) probabilities, for `n` rows. A top-k answer
    (`predict_proba` of k columns and `predict_proba_classes`) becomes full vectors: the k
    scores where they belong, the rest of the mass spread over the other classes (the
    attacker's best guess); one column without classes (labels only) is no scores at all."""
    doc = json.loads(payload)
    by_name = {o.get("name"): o for o in doc.get("outputs", [])}
    labels: list[int] = []
    if "predict" in by_name:
        labels = [int(v) for v in _flat(by_name["predict"]["data"])]
    proba = None
    if "predict_proba" in by_name:
        flat = [float(v) for v in _flat(by_name["predict_proba"]["data"])]
        width = len(flat) // n if n else 0
        proba = [flat[i * width : (i + 1) * width] for i in range(n)] if width else None
        classes = by_name.get("predict_proba_classes")
        if proba is not None and classes is not None and width < n_classes:
            idx = [int(v) for v in _flat(classes["data"])]
            full = []
            for i, row in enumerate(proba):
                rest = max(0.0, 1.0 - sum(row)) / max(1, n_classes - width)
                vec = [rest] * n_classes
                for j, v in zip(idx[i * width : (i + 1) * width], row, strict=True):
                    vec[j] = v
                full.append(vec)
            proba = full
        elif proba is not None and width < 2:
            proba = None
        if not labels and proba:
            labels = [max(range(width), key=row.__getitem__) for row in proba]
    return labels, proba


def _flat(data: Any) -> list[Any]:
    if isinstance(data, list) and data and isinstance(data[0], list):
        return [v for row in data for v in _flat(row)]
    return list(data)


class Budget:
    """Rows (model queries) a whole attack may spend, shared by its callers."""

    def __init__(self, rows: int) -> None:
        self.left = rows
        self._lock = threading.Lock()

    def take(self, n: int) -> int:
        with self._lock:
            n = min(n, self.left)
            self.left -= n
            return n


class Caller:
    """One key from one source address; `infer` sends rows (in requests of at most
    `rows_per_request`) and returns labels and probabilities, or raises `Stopped`."""

    def __init__(
        self,
        port: int,
        key: str,
        source: str,
        *,
        deadline: float,
        budget: Budget,
        nominal: dict[str, int],
        model: str = "digits",
        rows_per_request: int = 1,
        max_rate: float = 0.0,
        check: Check | None = None,
        probe: Probe | None = None,
        start: float | None = None,
    ) -> None:
        self.port = port
        self.key = key
        self.source = source
        self.deadline = deadline
        self.budget = budget
        self.nominal = nominal
        self.path = f"/v2/models/{model}/infer"
        self.rows_per_request = rows_per_request
        self.min_interval = 1.0 / max_rate if max_rate > 0 else 0.0
        self.check = check
        self.probe = probe
        self.start = time.monotonic() if start is None else start
        self.records: list[dict[str, Any]] = []
        self.answered = 0  # rows answered so far
        self.blocked = False
        self.policy: dict[str, tuple[int, int]] = {}  # the last RateLimit-Policy shown
        self._interval = self.min_interval
        self._last = 0.0
        self._conn: http.client.HTTPConnection | None = None

    # ---- transport
    def _connection(self) -> http.client.HTTPConnection:
        if self._conn is None:
            self._conn = http.client.HTTPConnection(
                "127.0.0.1", self.port, timeout=15, source_address=(self.source, 0)
            )
        return self._conn

    def _post(self, body: bytes) -> tuple[int, dict[str, str], bytes]:
        headers = {"authorization": f"Bearer {self.key}", "content-type": "application/json"}
        for attempt in range(3):
            conn = self._connection()
            try:
                conn.request("POST", self.path, body, headers)
                resp = conn.getresponse()
                payload = resp.read()
                return resp.status, {k.lower(): v for k, v in resp.getheaders()}, payload
            except (OSError, http.client.HTTPException):
                conn.close()
                self._conn = None
                if attempt == 2:
                    raise
                time.sleep(0.2)
        raise AssertionError("unreachable")

    # ---- pacing
    def _pace(self, headers: dict[str, str]) -> float:
        """Seconds to wait before the next request, from the limits just shown."""
        policy = parse_policy(headers.get("ratelimit-policy", ""))
        state = parse_state(headers.get("ratelimit", ""))
        horizon = self.deadline - time.monotonic()
        interval = self.min_interval
        for name, (q, w) in policy.items():
            r, t = state.get(name, (1, 0))
            if r <= 0:
                interval = max(interval, float(t))
            elif w <= horizon and q > 0:
                interval = max(interval, w / q)
        return interval

    def _wait(self) -> None:
        delay = self._last + self._interval - time.monotonic()
        if delay > 0:
            time.sleep(delay)

    # ---- one batch of rows
    def infer(self, rows: Sequence[Sequence[float]], proba: bool) -> Outputs:
        labels: list[int] = []
        probs: list[list[float]] | None = [] if proba else None
        for at in range(0, len(rows), self.rows_per_request):
            chunk = rows[at : at + self.rows_per_request]
            got_labels, got_proba = self._send(chunk, proba)
            labels += got_labels
            if probs is not None:
                if got_proba is None:
                    probs = None  # degraded to labels: the attacker gets none for the batch
                else:
                    probs += got_proba
        return labels, probs

    def _send(self, rows: Sequence[Sequence[float]], proba: bool) -> Outputs:
        if self.blocked:
            raise Blocked("blocked before")
        n = self.budget.take(len(rows))
        if n < len(rows):
            raise Exhausted("budget spent")
        body = infer_body(rows, proba)
        failures = 0
        while True:
            if time.monotonic() > self.deadline:
                raise Exhausted("out of time")
            self._wait()
            self._last = time.monotonic()
            status, headers, payload = self._post(body)
            record: dict[str, Any] = {
                "q0": self.answered,
                "rows": len(rows),
                "t": round(time.monotonic() - self.start, 3),
                "status": status,
            }
            policy = parse_policy(headers.get("ratelimit-policy", ""))
            self.policy = policy or self.policy
            lowered = sorted(
                name for name, (q, _) in policy.items() if q < self.nominal.get(name, q)
            )
            if lowered:
                record["lowered"] = lowered
            if self.probe is not None:
                record["probe"] = self.probe.state()
            self.records.append(record)
            if status == 200:
                labels, probs = decode_outputs(payload, len(rows))
                if self.check is not None and self.check(rows, labels, probs, proba):
                    record["degraded"] = True
                self.answered += len(rows)
                self._interval = self._pace(headers)
                return labels, probs
            if status == 429:
                retry = float(headers.get("retry-after", "1") or 1)
                record["retry_after"] = retry
                if time.monotonic() + retry > self.deadline:
                    self.blocked = True
                    raise Blocked("429 past the deadline")
                self._interval = retry
                continue
            if status == 503 and failures < 5:
                failures += 1
                self._interval = 1.0
                continue
            self.blocked = True
            raise Blocked(f"status {status}")


# ---- reading records (the report's side)

ACTION_KINDS = ("quarantine", "429", "403", "degraded", "limits_lowered", "degrade_flag")


def actions(record: dict[str, Any]) -> list[str]:
    """What the defense did to this request, as the evaluator sees it."""
    probe = record.get("probe") or {}
    kinds = []
    if probe.get("quarantined"):
        kinds.append("quarantine")
    if record["status"] == 429 and not probe.get("quarantined"):
        kinds.append("429")
    if record["status"] in (401, 403):
        kinds.append(str(record["status"]))
    if record.get("degraded"):
        kinds.append("degraded")
    if record.get("lowered") or (probe.get("multiplier") or 1.0) < 1.0:
        kinds.append("limits_lowered")
    if (probe.get("degrade") or 0) > 0 and not record.get("degraded"):
        kinds.append("degrade_flag")
    return kinds


def first_action(records: Sequence[dict[str, Any]]) -> tuple[int, str, float] | None:
    """(rows answered before it, kinds joined by '+', seconds) of the first request the defense
    acted on; None when it never did. Records of several callers are read in time order."""
    for record in sorted(records, key=lambda r: r["t"]):
        kinds = actions(record)
        if kinds:
            return int(record.get("q_total", record["q0"])), "+".join(kinds), float(record["t"])
    return None
