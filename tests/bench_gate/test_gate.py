"""The CI benchmark gate (bench/gate.py): ratios of a short interleaved run against the
committed bench/baseline.json — and proof that the gate fails when extauthz gets slower.

The real runs start their own Envoy, Redis, OPA, extauthz and trivial authz on free ports
(no model server), take about 25 s each, and need h2load (scripts/install_bench_tools.sh).
"""

from __future__ import annotations

import os
import shutil

import pytest

from bench import gate

BASELINE = {
    "ratios": {"c1_added_p50_C_over_B": 2.5, "c8_cpu_per_request_C_over_B": 3.0},
    "tolerance": {"c1_added_p50_C_over_B": 0.35, "c8_cpu_per_request_C_over_B": 0.25},
}


@pytest.fixture(scope="module")
def h2load() -> None:
    if shutil.which("h2load") is None:
        pytest.fail("h2load is missing: run scripts/install_bench_tools.sh --minimal")


def test_compare_passes_within_tolerance() -> None:
    verdict = gate.compare(
        {"c1_added_p50_C_over_B": 3.3, "c8_cpu_per_request_C_over_B": 3.7}, BASELINE
    )
    assert verdict.ok, verdict.lines


def test_compare_fails_beyond_tolerance() -> None:
    verdict = gate.compare(
        {"c1_added_p50_C_over_B": 2.5, "c8_cpu_per_request_C_over_B": 3.8}, BASELINE
    )
    assert not verdict.ok
    assert verdict.lines[1].startswith("FAIL c8_cpu_per_request_C_over_B")


def test_compare_fails_on_a_missing_ratio() -> None:
    assert not gate.compare({"c1_added_p50_C_over_B": 2.5}, BASELINE).ok


def test_committed_baseline_is_complete_and_portable() -> None:
    """Only Python-against-Python figures are gated: no ratio to Envoy alone (processor-bound)."""
    baseline = gate.load_baseline()
    assert set(baseline["ratios"]) == set(gate.RATIOS)
    assert not any(name.endswith("_over_A") for name in baseline["ratios"])
    assert all(0 < float(t) < 1 for t in baseline["tolerance"].values())
    assert baseline["cpu_model"]


def test_cpu_time_of_a_process_grows_with_its_work() -> None:
    before = gate.cpu_ns(os.getpid())
    sum(i * i for i in range(300_000))
    assert gate.cpu_ns(os.getpid()) - before > 1_000_000  # ≥ 1 ms of CPU, measured in ns


def test_cpu_time_of_a_gone_process_is_an_error() -> None:
    with pytest.raises(OSError):
        gate.cpu_ns(2**22 + 1)  # above pid_max's default: no such process


@pytest.mark.e2e
def test_gate_passes_against_the_committed_baseline(h2load: None) -> None:
    """The gate itself: this run's ratios are within tolerance of bench/baseline.json
    (a regression must show in two measurements)."""
    verdict = gate.gate()
    assert verdict.ok, "benchmark regression:\n" + "\n".join(verdict.lines)


@pytest.mark.e2e
@pytest.mark.parametrize("delay_us", [1000, 300])
def test_gate_fails_on_an_injected_slowdown(h2load: None, delay_us: int) -> None:
    """extauthz with a fixed amount of extra work in every Check, `delay_us` of CPU on the reference
    machine and the same share of a Check on any other (bench/slowdown.py, tests only)."""
    measured = gate.measure(extauthz_delay_us=delay_us)
    verdict = gate.compare(measured["ratios"], gate.load_baseline())
    assert not verdict.ok, f"the gate did not notice {delay_us} µs per Check:\n" + "\n".join(
        verdict.lines
    )


def test_a_rare_503_is_tolerated_anything_else_is_an_error() -> None:
    gate._check({200: 1499, 503: 1}, "C")
    with pytest.raises(RuntimeError):
        gate._check({200: 1400, 503: 100}, "C")
    with pytest.raises(RuntimeError):
        gate._check({200: 1499, 401: 1}, "C")
