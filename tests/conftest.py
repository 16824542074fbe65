"""Shared by the test tiers: settings for a real stack on free ports, so it can run beside a
`make up` stack. Each tier starts only what it needs: tests/integration/conftest.py Redis and
OPA, tests/e2e/conftest.py the whole stack (one per session each)."""

from __future__ import annotations

import shutil
from pathlib import Path

from extauthz.dev.devstack import ROOT
from extauthz.dev.runner import free_ports
from extauthz.settings import Settings


def stack_settings(run_dir: Path) -> Settings:
    """Settings for a stack on free ports, with its own copy of rego/ (tests edit policy live)
    and shadow mode on for the example candidate."""
    envoy, admin, opa, redis, model, model_grpc, svc, metrics, mtls, tls = free_ports(10)
    policy_dir = run_dir / "rego"
    shutil.copytree(ROOT / "rego", policy_dir, dirs_exist_ok=True)
    return Settings(
        policy_dir=policy_dir,
        shadow_decision_path="extauthz/candidate/decision",
        metrics_port=metrics,
        run_dir=run_dir,
        envoy_port=envoy,
        envoy_mtls_port=mtls,
        envoy_tls_port=tls,
        jwks_min_refresh_interval=0.2,  # JWKS rotation is picked up at once
        envoy_admin_port=admin,
        opa_url=f"http://127.0.0.1:{opa}",
        redis_url=f"redis://127.0.0.1:{redis}/0",
        model_port=model,
        model_grpc_port=model_grpc,
        port=svc,
        key_pepper_file=run_dir / "key-pepper",
        # the whole suite's 401s come from 127.0.0.1; tests/e2e/test_limits.py stuffs from
        # another network up to this limit
        auth_failure_limit=200,
        # likewise for policy denials (403s) per subject and per network
        policy_denial_limit=200,
        policy_denial_prefix_limit=2000,
        # the suite denies on purpose; the automatic threat level is tested on its own
        auto_threat_ratio=0.0,
    )
