"""Build and run the ESP8266 library's host tests (arduino/SMServer/tests)."""

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

LIBRARY = Path(__file__).resolve().parent.parent / "arduino" / "SMServer"
HOST_TESTS = LIBRARY / "tests"
# Required by the Arduino library specification (1.5 format).
REQUIRED_PROPERTIES = (
    "name",
    "version",
    "author",
    "maintainer",
    "sentence",
    "paragraph",
    "category",
    "url",
    "architectures",
)


XTENSA_CXX = "xtensa-lx106-elf-g++"


def _require_toolchain(*tools: str) -> None:
    """Skip without the tools, unless CI demands every tool (IOT_REQUIRE_SERVICES)."""
    missing = [tool for tool in ("make", *tools) if shutil.which(tool) is None]
    if not missing:
        return
    message = f"{' and '.join(missing)} not found: cannot build the Arduino library"
    if os.environ.get("IOT_REQUIRE_SERVICES", "") not in ("", "0"):
        pytest.fail(message)
    pytest.skip(message)


def test_host_tests_pass(tmp_path: Path) -> None:
    """`make` type-checks the sketches, then builds and runs the tests from scratch."""
    _require_toolchain("g++")
    # A fresh BUILD directory: never trust a binary left by an earlier run.
    result = subprocess.run(
        ["make", "-C", str(HOST_TESTS), f"BUILD={tmp_path / 'build'}"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    summary = re.findall(r"^(\d+) passed, (\d+) failed$", result.stdout, re.MULTILINE)
    assert summary, output
    passed, failed = (int(n) for n in summary[-1])
    assert failed == 0, output
    assert passed > 0, output


def test_core_compiles_for_the_esp8266_cpu(tmp_path: Path) -> None:
    """The portable core compiles for xtensa lx106 (32-bit int, strict alignment)."""
    _require_toolchain(XTENSA_CXX)
    result = subprocess.run(
        ["make", "-C", str(HOST_TESTS), "xtensa", f"BUILD={tmp_path / 'build'}"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    objects = sorted(p.name for p in (tmp_path / "build" / "xtensa").glob("*.o"))
    sources = sorted(
        f"{p.stem}.o" for p in (LIBRARY / "src").glob("*.cpp") if p.name != "sm_arduino.cpp"
    )
    assert objects == sources


def test_library_never_calls_delay() -> None:
    """loop() must not block: no delay() anywhere in the library sources."""
    offenders = []
    for source in sorted((LIBRARY / "src").iterdir()):
        for number, line in enumerate(source.read_text().splitlines(), start=1):
            code = line.split("//", 1)[0]
            if re.search(r"\b(delay|delayMicroseconds|yield)\s*\(", code):
                offenders.append(f"{source.name}:{number}: {line.strip()}")
    assert not offenders, "\n".join(offenders)


def test_library_properties_declare_dependencies() -> None:
    """library.properties follows the 1.5 format and names both dependencies."""
    fields = dict(
        line.split("=", 1)
        for line in (LIBRARY / "library.properties").read_text().splitlines()
        if "=" in line
    )
    for key in REQUIRED_PROPERTIES:
        assert fields.get(key), f"library.properties lacks {key}"
    depends = [d.split("(")[0].strip() for d in fields["depends"].split(",")]
    assert depends == ["PubSubClient", "ArduinoJson"]
    assert (LIBRARY / "src" / "SMServer.h").is_file()


def test_docs_state_the_worst_case_of_one_loop() -> None:
    """The figures the host tests check (client_worst_case_figures_match_the_readme)."""
    readme = (LIBRARY / "README.md").read_text()
    properties = (LIBRARY / "library.properties").read_text()
    for figure in ("10.3 s", "25.6 s"):
        assert figure in readme, figure
        assert figure in properties, figure
    assert "Non-blocking" not in properties


def test_library_docs_stand_alone() -> None:
    """A user's copy has no SPEC.md: the library describes its protocol itself."""
    for path in LIBRARY.rglob("*"):
        if path.is_file() and path.suffix in {".md", ".h", ".cpp", ".ino", ".properties"}:
            assert "SPEC.md" not in path.read_text(), path


def test_secure_fleet_keeps_its_secrets_out_of_git() -> None:
    """SecureFleet reads secrets.h, which is ignored; the example file is tracked."""
    example = LIBRARY / "examples" / "SecureFleet"
    assert (example / "secrets.h.example").is_file()
    ignored = (example / ".gitignore").read_text().split()
    assert "secrets.h" in ignored
    assert '#include "secrets.h"' in (example / "SecureFleet.ino").read_text()
