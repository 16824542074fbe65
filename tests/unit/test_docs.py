"""The README documents every setting and every make target (docs drift is a bug)."""

import re

from extauthz.dev.devstack import ROOT
from extauthz.settings import Settings

README = (ROOT / "README.md").read_text()


def test_every_setting_is_in_the_readme() -> None:
    missing = [
        f"EXTAUTHZ_{n.upper()}"
        for n in Settings.model_fields
        if f"EXTAUTHZ_{n.upper()}" not in README
    ]
    assert not missing, f"README lacks: {missing}"


def test_every_make_target_is_in_the_readme() -> None:
    makefile = (ROOT / "Makefile").read_text()
    targets = re.findall(r"^([a-z][a-z-]*):", makefile, re.M)
    missing = [t for t in targets if f"make {t}" not in README]
    assert not missing, f"README lacks: {missing}"
