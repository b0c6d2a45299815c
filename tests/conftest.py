"""Runs every TensorFlow test with the runner's thread count, fixed before TensorFlow starts.

The runner refuses to train in a process whose TensorFlow runs with another
count than its preset's (results depend on it), so the tests that call it in
process need the same count the presets use.
"""

import keras

if keras.backend.backend() == "tensorflow":
    from brlib.experiment import fix_threads
    from brlib.protocol import DEFAULT_THREADS

    fix_threads(DEFAULT_THREADS)
