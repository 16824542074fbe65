"""`extauthz dev` (the local stack, dev tokens and certificates) and `extauthz envoy render`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from extauthz.cli.common import csv, parse_duration
from extauthz.settings import load_settings

if TYPE_CHECKING:
    from extauthz.dev.devstack import Stack


def _stack() -> Stack:
    from extauthz.dev.devstack import Stack

    return Stack(load_settings())


def cmd_dev_up(args: argparse.Namespace) -> int:
    from extauthz.dev.runner import StackError

    stack = _stack()
    try:
        started = stack.up()
    except StackError as exc:
        print(f"stack failed: {exc}", file=sys.stderr)
        return 1
    kept = [name for name in stack.status() if name not in started]
    if kept:
        print(f"already running, left alone: {', '.join(kept)}", file=sys.stderr)
    s = stack.settings
    print(
        f"https     {stack.envoy_tls_url}  (TLS; its certificate from the dev CA, "
        f"{stack.dev_ca.ca_file})"
    )
    print(f"mtls      {stack.envoy_mtls_url}  (client certificates from the dev CA)")
    print(f"http      {stack.envoy_url}  (plain HTTP: local development only)")
    print(f"envoy     admin http://127.0.0.1:{s.envoy_admin_port}  config {stack.envoy_dir}")
    print(f"extauthz  grpc 127.0.0.1:{s.port}")
    print(f"opa       http://127.0.0.1:{s.opa_port}")
    print(f"redis     redis://127.0.0.1:{s.redis_port}")
    print(f"mlserver  http://127.0.0.1:{s.model_port}  (reach it through envoy)")
    print("analytics worker: `extauthz analytics show --subject S` (scores, actions)")
    print(f"logs      {stack.logs}")
    return 0


def cmd_dev_down(args: argparse.Namespace) -> int:
    _stack().down()
    return 0


def cmd_dev_status(args: argparse.Namespace) -> int:
    for name, up in _stack().status().items():
        print(f"{name:<10}{'running' if up else 'stopped'}")
    return 0


def cmd_dev_demo(args: argparse.Namespace) -> int:
    from extauthz.dev.demo import run_demo

    return run_demo(_stack())


def cmd_dev_token(args: argparse.Namespace) -> int:
    from extauthz.dev.issuer import device_key_file

    stack = _stack()
    issuer, issuer_settings = stack.dev_issuer, stack.settings
    jkt = ""
    if args.dpop_key:
        key = device_key_file(Path(args.dpop_key))
        jkt = key.thumbprint()
        print(f"DPoP key {args.dpop_key}: thumbprint {jkt}", file=sys.stderr)
    if args.ttl > issuer_settings.jwt_max_lifetime:
        print(
            f"warning: lifetime {args.ttl}s is over EXTAUTHZ_JWT_MAX_LIFETIME "
            f"({issuer_settings.jwt_max_lifetime}s): the service will refuse this token",
            file=sys.stderr,
        )
    token = issuer.mint(args.subject, args.roles, args.projects, args.tier, args.ttl, jkt)
    print(token)
    return 0


def cmd_dev_certs(args: argparse.Namespace) -> int:
    stack = _stack()
    ca = stack.dev_ca
    ca.ensure()
    print(f"CA:      {ca.ca_file}")
    print(
        f"server:  {ca.server_cert} (Envoy's TLS listeners, {stack.envoy_tls_url} and "
        f"{stack.envoy_mtls_url})"
    )
    if args.client:
        if not (args.uri or args.dns):
            print("a client certificate needs --uri and/or --dns", file=sys.stderr)
            return 1
        cert, key = ca.issue_client(args.client, uri=args.uri, dns=args.dns)
        print(f"client:  {cert}  key {key}")
    return 0


def cmd_envoy_render(args: argparse.Namespace) -> int:
    """The generated configuration (extauthz/edge/) for the current settings and catalog,
    printed, never written over a running stack's files: the bootstrap, RDS and CDS documents
    of `<run_dir>/envoy/` (`--static`: one self-contained config with routes, clusters and
    certificate files inline). `--validate`: `envoy --mode validate` on the self-contained one."""
    import json
    import tempfile

    from extauthz.dev.devstack import find_envoy
    from extauthz.edge.build import gateway_ports
    from extauthz.edge.render import gateway_documents, validate, write_static

    stack = _stack()
    s, files, models = stack.settings, stack.envoy_files(), stack.catalog()
    if args.static or args.validate:
        stack.prepare_identity()  # the certificate files it names
        stack.logs.mkdir(parents=True, exist_ok=True)  # and the access log's directory
        with tempfile.TemporaryDirectory(prefix="extauthz-envoy-") as tmp:
            path = write_static(s, Path(tmp) / "envoy.json", files, gateway_ports(s), models)
            if args.validate:
                ok, words = validate(path, find_envoy())
                print(words, file=sys.stdout if ok else sys.stderr)
                return 0 if ok else 1
            print(path.read_text(), end="")
        return 0
    for name, doc in gateway_documents(s, stack.envoy_dir, files, gateway_ports(s), models).items():
        print(f"# {name}")
        print(json.dumps(doc, indent=1))
    return 0


def register_envoy(sub: argparse._SubParsersAction) -> None:
    envoy = sub.add_parser("envoy", help="Envoy configuration").add_subparsers(
        dest="envoy_command", required=True
    )
    render = envoy.add_parser("render", help="print the Envoy config for the settings")
    render.add_argument(
        "--static",
        action="store_true",
        help="one self-contained config (routes, clusters, certificates inline)",
    )
    render.add_argument(
        "--validate", action="store_true", help="run `envoy --mode validate` on it instead"
    )
    render.set_defaults(func=cmd_envoy_render)


def register(sub: argparse._SubParsersAction) -> None:
    dev = sub.add_parser("dev", help="the local stack").add_subparsers(
        dest="dev_command", required=True
    )
    dev.add_parser("up", help="start Redis, OPA, MLServer, extauthz, Envoy").set_defaults(
        func=cmd_dev_up
    )
    dev.add_parser("down", help="stop what `dev up` started").set_defaults(func=cmd_dev_down)
    dev.add_parser("status", help="which components run").set_defaults(func=cmd_dev_status)
    dev.add_parser(
        "demo", help="start the stack and show allowed and denied requests"
    ).set_defaults(func=cmd_dev_demo)
    token = dev.add_parser("token", help="mint an access token from the dev issuer (stdout)")
    token.add_argument("--subject", required=True)
    token.add_argument("--roles", type=csv, default=(), help="comma-separated roles")
    token.add_argument("--projects", type=csv, default=(), help="comma-separated projects")
    token.add_argument("--tier", default="standard")
    token.add_argument("--ttl", type=parse_duration, default=600, help="default 10m (max 15m)")
    token.add_argument(
        "--dpop-key", help="bind the token to this private JWK file (created if missing)"
    )
    token.set_defaults(func=cmd_dev_token)
    certs = dev.add_parser("certs", help="the dev CA, Envoy's certificate, client certificates")
    certs.add_argument("--client", help="issue a client certificate with this file name")
    certs.add_argument(
        "--uri", default="", help="its URI SAN, e.g. spiffe://extauthz.dev/ns/x/sa/y"
    )
    certs.add_argument("--dns", default="", help="its DNS SAN")
    certs.set_defaults(func=cmd_dev_certs)
