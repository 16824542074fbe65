"""c=1 latency through real Envoy: the same model route with and without extauthz, interleaved.

Starts its own stack on free ports (with the floor listener, which has no ext_authz), creates a
key on the `bench` tier, then alternates requests between the guarded and the floor listener so
both see the same machine noise. Prints medians and the ratio; absolute numbers are for context.

    .venv/bin/python -m bench.e2e_latency [--requests 2000] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path

import httpx

from extauthz.authn.apikeys import KeyStore
from extauthz.devstack import Stack
from extauthz.wiring import key_pepper, redis_client
from tests.conftest import free_ports, stack_settings
from tests.e2e.payloads import DIGITS


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def make_key(stack: Stack) -> str:
    redis = redis_client(stack.settings)
    try:
        store = KeyStore(redis, key_pepper(stack.settings))
        _, key = await store.create("bench", ("analyst",), ("vision",), "bench")
        return key
    finally:
        await redis.aclose()


def run(requests: int, path: str) -> dict[str, object]:
    run_dir = Path(tempfile.mkdtemp(prefix="extauthz-bench-"))
    floor_port = free_ports(1)[0]
    stack = Stack(stack_settings(run_dir), floor_port=floor_port)
    stack.up()
    try:
        key = asyncio.run(make_key(stack))
        guarded = httpx.Client(base_url=stack.envoy_url, headers={"authorization": f"Bearer {key}"})
        floor = httpx.Client(base_url=f"http://127.0.0.1:{floor_port}")
        body = json.dumps(DIGITS).encode()
        headers = {"content-type": "application/json"}
        samples: dict[str, list[float]] = {"guarded": [], "floor": []}
        for client in (guarded, floor):  # warm connections and caches
            for _ in range(50):
                client.post(path, content=body, headers=headers).raise_for_status()
        for _ in range(requests):
            for name, client in (("guarded", guarded), ("floor", floor)):
                start = time.perf_counter()
                resp = client.post(path, content=body, headers=headers)
                samples[name].append((time.perf_counter() - start) * 1e6)
                if resp.status_code != 200:
                    raise RuntimeError(f"{name}: {resp.status_code} {resp.text}")
        guarded.close()
        floor.close()
    finally:
        stack.down()
    result: dict[str, object] = {"requests_each": requests, "path": path}
    for name, values in samples.items():
        result[name] = {
            "p50_us": round(statistics.median(values)),
            "p90_us": round(percentile(values, 0.9)),
            "p99_us": round(percentile(values, 0.99)),
        }
    g50 = statistics.median(samples["guarded"])
    f50 = statistics.median(samples["floor"])
    result["ratio_p50"] = round(g50 / f50, 3)
    result["added_p50_us"] = round(g50 - f50)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--path", default="/v2/models/digits/infer")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    result = run(args.requests, args.path)
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
