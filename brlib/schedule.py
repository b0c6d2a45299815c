"""The rmax/dmax warm-up and ramp of batch renormalization."""

import keras
import numpy as np

from brlib.layers import BatchRenormalization, check_dmax, check_rmax
from brlib.validation import check_integer


def _ramp(step, start, end, final):
    """1 → `final` (or 0 → `final` for d) linearly between steps start and end."""
    step = np.asarray(step, dtype=np.float64)
    if end > start:
        progress = np.clip((step - start) / (end - start), 0.0, 1.0)
    else:
        progress = (step >= end).astype(np.float64)
    # Where progress is 0 the bound has not moved, even when `final` is infinite
    # (0 × ∞ would be NaN).
    with np.errstate(invalid="ignore"):
        return np.where(progress > 0, progress * final, 0.0)


class RenormSchedule(keras.callbacks.Callback):
    """The paper's rmax/dmax schedule, as a function of the step and as a callback.

    rmax = 1 and dmax = 0 until `warmup_steps`; then both grow linearly,
    reaching `rmax_final` at `rmax_steps` and `dmax_final` at `dmax_steps`,
    and stay there. Called with a step (or an array of steps) it returns
    `(rmax, dmax)`, for custom training loops and plots. Passed to
    `model.fit`, it sets `rmax` and `dmax` of every `BatchRenormalization`
    layer in the model, nested models included, before each batch, counting
    steps from the optimizer's iteration count at the start of `fit`, so that
    a resumed run picks up where it stopped (one step per batch, Keras's
    default `steps_per_execution=1`). It works on every backend: on JAX, where
    `fit` keeps the variables outside the model, it syncs them back before
    assigning new bounds.

    Args:
        warmup_steps: Steps during which the layer is plain batch norm.
        rmax_final: Final rmax, >= 1.
        rmax_steps: Step at which rmax reaches `rmax_final`, >= warmup_steps.
        dmax_final: Final dmax, >= 0.
        dmax_steps: Step at which dmax reaches `dmax_final`, >= warmup_steps.

    Reference:
        Sergey Ioffe, "Batch Renormalization", arXiv:1702.03275, Section 4:
        rmax = 1, dmax = 0 for 5k steps, then rmax = 3 at 40k and dmax = 5 at 25k.
    """

    def __init__(self, warmup_steps=5000, rmax_final=3.0, rmax_steps=40000,
                 dmax_final=5.0, dmax_steps=25000):
        super().__init__()
        for name, value in (("warmup_steps", warmup_steps), ("rmax_steps", rmax_steps),
                            ("dmax_steps", dmax_steps)):
            check_integer(name, value, "an integer >= 0", lambda v: v >= 0)
        for name, value in (("rmax_steps", rmax_steps), ("dmax_steps", dmax_steps)):
            if value < warmup_steps:
                raise ValueError(
                    f"`{name}` must be >= warmup_steps={warmup_steps}; got {name}={value}."
                )
        check_rmax(rmax_final)
        check_dmax(dmax_final)
        self.warmup_steps = warmup_steps
        self.rmax_final = float(rmax_final)
        self.rmax_steps = rmax_steps
        self.dmax_final = float(dmax_final)
        self.dmax_steps = dmax_steps

    def __call__(self, step):
        """Returns (rmax, dmax) at `step`: floats, or arrays for an array of steps."""
        rmax = 1.0 + _ramp(step, self.warmup_steps, self.rmax_steps, self.rmax_final - 1.0)
        dmax = _ramp(step, self.warmup_steps, self.dmax_steps, self.dmax_final)
        if np.ndim(step) == 0:
            return float(rmax), float(dmax)
        return rmax, dmax

    def apply(self, model, step):
        """Sets rmax and dmax of every BatchRenormalization layer in `model`; returns them."""
        rmax, dmax = self(step)
        layers = renorm_layers(model)
        for layer in layers:
            # One owner of the bounds: a layer's own warm-up writes them every step,
            # and would undo the schedule's values without a word.
            if layer.warmup_steps is not None:
                raise ValueError(
                    f"Layer '{layer.name}' has its own warm-up (warmup_steps="
                    f"{layer.warmup_steps}), which sets rmax and dmax at every training step; "
                    "a RenormSchedule would be overwritten. Build the layer with "
                    "warmup_steps=None to drive its bounds with the schedule, or drop the "
                    "schedule and give the layer the ramp (warmup_steps, rmax_steps, dmax_steps).")
        for layer in layers:
            layer.rmax.assign(rmax)
            layer.dmax.assign(dmax)
        return rmax, dmax

    def on_train_begin(self, logs=None):
        # The optimizer's count, so that a resumed run continues the schedule.
        self._step = int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))
        self._bounds = None

    def on_train_batch_begin(self, batch, logs=None):
        bounds = self(self._step)
        if bounds != self._bounds:  # assign only when they change
            sync_state(self.model)
            self._bounds = self.apply(self.model, self._step)

    def on_train_batch_end(self, batch, logs=None):
        self._step += 1


def renorm_layers(model):
    """All BatchRenormalization layers inside `model`, at any depth.

    Nested models and layers that hold other layers as attributes are
    searched too. This uses Keras's private `_flatten_layers`, which is what
    tracks attribute-held layers; `tests/test_schedule.py` holds it to that
    behaviour on every Keras that CI runs (3.13, as on Colab, and the newest).
    """
    return [
        layer
        for layer in model._flatten_layers(include_self=True, recursive=True)
        if isinstance(layer, BatchRenormalization)
    ]


def sync_state(model):
    """Puts JAX's training state back into the model's variables; a no-op elsewhere.

    During `fit` on JAX the variables live in a state tuple outside the model,
    and a value assigned to a variable is read by the next step only after
    this sync (Keras's `jax_state_sync`).
    """
    sync = getattr(model, "jax_state_sync", None)
    if sync is not None:
        sync()
