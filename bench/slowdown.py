"""`python -m bench.slowdown DELAY_US`: `extauthz serve` with a fixed amount of extra CPU work in
every Check, before the real handler runs. Used ONLY by the gate's self-test (tests/bench_gate/)
to show the gate fails on a regression; nothing else starts extauthz this way.

The slowdown is a fixed amount of Python work, not a fixed wall time: a regression in code is
work, and work scales with the processor as the rest of the decision does, so the slowdown is
the same share of a Check on any machine. DELAY_US names what the work costs on the reference
machine (AMD EPYC, CPython 3.11: ITERATIONS_PER_US loop iterations take one µs of CPU).
A busy-wait on the clock would not do: when the process is preempted inside it, the wall time
runs out with less CPU burnt, and on a loaded machine the "300 µs" shrank to ~200 µs of CPU.
"""

from __future__ import annotations

import functools
import sys

ITERATIONS_PER_US = 27  # measured 2026-12-01: 37 ns per iteration of burn() on AMD EPYC, 3.11


def burn(iterations: int) -> int:
    """Pure-Python work the interpreter cannot skip (the result is used)."""
    x = 0
    for i in range(iterations):
        x ^= i * 7
    return x


def main() -> None:
    iterations = int(sys.argv[1]) * ITERATIONS_PER_US
    from extauthz.handler import CheckHandler

    original = CheckHandler.check
    sink: list[int] = [0]

    @functools.wraps(original)
    async def slowed(self, request):  # type: ignore[no-untyped-def]
        sink[0] = burn(iterations)  # a CPU-bound stage got slower
        return await original(self, request)

    CheckHandler.check = slowed  # type: ignore[method-assign]
    from extauthz.cli import main as cli_main

    cli_main(["serve"])


if __name__ == "__main__":
    main()
