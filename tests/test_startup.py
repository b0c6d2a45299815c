"""brlib._startup: TensorFlow's C++ start-up lines are dropped unless asked for, and nothing else."""

import os
import subprocess
import sys

from brlib import _startup


def import_brlib(level):
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    if level is not None:
        env["TF_CPP_MIN_LOG_LEVEL"] = level
    done = subprocess.run([sys.executable, "-c", "import brlib"], env=env, capture_output=True,
                          text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stderr


def test_start_up_lines_go_unless_info_is_asked_for():
    loud = import_brlib("0")
    assert "absl::InitializeLog" in loud  # TensorFlow does print them here
    for quiet in (import_brlib(None), import_brlib("3")):
        assert not any(_startup.STARTUP_LINE.fullmatch(line) for line in quiet.splitlines())


def test_only_start_up_lines_match():
    assert _startup.STARTUP_LINE.fullmatch(
        "I0000 00:00:1795610967.738277   17006 cudart_stub.cc:31] Could not find cuda drivers "
        "on your machine, GPU will not be used.")
    assert _startup.STARTUP_LINE.fullmatch(
        "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR")
    for kept in ("Traceback (most recent call last):", "E0000 00:00:1 1 x.cc:1] failed",
                 "W0000 00:00:1 1 x.cc:1] a warning", "ImportError: libcudart.so.12"):
        assert not _startup.STARTUP_LINE.fullmatch(kept)
