"""brlib.models.seed_convnet against the student reproduction's layer list."""

import keras
import numpy as np
import pytest

import brlib as br


def test_seed_convnet_layout():
    model = br.models.seed_convnet((32, 32, 3), 100, lambda name: br.BatchRenormalization(name=name))
    convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    assert [(c.filters, c.kernel_size, c.strides) for c in convs] == [
        (64, (3, 3), (1, 1)), (128, (3, 3), (2, 2)), (256, (3, 3), (2, 2)), (100, (1, 1), (1, 1))]
    assert len(br.renorm_layers(model)) == 4
    assert [l.rate for l in model.layers if isinstance(l, keras.layers.Dropout)] == [0.5, 0.5]
    # No ReLU after the last normalization: logits can be negative.
    assert not isinstance(model.layers[-2], keras.layers.ReLU)
    logits = model(np.random.default_rng(0).normal(size=(4, 32, 32, 3)), training=True)
    assert logits.shape == (4, 100) and np.min(logits) < 0


def test_seed_convnet_takes_any_input_shape_and_norm():
    model = br.models.seed_convnet((28, 28, 1), 10, keras.layers.BatchNormalization, dropout=0)
    assert model.output_shape == (None, 10)
    assert not any(isinstance(l, keras.layers.Dropout) for l in model.layers)


def test_the_dense_head_is_a_global_average_then_a_dense_layer_as_numpy_computes_it():
    model = br.models.seed_convnet((28, 28, 1), 7, lambda name: br.BatchRenormalization(name=name),
                                   dropout=0, widths=(4, 8, 16), head="dense")
    assert len(br.renorm_layers(model)) == 3  # no normalization of the class scores
    x = np.random.default_rng(1).normal(size=(5, 28, 28, 1)).astype("float32")
    features = keras.Model(model.input, model.get_layer("relu3").output)(x)
    kernel, bias = model.get_layer("dense").get_weights()
    expected = np.mean(np.asarray(features), axis=(1, 2)) @ kernel + bias
    np.testing.assert_allclose(model(x, training=False), expected, rtol=1e-5, atol=1e-6)


def test_an_unknown_head_is_named():
    with pytest.raises(ValueError, match="`head` must be one of"):
        br.models.seed_convnet((28, 28, 1), 7, keras.layers.BatchNormalization, head="norm5")
