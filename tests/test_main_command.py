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


# TensorFlow's C++ log lines (glog/absl: severity letter, MMDD, time, thread, file:line]),
# its start-up notices and the CUDA driver's complaint on a machine without a GPU.
TENSORFLOW_LOG = re.compile(r"(?:^|\r)[IWEF]\d{4} |cuInit|oneDNN|cuda_|absl::InitializeLog"
                            r"|rebuild TensorFlow", re.M)


def test_tensorflow_log_pattern_catches_its_lines():
    # The pattern itself, on lines TensorFlow 2.21 printed on a CPU-only machine.
    for line in [
        "I0000 00:00:1796264170.037253   13238 port.cc:153] oneDNN custom operations are on.",
        "E0000 00:00:1796264182.168680   13238 cuda_platform.cc:52] failed call to cuInit: "
        "INTERNAL: CUDA error: Failed call to cuInit: UNKNOWN ERROR (303)",
        "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
    ]:
        assert TENSORFLOW_LOG.search(f"progress\n{line}\n"), line
    assert not TENSORFLOW_LOG.search("quick, 1 runs: 100%|##| 30/30 [00:09<00:00]\nerror: x\n")


# Three evaluations (the quick preset's final ones) of two steps each: seconds of training.
QUIET_RUN = ["--steps", "6", "--eval-every", "2", "--seeds", "1", "--arms", "batchnorm",
             "--jobs", "1"]


def test_reproduce_trains_without_tensorflow_start_up_lines(tmp_path):
    # TF_CPP_MIN_LOG_LEVEL is removed, so that `python -m brlib` must set it itself before
    # its training processes start TensorFlow (they inherit it); without it they print
    # "failed call to cuInit" and the start-up notices above.
    try:
        from brlib import data

        data.fashion_mnist(download=False)
    except data.DatasetNotFoundError as error:
        pytest.skip(f"needs Fashion-MNIST installed: {error}")
    environment = {name: value for name, value in os.environ.items()
                   if name != "TF_CPP_MIN_LOG_LEVEL"}
    environment["PYTHONPATH"] = os.pathsep.join(
        [str(ROOT)] + ([environment["PYTHONPATH"]] if environment.get("PYTHONPATH") else []))
    results = tmp_path / "results"
    finished = subprocess.run(
        [sys.executable, "-m", "brlib", "reproduce", "--preset", "quick", *QUIET_RUN,
         "--results-dir", str(results)],
        cwd=tmp_path, env=environment, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr[-2000:]
    assert (results / "quick" / "batchnorm_seed0.csv").is_file()  # a training process ran
    lines = [line for line in finished.stderr.splitlines() if TENSORFLOW_LOG.search(line)]
    assert not lines, "\n".join(lines)
