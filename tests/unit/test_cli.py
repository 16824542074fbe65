"""The CLI as the READMEs show it: every documented command line parses, with its flags, and
every command group registers its own parser."""

from __future__ import annotations

import importlib
import pkgutil
import re
import shlex

import pytest

import extauthz.cli
from extauthz.cli import build_parser
from extauthz.dev.devstack import ROOT

_COMMAND = re.compile(r"\.venv/bin/extauthz ([^)#\n\\]*(?:\\\n[^)#\n\\]*)*)")


def documented() -> list[str]:
    found = []
    for doc in ("README.md", "rego/README.md"):
        for match in _COMMAND.finditer((ROOT / doc).read_text()):
            line = match[1].replace("\\\n", " ").split(" > ")[0]  # drop a redirection
            found.append(re.sub(r"<[a-z-]+>", "abc123", line).strip())
    return found


def test_the_readmes_show_commands() -> None:
    assert len(documented()) >= 25


@pytest.mark.parametrize("line", documented())
def test_every_documented_command_parses(line: str) -> None:
    args = build_parser().parse_args(shlex.split(line))
    assert callable(args.func)


def test_every_command_group_registers_its_own_parser() -> None:
    groups = [m.name for m in pkgutil.iter_modules(extauthz.cli.__path__) if m.name != "common"]
    assert sorted(groups) == [
        *["analytics", "audit", "dev", "devices", "keys", "models", "policy", "serve", "throttle"]
    ]
    for name in groups:
        assert callable(importlib.import_module(f"extauthz.cli.{name}").register)
    commands = build_parser()._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    assert list(commands) == [
        *["serve", "keys", "envoy", "policy", "models", "dev", "devices", "throttle"],
        "quarantine",
        *["analytics", "audit"],
    ]
