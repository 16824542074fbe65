"""extauthz command line: serve, keys, devices, policy, models, throttle, quarantine,
analytics, audit, envoy, dev."""

from __future__ import annotations

import argparse
import sys

from extauthz.cli import analytics, audit, dev, devices, keys, models, policy, serve, throttle


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="extauthz", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    # each command group registers its own parser; this order is the order of --help
    for register in (
        serve.register,
        keys.register,
        dev.register_envoy,
        policy.register,
        models.register,
        dev.register,
        devices.register,
        throttle.register,
        throttle.register_quarantine,
        analytics.register,
        audit.register,
    ):
        register(sub)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    sys.exit(args.func(args))
