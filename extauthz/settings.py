"""All settings, read once from EXTAUTHZ_* environment variables and an optional file."""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlsplit

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

# An optional dotenv-style file of EXTAUTHZ_* lines; the environment wins over it.
CONFIG_FILE_ENV = "EXTAUTHZ_CONFIG_FILE"


class Settings(BaseSettings):
    """Every setting of the service, CLI and dev stack. `extauthz serve --help` lists them."""

    model_config = SettingsConfigDict(env_prefix="EXTAUTHZ_", extra="ignore", frozen=True)

    # --- service
    host: str = Field("127.0.0.1", description="Address the gRPC ext_authz server binds to.")
    port: int = Field(9191, description="gRPC ext_authz port.")
    log_level: str = Field("INFO", description="Log level of the service's own logs.")
    decision_log: str = Field(
        "-", description="Where the per-decision JSON log goes: '-' for stderr, or a file path."
    )

    # --- API keys
    key_pepper: SecretStr = Field(
        SecretStr(""),
        description="Secret for the keyed hash of API keys (HMAC-SHA256). Empty: read or create "
        "the file at key_pepper_file.",
    )
    key_pepper_file: Path = Field(
        Path(".run/key-pepper"),
        description="File holding the API-key hashing secret when key_pepper is empty "
        "(created with mode 0600 on first use).",
    )
    key_cache_ttl: float = Field(
        30.0,
        description="Seconds an API-key record stays cached in-process. Revocation is still "
        "immediate: every allow re-checks the key's status in the decision's Redis call.",
    )
    key_cache_size: int = Field(10_000, description="Max API-key records cached in-process.")

    # --- OPA
    opa_url: str = Field(
        "http://127.0.0.1:8181",
        description="OPA server base URL (the dev stack starts OPA on its port).",
    )
    opa_decision_path: str = Field(
        "extauthz/authz/decision", description="Rule path queried as POST /v1/data/<path>."
    )
    opa_timeout: float = Field(0.25, description="Budget (s) for one OPA query; past it: 503.")

    # --- Redis
    redis_url: str = Field(
        "redis://127.0.0.1:6380/0",
        description="Redis URL (the dev stack starts Redis on its port).",
    )
    redis_timeout: float = Field(0.1, description="Budget (s) for one Redis call; past it: 503.")

    # --- request handling
    max_body_bytes: int = Field(
        65536, description="Largest request body the service reads (Envoy buffers up to this)."
    )

    # --- dev stack (make up / make demo / tests)
    run_dir: Path = Field(
        Path(".run"), description="Pids, logs, models and configs of the dev stack."
    )
    envoy_port: int = Field(10000, description="Envoy HTTP listener port (dev stack).")
    envoy_admin_port: int = Field(9901, description="Envoy admin port (dev stack).")
    model_port: int = Field(8080, description="MLServer HTTP port (dev stack).")
    model_grpc_port: int = Field(8081, description="MLServer gRPC port (dev stack).")
    model_venv: Path = Field(Path(".venv-model"), description="MLServer's own virtualenv.")
    opa_bin: str = Field("", description="OPA binary; empty: `opa` on PATH, else ./bin/opa.")

    @property
    def opa_port(self) -> int:
        return urlsplit(self.opa_url).port or 8181

    @property
    def redis_port(self) -> int:
        return urlsplit(self.redis_url).port or 6379


def load_settings(**overrides: object) -> Settings:
    """Settings from the environment, the optional EXTAUTHZ_CONFIG_FILE, then `overrides`."""
    env_file = os.environ.get(CONFIG_FILE_ENV) or None
    return Settings(_env_file=env_file, **overrides)  # type: ignore[call-arg]


def describe_settings() -> str:
    """One line per setting: env var, default, description (for --help)."""
    lines = []
    for name, field in Settings.model_fields.items():
        default = field.default
        if isinstance(default, SecretStr):
            default = "(secret)" if default.get_secret_value() else "''"
        lines.append(f"  EXTAUTHZ_{name.upper():<22} default {default!s:<28} {field.description}")
    return "\n".join(lines)
