"""brlib._startup: TensorFlow's C++ start-up lines are dropped unless asked for, and nothing else."""

import json
import os
import subprocess
import sys
from pathlib import Path

import keras
import pytest

import brlib
from brlib import _startup

BACKEND = keras.backend.backend()
STARTUP = Path(_startup.__file__)


def import_brlib(level):
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    if level is not None:
        env["TF_CPP_MIN_LOG_LEVEL"] = level
    done = subprocess.run([sys.executable, "-c", "import brlib"], env=env, capture_output=True,
                          text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stderr


@pytest.mark.skipif(BACKEND != "tensorflow", reason="TensorFlow's own start-up lines")
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


def intended_backend(env):
    """`_startup.intended_backend()` in a fresh process where Keras is not imported."""
    code = ("import importlib.util, sys\n"
            f"spec = importlib.util.spec_from_file_location('startup', {str(STARTUP)!r})\n"
            "module = importlib.util.module_from_spec(spec); spec.loader.exec_module(module)\n"
            "assert 'keras' not in sys.modules\n"
            "print(module.intended_backend())")
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_intended_backend_follows_keras_own_rules(tmp_path):
    base = {k: v for k, v in os.environ.items() if k not in ("KERAS_BACKEND", "KERAS_HOME")}
    home = tmp_path / "keras_home"
    home.mkdir()
    assert intended_backend(dict(base, KERAS_HOME=str(home))) == "tensorflow"  # no keras.json
    (home / "keras.json").write_text(json.dumps({"backend": "torch"}))
    assert intended_backend(dict(base, KERAS_HOME=str(home))) == "torch"
    assert intended_backend(dict(base, KERAS_HOME=str(home), KERAS_BACKEND="jax")) == "jax"


@pytest.mark.skipif(BACKEND == "tensorflow", reason="checks a backend other than TensorFlow")
def test_other_backends_never_import_tensorflow():
    assert "tensorflow" not in sys.modules
    assert brlib.BatchRenormalization(microbatch_size=2)(
        keras.ops.ones((4, 3)), training=True).shape == (4, 3)
    with pytest.raises(ImportError, match=f"TensorFlow backend.*running on '{BACKEND}'"):
        brlib.experiment  # noqa: B018


def test_the_layer_alone_loads_no_plots_statistics_or_widgets():
    # What `import brlib` and a first layer add to what `import keras` loaded (on TensorFlow,
    # TensorFlow itself loads matplotlib and SciPy; on JAX and PyTorch nothing does).
    code = ("import json, sys, keras\n"
            "before = set(sys.modules)\n"
            "import brlib\n"
            "brlib.BatchRenormalization(microbatch_size=2)(keras.ops.ones((4, 3)), training=True)\n"
            "print(json.dumps(sorted(set(sys.modules) - before)))")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]
    added = set(json.loads(done.stdout.strip().splitlines()[-1]))
    heavy = {"matplotlib", "matplotlib.pyplot", "scipy", "scipy.stats", "ipywidgets", "IPython",
             "brlib.plots", "brlib.results", "brlib.widgets", "brlib.experiment"}
    assert not heavy & added, sorted(heavy & added)
    assert {"brlib.layers", "brlib.schedule", "brlib.recalibration"} <= added

