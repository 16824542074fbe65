"""The bootstrap's OPA version check (scripts/check_opa_version.sh) against fake `opa` binaries."""

from __future__ import annotations

import subprocess
from pathlib import Path

from extauthz.dev.devstack import ROOT

CHECK = ROOT / "scripts" / "check_opa_version.sh"


def fake_opa(tmp_path: Path, version: str, trailing_lines: int) -> Path:
    """An `opa` whose `version` prints the Version line first, then more than a pipe holds."""
    path = tmp_path / "opa"
    path.write_text(
        "#!/usr/bin/env bash\n"
        f"echo 'Version: {version}'\n"
        f'for i in $(seq {trailing_lines}); do echo "Build Commit: line $i"; done\n'
    )
    path.chmod(0o755)
    return path


def check(opa: Path, want: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(CHECK), str(opa), want], capture_output=True, text=True)


def test_the_right_version_passes_however_much_follows_it(tmp_path: Path) -> None:
    # `opa version | grep -q` under pipefail failed here: grep exits at the first line, the
    # writer gets SIGPIPE, and the pipeline reports failure for a matching version
    result = check(fake_opa(tmp_path, "1.22.0", trailing_lines=20000), "v1.22.0")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout == ""


def test_another_version_warns(tmp_path: Path) -> None:
    result = check(fake_opa(tmp_path, "1.21.0", trailing_lines=3), "v1.22.0")
    assert result.returncode == 1
    assert "is not OPA v1.22.0 (Version: 1.21.0)" in result.stdout


def test_a_prefix_is_not_the_version(tmp_path: Path) -> None:
    assert check(fake_opa(tmp_path, "1.22.01", trailing_lines=0), "v1.22.0").returncode == 1
