"""Packaging: environment.yml against pyproject.toml, and the one repository setting in the notebooks."""

import json
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
               if not r.startswith("batch-renorm-taught")}

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


# A GitHub repository in a plain address or in a Colab address (colab…/github/OWNER/NAME).
GITHUB = re.compile(r"(?:github\.com|colab\.research\.google\.com/github)/([\w.-]+/[\w.-]+)")


def repository_setting():
    """owner/name from [project.urls] Repository: the one setting."""
    url = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["urls"]["Repository"]
    return url.removeprefix("https://github.com/").strip("/")


def wrong_addresses(notebook_text, repository, name, version):
    """What in one notebook's JSON does not follow the repository setting, as messages."""
    notebook = json.loads(notebook_text)
    problems = [f"other GitHub address {found}" for found in set(GITHUB.findall(notebook_text))
                if found != repository]
    badge = f"https://colab.research.google.com/github/{repository}/blob/main/notebooks/{name}"
    if badge not in "".join(notebook["cells"][0]["source"]):
        problems.append("no Colab badge for this repository in the first cell")
    setup = "".join(notebook["cells"][1]["source"])
    if f"git+https://github.com/{repository}@v{version}" not in setup:
        problems.append(f"the setup cell does not install {repository} at tag v{version}")
    if f'RELEASE = "{version}"' not in setup:
        problems.append(f"the setup cell does not expect release {version}")
    return problems


def test_one_setting_names_the_repository_everywhere():
    import brlib
    from brlib import _metadata

    repository = repository_setting()
    assert _metadata.repository() == repository
    for path in sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")):
        assert wrong_addresses(path.read_text(), repository, path.name, brlib.__version__) == [], path


def test_a_notebook_with_another_address_is_caught():
    import brlib

    path = ROOT / "notebooks" / "02_renorm_derivation.ipynb"
    other = path.read_text().replace("brlib-team/brlib", "someone-else/brlib", 1)
    problems = wrong_addresses(other, repository_setting(), path.name, brlib.__version__)
    assert any("someone-else/brlib" in problem for problem in problems)


def test_committed_results_ship_inside_the_package():
    settings = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert settings["package-dir"]["brlib.committed_results"] == "data/results"
    patterns = settings["package-data"]["brlib.committed_results"]
    # Every file of every preset's directory matches a pattern: nothing is left behind
    # (hidden files are an unfinished run's state, which git ignores).
    files = [path.relative_to(ROOT / "data" / "results")
             for path in (ROOT / "data" / "results").rglob("*") if path.is_file()
             and not any(part.startswith(".") for part in path.parts)]
    assert files
    left_out = [str(f) for f in files if not any(f.match(pattern) for pattern in patterns)]
    assert not left_out, f"committed results that would not ship: {left_out}"
    from brlib import results

    assert results.committed_results() == ROOT / "data" / "results"


def test_the_book_extra_and_book_requirements_list_the_same_packages():
    # The GitHub Pages workflow installs book/requirements.txt; CI installs the `book` extra.
    extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]["book"]
    lines = (ROOT / "book" / "requirements.txt").read_text().splitlines()
    listed = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    assert sorted(listed) == sorted(extra)
    assert "batch-renorm-taught[tensorflow,book]" in tomllib.loads(
        (ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["test"]
