"""Packaging: pyproject.toml, requirements.txt and the hashed requirements.lock agree.

- every dependency pyproject.toml declares is pinned in requirements.txt, at a version
  its range accepts (what `make` installs is what the package says it needs);
- requirements.lock pins exactly what requirements.txt pins, each with its hashes (the
  Docker image installs the lock with --require-hashes);
- the `telephony` console command is console.main and answers with the app's commands;
- tzdata is there, so zoneinfo finds time zones without the system's database.
"""
from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def pins(text: str) -> dict[str, str]:
    """name -> version of every `name==version` line (continuation lines and comments skipped)."""
    found = {}
    for line in text.splitlines():
        match = re.match(r"^([A-Za-z0-9_.\-]+)==([^\s\\;]+)", line)
        if match:
            found[canonicalize_name(match.group(1))] = match.group(2)
    return found


def test_every_declared_dependency_is_pinned_at_a_version_it_accepts():
    pinned = pins((ROOT / "requirements.txt").read_text())
    for declared in PYPROJECT["project"]["dependencies"]:
        requirement = Requirement(declared)
        name = canonicalize_name(requirement.name)
        assert name in pinned, f"{requirement.name} is declared in pyproject.toml but not pinned in requirements.txt"
        assert requirement.specifier.contains(pinned[name]), \
            f"{requirement.name}=={pinned[name]} (requirements.txt) is outside {requirement.specifier} (pyproject.toml)"


def test_the_lock_pins_what_requirements_txt_pins_with_hashes():
    lock = (ROOT / "requirements.lock").read_text()
    assert pins(lock) == pins((ROOT / "requirements.txt").read_text()), \
        "regenerate requirements.lock (the command is in pyproject.toml)"
    entries = re.split(r"\n(?=[A-Za-z0-9])", lock.split("\n\n", 1)[-1] if lock.startswith("#") else lock)
    for entry in (e for e in entries if "==" in e.split("\n", 1)[0]):
        assert "--hash=sha256:" in entry, f"no hash for {entry.splitlines()[0]}"


def test_the_console_command_is_the_app_cli():
    assert PYPROJECT["project"]["scripts"] == {"telephony": "telephony.console:main"}
    shown = subprocess.run([sys.executable, "-c", "import sys; from telephony.console import main; sys.argv[0] = "
                            "'telephony'; main()", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120,
                           env={"PATH": "/usr/bin:/bin", "DATABASE_URL": "sqlite://", "HOME": str(ROOT)})
    assert shown.returncode == 0, shown.stderr
    assert "Usage: telephony" in shown.stdout
    for group in ("db", "worker", "agency", "credentials"):
        assert re.search(rf"^\s+{group}\s", shown.stdout, re.M), shown.stdout


def test_a_bad_setting_stops_the_console_command_with_one_line():
    failed = subprocess.run([sys.executable, "-c", "import sys; from telephony.console import main; sys.argv[0] = "
                             "'telephony'; main()", "worker", "check"], cwd=ROOT, capture_output=True, text=True,
                            timeout=120, env={"PATH": "/usr/bin:/bin", "PORT": "eighty", "HOME": str(ROOT)})
    assert failed.returncode == 2
    assert failed.stderr.strip().splitlines()[-1] == "configuration error: PORT: must be a whole number, got 'eighty'"


def test_time_zones_come_with_the_tzdata_package():
    pinned = pins((ROOT / "requirements.txt").read_text())
    assert "tzdata" in pinned
    assert any(Requirement(d).name == "tzdata" for d in PYPROJECT["project"]["dependencies"])
    from importlib.resources import files
    assert files("tzdata").joinpath("zoneinfo", "America", "New_York").is_file()
