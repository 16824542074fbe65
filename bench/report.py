"""bench/results/<date>/report.md (+ a latency-CDF PNG per concurrency) from the results of
`bench.run`: micro.json (pytest-benchmark), e2e.json (bench.e2e.run), facts.json.

    .venv/bin/python -m bench.report bench/results/<date>
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

from bench.profile import OUTSIDE

STAGES = [  # (pytest-benchmark test name, stage, on the steady-state request path?)
    ("test_parse", "1. parse the CheckRequest", True),
    ("test_authn_apikey_cache_hit", "2. API key, cached record", True),
    (
        "test_authn_apikey_cache_miss_redis",
        "2. API key, record read from Redis (cache miss)",
        False,
    ),
    ("test_authn_jwt_cache_hit", "2. JWT, verified-token cache hit", False),
    ("test_authn_jwt_verify_miss", "2. JWT, signature + claims verified (cache miss)", False),
    ("test_authn_dpop_proof_verify", "2. DPoP proof verified", False),
    ("test_policy_input", "3. policy input built", False),
    ("test_policy_decision_cache_hit", "3. policy: input + decision-cache hit", True),
    ("test_policy_opa_call", "3. policy: OPA POST (decision-cache miss)", False),
    ("test_limits_lua_round_trip", "4. state: the one Lua call to Redis", True),
    ("test_response_build", "5. response built", True),
    ("test_decision_log_record", "6. decision-log record queued", True),
    ("test_handler_check", "whole handler (warm caches, API key)", False),
]
PATH_ORDER = ("A", "B", "C", "D", "E")
# C's max req/s as a share of B's, per route (issue: sink 70 %, model 85 %)
THROUGHPUT_GOAL = {"sink": 0.70, "model": 0.85}
# Redis counts commands a Lua script runs like any other. e2e.json lists the ones extauthz's
# scripts call (from extauthz/limits/lua/*.lua); this is the fallback for older results.
SCRIPT_INTERNAL = {"get", "hget", "incr", "incrby", "pexpire", "expire", "set", "exists"}
CONNECTION_UPKEEP = {"hello", "ping", "client|setinfo", "select", "info"}
COLOURS = {"A": "#555555", "B": "#1f77b4", "C": "#d62728", "D": "#2ca02c", "E": "#9467bd"}


def ms(us: float) -> str:
    return "–" if us is None or math.isnan(us) else f"{us / 1000:.2f}"


def ratio(a: float | None, b: float | None) -> str:
    return "–" if not a or not b else f"{a / b:.2f}"


def _paths(block: dict[str, Any]) -> list[str]:
    return [p for p in PATH_ORDER if p in block]


def latency_tables(e2e: dict[str, Any]) -> list[str]:
    out: list[str] = []
    for route, by_conc in e2e["summary"].items():
        label = "model route (MLServer digits)" if route == "model" else "sink route (no model)"
        out += [f"### {label}", ""]
        out += [
            "| c | path | p50 ms | p90 ms | p99 ms | max ms | req/s (median of rounds) | n |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for conc, block in sorted(by_conc.items(), key=lambda kv: int(kv[0])):
            for p in _paths(block):
                s = block[p]
                out.append(
                    f"| {conc} | {p} | {ms(s['p50_us'])} | {ms(s['p90_us'])} | {ms(s['p99_us'])} "
                    f"| {ms(s['max_us'])} | {s['rps_median']:.0f} | {s['n']} |"
                )
        out += ["", "Ratios (C over the others; latency > 1 means C is slower):", ""]
        out += [
            "| c | C/A p50 | C/A p99 | C/B p50 | C/B p99 | C/D p50 | C/D p99 | C−A p50 ms "
            "| D−A p50 ms | E−A p50 ms | C/B req/s | C/D req/s | C/E req/s |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for conc, block in sorted(by_conc.items(), key=lambda kv: int(kv[0])):
            a, b, c, d, e = (block.get(k) or {} for k in PATH_ORDER)
            out.append(
                f"| {conc} | {ratio(c.get('p50_us'), a.get('p50_us'))} "
                f"| {ratio(c.get('p99_us'), a.get('p99_us'))} "
                f"| {ratio(c.get('p50_us'), b.get('p50_us'))} "
                f"| {ratio(c.get('p99_us'), b.get('p99_us'))} "
                f"| {ratio(c.get('p50_us'), d.get('p50_us'))} "
                f"| {ratio(c.get('p99_us'), d.get('p99_us'))} "
                f"| {ms(c['p50_us'] - a['p50_us']) if c and a else '–'} "
                f"| {ms(d['p50_us'] - a['p50_us']) if d and a else '–'} "
                f"| {ms(e['p50_us'] - a['p50_us']) if e and a else '–'} "
                f"| {ratio(c.get('rps_median'), b.get('rps_median'))} "
                f"| {ratio(c.get('rps_median'), d.get('rps_median'))} "
                f"| {ratio(c.get('rps_median'), e.get('rps_median'))} |"
            )
        out.append("")
    return out


def max_throughput(e2e: dict[str, Any]) -> dict[str, dict[str, tuple[float, str]]]:
    """route → path → (best median req/s over the concurrencies, at which c)."""
    best: dict[str, dict[str, tuple[float, str]]] = {}
    for route, by_conc in e2e["summary"].items():
        for conc, block in by_conc.items():
            for p, s in block.items():
                cur = best.setdefault(route, {}).get(p)
                if cur is None or s["rps_median"] > cur[0]:
                    best[route][p] = (s["rps_median"], conc)
    return best


def targets(e2e: dict[str, Any]) -> list[str]:
    out = ["| target | measured | met? |", "|---|---|---|"]
    summary = e2e["summary"]
    concs = sorted({int(c) for r in summary.values() for c in r})
    mid = [c for c in concs if c > 1][:1]
    for route in summary:
        for conc in [1, *mid]:
            block = summary[route].get(str(conc), {})
            if not all(k in block for k in ("A", "C", "D")):
                continue
            added_c = block["C"]["p50_us"] - block["A"]["p50_us"]
            added_d = block["D"]["p50_us"] - block["A"]["p50_us"]
            out.append(
                f"| C adds ≤ D's latency over A (p50, {route}, c={conc}) "
                f"| C +{ms(added_c)} ms, D +{ms(added_d)} ms "
                f"| {'yes' if added_c <= added_d else 'NO'} |"
            )
    best = max_throughput(e2e)
    for route, paths in best.items():
        if "B" in paths and "C" in paths:
            r = paths["C"][0] / paths["B"][0]
            goal = THROUGHPUT_GOAL.get(route, 0.7)
            out.append(
                f"| C max throughput ≥ {goal:.0%} of B's ({route}) | {paths['C'][0]:.0f} vs "
                f"{paths['B'][0]:.0f} req/s = {r:.0%} | {'yes' if r >= goal else 'NO'} |"
            )
    for route in summary:
        block = summary[route].get("1", {})
        if all(k in block for k in ("A", "C", "E")):
            added_c = block["C"]["p50_us"] - block["A"]["p50_us"]
            added_e = block["E"]["p50_us"] - block["A"]["p50_us"]
            out.append(
                f"| for context: C's and E's (Envoy's own filters) added p50 ({route}, c=1) "
                f"| C +{ms(added_c)} ms, E +{ms(added_e)} ms | — |"
            )
    c = e2e["per_decision"].get("C", {})
    redis_cmds = c.get("redis_commands", {})
    script = set(e2e.get("redis_script_commands") or SCRIPT_INTERNAL)
    inside = {k: v for k, v in redis_cmds.items() if k in script}
    upkeep = {k: v for k, v in redis_cmds.items() if k in CONNECTION_UPKEEP}
    calls = {k: v for k, v in redis_cmds.items() if k not in inside and k not in upkeep}
    trips = sum(calls.values())

    def fmt(d: dict[str, float]) -> str:
        return ", ".join(f"{k} {v}" for k, v in d.items()) or "none"

    out.append(
        f"| 1 Redis round trip per decision | {trips:.3f} calls per decision ({fmt(calls)}); "
        f"inside the Lua scripts (a rare top-level call of the same command counts here "
        f"too): {fmt(inside)}; connection upkeep: {fmt(upkeep)} "
        f"| {'yes' if trips <= 1.01 else 'NO'} |"
    )
    cache = c.get("policy_cache", {})
    if cache:  # counters only appear once non-zero: no opa_queries delta means none
        q = cache.get("opa_queries", 0.0)
        lookups = ", ".join(f"{k} {v:.2%}" for k, v in cache.items() if k != "opa_queries")
        out.append(
            f"| OPA called on ≤ 5 % of decisions (steady traffic) | {q:.2%} of decisions "
            f"(decision cache: {lookups}) "
            f"| {'yes' if q <= 0.05 else 'NO'} |"
        )
    else:
        out.append("| OPA called on ≤ 5 % of decisions | extauthz exposes no metrics | – |")
    return out


def stage_table(micro: dict[str, Any] | None) -> list[str]:
    if not micro:
        return ["(micro benchmarks did not run)"]
    ours = [b for b in micro["benchmarks"] if "test_stages.py::" in b["fullname"]]
    by_name = {b["name"]: b for b in ours}
    handler = by_name.get("test_handler_check", {}).get("stats", {}).get("median")
    out = [
        "| stage | median µs | IQR µs | share of the whole handler | on the steady-state path |",
        "|---|---|---|---|---|",
    ]
    path_sum = 0.0
    for name, label, on_path in STAGES:
        b = by_name.get(name)
        if b is None:
            skipped = next((n for n in micro.get("skipped", []) if n.startswith(name)), None)
            out.append(f"| {label} | {'skipped: ' + skipped if skipped else 'not run'} | | | |")
            continue
        med, iqr = b["stats"]["median"] * 1e6, b["stats"]["iqr"] * 1e6
        if on_path:
            path_sum += med
        share = f"{med / (handler * 1e6):.0%}" if handler and name != "test_handler_check" else ""
        out.append(f"| {label} | {med:.1f} | {iqr:.1f} | {share} | {'yes' if on_path else ''} |")
    if handler:
        out += [
            "",
            f"The stages on the steady-state path add up to {path_sum:.0f} µs of the "
            f"handler's {handler * 1e6:.0f} µs; the difference is time outside the listed "
            "stage functions (the handler's code between them, metrics, and event-loop "
            "scheduling between awaits; the profile below shows it from the outside).",
        ]
    others = [b for b in micro["benchmarks"] if "test_stages.py::" not in b["fullname"]]
    if others:
        out += [
            "",
            "Other micro benchmarks in bench/micro:",
            "",
            "| benchmark | median µs | IQR µs |",
            "|---|---|---|",
        ]
        out += [
            f"| `{b['fullname'].removeprefix('bench/micro/')}` | {b['stats']['median'] * 1e6:.1f} "
            f"| {b['stats']['iqr'] * 1e6:.1f} |"
            for b in others
        ]
    return out


def profile_section(prof: dict[str, Any]) -> list[str]:
    if not prof or "error" in prof:
        return [f"(no profile: {prof.get('error') if prof else 'not run'})"]
    attributed = prof["attributed"]
    out = [
        f"py-spy (250 Hz, {prof['samples']} samples on the event-loop thread; "
        f"{prof['other_thread_samples']} samples on other threads — decision-log writer, metrics "
        "server, gRPC poller — left out) on the extauthz process while h2load drove path C "
        "(sink route, c=8). Each sample is charged to the innermost extauthz function on its "
        "stack.",
        "",
    ]
    outside = next((r for r in attributed if r["function"] == OUTSIDE), None)
    own = [r for r in attributed if "(extauthz/" in r["function"]]
    if outside:
        out += [
            f"{outside['share']:.0%} of the event loop's samples have no extauthz frame: "
            "gRPC's server machinery (Cython, seen as `Handle._run`), socket writes and "
            "the event loop's own polling.",
            "",
        ]
    out += [
        "**Top 3 hot spots in extauthz's code** (share of all event-loop samples, "
        "including what they call):",
        "",
    ]
    for i, row in enumerate(own[:3], 1):
        out.append(f"{i}. `{row['function']}` — {row['share']:.0%}")
    out += ["", "| function (self time, innermost frame) | share |", "|---|---|"]
    out += [f"| `{r['function']}` | {r['share']:.1%} |" for r in prof["self"][:8]]
    out += ["", "| extauthz function (inclusive) | share |", "|---|---|"]
    out += [f"| `{r['function']}` | {r['share']:.1%} |" for r in prof["inclusive_extauthz"][:8]]
    return out


def plot_cdfs(e2e: dict[str, Any], out_dir: Path) -> list[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    qs = e2e["cdf_percentiles"]
    routes = list(e2e["cdf"])
    concs = sorted({int(c) for r in routes for c in e2e["cdf"][r]})
    files = []
    for conc in concs:
        fig, axes = plt.subplots(1, len(routes), figsize=(6 * len(routes), 4.8), squeeze=False)
        for ax, route in zip(axes[0], routes, strict=True):
            block = e2e["cdf"][route].get(str(conc), {})
            for p in _paths(block):
                ax.plot(
                    [v / 1000 for v in block[p]],
                    qs,
                    label=f"{p}: {e2e['paths'][p]}",
                    color=COLOURS[p],
                    linewidth=1.6,
                )
            ax.set_xscale("log")
            ax.set_xlabel("latency (ms, log scale)")
            ax.set_ylabel("percentile")
            ax.set_title(f"{route} route, concurrency {conc}")
            ax.grid(True, which="both", alpha=0.3)
            ax.set_ylim(0, 100)
        handles, labels = axes[0][0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="lower center", ncol=2, fontsize=8, frameon=False)
        fig.tight_layout(rect=(0, 0.12, 1, 1))
        name = f"cdf-c{conc}.png"
        fig.savefig(out_dir / name, dpi=110)
        plt.close(fig)
        files.append(name)
    return files


def render(out_dir: Path) -> Path:
    e2e = json.loads((out_dir / "e2e.json").read_text())
    micro_path = out_dir / "micro.json"
    micro = json.loads(micro_path.read_text()) if micro_path.exists() else None
    facts = json.loads((out_dir / "facts.json").read_text())
    pngs = plot_cdfs(e2e, out_dir)
    cfg = e2e["config"]
    lines = [
        f"# extauthz benchmark — {e2e['started'][:10]}",
        "",
        f"`make bench` (`.venv/bin/python -m bench.run`), {e2e['started']}, {e2e['seconds']:.0f} s "
        f"for the end-to-end part. Machine: {facts['machine']['cores (nproc)']} cores "
        f"({facts['machine']['CPU model']}), shared by the load generator and every process "
        "measured; absolute times are for context, the ratios are the result.",
        "",
        "## Paths",
        "",
        "One bench Envoy, one listener per path, identical HTTP connection managers (those of "
        "the gateway's own, from `extauthz/edge/listeners.py`), differing only in their HTTP "
        "filters:",
        "",
    ]
    lines += [f"- **{k}** {v}" for k, v in e2e["paths"].items()]
    lines += [
        "",
        f"Request: {cfg['request']}. Two routes: **model** — Envoy → MLServer's `digits` model "
        "(a cheap scikit-learn inference); **sink** — the same request to an upstream that is "
        "another listener of the same Envoy answering 200 at once (a direct response reached "
        "through a real route, so every filter of every path, including D's rate-limit filter, "
        "runs). The sink route isolates the guard; the model route is what a caller sees.",
        "",
        f"Load: h2load (HTTP/1.1, keep-alive, one thread) with a fixed request count per run "
        f"({', '.join(f'c={k}: {v}' for k, v in cfg['requests_per_run'].items())}), "
        f"{cfg['rounds']} rounds; each round runs every route × concurrency × path once with the "
        "path order rotated, so all paths see the same drift. Percentiles pool every request of "
        "every round (from h2load's per-request log); req/s is the median of the rounds.",
        "",
        "## Headline",
        "",
    ]
    lines += targets(e2e)
    best = max_throughput(e2e)
    lines += [
        "",
        "Max throughput (best median req/s over the concurrencies):",
        "",
        "| route | " + " | ".join(_paths(best[next(iter(best))])) + " |",
        "|---|" + "---|" * len(_paths(best[next(iter(best))])),
    ]
    for route, paths in best.items():
        lines.append(
            f"| {route} | "
            + " | ".join(f"{paths[p][0]:.0f} (c={paths[p][1]})" for p in _paths(paths))
            + " |"
        )
    lines += ["", "## Latency and throughput", ""]
    lines += latency_tables(e2e)
    if pngs:
        lines += ["Latency CDFs (every request of every round):", ""]
        lines += [f"![latency CDF]({name})" for name in pngs]
        lines.append("")
    lines += ["## Work per decision (counted around every run of C and D)", ""]
    for p, d in e2e["per_decision"].items():
        if p in ("C", "D"):
            lines.append(
                f"- **{p}**: Redis commands per request {d['redis_commands']}"
                + (
                    f"; extauthz policy cache per decision {d['policy_cache']}"
                    if d["policy_cache"]
                    else ""
                )
            )
    alone = e2e.get("guards_alone_p50_us", {})
    if alone:
        lines += [
            "",
            "Each guard service called directly over gRPC (a Python client, c=1, the "
            "same CheckRequest; p50 µs, including the client's own cost, the same for every row):",
            "",
            "| call | p50 µs |",
            "|---|---|",
        ]
        lines += [f"| {k} | {v:.0f} |" for k, v in alone.items()]
    lines += [
        "",
        "For C, EVALSHA is the one network round trip; the other commands are the Lua "
        "script's own calls inside Redis (named in extauthz/limits/lua/). D's INCRBY + EXPIRE "
        "travel as one pipeline.",
        "",
        "## Where time goes inside extauthz (micro benchmarks)",
        "",
        "pytest-benchmark, in-process, against the real Redis and OPA (`pytest bench/micro`); "
        "async stages are timed as batches of awaits in one event loop, reported per call.",
        "",
    ]
    lines += stage_table(micro)
    lines += ["", "## Profile", ""]
    lines += profile_section(e2e.get("profile", {}))
    soak = out_dir / "soak.md"
    if soak.exists():  # `make soak` wrote into the same folder: its summary and plot
        lines += [
            "",
            *[
                f"#{line}" if line.startswith("#") else line
                for line in soak.read_text().splitlines()
            ],
        ]
    lines += ["", "## Peers", ""]
    lines += [f"- {n}" for n in e2e["peers"]["notes"]] or ["- all installed"]
    eq = e2e["equivalence"]
    lines += [
        f"- Policy equivalence: {'yes' if eq['ok'] else 'NO'} — {eq['detail']}. D's Rego "
        "(`bench/peers/policy/envoy_authz.rego`) authenticates the key (HMAC against the key "
        "record) and then evaluates the project's own `data.extauthz.authz.decision` with the "
        "input extauthz would build; its quota is the `bench` tier as an envoyproxy/ratelimit "
        "descriptor per key id (a fixed window; ours is a sliding window).",
        "- D has no decision cache: every request evaluates the Rego policy. `opa bench` of "
        "the two policies for the benchmark request (in-process evaluation, µs per decision): "
        + ", ".join(f"{k} {v}" for k, v in e2e.get("opa_eval_us", {}).items())
        + ". extauthz pays its figure only on a decision-cache miss.",
        "",
        "## Versions and machine",
        "",
        "| component | version |",
        "|---|---|",
    ]
    lines += [f"| {k} | {v} |" for k, v in facts["versions"].items()]
    lines += ["", "| machine | |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in facts["machine"].items()]
    lines += [
        "",
        "## Reproduce",
        "",
        "    scripts/install_bench_tools.sh      # h2load, envoyproxy/ratelimit, the OPA peer",
        "    .venv/bin/python -m bench.run       # = make bench; writes bench/results/<date>/",
        "",
    ]
    report = out_dir / "report.md"
    report.write_text("\n".join(lines))
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("results", type=Path)
    print(render(parser.parse_args().results))


if __name__ == "__main__":
    main()
