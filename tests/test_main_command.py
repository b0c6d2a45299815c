"""The README's main command, run step by step on a tiny override in a fresh clone: it must
leave the clone's git status clean (results and figures go to runs/, which git ignores)."""

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--steps", "30", "--eval-every", "10", "--seeds", "1", "--arms", "batchnorm", "--jobs", "1"]


def main_command():
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"<!-- main-command -->\s*```bash\n(.*?)\n```", readme, re.S)
    assert block, "README.md must mark its main command with <!-- main-command -->"
    return block.group(1)


def brlib_steps(command):
    """The `python -m brlib …` steps of the command, as argument lists (apt and pip left out)."""
    steps = [shlex.split(part.strip()) for part in command.split("&&")]
    return [step for step in steps if step[:3] == ["python", "-m", "brlib"]]


def test_main_command_writes_only_under_runs():
    steps = brlib_steps(main_command())
    assert [step[3] for step in steps] == ["reproduce", "figure"]
    for step in steps:
        for option in ("--results-dir", "--figures-dir"):
            if option in step:
                assert step[step.index(option) + 1].startswith("runs/"), step
    assert "runs/" in (ROOT / ".gitignore").read_text().splitlines()


@pytest.mark.skipif(shutil.which("git") is None or not (ROOT / ".git").exists(),
                    reason="needs git and a checkout")
def test_main_command_leaves_a_fresh_clone_clean(tmp_path):
    try:
        from brlib import data

        data.fashion_mnist(download=False)
    except data.DatasetNotFoundError as error:
        pytest.skip(f"needs Fashion-MNIST installed: {error}")
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", "--local", str(ROOT), str(clone)], check=True)
    environment = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=str(clone))
    for step in brlib_steps(main_command()):
        arguments = step[3:] + (TINY if step[3] == "reproduce" else [])
        finished = subprocess.run([sys.executable, "-m", "brlib", *arguments], cwd=clone,
                                  env=environment, capture_output=True, text=True, timeout=600)
        assert finished.returncode == 0, finished.stderr[-2000:]
    assert "recorded with other settings" in finished.stdout  # the tiny override is not quick
    assert (clone / "runs" / "figures" / "figure2_quick.png").is_file()
    status = subprocess.run(["git", "status", "--porcelain", "--ignored=no"], cwd=clone,
                            capture_output=True, text=True, check=True).stdout
    assert status == "", status
