"""TensorFlow's import, without the C++ start-up lines that TF_CPP_MIN_LOG_LEVEL does not reach.

TensorFlow prints a few INFO lines (absl's "before InitializeLog" notice,
oneDNN and CUDA-driver notes, CPU-instruction hints) while it loads, before
it reads TF_CPP_MIN_LOG_LEVEL. Unless that variable is set to 0 (show INFO),
the import's standard error is captured at the file-descriptor level and
replayed without those lines: anything else TensorFlow prints still shows.
"""

import json
import os
import re
import sys
import tempfile

STARTUP_LINE = re.compile(
    r"WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR"
    r"|I\d{4} [\d:. ]+\d+ \S+:\d+\] .*"
    r"|To enable the following instructions: .* rebuild TensorFlow with the appropriate "
    r"compiler flags\.")


def wants_quiet():
    """True unless TF_CPP_MIN_LOG_LEVEL is set to 0, which asks for INFO lines."""
    try:
        return int(os.environ.get("TF_CPP_MIN_LOG_LEVEL", "1")) >= 1
    except ValueError:
        return True


def import_tensorflow():
    """Imports TensorFlow, dropping its start-up lines unless TF_CPP_MIN_LOG_LEVEL is 0."""
    if "tensorflow" in sys.modules or not wants_quiet():
        import tensorflow  # noqa: F401
        return
    sys.stderr.flush()
    with tempfile.TemporaryFile() as capture:
        saved = os.dup(2)
        os.dup2(capture.fileno(), 2)
        try:
            import tensorflow  # noqa: F401
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            kept = [line for line in capture.read().decode(errors="replace").splitlines()
                    if not STARTUP_LINE.fullmatch(line)]
            if kept:
                sys.stderr.write("\n".join(kept) + "\n")


def intended_backend():
    """The Keras backend that `import keras` will load, found without importing Keras.

    Keras takes it from KERAS_BACKEND, else from keras.json in KERAS_HOME
    (default ~/.keras), else uses TensorFlow; once Keras is imported, it says.
    """
    if "keras" in sys.modules:
        return sys.modules["keras"].backend.backend()
    if os.environ.get("KERAS_BACKEND"):
        return os.environ["KERAS_BACKEND"]
    home = os.environ.get("KERAS_HOME", os.path.join(os.path.expanduser("~"), ".keras"))
    try:
        with open(os.path.join(home, "keras.json")) as handle:
            return json.load(handle).get("backend", "tensorflow")
    except (OSError, ValueError):
        return "tensorflow"
