"""environment.yml and pyproject.toml must describe the same environment."""

import re
from pathlib import Path

import pytest
import yaml

tomllib = pytest.importorskip("tomllib")
ROOT = Path(__file__).resolve().parents[1]


def package_name(requirement):
    return re.match(r"[A-Za-z0-9_.-]+", requirement).group(0).lower().replace("_", "-")


def test_environment_yml_lists_the_packages_of_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = {package_name(r) for r in project["dependencies"]}
    extras = project["optional-dependencies"]
    wanted |= {package_name(r) for r in extras["notebooks"] + extras["tensorflow"]
               if not r.startswith("brlib")}

    environment = yaml.safe_load((ROOT / "environment.yml").read_text())
    listed, pip_section = set(), []
    for entry in environment["dependencies"]:
        if isinstance(entry, dict):
            pip_section = entry["pip"]
        else:
            listed.add(package_name(entry.split("=")[0]))
    listed |= {package_name(r) for r in pip_section if not r.startswith("-e")}
    assert "-e .[tensorflow]" in pip_section, "environment.yml must install brlib itself"
    assert listed - {"python", "pip"} == wanted
