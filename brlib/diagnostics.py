"""Per-layer diagnostics of a model's BatchRenormalization layers during training."""

import contextlib

import keras
import numpy as np

from brlib.schedule import renorm_layers


def clip_fractions_by_layer(model):
    """[(fraction of r clipped, fraction of d clipped)] of each layer's last training step."""
    return [(float(layer.fraction_r_clipped), float(layer.fraction_d_clipped))
            for layer in renorm_layers(model)]


def train_inference_gap(model, images):
    """RMS difference between training-mode and inference-mode output, per layer.

    Each BatchRenormalization layer's output is taken once with the model in
    training mode (microbatch statistics, corrected by r and d) and once in
    inference mode (moving statistics), on the same images. The layers'
    moving statistics and counters are restored afterwards, so probing does
    not change the training run.
    """
    layers = renorm_layers(model)
    probe = keras.Model(model.input, [layer.output for layer in layers])
    with _untouched(layers):
        train = keras.tree.flatten(probe(images, training=True))  # a list even for one layer
    infer = keras.tree.flatten(probe(images, training=False))
    return [float(np.sqrt(np.mean((np.asarray(a) - np.asarray(b)) ** 2)))
            for a, b in zip(train, infer)]


def layer_inputs(model, images):
    """{layer name: the inputs of that BatchRenormalization layer}, in training mode.

    The inputs are what a layer normalizes: their microbatch statistics are
    the µ_B and σ_B of the paper. Moving statistics and counters are
    restored afterwards, as in `train_inference_gap`.
    """
    layers = renorm_layers(model)
    probe = keras.Model(model.input, [layer.input for layer in layers])
    with _untouched(layers):
        outputs = keras.tree.flatten(probe(images, training=True))
    return {layer.name: np.asarray(output) for layer, output in zip(layers, outputs)}


@contextlib.contextmanager
def _untouched(layers):
    """Puts back the layers' moving statistics and counters that a training-mode call moves."""
    state = [(v, v.numpy()) for layer in layers for v in layer.non_trainable_variables]
    try:
        yield
    finally:
        for variable, value in state:
            variable.assign(value)
