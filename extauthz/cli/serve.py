"""`extauthz serve`: the gRPC ext_authz service (one process, or a supervisor of workers)."""

from __future__ import annotations

import argparse
import logging
import sys

from extauthz.settings import describe_settings, load_settings


def cmd_serve(args: argparse.Namespace) -> int:
    from extauthz.server import run, run_on_loop, serve_shaping, supervise

    settings = load_settings()
    logging.basicConfig(
        level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    if args.shaping_only:
        if not settings.shape_port:
            print("--shaping-only needs EXTAUTHZ_SHAPE_PORT", file=sys.stderr)
            return 2
        run_on_loop(serve_shaping(settings), settings.event_loop)
        return 0
    workers = args.workers or settings.workers
    if args.worker_index is None and workers > 1:
        return supervise(settings, workers)
    run(settings, worker=args.worker_index is not None, index=args.worker_index or 0)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    serve = sub.add_parser(
        "serve",
        help="run the gRPC ext_authz service",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Run the ext_authz gRPC service. Configured only by settings: EXTAUTHZ_* "
        "environment variables, or a file of such lines named by EXTAUTHZ_CONFIG_FILE.",
        epilog="settings:\n" + describe_settings(),
    )
    serve.add_argument(
        "--workers",
        type=int,
        default=0,
        help="processes sharing the port (SO_REUSEPORT); default EXTAUTHZ_WORKERS",
    )
    serve.add_argument("--worker-index", type=int, help=argparse.SUPPRESS)
    serve.add_argument(
        "--shaping-only",
        action="store_true",
        help="run only the ext_proc response-shaping processor, on EXTAUTHZ_SHAPE_PORT",
    )
    serve.set_defaults(func=cmd_serve)
