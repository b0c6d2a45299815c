"""brlib: Batch Renormalization (Ioffe, 2017) for Keras 3, with the tools to teach it.

    import brlib as br
    layer = br.BatchRenormalization(microbatch_size=4)
"""

from brlib import data, diagnostics, experiment, models, plots, results, widgets
from brlib.layers import BatchRenormalization
from brlib.recalibration import recalibrate, recalibrated
from brlib.schedule import RenormSchedule, renorm_layers

__version__ = "0.1.0"

__all__ = ["data", "diagnostics", "experiment", "models", "plots", "results", "widgets",
           "BatchRenormalization", "RenormSchedule", "recalibrate", "recalibrated",
           "renorm_layers", "__version__"]
