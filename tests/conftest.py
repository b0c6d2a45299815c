"""Runs every TensorFlow test with the runner's thread count, fixed before TensorFlow starts.

The runner refuses to train in a process whose TensorFlow runs with another
count than its preset's (results depend on it), so the tests that call it in
process need the same count the presets use.
"""

import importlib.util

# The book's tests (tests/test_book.py) run in an environment with only the book's
# packages (book/requirements.txt): there is no Keras to configure.
if importlib.util.find_spec("keras") is not None:
    import keras

    if keras.backend.backend() == "tensorflow":
        from brlib.experiment import fix_threads
        from brlib.protocol import DEFAULT_THREADS

        fix_threads(DEFAULT_THREADS)
