"""The package's shape: the ways in (api, broker, pinger, dev, console) build on the core and never
on each other, and the core imports none of them (but for the app factory and the CLI,
which assemble everything)."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "iot_server"
WAYS_IN = ("api", "broker", "pinger", "dev", "console")
#: Core modules whose job is to assemble the ways in.
ASSEMBLERS = ("iot_server", "iot_server.cli")


def module_name(path: Path) -> str:
    """`iot_server.broker.decisions` for iot_server/broker/decisions.py."""
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path) -> set[str]:
    """Every iot_server module `path` imports, anywhere in the file, relative ones resolved."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(base)
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            found.add(target)
            # `from . import devices` imports the module iot_server.devices.
            found.update(f"{target}.{alias.name}" for alias in node.names)
    return {m for m in found if m == "iot_server" or m.startswith("iot_server.")}


def way_in(module: str) -> str | None:
    """Which way in a module belongs to, or None for the core."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in WAYS_IN else None


def existing(module: str) -> bool:
    """True for a module or package of iot_server (not a name imported from one)."""
    relative = Path(*module.split(".")[1:]) if "." in module else Path()
    return (PACKAGE / relative).with_suffix(".py").is_file() or (PACKAGE / relative).is_dir()


SOURCES = sorted(PACKAGE.rglob("*.py"))


def test_the_ways_in_exist():
    for name in WAYS_IN:
        assert (PACKAGE / name / "__init__.py").is_file()


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_follow_the_layering(path):
    name = module_name(path)
    own = way_in(name)
    for target in filter(existing, imported_modules(path)):
        other = way_in(target)
        if other is None or other == own:
            continue
        if own is None:
            assert name in ASSEMBLERS, f"core module {name} imports {target}"
        else:
            raise AssertionError(f"{name} ({own}) imports {target} ({other})")


def test_the_check_sees_a_forbidden_import(tmp_path, monkeypatch):
    """The checker itself: an api module importing the broker is caught."""
    fake = PACKAGE / "api" / "access.py"
    source = fake.read_text() + "\nfrom ..broker import decisions\n"
    path = tmp_path / "iot_server" / "api" / "access.py"
    path.parent.mkdir(parents=True)
    path.write_text(source)
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", tmp_path / "iot_server")
    (tmp_path / "iot_server" / "broker").mkdir()
    (tmp_path / "iot_server" / "broker" / "decisions.py").write_text("")
    with pytest.raises(AssertionError, match="imports iot_server.broker"):
        test_imports_follow_the_layering(path)


def test_lockfiles_pin_every_direct_dependency():
    """requirements*.txt are pip-compile's lockfiles of requirements*.in: every direct
    dependency of an input file is pinned, at the same version, in its lockfile."""
    root = PACKAGE.parent
    for source, lock in (("requirements.in", "requirements.txt"),
                         ("requirements-dev.in", "requirements-dev.txt")):  # fmt: skip
        pins = {}
        for line in (root / lock).read_text().splitlines():
            if "==" in line and not line.lstrip().startswith("#"):
                name, _, version = line.strip().partition("==")
                pins[name.lower()] = version
        for line in (root / source).read_text().splitlines():
            line = line.split("#")[0].strip()
            if not line or line.startswith("-"):
                continue
            name, _, version = line.partition("==")
            name = name.split("[")[0].lower()
            assert name in pins, f"{name} of {source} is not pinned in {lock}"
            if version:
                assert pins[name] == version, (
                    f"{name}: {source} says {version}, {lock} {pins[name]}"
                )
