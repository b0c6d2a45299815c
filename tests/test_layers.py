"""brlib.BatchRenormalization against NumPy's Algorithm 1, Keras's own renorm and finite differences.

Runs on every Keras backend (CI runs it on TensorFlow and on JAX); the tests
that need GradientTape or tf.function are marked `tensorflow_only`.
"""

import os

import keras
import numpy as np
import pytest

import brlib as br

BACKEND = keras.backend.backend()
tensorflow_only = pytest.mark.skipif(BACKEND != "tensorflow",
                                     reason="uses GradientTape or tf.function")
if BACKEND == "tensorflow":
    import tensorflow as tf


# float32 outputs against the float64 reference; torch's float32 moments differ from it a
# little more (2e-4 at worst, seen for microbatches of 2 where σ_B is small).
OUTPUT_TOLERANCE = 5e-4 if BACKEND == "torch" else 1e-4


def as_numpy(value):
    """A NumPy array of any backend's tensor or Keras variable (torch's included)."""
    if isinstance(value, (np.ndarray, np.generic, list, tuple, float, int)):
        return np.asarray(value)
    return keras.ops.convert_to_numpy(value)


def assert_close(actual, desired, **tolerances):
    np.testing.assert_allclose(as_numpy(actual), as_numpy(desired), **tolerances)


def assert_equal(actual, desired, **options):
    np.testing.assert_array_equal(as_numpy(actual), as_numpy(desired), **options)

EPS = 1e-3


# ----------------------------------------------------------------------------
# Independent reference: Algorithm 1 of the paper in NumPy, one microbatch at a
# time, in float64.
# ----------------------------------------------------------------------------
class NumpyRenorm:
    def __init__(self, channels, momentum, rmax, dmax, microbatch_size, gamma, beta, axis=-1):
        self.mu = np.zeros(channels)
        self.sigma = np.ones(channels)
        self.momentum, self.rmax, self.dmax = momentum, rmax, dmax
        self.m, self.gamma, self.beta, self.axis = microbatch_size, gamma, beta, axis
        self.clipped_r, self.clipped_d = [], []

    def train_step(self, x):
        xc = np.moveaxis(np.asarray(x, np.float64), self.axis, -1)
        m = self.m or len(xc)
        out = np.empty_like(xc)
        mus, sigmas = [], []
        for start in range(0, len(xc), m):
            group = xc[start:start + m]
            flat = group.reshape(-1, group.shape[-1])
            mu_b = flat.mean(axis=0)
            sigma_b = np.sqrt(flat.var(axis=0) + EPS)
            r_free = sigma_b / self.sigma
            d_free = (mu_b - self.mu) / self.sigma
            r = np.clip(r_free, 1 / self.rmax, self.rmax)
            d = np.clip(d_free, -self.dmax, self.dmax)
            self.clipped_r.append((r != r_free))
            self.clipped_d.append((d != d_free))
            out[start:start + m] = ((group - mu_b) / sigma_b * r + d) * self.gamma + self.beta
            mus.append(mu_b)
            sigmas.append(sigma_b)
        alpha = 1 - self.momentum
        self.mu = self.mu + alpha * (np.mean(mus, axis=0) - self.mu)
        self.sigma = self.sigma + alpha * (np.mean(sigmas, axis=0) - self.sigma)
        return np.moveaxis(out, -1, self.axis)

    def infer(self, x):
        xc = np.moveaxis(np.asarray(x, np.float64), self.axis, -1)
        return np.moveaxis(self.gamma * (xc - self.mu) / self.sigma + self.beta, -1, self.axis)


def shifting_batches(shape, steps, seed=0):
    """Batches whose scale and offset drift per example, so r and d get clipped."""
    rng = np.random.default_rng(seed)
    per_example = (shape[0],) + (1,) * (len(shape) - 1)
    for _ in range(steps):
        scale = rng.uniform(0.2, 4.0, per_example) * rng.uniform(0.3, 3.0)
        shift = rng.uniform(-3, 3, per_example) + rng.uniform(-3, 3)
        yield (rng.normal(size=shape) * scale + shift).astype(np.float32)


def make_layer(shape, axis=-1, **kwargs):
    layer = br.BatchRenormalization(axis=axis, epsilon=EPS, **kwargs)
    layer.build(shape)
    channels = shape[axis]
    rng = np.random.default_rng(42)
    gamma, beta = rng.uniform(0.5, 2, channels), rng.normal(size=channels)
    layer.gamma.assign(gamma)
    layer.beta.assign(beta)
    return layer, gamma, beta


SHAPES = {"dense": (16, 6), "conv": (16, 4, 4, 3)}


@pytest.mark.parametrize("microbatch_size", [None, 2, 4])
@pytest.mark.parametrize("kind", ["dense", "conv"])
def test_matches_numpy_algorithm_1(kind, microbatch_size):
    shape = SHAPES[kind]
    settings = dict(momentum=0.8, rmax=1.5, dmax=0.5, microbatch_size=microbatch_size)
    layer, gamma, beta = make_layer(shape, **settings)
    ref = NumpyRenorm(shape[-1], gamma=gamma, beta=beta, **settings)
    for step, x in enumerate(shifting_batches(shape, steps=6)):
        y = layer(x, training=True)
        assert_close(y, ref.train_step(x), rtol=OUTPUT_TOLERANCE, atol=OUTPUT_TOLERANCE)
        assert_close(layer.moving_mean, ref.mu, rtol=1e-5, atol=1e-5)
        assert_close(layer.moving_stddev, ref.sigma, rtol=1e-5, atol=1e-5)
        assert_close(float(layer.fraction_r_clipped), np.mean(ref.clipped_r[-1]) if
                                   microbatch_size is None else
                                   np.mean(ref.clipped_r[-(shape[0] // microbatch_size):]))
    # The comparison is only meaningful if both clips were active and inactive.
    for clipped in (ref.clipped_r, ref.clipped_d):
        assert 0 < np.mean(clipped) < 1
    x = next(shifting_batches(shape, steps=1, seed=7))
    assert_close(layer(x, training=False), ref.infer(x), rtol=1e-4, atol=1e-4)


def test_channels_first_matches_numpy():
    shape = (8, 3, 4, 4)
    settings = dict(momentum=0.8, rmax=1.5, dmax=0.5, microbatch_size=2)
    layer, gamma, beta = make_layer(shape, axis=1, **settings)
    ref = NumpyRenorm(3, gamma=gamma, beta=beta, axis=1, **settings)
    for x in shifting_batches(shape, steps=5):
        assert_close(layer(x, training=True), ref.train_step(x), rtol=1e-4,
                                   atol=1e-4)
    assert_close(layer(x), ref.infer(x), rtol=1e-4, atol=1e-4)


@pytest.mark.skipif(tuple(map(int, keras.__version__.split(".")[:2])) < (3, 14),
                    reason="keras.layers.BatchNormalization(renorm=True) needs keras >= 3.14")
@pytest.mark.parametrize("kind", ["dense", "conv"])
def test_whole_batch_matches_keras_renorm(kind):
    shape = SHAPES[kind]
    rmax, dmax, momentum = 1.5, 0.5, 0.8
    layer, gamma, beta = make_layer(shape, momentum=momentum, rmax=rmax, dmax=dmax)
    oracle = keras.layers.BatchNormalization(
        momentum=momentum, epsilon=EPS, renorm=True, renorm_momentum=momentum,
        renorm_clipping={"rmin": 1 / rmax, "rmax": rmax, "dmax": dmax})
    oracle.build(shape)
    oracle.gamma.assign(gamma)
    oracle.beta.assign(beta)
    for x in shifting_batches(shape, steps=6):
        assert_close(layer(x, training=True), oracle(x, training=True),
                                   rtol=1e-4, atol=1e-4)
        assert_close(layer.moving_mean, oracle.moving_mean, rtol=1e-5, atol=1e-5)
        assert_close(layer.moving_stddev, oracle.moving_stddev, rtol=1e-5,
                                   atol=1e-5)
    assert_close(layer(x), oracle(x, training=False), rtol=1e-4, atol=1e-4)


# ----------------------------------------------------------------------------
# Gradients
# ----------------------------------------------------------------------------
def gradients(layer, x, upstream):
    x = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(x)
        loss = tf.reduce_sum(layer(x, training=True) * upstream)
    dx, dgamma, dbeta = tape.gradient(loss, [x, layer.gamma, layer.beta])
    return dx.numpy(), dgamma.numpy(), dbeta.numpy()


def paper_backward(x, upstream, gamma, mu, sigma, rmax, dmax, m):
    """∂ℓ/∂x, ∂ℓ/∂γ, ∂ℓ/∂β from the paper's backward formulas, r and d held constant."""
    dx = np.empty_like(x)
    dgamma = np.zeros_like(gamma)
    dbeta = np.zeros_like(gamma)
    for start in range(0, len(x), m):
        xb, gy = x[start:start + m], upstream[start:start + m]
        axes = tuple(range(xb.ndim - 1))
        count = xb.size // xb.shape[-1]
        mu_b = xb.mean(axis=axes)
        sigma_b = np.sqrt(xb.var(axis=axes) + EPS)
        r = np.clip(sigma_b / sigma, 1 / rmax, rmax)
        d = np.clip((mu_b - mu) / sigma, -dmax, dmax)
        dxhat = gy * gamma
        dsigma_b = np.sum(dxhat * (xb - mu_b) * (-r / sigma_b**2), axis=axes)
        dmu_b = np.sum(dxhat * (-r / sigma_b), axis=axes)
        dx[start:start + m] = (dxhat * r / sigma_b + dsigma_b * (xb - mu_b) / (count * sigma_b)
                               + dmu_b / count)
        dgamma += np.sum(gy * ((xb - mu_b) / sigma_b * r + d), axis=axes)
        dbeta += np.sum(gy, axis=axes)
    return dx, dgamma, dbeta


def frozen_forward(x, gamma, beta, r_and_d, m):
    """Forward pass with r and d fixed to given values: what finite differences probe."""
    out = np.empty_like(x)
    for k, start in enumerate(range(0, len(x), m)):
        xb = x[start:start + m]
        axes = tuple(range(xb.ndim - 1))
        r, d = r_and_d[k]
        out[start:start + m] = gamma * ((xb - xb.mean(axes)) / np.sqrt(xb.var(axes) + EPS) * r
                                        + d) + beta
    return out


@tensorflow_only
@pytest.mark.parametrize("kind", ["dense", "conv"])
def test_gradients_match_paper_formulas_and_finite_differences(kind):
    shape, m = SHAPES[kind], 4
    rng = np.random.default_rng(3)
    layer = br.BatchRenormalization(epsilon=EPS, rmax=1.3, dmax=0.4, microbatch_size=m,
                                    dtype="float64")
    layer.build(shape)
    gamma, beta = rng.uniform(0.5, 2, shape[-1]), rng.normal(size=shape[-1])
    mu, sigma = rng.normal(scale=0.3, size=shape[-1]), rng.uniform(0.8, 1.4, shape[-1])
    for weight, value in ((layer.gamma, gamma), (layer.beta, beta), (layer.moving_mean, mu),
                          (layer.moving_stddev, sigma)):
        weight.assign(value)
    # Statistics near µ and σ, so that some r and d are clipped and some are
    # not: a missing stop_gradient shows only where they are not.
    x = rng.normal(size=shape) * rng.uniform(0.6, 1.6, (shape[0],) + (1,) * (len(shape) - 1))
    upstream = rng.normal(size=shape)
    layer(x, training=True)
    assert 0 < float(layer.fraction_r_clipped) < 1 and 0 < float(layer.fraction_d_clipped) < 1
    layer.moving_mean.assign(mu)
    layer.moving_stddev.assign(sigma)

    dx, dgamma, dbeta = gradients(layer, x, upstream)
    ref_dx, ref_dgamma, ref_dbeta = paper_backward(x, upstream, gamma, mu, sigma, 1.3, 0.4, m)
    assert_close(dx, ref_dx, rtol=1e-8, atol=1e-10)
    assert_close(dgamma, ref_dgamma, rtol=1e-8, atol=1e-10)
    assert_close(dbeta, ref_dbeta, rtol=1e-8, atol=1e-10)

    # Central differences of the forward pass with r and d frozen at this batch's values.
    r_and_d = []
    for start in range(0, len(x), m):
        xb = x[start:start + m]
        axes = tuple(range(xb.ndim - 1))
        sigma_b = np.sqrt(xb.var(axes) + EPS)
        r_and_d.append((np.clip(sigma_b / sigma, 1 / 1.3, 1.3),
                        np.clip((xb.mean(axes) - mu) / sigma, -0.4, 0.4)))
    h, numeric = 1e-6, np.zeros_like(x)
    for index in np.ndindex(*x.shape):
        bump = np.zeros_like(x)
        bump[index] = h
        plus = np.sum(frozen_forward(x + bump, gamma, beta, r_and_d, m) * upstream)
        minus = np.sum(frozen_forward(x - bump, gamma, beta, r_and_d, m) * upstream)
        numeric[index] = (plus - minus) / (2 * h)
    assert_close(dx, numeric, rtol=1e-5, atol=1e-6)


@tensorflow_only
@pytest.mark.parametrize("kind, m", [("dense", 4), ("conv", 2)])
def test_gradient_lies_in_null_space_of_each_microbatch(kind, m):
    # Σ (xᵢ − µ_B) ∂ℓ/∂xᵢ is exactly ε/σ_B² times a finite sum, so the paper's
    # scale invariance holds as ε → 0: test it with a negligible ε. (Dense
    # microbatches of 2 are degenerate: x̂ = ±1 and the whole gradient vanishes.)
    shape = SHAPES[kind]
    layer = br.BatchRenormalization(epsilon=1e-12, rmax=1.2, dmax=0.3, microbatch_size=m,
                                    dtype="float64")
    layer.build(shape)
    layer.moving_stddev.assign(np.full(shape[-1], 0.7))
    x = next(shifting_batches(shape, 1, seed=9)).astype(np.float64)
    upstream = np.random.default_rng(1).normal(size=shape)
    dx, _, _ = gradients(layer, x, upstream)
    assert np.abs(dx).max() > 1e-3
    for start in range(0, len(x), m):
        xb, gb = x[start:start + m], dx[start:start + m]
        axes = tuple(range(xb.ndim - 1))
        scale = np.abs(upstream[start:start + m]).sum(axes)
        assert_close(gb.sum(axes) / scale, 0, atol=1e-10)  # Σ ∂ℓ/∂xᵢ = 0
        centred = xb - xb.mean(axes)
        assert_close((centred * gb).sum(axes) / scale, 0, atol=1e-10)


# ----------------------------------------------------------------------------
# Special cases
# ----------------------------------------------------------------------------
@pytest.mark.parametrize("microbatch_size", [None, 4])
def test_rmax_1_dmax_0_is_batch_norm(microbatch_size):
    shape = SHAPES["conv"]
    layer, gamma, beta = make_layer(shape, rmax=1.0, dmax=0.0, microbatch_size=microbatch_size)
    layer.moving_mean.assign([0.5, -1.0, 2.0])  # irrelevant to batch norm's output
    layer.moving_stddev.assign([0.3, 2.0, 5.0])
    x = next(shifting_batches(shape, 1))
    m = microbatch_size or len(x)
    groups = x.astype(np.float64).reshape(-1, m, *shape[1:])
    axes = tuple(range(1, groups.ndim - 1))
    expected = gamma * (groups - groups.mean(axes, keepdims=True)) / np.sqrt(
        groups.var(axes, keepdims=True) + EPS) + beta
    y = layer(x, training=True)
    assert_close(y, expected.reshape(shape), rtol=1e-4, atol=1e-4)
    if microbatch_size is None:
        keras_bn = keras.layers.BatchNormalization(epsilon=EPS)
        keras_bn.build(shape)
        keras_bn.gamma.assign(gamma)
        keras_bn.beta.assign(beta)
        assert_close(y, keras_bn(x, training=True), rtol=1e-4, atol=1e-4)


def test_unclipped_training_output_equals_inference_with_pre_update_statistics():
    shape = SHAPES["conv"]
    layer, _, _ = make_layer(shape, rmax=1e6, dmax=1e6, microbatch_size=4)
    layer.moving_mean.assign([0.5, -1.0, 2.0])
    layer.moving_stddev.assign([0.3, 2.0, 5.0])
    before = [keras.ops.convert_to_numpy(w) for w in (layer.moving_mean, layer.moving_stddev)]
    x = next(shifting_batches(shape, 1))
    y_train = keras.ops.convert_to_numpy(layer(x, training=True))
    assert not np.allclose(layer.moving_mean, before[0])  # the step did update µ
    layer.moving_mean.assign(before[0])
    layer.moving_stddev.assign(before[1])
    assert_close(y_train, layer(x, training=False), rtol=1e-4, atol=1e-4)


def test_nonfinite_batch_skips_the_update_and_counts_it():
    shape = SHAPES["dense"]
    layer, _, _ = make_layer(shape, momentum=0.5, microbatch_size=4)
    good = next(shifting_batches(shape, 1))
    layer(good, training=True)
    before = layer.moving_mean.numpy(), layer.moving_stddev.numpy()
    for bad_value in (np.nan, np.inf):
        bad = good.copy()
        bad[3, 2] = bad_value
        layer(bad, training=True)
        assert_equal(layer.moving_mean, before[0])
        assert_equal(layer.moving_stddev, before[1])
    assert float(layer.skipped_updates) == 2
    layer(good, training=True)
    assert not np.allclose(layer.moving_mean, before[0])
    assert np.all(np.isfinite(layer.moving_mean)) and float(layer.skipped_updates) == 2


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision_keeps_float32_statistics(policy):
    shape = (16, 8, 8, 3)
    layer = br.BatchRenormalization(microbatch_size=4, dtype=policy)
    reference = br.BatchRenormalization(microbatch_size=4)
    # Values whose sums overflow float16 (max 65504) if the moments were taken in it.
    x = (np.random.default_rng(0).normal(size=shape) * 30 + 3000).astype(np.float32)
    x_low = keras.ops.cast(x, layer.compute_dtype)
    y = layer(x_low, training=True)
    assert keras.backend.standardize_dtype(y.dtype) == layer.compute_dtype
    assert layer.moving_mean.dtype == "float32"
    y = keras.ops.convert_to_numpy(keras.ops.cast(y, "float32"))
    assert np.all(np.isfinite(y))
    # Same arithmetic in float32 on the same rounded inputs; the output is
    # rounded once to the low precision (8 bits of mantissa for bfloat16).
    y_ref = reference(keras.ops.cast(x_low, "float32"), training=True)
    assert_close(y, y_ref, rtol=2**-7, atol=2**-7)
    assert_close(layer.moving_mean, reference.moving_mean, rtol=1e-2)


# ----------------------------------------------------------------------------
# Inside model.fit
# ----------------------------------------------------------------------------
def sync_state(model):
    """On JAX, fit keeps the variables outside the model; a callback that reads them syncs first."""
    getattr(model, "jax_state_sync", lambda: None)()


class RecordClipping(keras.callbacks.Callback):
    def __init__(self, layer, changes=None):
        super().__init__()
        self.layer, self.changes, self.seen = layer, changes or {}, []

    def on_train_batch_begin(self, batch, logs=None):
        sync_state(self.model)
        step = int(self.model.optimizer.iterations)
        if step in self.changes:
            self.layer.rmax.assign(self.changes[step][0])
            self.layer.dmax.assign(self.changes[step][1])

    def on_train_batch_end(self, batch, logs=None):
        sync_state(self.model)
        self.seen.append((float(self.layer.rmax), float(self.layer.dmax),
                          float(self.layer.fraction_r_clipped),
                          float(self.layer.fraction_d_clipped)))


def small_model(layer):
    return keras.Sequential([keras.Input((6,)), keras.layers.Dense(8), layer,
                             keras.layers.Dense(3)])


def test_assigning_rmax_dmax_takes_effect_inside_fit():
    keras.utils.set_random_seed(0)
    layer = br.BatchRenormalization(rmax=1.0, dmax=0.0, microbatch_size=2)
    model = small_model(layer)
    model.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x = np.random.default_rng(0).normal(size=(32, 6)).astype(np.float32)
    y = np.arange(32) % 3
    recorder = RecordClipping(layer, changes={3: (1e6, 1e6)})
    model.fit(x, y, batch_size=8, epochs=2, shuffle=False, callbacks=[recorder], verbose=0)
    fractions = np.array(recorder.seen)[:, 2:]
    # rmax = 1, dmax = 0 clip every r and d; after the change nothing is clipped.
    assert_equal(fractions[:3], 1.0)
    assert_equal(fractions[3:], 0.0)


# ----------------------------------------------------------------------------
# Configuration, saving, bad input
# ----------------------------------------------------------------------------
def test_config_and_saved_model_round_trip(tmp_path):
    layer = br.BatchRenormalization(microbatch_size=2, rmax=1.0, dmax=0.0, momentum=0.9,
                                    epsilon=1e-4, scale=False)
    model = small_model(layer)
    model.compile("adam", "mse")
    x = np.random.default_rng(0).normal(size=(16, 6)).astype(np.float32)
    model.fit(x, np.zeros((16, 3)), batch_size=8, epochs=2, verbose=0)
    layer.rmax.assign(2.5)
    layer.dmax.assign(1.5)

    config = layer.get_config()
    clone = br.BatchRenormalization.from_config(config)
    assert clone.get_config() == config
    assert (config["rmax"], config["dmax"], config["microbatch_size"]) == (2.5, 1.5, 2)

    path = os.path.join(tmp_path, "model.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    loaded_layer = loaded.layers[1]
    assert isinstance(loaded_layer, br.BatchRenormalization)
    assert float(loaded_layer.rmax) == 2.5 and float(loaded_layer.dmax) == 1.5
    for name in ("moving_mean", "moving_stddev", "beta"):
        assert_equal(getattr(loaded_layer, name), getattr(layer, name))
    assert_close(loaded.predict(x, verbose=0), model.predict(x, verbose=0))


@pytest.mark.parametrize("kwargs, names", [
    ({"rmax": 0.5}, ["rmax", ">= 1"]),
    ({"dmax": -0.1}, ["dmax", ">= 0"]),
    ({"momentum": 1.5}, ["momentum", "[0, 1]"]),
    ({"momentum": -0.1}, ["momentum", "[0, 1]"]),
    ({"epsilon": 0.0}, ["epsilon", "> 0"]),
    ({"microbatch_size": 0}, ["microbatch_size", "positive integer"]),
    ({"microbatch_size": 2.5}, ["microbatch_size", "positive integer"]),
    ({"microbatch_size": True}, ["microbatch_size", "positive integer"]),
    ({"axis": 1.0}, ["axis", "integer"]),
])
def test_bad_arguments_are_named(kwargs, names):
    with pytest.raises(ValueError) as error:
        br.BatchRenormalization(**kwargs)
    for name in names:
        assert name in str(error.value)


@pytest.mark.parametrize("axis", [4, -5, 0])
def test_axis_out_of_range_is_named(axis):
    with pytest.raises(ValueError, match="axis"):
        br.BatchRenormalization(axis=axis)(np.zeros((4, 2, 2, 3), np.float32))


def test_rank_below_two_is_rejected():
    with pytest.raises(ValueError, match="rank >= 2"):
        br.BatchRenormalization()(np.zeros((4,), np.float32))


def test_batch_not_divisible_by_microbatch_size():
    layer = br.BatchRenormalization(microbatch_size=4)
    with pytest.raises(ValueError, match="microbatch_size.*must divide the batch size"):
        layer(np.zeros((6, 3), np.float32), training=True)


@tensorflow_only
def test_batch_of_unknown_size_not_divisible_by_microbatch_size():
    layer = br.BatchRenormalization(microbatch_size=4)

    # The same check when the batch size is only known at run time.
    @tf.function(input_signature=[tf.TensorSpec([None, 3], tf.float32)])
    def step(x):
        return layer(x, training=True)

    step(np.zeros((8, 3), np.float32))
    with pytest.raises(tf.errors.InvalidArgumentError, match="microbatch_size.*must divide"):
        step(np.zeros((6, 3), np.float32))


def test_clip_corrections_against_the_bounds_written_out():
    from brlib.layers import clip_corrections

    r = np.array([0.2, 0.5, 0.9, 1.0, 1.9, 2.0, 2.5])
    d = np.array([-3.0, -1.0, -0.2, 0.0, 0.5, 1.0, 4.0])
    clipped_r, clipped_d, r_mask, d_mask = (keras.ops.convert_to_numpy(v)
                                            for v in clip_corrections(r, d, 2.0, 1.0))
    assert_close(clipped_r, [0.5, 0.5, 0.9, 1.0, 1.9, 2.0, 2.0])
    assert_close(clipped_d, [-1.0, -1.0, -0.2, 0.0, 0.5, 1.0, 1.0])
    # A value exactly on a bound is not clipped: it passes through unchanged.
    assert_equal(r_mask, [True, False, False, False, False, False, True])
    assert_equal(d_mask, [True, False, False, False, False, False, True])


def test_batch_renorm_core_matches_numpy_algorithm_1():
    from brlib.layers import batch_renorm

    shape = (12, 3)
    ref = NumpyRenorm(3, momentum=0.9, rmax=1.4, dmax=0.3, microbatch_size=4,
                      gamma=np.array([0.5, 1.0, 2.0]), beta=np.array([0.1, -0.2, 0.3]))
    ref.mu, ref.sigma = np.array([0.5, -1.0, 0.0]), np.array([1.5, 0.7, 2.0])
    mu, sigma = ref.mu, ref.sigma
    x = next(shifting_batches(shape, steps=1, seed=3)).astype(np.float64)
    groups = x.reshape(3, 4, 3)
    mean_b = groups.mean(axis=1, keepdims=True)
    sigma_b = np.sqrt(groups.var(axis=1, keepdims=True) + EPS)

    step = batch_renorm(groups, mean_b, sigma_b, mu, sigma, 1.4, 0.3, ref.gamma, ref.beta)
    expected = ref.train_step(x)
    # float64 where the backend computes in it (TensorFlow); JAX computes in float32.
    assert_close(np.reshape(step.outputs, shape), expected,
                               rtol=1e-12 if BACKEND == "tensorflow" else 1e-5)
    assert_equal(np.reshape(step.r_clipped, (3, 3)), np.stack(ref.clipped_r))
    assert_equal(np.reshape(step.d_clipped, (3, 3)), np.stack(ref.clipped_d))
    assert 0 < np.mean(ref.clipped_r) < 1 and 0 < np.mean(ref.clipped_d) < 1
    # Without x, the same r, d and masks, and no output.
    alone = batch_renorm(None, mean_b, sigma_b, mu, sigma, 1.4, 0.3)
    assert alone.outputs is None
    assert_equal(alone.r, step.r)
    assert_equal(alone.d, step.d)


@tensorflow_only
def test_batch_renorm_core_treats_r_and_d_as_constants():
    from brlib.layers import batch_renorm

    mean_b, sigma_b = tf.constant([0.3, -0.2]), tf.constant([1.2, 0.8])
    with tf.GradientTape(persistent=True) as tape:
        tape.watch([mean_b, sigma_b])
        step = batch_renorm(None, mean_b, sigma_b, 0.0, 1.0, 10.0, 10.0)
        total = tf.reduce_sum(step.r) + tf.reduce_sum(step.d)
    assert tape.gradient(total, mean_b) is None and tape.gradient(total, sigma_b) is None


@pytest.mark.parametrize("center, scale", [(True, True), (False, True), (True, False)])
def test_weight_inventory(center, scale):
    layer = br.BatchRenormalization(center=center, scale=scale)
    layer.build((8, 5, 5, 3))
    trainable = {w.name: tuple(w.shape) for w in layer.trainable_weights}
    assert trainable == ({"gamma": (3,)} if scale else {}) | ({"beta": (3,)} if center else {})
    non_trainable = {w.name: tuple(w.shape) for w in layer.non_trainable_weights}
    assert non_trainable == {"moving_mean": (3,), "moving_stddev": (3,), "rmax": (), "dmax": (),
                             "fraction_r_clipped": (), "fraction_d_clipped": (),
                             "skipped_updates": ()}
    # Statistics are averaged across replicas; the clip bounds are set once, by the schedule.
    aggregation = {w.name: w.aggregation for w in layer.weights}
    assert aggregation["moving_mean"] == aggregation["moving_stddev"] == "mean"
    assert aggregation["rmax"] == aggregation["dmax"] == "only_first_replica"
