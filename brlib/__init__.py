"""brlib: Batch Renormalization (Ioffe, 2017) for Keras 3, with the tools to teach it.

    import brlib as br
    layer = br.BatchRenormalization(microbatch_size=4)

The layer, the schedule, recalibration, the samplers, results and plots need
only Keras and NumPy, so they work on every Keras backend. The experiment
runner (`brlib.experiment`) needs TensorFlow and is imported on first use.
"""

import importlib

from brlib._startup import import_tensorflow, intended_backend

if intended_backend() == "tensorflow":
    import_tensorflow()  # first, so that TensorFlow's start-up lines honour TF_CPP_MIN_LOG_LEVEL

from brlib import (convert, data, diagnostics, models, plots, results, sampling,  # noqa: E402
                   solutions, validation, widgets)
from brlib.layers import BatchRenormalization  # noqa: E402
from brlib.recalibration import recalibrate, recalibrated  # noqa: E402
from brlib.schedule import RenormSchedule, renorm_layers  # noqa: E402

__version__ = "0.1.0"

__all__ = ["convert", "data", "diagnostics", "experiment", "models", "plots", "results", "sampling",
           "solutions", "validation", "widgets",
           "BatchRenormalization", "RenormSchedule", "recalibrate", "recalibrated",
           "renorm_layers", "__version__"]


def __getattr__(name):
    """Imports `brlib.experiment` on first use, so that other backends never load TensorFlow."""
    if name == "experiment":
        return importlib.import_module("brlib.experiment")
    raise AttributeError(f"module 'brlib' has no attribute {name!r}")
