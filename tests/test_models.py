"""brlib.models.seed_convnet against the student reproduction's layer list."""

import keras
import numpy as np

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
