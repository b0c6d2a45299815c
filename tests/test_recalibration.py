"""brlib.recalibrate against a NumPy forward pass that averages each layer's microbatch statistics."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

import brlib as br  # noqa: E402

EPSILON = 1e-3


def small_model(microbatch_sizes=(2, 4), rmax=2.0, dmax=1.0):
    """Dense → renorm → ReLU → Dense → renorm, with non-trivial moving statistics."""
    keras.utils.set_random_seed(3)
    inputs = keras.Input((5,))
    x = keras.layers.Dense(6, name="dense1")(inputs)
    x = br.BatchRenormalization(microbatch_size=microbatch_sizes[0], rmax=rmax, dmax=dmax,
                                epsilon=EPSILON, warmup_steps=None, moving_statistic="stddev",
                                name="norm1")(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.Dense(3, name="dense2")(x)
    x = br.BatchRenormalization(microbatch_size=microbatch_sizes[1], rmax=rmax, dmax=dmax,
                                epsilon=EPSILON, warmup_steps=None, moving_statistic="stddev",
                                name="norm2")(x)
    model = keras.Model(inputs, x)
    rng = np.random.default_rng(1)
    for layer in br.renorm_layers(model):
        layer.gamma.assign(rng.uniform(0.5, 2.0, layer.gamma.shape))
        layer.beta.assign(rng.normal(size=layer.beta.shape))
        layer.moving_mean.assign(rng.normal(size=layer.moving_mean.shape))
        layer.moving_stddev.assign(rng.uniform(0.5, 2.0, layer.moving_stddev.shape))
    return model


def numpy_layer_inputs(weights, x, index, statistics, sizes, rmax, dmax):
    """The input of layer `index` in training mode, Algorithm 1 in NumPy, given the µ and σ
    of the layers before it."""
    h = x.astype(np.float64)
    for k in range(1, index + 1):
        h = h @ weights[f"dense{k}/kernel"] + weights[f"dense{k}/bias"]
        if k == index:
            return h
        mu, sigma = statistics[k - 1]
        groups = h.reshape(-1, sizes[k - 1], h.shape[-1])
        mean_b = groups.mean(axis=1, keepdims=True)
        sigma_b = np.sqrt(groups.var(axis=1, keepdims=True) + EPSILON)
        r = np.clip(sigma_b / sigma, 1 / rmax, rmax)
        d = np.clip((mean_b - mu) / sigma, -dmax, dmax)
        x_hat = (groups - mean_b) / sigma_b * r + d
        h = np.maximum(x_hat * weights[f"norm{k}/gamma"] + weights[f"norm{k}/beta"], 0.0)
        h = h.reshape(-1, h.shape[-1])


def numpy_recalibration(model, data, sizes, rmax, dmax):
    """Layer by layer: each layer's statistics averaged over the batches, its input computed
    with the layers before it already recalibrated."""
    weights = {w.path: np.asarray(w, np.float64) for w in model.weights}
    statistics = []
    for index, m in enumerate(sizes, start=1):
        means, sigmas = [], []
        for x in data:
            h = numpy_layer_inputs(weights, x, index, statistics, sizes, rmax, dmax)
            groups = h.reshape(-1, m, h.shape[-1])
            means.append(groups.mean(axis=1).mean(axis=0))
            sigmas.append(np.sqrt(groups.var(axis=1) + EPSILON).mean(axis=0))
        statistics.append((np.mean(means, axis=0), np.mean(sigmas, axis=0)))
    return statistics


def batches(count=3, size=8, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.normal(1.0, 2.0, (size, 5)).astype(np.float32) for _ in range(count)]


def state(model):
    return {w.path: np.array(w) for w in model.weights}


@pytest.mark.parametrize("rmax, dmax", [(1.0, 0.0), (2.0, 1.0), (1.5, 0.2)])
def test_statistics_are_the_exact_average_of_each_layers_training_mode_statistics(rmax, dmax):
    # (1, 0) is batch norm, where one pass is exact; (2, 1) leaves most r and d free and
    # (1.5, 0.2) clips many, so a layer's statistics depend on the µ and σ before it.
    model = small_model(rmax=rmax, dmax=dmax)
    data = batches()
    expected = numpy_recalibration(model, data, (2, 4), rmax, dmax)
    br.recalibrate(model, data)
    for layer, (mean, sigma) in zip(br.renorm_layers(model), expected):
        np.testing.assert_allclose(layer.moving_mean, mean, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(layer.moving_stddev, sigma, rtol=1e-5)


def test_one_pass_is_not_enough_for_renorm():
    # The reason for the passes: with r and d free, layer 2's statistics move once
    # layer 1's µ and σ are recalibrated.
    model = small_model(rmax=2.0, dmax=1.0)
    expected = numpy_recalibration(model, batches(), (2, 4), 2.0, 1.0)
    br.recalibrate(model, batches(), passes=1)
    second = br.renorm_layers(model)[1]
    assert not np.allclose(second.moving_stddev, expected[1][1], rtol=1e-3)


def test_only_the_statistics_change_and_the_layers_keep_their_settings():
    model = small_model()
    before = state(model)
    momenta = [layer.momentum for layer in br.renorm_layers(model)]
    br.recalibrate(model, [(x, np.zeros(len(x))) for x in batches()])  # (x, y) pairs work too
    after = state(model)
    changed = sorted(path for path in before if not np.array_equal(before[path], after[path]))
    assert changed == ["norm1/moving_mean", "norm1/moving_stddev", "norm2/moving_mean",
                       "norm2/moving_stddev"]
    assert [layer.momentum for layer in br.renorm_layers(model)] == momenta


def test_recalibrated_restores_everything_and_untouched_undoes_recalibrate():
    model = small_model()
    before = state(model)
    probe = batches(1, seed=5)[0]
    running = model(probe, training=False)
    with br.recalibrated(model, batches()):
        inside = model(probe, training=False)
    assert not np.allclose(inside, running)
    for path, value in state(model).items():
        np.testing.assert_array_equal(value, before[path], err_msg=path)
    with br.untouched(br.renorm_layers(model)):
        br.recalibrate(model, batches())
        assert not np.array_equal(state(model)["norm1/moving_stddev"],
                                  before["norm1/moving_stddev"])
    for path, value in state(model).items():
        np.testing.assert_array_equal(value, before[path], err_msg=path)


def test_recalibrated_passes_its_passes_on():
    one, exact = small_model(), small_model()
    br.recalibrate(one, batches(), passes=1)
    probe = batches(1, seed=5)[0]
    with br.recalibrated(exact, batches(), passes=1):
        inside = exact(probe, training=False)
    np.testing.assert_allclose(inside, one(probe, training=False), rtol=1e-6)


def test_untouched_puts_back_every_non_trainable_variable_of_any_layer():
    model = small_model()
    keras_norm = keras.layers.BatchNormalization()
    keras_norm.build((None, 3))
    layers = [*br.renorm_layers(model), keras_norm]
    before = [v.numpy().copy() for layer in layers for v in layer.non_trainable_variables]
    with br.untouched(layers):
        model(batches(1)[0], training=True)
        keras_norm(np.ones((4, 3), np.float32) * 7, training=True)
        layers[0].momentum = 0.0
    after = [v.numpy() for layer in layers for v in layer.non_trainable_variables]
    for a, b in zip(before, after):
        np.testing.assert_array_equal(a, b)
    assert layers[0].momentum != 0.0


def test_a_compiled_forward_gives_the_same_statistics():
    import tensorflow as tf

    eager, compiled = small_model(), small_model()
    br.recalibrate(eager, batches())
    forward = tf.function(lambda x: compiled(x, training=True))
    br.recalibrate(compiled, batches(), forward)
    for a, b in zip(br.renorm_layers(eager), br.renorm_layers(compiled)):
        np.testing.assert_allclose(a.moving_stddev, b.moving_stddev, rtol=1e-6)
        np.testing.assert_allclose(a.moving_mean, b.moving_mean, rtol=1e-6, atol=1e-6)


def test_moving_averages_of_frozen_weights_converge_to_the_recalibrated_values():
    # The EMA over one repeated batch converges to that batch's statistics:
    # what recalibration on that batch computes in a single pass.
    model, reference = small_model(rmax=1.0, dmax=0.0), small_model(rmax=1.0, dmax=0.0)
    x = batches(1)[0]
    for _ in range(1500):  # α = 0.01: (1 − α)^1500 ≈ 3e-7 of the start is left
        model(x, training=True)
    br.recalibrate(reference, [x])
    for a, b in zip(br.renorm_layers(model), br.renorm_layers(reference)):
        np.testing.assert_allclose(a.moving_stddev, b.moving_stddev, rtol=1e-4)
        np.testing.assert_allclose(a.moving_mean, b.moving_mean, rtol=1e-4, atol=1e-4)


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="batches"):
        br.recalibrate(small_model(), [])
    plain = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    with pytest.raises(ValueError, match="BatchRenormalization"):
        br.recalibrate(plain, batches())


@pytest.mark.parametrize("moving_statistic", ["stddev", "variance"])
def test_partial_batches_are_recalibrated_as_fit_normalizes_them(moving_statistic):
    # Batches of 4 and 3 with microbatches of 2: the second ends in a microbatch of one.
    layer = br.BatchRenormalization(microbatch_size=2, rmax=1.0, dmax=0.0, epsilon=EPSILON,
                                    warmup_steps=None, moving_statistic=moving_statistic)
    model = keras.Sequential([keras.Input((5,)), layer])
    rng = np.random.default_rng(4)
    inputs = [rng.normal(size=(4, 5)).astype(np.float32) * 3 + 1,
              rng.normal(size=(3, 5)).astype(np.float32)]
    br.recalibrate(model, inputs)
    means, spreads = [], []
    for x in inputs:
        groups = [x[i:i + 2].astype(np.float64) for i in range(0, len(x), 2)]
        means.append(np.mean([g.mean(0) for g in groups], 0))
        spread = [g.var(0) for g in groups]
        if moving_statistic == "stddev":
            spread = [np.sqrt(v + EPSILON) for v in spread]
        spreads.append(np.mean(spread, 0))
    np.testing.assert_allclose(keras.ops.convert_to_numpy(layer.moving_mean), np.mean(means, 0),
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(layer.moving_spread),
                               np.mean(spreads, 0), rtol=1e-5, atol=1e-6)
