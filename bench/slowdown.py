"""`python -m bench.slowdown DELAY_US`: `extauthz serve` with DELAY_US of CPU burnt in every
Check, before the real handler runs. Used ONLY by the gate's self-test (tests/bench_gate/) to
show the gate fails on a regression; nothing else starts extauthz this way.
"""

from __future__ import annotations

import functools
import sys
import time


def main() -> None:
    delay_ns = int(sys.argv[1]) * 1000
    from extauthz.handler import CheckHandler

    original = CheckHandler.check

    @functools.wraps(original)
    async def slowed(self, request):  # type: ignore[no-untyped-def]
        until = time.perf_counter_ns() + delay_ns
        while time.perf_counter_ns() < until:  # a CPU-bound stage got slower
            pass
        return await original(self, request)

    CheckHandler.check = slowed  # type: ignore[method-assign]
    from extauthz.cli import main as cli_main

    cli_main(["serve"])


if __name__ == "__main__":
    main()
