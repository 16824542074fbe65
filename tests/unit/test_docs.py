"""The README documents every setting and every make target (docs drift is a bug)."""

import ast
import re
from pathlib import Path

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


# ---- ARCHITECTURE.md: the rooms it names exist, hold every module, and keep their rules

ARCHITECTURE = (ROOT / "ARCHITECTURE.md").read_text()
_PATH = re.compile(r"`((?:extauthz|bench|tests|rego|envoy|modelserver|scripts|examples)/[^`\s]*)`")


def _section(text: str, title: str) -> str:
    start = text.index(f"## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else len(text)]


def test_every_path_architecture_names_exists() -> None:
    missing = [p for p in _PATH.findall(ARCHITECTURE) if not (ROOT / p).exists()]
    assert not missing, f"ARCHITECTURE.md names what is not there: {missing}"


def test_every_module_is_in_a_named_room() -> None:
    named = set(_PATH.findall(_section(ARCHITECTURE, "Rooms")))
    folders = [n for n in named if n.endswith("/")]
    homeless = [
        rel
        for path in sorted((ROOT / "extauthz").rglob("*"))
        if path.suffix in (".py", ".lua") and path.name != "__init__.py"
        for rel in [path.relative_to(ROOT).as_posix()]
        if rel not in named and not any(rel.startswith(folder) for folder in folders)
    ]
    assert not homeless, f"ARCHITECTURE.md's rooms lack: {homeless}"


def test_readme_layout_names_every_package_room() -> None:
    layout = _section(README, "Layout")
    packages = [p for p in (ROOT / "extauthz").iterdir() if (p / "__init__.py").is_file()]
    missing = [p.name for p in packages if f"{p.name}/" not in layout]
    assert not missing, f"README's Layout lacks: {missing}"


def _imports(path: Path) -> set[str]:
    """Every module name `path` imports, at any depth of the file."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def _modules(*packages: str) -> dict[str, Path]:
    found = {}
    for package in packages:
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def test_the_service_never_imports_the_dev_room_or_the_cli() -> None:
    offenders = [
        f"{name} imports {imported}"
        for name, path in _modules("extauthz").items()
        if not name.startswith(("extauthz.dev", "extauthz.cli")) and name != "extauthz.__main__"
        for imported in sorted(_imports(path))
        if imported.startswith(("extauthz.dev", "extauthz.cli"))
    ]
    assert not offenders, offenders


def test_the_service_never_imports_the_edge_generator() -> None:
    """extauthz/edge/ (envoy-data-plane, pydantic models of every Envoy type) stays off the
    request path: only the dev room, the CLI and the edge room itself import it."""
    outside = ("extauthz.dev", "extauthz.cli", "extauthz.edge")
    offenders = [
        f"{name} imports {imported}"
        for name, path in _modules("extauthz").items()
        if not name.startswith(outside) and name != "extauthz.__main__"
        for imported in sorted(_imports(path))
        if imported.startswith(("extauthz.edge", "envoy_data_plane", "betterproto2"))
    ]
    assert not offenders, offenders


def test_no_import_circle_in_the_service_or_the_benchmarks() -> None:
    modules = _modules("extauthz", "bench")
    graph = {
        name: {imported for imported in _imports(path) if imported in modules} - {name}
        for name, path in modules.items()
    }
    done: set[str] = set()

    def visit(name: str, path: list[str]) -> None:
        if name in path:
            raise AssertionError("import circle: " + " -> ".join(path[path.index(name) :] + [name]))
        if name in done:
            return
        for imported in sorted(graph[name]):
            visit(imported, [*path, name])
        done.add(name)

    for name in sorted(graph):
        visit(name, [])
