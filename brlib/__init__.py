"""brlib: Batch Renormalization (Ioffe, 2017) for Keras 3, with the tools to teach it.

    import brlib as br
    layer = br.BatchRenormalization(microbatch_size=4)
"""

from brlib._startup import import_tensorflow

import_tensorflow()  # first, so that TensorFlow's start-up lines honour TF_CPP_MIN_LOG_LEVEL

from brlib import data, diagnostics, experiment, models, plots, results, widgets  # noqa: E402
from brlib.layers import BatchRenormalization  # noqa: E402
from brlib.recalibration import recalibrate, recalibrated  # noqa: E402
from brlib.schedule import RenormSchedule, renorm_layers  # noqa: E402

__version__ = "0.1.0"

__all__ = ["data", "diagnostics", "experiment", "models", "plots", "results", "widgets",
           "BatchRenormalization", "RenormSchedule", "recalibrate", "recalibrated",
           "renorm_layers", "__version__"]
