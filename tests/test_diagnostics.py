"""brlib.diagnostics against direct calls of the layer."""

import keras
import numpy as np

import brlib as br
from brlib import diagnostics


def one_layer_model(**kwargs):
    inputs = keras.Input((5,))
    layer = br.BatchRenormalization(**kwargs)
    return keras.Model(inputs, layer(inputs)), layer


def test_gap_matches_a_direct_computation_and_leaves_state_alone():
    x = (np.random.default_rng(0).normal(size=(16, 5)) * 2 + 1).astype(np.float32)
    model, layer = one_layer_model(rmax=1.0, dmax=0.0, microbatch_size=2)
    layer.moving_mean.assign(np.full(5, 0.5))
    before = [v.numpy() for v in layer.non_trainable_variables]
    (gap,) = diagnostics.train_inference_gap(model, x)
    for variable, value in zip(layer.non_trainable_variables, before):
        np.testing.assert_array_equal(variable.numpy(), value)

    groups = x.reshape(8, 2, 5).astype(np.float64)
    train = (groups - groups.mean(1, keepdims=True)) / np.sqrt(groups.var(1, keepdims=True) + 1e-3)
    infer = (x - 0.5) / 1.0
    np.testing.assert_allclose(gap, np.sqrt(np.mean((train.reshape(16, 5) - infer) ** 2)),
                               rtol=1e-4)


def test_gap_vanishes_when_nothing_is_clipped():
    x = np.random.default_rng(1).normal(size=(16, 5)).astype(np.float32)
    model, _ = one_layer_model(rmax=1e6, dmax=1e6, microbatch_size=4)
    assert diagnostics.train_inference_gap(model, x)[0] < 1e-4


def test_clip_fractions_by_layer_reads_each_layer():
    model, layer = one_layer_model(rmax=1.0, dmax=0.0, microbatch_size=4)
    layer(np.random.default_rng(2).normal(size=(8, 5)).astype(np.float32), training=True)
    assert diagnostics.clip_fractions_by_layer(model) == [(1.0, 1.0)]


def test_layer_inputs_are_what_each_layer_normalizes():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((5,))
    hidden = keras.layers.Dense(4, name="dense")(inputs)
    first = br.BatchRenormalization(rmax=1.0, dmax=0.0, microbatch_size=2, name="first")
    second = br.BatchRenormalization(rmax=1.0, dmax=0.0, microbatch_size=2, name="second")
    model = keras.Model(inputs, second(keras.layers.ReLU()(first(hidden))))
    x = np.random.default_rng(3).normal(size=(8, 5)).astype(np.float32)
    before = [v.numpy() for v in model.non_trainable_variables]
    found = diagnostics.layer_inputs(model, x)
    for variable, value in zip(model.non_trainable_variables, before):
        np.testing.assert_array_equal(variable.numpy(), value)
    kernel, bias = (w.numpy() for w in model.get_layer("dense").weights)
    h = x @ kernel + bias
    groups = h.reshape(4, 2, 4)  # batch norm over pairs, then ReLU: the second layer's input
    normalized = (groups - groups.mean(1, keepdims=True)) / np.sqrt(groups.var(1, keepdims=True)
                                                                    + 1e-3)
    assert list(found) == ["first", "second"]
    np.testing.assert_allclose(found["first"], h, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(found["second"], np.maximum(normalized.reshape(8, 4), 0),
                               rtol=1e-4, atol=1e-5)
