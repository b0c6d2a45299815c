"""brlib: Batch Renormalization (Ioffe, 2017) for Keras 3, with the tools to teach it.

    import brlib as br
    layer = br.BatchRenormalization(microbatch_size=4)

`import brlib` loads the layer, the schedule and recalibration, which need
only Keras and NumPy and work on every Keras backend. Every other submodule
(`br.protocol`, `br.results`, `br.plots`, `br.widgets`, `br.data`, ...) is
imported on first use, so that the layer alone never loads matplotlib, SciPy
or ipywidgets; the experiment runner (`br.experiment`) needs TensorFlow.
"""

import importlib

from brlib._startup import import_tensorflow, intended_backend

if intended_backend() == "tensorflow":
    import_tensorflow()  # first, so that TensorFlow's start-up lines honour TF_CPP_MIN_LOG_LEVEL

from brlib.layers import BatchRenormalization  # noqa: E402
from brlib.recalibration import recalibrate, recalibrated, untouched  # noqa: E402
from brlib.schedule import RenormSchedule, renorm_layers  # noqa: E402

__version__ = "0.1.0"

SUBMODULES = ("convert", "data", "diagnostics", "evaluation", "experiment", "files", "glyphs",
              "models", "notebook", "plots", "protocol", "recalibration", "report", "results", "sampling",
              "schedule", "solutions", "validation", "widgets")

__all__ = [*SUBMODULES, "BatchRenormalization", "RenormSchedule", "recalibrate", "recalibrated",
           "renorm_layers", "untouched", "__version__"]


def __getattr__(name):
    """Imports a submodule on first use (`br.plots`, `br.experiment`, ...)."""
    if name in SUBMODULES:
        module = importlib.import_module(f"brlib.{name}")
        globals()[name] = module
        return module
    raise AttributeError(f"module 'brlib' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
