"""Recalibrated statistics ("precise BN"): µ and σ recomputed with the weights frozen."""

import contextlib

import numpy as np
from keras import ops

from brlib.schedule import renorm_layers


@contextlib.contextmanager
def untouched(layers):
    """Context manager: the layers' non-trainable state is put back when the block ends.

    A training-mode call moves a normalization layer's moving statistics and
    counters (its non-trainable variables); recalibration also changes its
    update rate (`momentum`). Both are saved on entry and put back on exit,
    even when the block raises, so that probing a model in training mode
    leaves the training run as it was. Trainable weights (γ, β, kernels) are
    not saved: the block must not train.

        with br.untouched(br.renorm_layers(model)):
            outputs = model(images, training=True)

    Args:
        layers: An iterable of Keras layers, for example
            `brlib.renorm_layers(model)`.
    """
    layers = list(layers)
    variables = [(v, ops.convert_to_numpy(v)) for layer in layers
                 for v in layer.non_trainable_variables]
    momenta = [(layer, layer.momentum) for layer in layers if hasattr(layer, "momentum")]
    try:
        yield layers
    finally:
        for variable, value in variables:
            variable.assign(value)
        for layer, momentum in momenta:
            layer.momentum = momentum


def recalibrate(model, batches, forward=None, passes=None):
    """Sets every BatchRenormalization layer's µ and σ to their exact average over `batches`.

    The moving averages of a layer trail the weights by about 1/α steps.
    Recalibration removes that lag: with the weights frozen, the batches are
    passed through the model in training mode, and each layer's µ and σ
    become the plain (equally weighted) average, over all batches, of the
    step statistics that its moving averages track: the mean over the
    batch's microbatches of µ_B and of σ_B, in the layer's own microbatch
    size and with its own rmax and dmax.

    In batch norm (rmax = 1, dmax = 0) a layer's training output does not
    depend on µ and σ, so one pass over the batches is exact. In batch renorm
    it does, through r and d: a layer's statistics depend on the µ and σ of
    the layers before it. Each pass therefore holds every µ and σ fixed at
    the previous pass's averages, which makes the first k layers exact after
    k passes; by default there are as many passes as renorm layers.

    Only µ and σ change; everything else the passes touch (the clip
    fractions, the update rate) is put back. To evaluate a recalibrated model
    and return to the running one, use `recalibrated`, or call this inside
    `untouched(renorm_layers(model))`.

    Args:
        model: A Keras model holding BatchRenormalization layers, at any depth.
        batches: A sequence of input batches, or of (inputs, labels) tuples,
            of any size, as `fit` takes them: a batch that is not a multiple
            of a layer's microbatch size ends in a shorter microbatch there.
        forward: Optional callable `forward(inputs)` that runs
            `model(inputs, training=True)`, for example a compiled function.
            It is called only inside this function, where each layer's update
            rate is 1, so a compiled function must be traced here too.
        passes: Passes over the batches; None for 1 when every layer is batch
            norm, else the number of layers.

    Returns:
        The model.

    Reference:
        Yuxin Wu and Justin Johnson, "Rethinking 'Batch' in BatchNorm",
        arXiv:2105.07576, 2021, Section 3 (PreciseBN).
    """
    layers = renorm_layers(model)
    if not layers:
        raise ValueError("`model` has no BatchRenormalization layer to recalibrate.")
    inputs = [batch[0] if isinstance(batch, (tuple, list)) else batch for batch in batches]
    if not inputs:
        raise ValueError("`batches` must hold at least one batch; got none.")
    forward = forward or (lambda x: model(x, training=True))
    if passes is None:
        batch_norm = all(ops.convert_to_numpy(layer.rmax) == 1
                         and ops.convert_to_numpy(layer.dmax) == 0 for layer in layers)
        passes = 1 if batch_norm else len(layers)
    statistics = [(ops.convert_to_numpy(layer.moving_mean),
                   ops.convert_to_numpy(layer.moving_spread)) for layer in layers]
    with untouched(layers):
        for layer in layers:
            layer.momentum = 0.0  # α = 1: after a pass, µ and σ hold that step's statistics
        for _ in range(passes):
            statistics = _average_step_statistics(layers, inputs, forward, statistics)
    _assign(layers, statistics)
    return model


def _assign(layers, statistics):
    # The spread is the statistic each layer keeps: σ, or the variance
    # (moving_statistic="variance"), whose average is then the average of var_B.
    for layer, (mean, spread) in zip(layers, statistics):
        layer.moving_mean.assign(np.asarray(mean, np.float32))
        layer.moving_spread.assign(np.asarray(spread, np.float32))


def _average_step_statistics(layers, inputs, forward, statistics):
    """One pass: per layer, the mean over batches of the step's mean(µ_B) and mean(σ_B)."""
    sums = [[0.0, 0.0] for _ in layers]
    for x in inputs:
        _assign(layers, statistics)  # every batch sees the same µ and σ
        forward(x)
        for total, layer in zip(sums, layers):
            total[0] = total[0] + ops.convert_to_numpy(layer.moving_mean).astype(np.float64)
            total[1] = total[1] + ops.convert_to_numpy(layer.moving_spread).astype(np.float64)
    # µ = mean over batches of mean(µ_B), σ = mean over batches of mean(σ_B)
    return [(mean / len(inputs), stddev / len(inputs)) for mean, stddev in sums]


@contextlib.contextmanager
def recalibrated(model, batches, forward=None, passes=None):
    """Context manager: the model recalibrated on `batches` inside, as it was outside.

        with br.recalibrated(model, batches):
            accuracy = evaluate(model)

    The arguments are `recalibrate`'s.
    """
    with untouched(renorm_layers(model)):
        yield recalibrate(model, batches, forward, passes)
