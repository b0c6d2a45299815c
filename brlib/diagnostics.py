"""Per-layer diagnostics of a model's BatchRenormalization layers during training."""

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
    state = [(v, v.numpy()) for layer in layers for v in layer.non_trainable_variables]
    train = keras.tree.flatten(probe(images, training=True))  # a list even for one layer
    for variable, value in state:
        variable.assign(value)
    infer = keras.tree.flatten(probe(images, training=False))
    return [float(np.sqrt(np.mean((np.asarray(a) - np.asarray(b)) ** 2)))
            for a, b in zip(train, infer)]
