"""The CI benchmark gate (bench/gate.py): ratios of a short interleaved run against the
committed bench/baseline.json — and proof that the gate fails when extauthz gets slower.

Both real runs start their own Envoy, Redis, OPA, extauthz and trivial authz on free ports
(no model server), take about 15 and 25 s, and need h2load (scripts/install_bench_tools.sh).
"""

from __future__ import annotations

import shutil

import pytest

from bench import gate

BASELINE = {"ratios": {"c1_p50_C_over_B": 1.6, "c8_rps_B_over_C": 1.7}, "tolerance": {}}


@pytest.fixture(scope="module")
def h2load() -> None:
    if shutil.which("h2load") is None:
        pytest.fail("h2load is missing: run scripts/install_bench_tools.sh --minimal")


def test_compare_passes_within_tolerance() -> None:
    verdict = gate.compare({"c1_p50_C_over_B": 1.75, "c8_rps_B_over_C": 1.5}, BASELINE)
    assert verdict.ok, verdict.lines


def test_compare_fails_beyond_tolerance() -> None:
    verdict = gate.compare({"c1_p50_C_over_B": 2.1, "c8_rps_B_over_C": 1.7}, BASELINE)
    assert not verdict.ok
    assert verdict.lines[0].startswith("FAIL c1_p50_C_over_B")


def test_compare_fails_on_a_missing_ratio() -> None:
    assert not gate.compare({"c1_p50_C_over_B": 1.6}, BASELINE).ok


def test_committed_baseline_is_complete() -> None:
    baseline = gate.load_baseline()
    assert set(baseline["ratios"]) == set(gate.RATIOS)
    assert all(0 < float(t) < 1 for t in baseline["tolerance"].values())


@pytest.mark.e2e
def test_gate_passes_against_the_committed_baseline(h2load: None) -> None:
    """The gate itself: this run's ratios are within tolerance of bench/baseline.json."""
    baseline = gate.load_baseline()
    verdict = gate.compare(gate.measure()["ratios"], baseline)
    if not verdict.ok:  # on a shared machine a regression must show twice, not once
        verdict = gate.compare(gate.measure()["ratios"], baseline)
    assert verdict.ok, "benchmark regression:\n" + "\n".join(verdict.lines)


@pytest.mark.e2e
def test_gate_fails_on_an_injected_slowdown(h2load: None) -> None:
    """extauthz started with 1 ms of CPU burnt per Check (bench/slowdown.py, this test only)."""
    measured = gate.measure(extauthz_delay_us=1000)
    verdict = gate.compare(measured["ratios"], gate.load_baseline())
    assert not verdict.ok, "the gate did not notice a 1 ms slower handler:\n" + "\n".join(
        verdict.lines
    )
