"""brlib.BatchRenormalization against NumPy's Algorithm 1, Keras's own renorm and finite differences.

Also against Keras's BatchNormalization with masks, with a zero-initialized
σ, and with Keras's arguments, and against a NumPy reference of SBX's
BatchRenorm (the layer of CrossQ). Runs on every Keras backend (CI runs it on
TensorFlow, JAX and PyTorch); the tests that need GradientTape, tf.function
or tf.distribute are marked `tensorflow_only`.
"""

import os

import keras
import numpy as np
import pytest

import brlib as br

BACKEND = keras.backend.backend()
tensorflow_only = pytest.mark.skipif(BACKEND != "tensorflow",
                                     reason="uses GradientTape, tf.function or tf.distribute")
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


def renorm_layer(**kwargs):
    """The layer as the tests of Algorithm 1 build it: its clip bounds from the first step.

    These tests hold the arithmetic of a step against references, so they
    build the layer without the in-layer warm-up (warmup_steps=None: the
    bounds are what the weights hold) and with σ (moving_statistic="stddev")
    unless they say otherwise; Keras's `renorm` spelling brings its own
    settings. The defaults have tests of their own.
    """
    if "renorm" not in kwargs:
        kwargs.setdefault("warmup_steps", None)
        kwargs.setdefault("moving_statistic", "stddev")
    return br.BatchRenormalization(**kwargs)



# ----------------------------------------------------------------------------
# Independent reference: Algorithm 1 of the paper in NumPy, one microbatch at a
# time, in float64.
# ----------------------------------------------------------------------------
class NumpyRenorm:
    """Algorithm 1 per microbatch in float64; a mask and the variance rule written out too.

    `spread` is the moving statistic the layer keeps: σ (floored at √ε where it
    divides) or, with moving_statistic="variance", the variance (σ = sqrt(v + ε)).
    A mask covers every axis of x but the last, as Keras's masks do.
    """

    def __init__(self, channels, momentum, rmax, dmax, microbatch_size, gamma, beta, axis=-1,
                 moving_statistic="stddev", spread=1.0):
        self.mu = np.zeros(channels)
        self.spread = np.full(channels, spread, np.float64)
        self.momentum, self.rmax, self.dmax = momentum, rmax, dmax
        self.m, self.gamma, self.beta, self.axis = microbatch_size, gamma, beta, axis
        self.moving_statistic = moving_statistic
        self.clipped_r, self.clipped_d = [], []
        self.fraction_r = self.fraction_d = None

    @property
    def sigma(self):
        """σ as it divides."""
        if self.moving_statistic == "stddev":
            return np.maximum(self.spread, np.sqrt(EPS))
        return np.sqrt(self.spread + EPS)

    def train_step(self, x, mask=None):
        x = np.asarray(x, np.float64)
        keep = np.ones(x.shape, bool) if mask is None else np.broadcast_to(
            np.asarray(mask, bool)[..., None], x.shape)
        xc, keep = np.moveaxis(x, self.axis, -1), np.moveaxis(keep, self.axis, -1)
        m = self.m or len(xc)
        out = np.empty_like(xc)
        mus, spreads, valid, clipped_r, clipped_d = [], [], [], [], []
        for start in range(0, len(xc), m):
            group, kept = xc[start:start + m], keep[start:start + m]
            flat, flat_kept = group.reshape(-1, group.shape[-1]), kept.reshape(-1, group.shape[-1])
            count = flat_kept.sum(axis=0)
            mu_b = np.where(flat_kept, flat, 0).sum(axis=0) / np.maximum(count, 1)
            var_b = np.where(flat_kept, (flat - mu_b) ** 2, 0).sum(axis=0) / np.maximum(count, 1)
            sigma_b = np.sqrt(var_b + EPS)
            r_free = sigma_b / self.sigma
            d_free = (mu_b - self.mu) / self.sigma
            r = np.clip(r_free, 1 / self.rmax, self.rmax)
            d = np.clip(d_free, -self.dmax, self.dmax)
            clipped_r.append(r != r_free)
            clipped_d.append(d != d_free)
            out[start:start + m] = ((group - mu_b) / sigma_b * r + d) * self.gamma + self.beta
            mus.append(mu_b)
            spreads.append(sigma_b if self.moving_statistic == "stddev" else var_b)
            valid.append(count > 0)
        valid = np.array(valid)
        self.clipped_r += [c[v] for c, v in zip(clipped_r, valid)]
        self.clipped_d += [c[v] for c, v in zip(clipped_d, valid)]
        self.fraction_r = np.sum(np.array(clipped_r) & valid) / max(valid.sum(), 1)
        self.fraction_d = np.sum(np.array(clipped_d) & valid) / max(valid.sum(), 1)
        groups = np.maximum(valid.sum(axis=0), 1)
        alpha = 1 - self.momentum
        for name, values in (("mu", mus), ("spread", spreads)):
            old = getattr(self, name)
            target = np.where(valid, values, 0).sum(axis=0) / groups
            setattr(self, name, np.where(valid.any(axis=0), old + alpha * (target - old), old))
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
    layer = renorm_layer(axis=axis, epsilon=EPS, **kwargs)
    layer.build(shape)
    channels = shape[axis]
    rng = np.random.default_rng(42)
    gamma, beta = rng.uniform(0.5, 2, channels), rng.normal(size=channels)
    layer.gamma.assign(gamma)
    layer.beta.assign(beta)
    return layer, gamma, beta


SHAPES = {"dense": (16, 6), "conv": (16, 4, 4, 3)}


def moving_spread(layer):
    """The moving statistic of spread that the layer keeps: σ or the variance."""
    return layer.moving_stddev if layer.moving_statistic == "stddev" else layer.moving_variance


@pytest.mark.parametrize("moving_statistic", ["stddev", "variance"])
@pytest.mark.parametrize("microbatch_size", [None, 2, 4])
@pytest.mark.parametrize("kind", ["dense", "conv"])
def test_matches_numpy_algorithm_1(kind, microbatch_size, moving_statistic):
    shape = SHAPES[kind]
    settings = dict(momentum=0.8, rmax=1.5, dmax=0.5, microbatch_size=microbatch_size,
                    moving_statistic=moving_statistic)
    layer, gamma, beta = make_layer(shape, **settings)
    ref = NumpyRenorm(shape[-1], gamma=gamma, beta=beta, **settings)
    for step, x in enumerate(shifting_batches(shape, steps=6)):
        y = layer(x, training=True)
        assert_close(y, ref.train_step(x), rtol=OUTPUT_TOLERANCE, atol=OUTPUT_TOLERANCE)
        assert_close(layer.moving_mean, ref.mu, rtol=1e-5, atol=1e-5)
        assert_close(moving_spread(layer), ref.spread, rtol=1e-5, atol=1e-5)
        assert_close(float(layer.fraction_r_clipped), ref.fraction_r)
        assert_close(float(layer.fraction_d_clipped), ref.fraction_d)
    # The comparison is only meaningful if both clips were active and inactive.
    for clipped in (ref.clipped_r, ref.clipped_d):
        assert 0 < np.mean(np.concatenate(clipped)) < 1
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


KERAS_HAS_RENORM = tuple(map(int, keras.__version__.split(".")[:2])) >= (3, 14)
needs_keras_renorm = pytest.mark.skipif(
    not KERAS_HAS_RENORM, reason="keras.layers.BatchNormalization(renorm=True) needs keras >= 3.14")


@needs_keras_renorm
@pytest.mark.parametrize("spelling", ["brlib", "keras"])
@pytest.mark.parametrize("kind", ["dense", "conv"])
def test_whole_batch_matches_keras_renorm(kind, spelling):
    shape = SHAPES[kind]
    rmax, dmax, momentum = 1.5, 0.5, 0.8
    clipping = {"rmin": 1 / rmax, "rmax": rmax, "dmax": dmax}
    settings = dict(rmax=rmax, dmax=dmax) if spelling == "brlib" else dict(
        renorm=True, renorm_clipping=clipping, renorm_momentum=momentum)
    layer, gamma, beta = make_layer(shape, momentum=momentum, **settings)
    assert (float(layer.rmax), float(layer.dmax), layer.moving_statistic) == (rmax, dmax, "stddev")
    oracle = keras.layers.BatchNormalization(
        momentum=momentum, epsilon=EPS, renorm=True, renorm_momentum=momentum,
        renorm_clipping=clipping)
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
    layer = renorm_layer(epsilon=EPS, rmax=1.3, dmax=0.4, microbatch_size=m,
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
    layer = renorm_layer(epsilon=1e-12, rmax=1.2, dmax=0.3, microbatch_size=m,
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


@pytest.mark.parametrize("bound", [1e6, np.inf])
def test_unclipped_training_output_equals_inference_with_pre_update_statistics(bound):
    shape = SHAPES["conv"]
    layer, _, _ = make_layer(shape, rmax=bound, dmax=bound, microbatch_size=4)
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
    layer = renorm_layer(microbatch_size=4, dtype=policy)
    reference = renorm_layer(microbatch_size=4)
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
    layer = renorm_layer(rmax=1.0, dmax=0.0, microbatch_size=2)
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
    layer = renorm_layer(microbatch_size=2, rmax=1.0, dmax=0.0, momentum=0.9,
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
        renorm_layer(**kwargs)
    for name in names:
        assert name in str(error.value)


@pytest.mark.parametrize("axis", [4, -5, 0])
def test_axis_out_of_range_is_named(axis):
    with pytest.raises(ValueError, match="axis"):
        renorm_layer(axis=axis)(np.zeros((4, 2, 2, 3), np.float32))


def test_rank_below_two_is_rejected():
    with pytest.raises(ValueError, match="rank >= 2"):
        renorm_layer()(np.zeros((4,), np.float32))


# ----------------------------------------------------------------------------
# Batches that are not a multiple of microbatch_size: the remainder is a
# microbatch of its own, as NumpyRenorm's loop over [0, m), [m, 2m), ... cuts it.
# ----------------------------------------------------------------------------
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("kind, batch", [("dense", 10), ("conv", 7), ("dense", 3)])
def test_partial_last_microbatch_matches_numpy(kind, batch, masked):
    shape = (batch,) + SHAPES[kind][1:]
    settings = dict(momentum=0.8, rmax=1.5, dmax=0.5, microbatch_size=4)
    layer, gamma, beta = make_layer(shape, **settings)
    ref = NumpyRenorm(shape[-1], gamma=gamma, beta=beta, **settings)
    rng = np.random.default_rng(5)
    for x in shifting_batches(shape, steps=3):
        mask = rng.uniform(size=shape[:-1]) > 0.3 if masked else None
        assert_close(layer(x, mask=mask, training=True), ref.train_step(x, mask),
                     rtol=OUTPUT_TOLERANCE, atol=OUTPUT_TOLERANCE)
        assert_close(layer.moving_mean, ref.mu, rtol=1e-5, atol=1e-6)
        assert_close(layer.moving_stddev, ref.spread, rtol=1e-5, atol=1e-6)
        assert_close(layer.fraction_r_clipped, ref.fraction_r, atol=1e-6)


@tensorflow_only
@pytest.mark.parametrize("jit_compile", [False, True])
def test_partial_batch_of_unknown_size_matches_numpy(jit_compile):
    # The batch size is known only at run time, as in a tf.data pipeline without
    # drop_remainder; under XLA too, where Keras's fit runs on a GPU by default.
    settings = dict(momentum=0.8, rmax=1.5, dmax=0.5, microbatch_size=4)
    layer, gamma, beta = make_layer((8, 3), **settings)
    ref = NumpyRenorm(3, gamma=gamma, beta=beta, **settings)

    @tf.function(input_signature=[tf.TensorSpec([None, 3], tf.float32)],
                 jit_compile=jit_compile)
    def step(x):
        return layer(x, training=True)

    for batch in (8, 6, 1, 9):
        x = next(shifting_batches((batch, 3), steps=1, seed=batch))
        assert_close(step(x), ref.train_step(x), rtol=OUTPUT_TOLERANCE, atol=OUTPUT_TOLERANCE)
        assert_close(layer.moving_mean, ref.mu, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("jit_compile", [False, True] if BACKEND == "tensorflow" else ["auto"])
def test_fit_with_a_partial_last_batch_matches_numpy(jit_compile):
    # 50 examples in batches of 16: three full batches and one of 2, eagerly and under
    # XLA. A learning rate of 0 keeps γ and β, so NumPy can follow the moving statistics.
    settings = dict(momentum=0.5, rmax=1.5, dmax=0.5, microbatch_size=4)
    x = next(shifting_batches((50, 3), steps=1, seed=7))
    model = keras.Sequential([keras.Input((3,)), renorm_layer(**settings)])
    model.compile(keras.optimizers.SGD(0.0), "mse", jit_compile=jit_compile)
    model.fit(x, np.zeros_like(x), batch_size=16, shuffle=False, verbose=0)
    ref = NumpyRenorm(3, gamma=np.ones(3), beta=np.zeros(3), **settings)
    for start in range(0, 50, 16):
        ref.train_step(x[start:start + 16])
    layer = model.layers[0]
    assert_close(layer.moving_mean, ref.mu, rtol=1e-5, atol=1e-6)
    assert_close(layer.moving_stddev, ref.spread, rtol=1e-5, atol=1e-6)


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
    ref.mu, ref.spread = np.array([0.5, -1.0, 0.0]), np.array([1.5, 0.7, 2.0])
    mu, sigma = ref.mu, ref.spread
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
    layer = renorm_layer(center=center, scale=scale)
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


@pytest.mark.parametrize("moving_statistic", ["stddev", "variance"])
def test_weight_inventory_names_the_moving_statistic(moving_statistic):
    layer = renorm_layer(moving_statistic=moving_statistic)
    layer.build((8, 3))
    names = {w.name for w in layer.non_trainable_weights}
    kept, other = (("moving_stddev", "moving_variance") if moving_statistic == "stddev"
                   else ("moving_variance", "moving_stddev"))
    assert kept in names and other not in names
    assert getattr(layer, kept).aggregation == "mean"
    assert layer.moving_spread is getattr(layer, kept)
    # The other is read-only, converted so that both divide by the same σ = sqrt(v + ε).
    getattr(layer, kept).assign(np.array([0.25, 1.0, 4.0]))
    if moving_statistic == "stddev":
        assert_close(layer.moving_variance, np.array([0.25, 1.0, 4.0]) ** 2 - EPS, rtol=1e-6)
    else:
        assert_close(layer.moving_stddev, np.sqrt(np.array([0.25, 1.0, 4.0]) + EPS), rtol=1e-6)


# ----------------------------------------------------------------------------
# A moving σ initialized at zero
# ----------------------------------------------------------------------------
def batch_with_a_dead_channel(shape, seed=0):
    """Batches whose channel 1 is zero everywhere (zero padding, a dead ReLU): µ_B = µ = 0."""
    for x in shifting_batches(shape, steps=3, seed=seed):
        x[..., 1] = 0.0
        yield x


@pytest.mark.parametrize("clip", [dict(rmax=1.0, dmax=0.0), dict(rmax=3.0, dmax=5.0)])
@pytest.mark.parametrize("initializer", [{"moving_stddev_initializer": "zeros"},
                                         {"moving_variance_initializer": "zeros"}])
@pytest.mark.parametrize("microbatch_size", [None, 4])
def test_zero_initialized_sigma_gives_no_nan(microbatch_size, initializer, clip):
    # Without the floor, d = (µ_B − µ)/σ = 0/0 in the dead channel, even at
    # rmax = 1, dmax = 0, where the output never depends on µ and σ.
    shape = (8, 5, 3)
    settings = dict(momentum=0.9, microbatch_size=microbatch_size, **clip)
    layer, gamma, beta = make_layer(shape, **settings, **initializer)
    assert_equal(layer.moving_stddev, 0.0)
    ref = NumpyRenorm(3, gamma=gamma, beta=beta, spread=0.0, **settings)
    for x in batch_with_a_dead_channel(shape):
        y = as_numpy(layer(x, training=True))
        assert np.all(np.isfinite(y))
        assert_close(y, ref.train_step(x), rtol=OUTPUT_TOLERANCE, atol=OUTPUT_TOLERANCE)
        assert_close(layer.moving_stddev, ref.spread, rtol=1e-5, atol=1e-7)
        assert_close(layer.moving_mean, ref.mu, rtol=1e-5, atol=1e-6)
    # σ of the dead channel is still below √ε, so inference divides by the floor.
    assert 0 < float(as_numpy(layer.moving_stddev)[1]) < np.sqrt(EPS)
    y = as_numpy(layer(x, training=False))
    assert np.all(np.isfinite(y))
    assert_close(y, ref.infer(x), rtol=1e-4, atol=1e-4)
    assert float(layer.skipped_updates) == 0


def test_zero_initialized_sigma_trains_like_keras_with_a_zero_variance():
    # Keras's own tests initialize the moving variance at zero. One SGD step of
    # the same model: γ and β must come out finite and equal to Keras's.
    shape = (8, 5, 3)
    x = next(batch_with_a_dead_channel(shape))
    target = np.random.default_rng(1).normal(size=(8, 5, 2)).astype(np.float32)
    models = []
    for norm in (renorm_layer(rmax=1.0, dmax=0.0, epsilon=EPS,
                                         moving_stddev_initializer="zeros"),
                 keras.layers.BatchNormalization(epsilon=EPS, moving_variance_initializer="zeros")):
        model = keras.Sequential([keras.Input(shape[1:]), norm, keras.layers.Dense(2)])
        models.append(model)
    models[1].layers[1].set_weights(models[0].layers[1].get_weights())
    for model in models:
        model.compile(keras.optimizers.SGD(0.1), "mse")
        model.fit(x, target, batch_size=8, epochs=1, shuffle=False, verbose=0)
    ours, keras_bn = (model.layers[0] for model in models)
    for name in ("gamma", "beta", "moving_mean"):
        assert np.all(np.isfinite(as_numpy(getattr(ours, name))))
        assert_close(getattr(ours, name), getattr(keras_bn, name), rtol=1e-5, atol=1e-6)


def test_batch_renorm_core_floors_sigma():
    from brlib.layers import batch_renorm

    mean_b, sigma_b = np.array([0.0, 0.4]), np.array([np.sqrt(EPS), 1.2])
    step = batch_renorm(None, mean_b, sigma_b, np.zeros(2), np.zeros(2), 3.0, 5.0, epsilon=EPS)
    floor = np.sqrt(EPS)
    assert_close(step.r, np.clip(sigma_b / floor, 1 / 3.0, 3.0), rtol=1e-6)
    assert_close(step.d, np.clip(mean_b / floor, -5.0, 5.0), rtol=1e-6)
    assert np.all(np.isfinite(as_numpy(step.r))) and np.all(np.isfinite(as_numpy(step.d)))
    # Above the floor nothing changes.
    above = batch_renorm(None, mean_b, sigma_b, np.zeros(2), np.full(2, 0.5), 3.0, 5.0)
    assert_close(above.d, mean_b / 0.5, rtol=1e-6)


# ----------------------------------------------------------------------------
# Masks
# ----------------------------------------------------------------------------
# (input shape, channel axis); the mask covers every axis but the last, as in Keras.
MASKED_SHAPES = {"sequence": ((6, 5, 3), -1), "image": ((4, 3, 3, 2), -1),
                 "channels_first": ((6, 3, 4), 1)}


def random_mask(shape, rng):
    """About a third of the entries masked; example 0 whole, example 1 entirely masked."""
    mask = rng.uniform(size=shape[:-1]) > 0.35
    mask[0], mask[1] = True, False
    return mask


def masked_batches(shape, steps, seed=0, padding=1000.0):
    """(x, mask) pairs whose masked entries hold `padding`, which must not count."""
    rng = np.random.default_rng(seed + 100)
    for x in shifting_batches(shape, steps, seed):
        mask = random_mask(shape, rng)
        x[~mask] = padding
        yield x, mask


def keras_batch_norm(shape, gamma, beta, **kwargs):
    oracle = keras.layers.BatchNormalization(epsilon=EPS, **kwargs)
    oracle.build(shape)
    oracle.gamma.assign(gamma)
    oracle.beta.assign(beta)
    return oracle


@pytest.mark.parametrize("moving_statistic", ["variance", "stddev"])
@pytest.mark.parametrize("kind", list(MASKED_SHAPES))
def test_masked_whole_batch_matches_keras_batch_norm(kind, moving_statistic):
    shape, axis = MASKED_SHAPES[kind]
    # Batch norm, spelled as Keras does (renorm=False: the moving variance) or
    # as brlib's rmax = 1, dmax = 0 with the renorm paper's moving σ.
    settings = dict(renorm=False) if moving_statistic == "variance" else dict(rmax=1.0, dmax=0.0)
    layer, gamma, beta = make_layer(shape, axis=axis, momentum=0.8, **settings)
    oracle = keras_batch_norm(shape, gamma, beta, axis=axis, momentum=0.8)
    ref = NumpyRenorm(shape[axis], 0.8, 1.0, 0.0, None, gamma, beta, axis=axis,
                      moving_statistic=moving_statistic)
    for x, mask in masked_batches(shape, steps=4):
        y = layer(x, mask=mask, training=True)
        # Every position, masked ones included, is normalized as Keras does it.
        assert_close(y, oracle(x, mask=mask, training=True), rtol=1e-5, atol=1e-5)
        assert_close(y, ref.train_step(x, mask), rtol=OUTPUT_TOLERANCE, atol=OUTPUT_TOLERANCE)
        assert_close(layer.moving_mean, oracle.moving_mean, rtol=1e-6, atol=1e-6)
        if moving_statistic == "variance":
            assert_close(layer.moving_variance, oracle.moving_variance, rtol=1e-6, atol=1e-6)
        else:  # the average of σ_B, which Keras does not keep
            assert_close(layer.moving_stddev, ref.spread, rtol=1e-6, atol=1e-6)
    x, mask = next(masked_batches(shape, steps=1, seed=9))
    if moving_statistic == "variance":
        assert_close(layer(x, training=False), oracle(x, training=False), rtol=1e-5, atol=1e-5)
    assert_close(layer(x, training=False), ref.infer(x), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("microbatch_size", [2, 4])
@pytest.mark.parametrize("kind", ["sequence", "image"])
def test_masked_microbatches_match_numpy(kind, microbatch_size):
    shape = (8,) + MASKED_SHAPES[kind][0][1:]
    m = microbatch_size
    settings = dict(momentum=0.8, rmax=1.5, dmax=0.5, microbatch_size=m)
    layer, gamma, beta = make_layer(shape, **settings)
    ref = NumpyRenorm(shape[-1], gamma=gamma, beta=beta, **settings)
    for x, mask in masked_batches(shape, steps=5, seed=3):
        mask[m:2 * m] = False  # one microbatch entirely masked
        x[m:2 * m] = 0.0
        y = as_numpy(layer(x, mask=mask, training=True))
        assert np.all(np.isfinite(y))
        assert_close(y, ref.train_step(x, mask), rtol=OUTPUT_TOLERANCE, atol=OUTPUT_TOLERANCE)
        assert_close(layer.moving_mean, ref.mu, rtol=1e-5, atol=1e-5)
        assert_close(layer.moving_stddev, ref.spread, rtol=1e-5, atol=1e-5)
        assert_close(float(layer.fraction_r_clipped), ref.fraction_r, atol=1e-6)
        assert_close(float(layer.fraction_d_clipped), ref.fraction_d, atol=1e-6)
    for clipped in (ref.clipped_r, ref.clipped_d):
        assert 0 < np.mean(np.concatenate(clipped)) < 1
    assert_close(layer(x, training=False), ref.infer(x), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("padding", [0.0, np.nan])
def test_entirely_masked_microbatch_counts_for_nothing(padding):
    # A layer fed the batch with its second microbatch masked must end as one
    # fed the first microbatch alone: no NaN, no update from the masked one.
    shape, m = (8, 5, 3), 4
    settings = dict(momentum=0.5, rmax=1.5, dmax=0.5, microbatch_size=m)
    masked, _, _ = make_layer(shape, **settings)
    alone, _, _ = make_layer((m,) + shape[1:], **settings)
    mask = np.ones(shape[:-1], bool)
    mask[m:] = False
    for x in shifting_batches(shape, steps=3, seed=4):
        x[m:] = padding
        y = as_numpy(masked(x, mask=mask, training=True))
        assert np.all(np.isfinite(y[:m]))
        assert np.all(np.isfinite(y)) == (padding == 0.0)  # NaN inputs stay NaN where they are
        assert_close(y[:m], alone(x[:m], training=True), rtol=1e-6, atol=1e-6)
        for name in ("moving_mean", "moving_stddev", "fraction_r_clipped", "fraction_d_clipped"):
            assert_close(getattr(masked, name), getattr(alone, name), rtol=1e-6, atol=1e-7)
    assert float(masked.skipped_updates) == 0


@pytest.mark.parametrize("moving_statistic", ["variance", "stddev"])
def test_entirely_masked_batch_keeps_the_moving_statistics(moving_statistic):
    shape = (4, 5, 3)
    settings = dict(renorm=False) if moving_statistic == "variance" else dict(rmax=1.0, dmax=0.0)
    layer, gamma, beta = make_layer(shape, momentum=0.5, **settings)
    layer.moving_mean.assign([0.5, -1.0, 2.0])
    before = [as_numpy(w).copy() for w in (layer.moving_mean, moving_spread(layer))]
    x = next(shifting_batches(shape, 1))
    mask = np.zeros(shape[:-1], bool)
    y = layer(x, mask=mask, training=True)
    assert np.all(np.isfinite(as_numpy(y)))
    assert_equal(layer.moving_mean, before[0])
    assert_equal(moving_spread(layer), before[1])
    assert float(layer.skipped_updates) == 0
    # The output is Keras's for an empty batch (µ_B = 0, var_B = 0); Keras
    # would also move its statistics towards zero, which this layer does not.
    oracle = keras_batch_norm(shape, gamma, beta, momentum=0.5)
    assert_close(y, oracle(x, mask=mask, training=True), rtol=1e-5, atol=1e-5)


def test_mask_changes_nothing_at_inference_and_is_passed_on():
    shape = (6, 5, 3)
    layer, _, _ = make_layer(shape, microbatch_size=2)
    layer.moving_mean.assign([0.5, -1.0, 2.0])
    x, mask = next(masked_batches(shape, 1))
    assert_equal(layer(x, mask=mask), layer(x))
    assert layer.supports_masking and layer.compute_mask(x, mask) is mask
    # In a model, Masking feeds the mask in and pooling reads it after the layer.
    inputs = keras.Input(shape[1:])
    masked = keras.layers.Masking(mask_value=1000.0)(inputs)
    pooled = keras.layers.GlobalAveragePooling1D()(layer(masked))
    model = keras.Model(inputs, pooled)
    y, counts = as_numpy(layer(x)), mask.sum(axis=1)
    keep = counts > 0  # example 1 is entirely masked: nothing to average
    expected = (y * mask[..., None]).sum(axis=1)[keep] / counts[keep, None]
    assert_close(as_numpy(model(x))[keep], expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mask_shape", [(6, 5, 3), (6,), (6, 4)])
def test_mask_of_the_wrong_shape_is_named(mask_shape):
    layer = renorm_layer()
    with pytest.raises(ValueError, match="`mask` must have one axis fewer"):
        layer(np.zeros((6, 5, 3), np.float32), mask=np.ones(mask_shape, bool), training=True)


# ----------------------------------------------------------------------------
# Keras's arguments
# ----------------------------------------------------------------------------
DROP_IN_SHAPES = {"dense": ((16, 6), -1), "conv": ((16, 4, 4, 3), -1),
                  "channels_first": ((8, 3, 4, 4), 1)}


@pytest.mark.parametrize("kind", list(DROP_IN_SHAPES))
def test_renorm_false_is_keras_batch_norm(kind):
    # renorm=False: rmax = 1, dmax = 0 and Keras's moving variance, a drop-in
    # for keras.layers.BatchNormalization in training and at inference.
    shape, axis = DROP_IN_SHAPES[kind]
    layer, gamma, beta = make_layer(shape, axis=axis, momentum=0.8, renorm=False)
    assert (float(layer.rmax), float(layer.dmax), layer.moving_statistic) == (1, 0, "variance")
    oracle = keras_batch_norm(shape, gamma, beta, axis=axis, momentum=0.8)
    for x in shifting_batches(shape, steps=5):
        assert_close(layer(x, training=True), oracle(x, training=True), rtol=1e-5, atol=1e-5)
        assert_close(layer.moving_mean, oracle.moving_mean, rtol=1e-6, atol=1e-6)
        assert_close(layer.moving_variance, oracle.moving_variance, rtol=1e-6, atol=1e-6)
    assert_close(layer(x, training=False), oracle(x, training=False), rtol=1e-5, atol=1e-5)


@needs_keras_renorm
def test_keras_renorm_without_clipping_is_unclipped():
    # Keras's renorm=True without renorm_clipping clips nothing, and its moving σ
    # starts at the square root of its moving-variance initializer.
    shape = SHAPES["conv"]
    init = keras.initializers.Constant(2.25)
    layer, gamma, beta = make_layer(shape, momentum=0.8, renorm=True, renorm_momentum=0.8,
                                    moving_variance_initializer=init)
    assert float(layer.rmax) == float(layer.dmax) == np.inf
    assert_close(layer.moving_stddev, np.full(3, 1.5))
    oracle = keras_batch_norm(shape, gamma, beta, momentum=0.8, renorm=True, renorm_momentum=0.8,
                              moving_variance_initializer=init)
    for x in shifting_batches(shape, steps=4):
        assert_close(layer(x, training=True), oracle(x, training=True), rtol=1e-4, atol=1e-4)
        assert_close(layer.moving_stddev, oracle.moving_stddev, rtol=1e-5, atol=1e-5)
    assert float(layer.fraction_r_clipped) == float(layer.fraction_d_clipped) == 0.0
    assert_close(layer(x), oracle(x, training=False), rtol=1e-4, atol=1e-4)


def test_every_keras_batch_norm_argument_is_accepted():
    import inspect

    ours = inspect.signature(br.BatchRenormalization.__init__).parameters
    theirs = inspect.signature(keras.layers.BatchNormalization.__init__).parameters
    assert set(theirs) - set(ours) == set()


def test_constraints_and_regularizers_match_keras():
    # One SGD step that drives γ negative and β far out: the constraints must
    # clamp them exactly as Keras's BatchNormalization does with the same ones.
    shape = (16, 4)
    rng = np.random.default_rng(2)
    x = (rng.normal(size=shape) * 3 + 1).astype(np.float32)
    standardized = (x - x.mean(0)) / np.sqrt(x.var(0) + EPS)
    target = -3 * standardized + 5
    arguments = dict(epsilon=EPS, gamma_constraint="non_neg",
                     beta_constraint=keras.constraints.MaxNorm(1.0, axis=0),
                     gamma_regularizer=keras.regularizers.L2(0.01), beta_regularizer="l1")
    layers = [renorm_layer(renorm=False, **arguments),
              keras.layers.BatchNormalization(**arguments)]
    for norm in layers:
        model = keras.Sequential([keras.Input(shape[1:]), norm])
        model.compile(keras.optimizers.SGD(1.0), "mse")
        model.fit(x, target, batch_size=16, epochs=1, verbose=0)
    ours, theirs = layers
    assert_close(ours.gamma, theirs.gamma, rtol=1e-5, atol=1e-6)
    assert_close(ours.beta, theirs.beta, rtol=1e-5, atol=1e-6)
    assert np.min(as_numpy(ours.gamma)) == 0.0  # the non-negativity constraint acted
    assert_close(np.linalg.norm(as_numpy(ours.beta)), 1.0, rtol=1e-5)  # and the norm's
    assert_close(sum(as_numpy(v) for v in ours.losses),
                 sum(as_numpy(v) for v in theirs.losses), rtol=1e-6)


def test_config_with_every_argument_round_trips(tmp_path):
    layer = renorm_layer(
        renorm=False, beta_constraint="non_neg", gamma_constraint=keras.constraints.MaxNorm(2.0),
        beta_regularizer="l2", gamma_regularizer=keras.regularizers.L1(0.01),
        moving_variance_initializer=keras.initializers.Constant(2.0),
        synchronized=BACKEND == "tensorflow", name="norm")
    config = layer.get_config()
    assert config["moving_statistic"] == "variance" and config["moving_stddev_initializer"] is None
    assert config["beta_constraint"]["class_name"] == "NonNeg"
    assert config["gamma_constraint"]["config"]["max_value"] == 2.0
    assert config["synchronized"] == (BACKEND == "tensorflow")
    clone = br.BatchRenormalization.from_config(config)
    assert clone.get_config() == config
    model = keras.Sequential([keras.Input((4,)), layer])
    model.compile("sgd", "mse")
    path = os.path.join(tmp_path, "model.keras")
    model.save(path)
    loaded = keras.models.load_model(path).layers[0]
    assert loaded.get_config() == config
    assert_equal(loaded.moving_variance, np.full(4, 2.0))
    assert isinstance(loaded.gamma_constraint, keras.constraints.MaxNorm)


def test_config_saved_before_the_keras_arguments_still_loads():
    # The configuration the layer wrote before it took Keras's arguments.
    old = {
        "name": "norm", "trainable": True,
        "dtype": {"module": "keras", "class_name": "DTypePolicy", "config": {"name": "float32"},
                  "registered_name": None},
        "axis": -1, "momentum": 0.9, "epsilon": 0.0001, "center": True, "scale": False,
        "rmax": 2.5, "dmax": 1.5, "microbatch_size": 2,
        "beta_initializer": {"module": "keras.initializers", "class_name": "Zeros", "config": {},
                             "registered_name": None},
        "gamma_initializer": {"module": "keras.initializers", "class_name": "Ones", "config": {},
                              "registered_name": None},
        "moving_mean_initializer": {"module": "keras.initializers", "class_name": "Zeros",
                                    "config": {}, "registered_name": None},
        "moving_stddev_initializer": {"module": "keras.initializers", "class_name": "Constant",
                                      "config": {"value": 0.5}, "registered_name": None},
        "beta_regularizer": None, "gamma_regularizer": None,
    }
    layer = keras.saving.deserialize_keras_object({
        "module": "brlib.layers", "class_name": "BatchRenormalization", "config": old,
        "registered_name": "brlib>BatchRenormalization"})
    assert isinstance(layer, br.BatchRenormalization)
    layer.build((4, 3))
    assert (float(layer.rmax), float(layer.dmax), layer.microbatch_size) == (2.5, 1.5, 2)
    assert layer.moving_statistic == "stddev" and layer.gamma is None
    assert_equal(layer.moving_stddev, np.full(3, 0.5))
    config = layer.get_config()
    assert {key: config[key] for key in old if key != "dtype"} == {
        key: value for key, value in old.items() if key != "dtype"}


@pytest.mark.parametrize("kwargs, names", [
    ({"renorm": "yes"}, ["renorm", "True or False"]),
    ({"center": 1}, ["center", "True or False"]),
    ({"synchronized": "yes"}, ["synchronized", "True or False"]),
    ({"renorm": True, "rmax": 2.0}, ["renorm", "rmax", "not both"]),
    ({"renorm": False, "dmax": 0.0}, ["renorm", "dmax", "not both"]),
    ({"renorm_clipping": {"rmax": 2.0, "rmin": 0.5}}, ["renorm_clipping", "renorm=True"]),
    ({"renorm_momentum": 0.99}, ["renorm_momentum", "renorm=True"]),
    ({"renorm": False, "renorm_momentum": 0.9}, ["renorm_momentum", "renorm=True"]),
    ({"renorm": False, "renorm_clipping": {}}, ["renorm_clipping", "renorm=True"]),
    ({"renorm": True, "renorm_clipping": {"random_key": 1.0}}, ["renorm_clipping", "random_key"]),
    ({"renorm": True, "renorm_clipping": [3.0]}, ["renorm_clipping", "dict"]),
    ({"renorm": True, "renorm_clipping": {"rmax": 3.0, "rmin": 0.3}},
     ["renorm_clipping", "1/rmax", "0.333"]),
    ({"renorm": True, "renorm_clipping": {"rmax": 3.0}}, ["renorm_clipping", "'rmin'"]),
    ({"renorm": True, "renorm_clipping": {"rmax": 0.5, "rmin": 2.0}},
     ["renorm_clipping['rmax']", ">= 1"]),
    ({"renorm": True, "renorm_clipping": {"dmax": -1.0}}, ["renorm_clipping['dmax']", ">= 0"]),
    ({"renorm": True, "renorm_clipping": {"dmax": "big"}}, ["renorm_clipping['dmax']", "number"]),
    ({"renorm": True, "renorm_momentum": 0.8}, ["renorm_momentum", "momentum", "one pair"]),
    ({"moving_statistic": "mean"}, ["moving_statistic", "stddev", "variance"]),
    ({"moving_variance_initializer": "random_normal"},
     ["moving_variance_initializer", "moving_stddev_initializer"]),
    ({"moving_variance_initializer": keras.initializers.Constant(-1.0)},
     ["moving_variance_initializer", "moving_stddev_initializer"]),
    ({"moving_variance_initializer": "ones", "moving_stddev_initializer": "ones"},
     ["moving_stddev_initializer", "moving_variance_initializer", "not both"]),
    ({"moving_statistic": "variance", "moving_stddev_initializer": "zeros"},
     ["moving_stddev_initializer", "moving_variance_initializer"]),
    ({"renorm": False, "moving_stddev_initializer": "zeros"},
     ["moving_stddev_initializer", "moving_variance_initializer"]),
    ({"beta_constraint": "no_such_constraint"}, ["beta_constraint", "constraint"]),
    ({"gamma_regularizer": "no_such_regularizer"}, ["gamma_regularizer", "regularizer"]),
    ({"beta_initializer": "no_such_initializer"}, ["beta_initializer", "initializer"]),
    ({"synchronized": True, "microbatch_size": 4}, ["synchronized", "microbatch_size",
                                                    "one replica"]),
])
def test_bad_keras_arguments_are_named(kwargs, names):
    with pytest.raises(ValueError) as error:
        renorm_layer(**kwargs)
    for name in names:
        assert name in str(error.value)


@pytest.mark.skipif(BACKEND == "tensorflow", reason="tests the other backends' refusal")
def test_synchronized_needs_tensorflow():
    with pytest.raises(ValueError, match="synchronized=True needs the TensorFlow backend"):
        renorm_layer(synchronized=True)


@tensorflow_only
def test_synchronized_outside_a_strategy_is_the_local_batch():
    shape = SHAPES["conv"]
    synced, gamma, beta = make_layer(shape, rmax=1.5, dmax=0.5, synchronized=True)
    local, _, _ = make_layer(shape, rmax=1.5, dmax=0.5)
    for x, mask in masked_batches(shape, steps=2):
        for use_mask in (None, mask):
            assert_close(synced(x, mask=use_mask, training=True),
                         local(x, mask=use_mask, training=True), rtol=1e-5, atol=1e-5)
    assert_close(synced.moving_mean, local.moving_mean, rtol=1e-6, atol=1e-6)


SYNCHRONIZED_PROGRAM = """
import numpy as np
import tensorflow as tf

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import brlib as br  # noqa: E402

strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
assert strategy.num_replicas_in_sync == 2
rng = np.random.default_rng(0)
# The two halves differ in scale and offset, so per-replica statistics differ from global ones.
x = rng.normal(size=(8, 5, 3)).astype(np.float32)
x[4:] = x[4:] * 3 + 2
mask = rng.uniform(size=(8, 5)) > 0.3
settings = dict(rmax=1.5, dmax=0.5, momentum=0.5, epsilon=1e-3, warmup_steps=None,
                moving_statistic="stddev")
with strategy.scope():  # built here: variables made inside a tf.function would be lifted
    synced = br.BatchRenormalization(synchronized=True, **settings)
    local = br.BatchRenormalization(**settings)
    synced.build((4, 5, 3))
    local.build((4, 5, 3))
single = br.BatchRenormalization(**settings)


def halves(values):
    return strategy.experimental_distribute_values_from_function(
        lambda context: values[4 * context.replica_id_in_sync_group:
                               4 * (context.replica_id_in_sync_group + 1)])


def stepper(layer, use_mask):  # a training step on the two halves, outputs concatenated
    @tf.function
    def run(xs, masks):
        return strategy.run(lambda a, b: layer(a, mask=b if use_mask else None, training=True),
                            args=(xs, masks))

    return lambda: np.concatenate(
        [v.numpy() for v in strategy.experimental_local_results(run(halves(x), halves(mask)))])


for use_mask in (False, True):
    synced_step, local_step = stepper(synced, use_mask), stepper(local, use_mask)
    for _ in range(2):
        ours = synced_step()
        apart = local_step()
        whole = single(x, mask=mask if use_mask else None, training=True).numpy()
        np.testing.assert_allclose(ours, whole, rtol=1e-5, atol=1e-5)
        assert not np.allclose(apart, whole, rtol=1e-3, atol=1e-3)
        for name in ("moving_mean", "moving_stddev"):
            copies = [v.numpy() for v in
                      strategy.experimental_local_results(getattr(synced, name).value)]
            np.testing.assert_array_equal(copies[0], copies[1])
            np.testing.assert_allclose(copies[0], getattr(single, name).numpy(), rtol=1e-5,
                                       atol=1e-6)
print("synchronized statistics match the whole batch")
"""


@tensorflow_only
def test_synchronized_statistics_span_the_replicas():
    # Two logical CPUs must be set before TensorFlow starts: a fresh process.
    import subprocess
    import sys

    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", KERAS_BACKEND="tensorflow")
    done = subprocess.run([sys.executable, "-c", SYNCHRONIZED_PROGRAM], env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "match the whole batch" in done.stdout


# ----------------------------------------------------------------------------
# Keras BatchNormalization's weights, in and out
# ----------------------------------------------------------------------------
def trained_keras_batch_norm(center=True, scale=True, channels=3):
    bn = keras.layers.BatchNormalization(center=center, scale=scale, epsilon=EPS, momentum=0.5)
    for x in shifting_batches((16, channels), steps=3):
        bn(x, training=True)
    rng = np.random.default_rng(1)
    for weight in (bn.gamma, bn.beta):
        if weight is not None:
            weight.assign(rng.uniform(0.5, 2.0, channels))
    return bn


@pytest.mark.parametrize("center, scale", [(True, True), (False, True), (True, False)])
@pytest.mark.parametrize("moving_statistic", ["stddev", "variance"])
def test_keras_batch_norm_weights_load_and_infer_the_same(moving_statistic, center, scale):
    bn = trained_keras_batch_norm(center, scale)
    layer = renorm_layer(epsilon=EPS, center=center, scale=scale,
                         moving_statistic=moving_statistic)
    layer.build((None, 3))
    layer.rmax.assign(2.0)
    layer.set_weights(bn.get_weights())
    x = next(shifting_batches((16, 3), steps=1, seed=9))
    assert_close(layer(x, training=False), bn(x, training=False), rtol=1e-5, atol=1e-5)
    assert float(layer.rmax) == 2.0  # the extra state keeps its value
    # Out again: Keras's layer takes the list back and infers the same.
    other = keras.layers.BatchNormalization(center=center, scale=scale, epsilon=EPS)
    other.build((None, 3))
    other.set_weights(layer.get_weights(keras_batch_norm=True))
    assert_close(other(x, training=False), bn(x, training=False), rtol=1e-5, atol=1e-5)
    assert_close(layer.moving_variance, bn.moving_variance, rtol=1e-5, atol=1e-6)
    # The layer's own list still round-trips, every weight included.
    assert len(layer.get_weights()) == len(layer.weights)
    layer.set_weights(layer.get_weights())


def test_keras_batch_norm_weights_of_the_wrong_shape_are_named():
    layer = renorm_layer()
    layer.build((None, 4))
    with pytest.raises(ValueError, match="`gamma` must have shape \\(4,\\); got shape \\(3,\\)"):
        layer.set_weights(trained_keras_batch_norm().get_weights())


def test_keras_batch_norm_weights_file_loads(tmp_path):
    def model(normalization):
        return keras.Sequential([keras.Input((3,)), keras.layers.Dense(3, name="dense"),
                                 normalization(name="norm"), normalization(name="norm_2")])

    keras_model = model(lambda name: keras.layers.BatchNormalization(epsilon=EPS, name=name))
    x = next(shifting_batches((16, 3), steps=1, seed=3))
    for _ in range(3):
        keras_model(x, training=True)
    path = str(tmp_path / "bn.weights.h5")
    keras_model.save_weights(path)
    for statistic in ("stddev", "variance"):
        ours = model(lambda name: br.BatchRenormalization(epsilon=EPS, name=name,
                                                          moving_statistic=statistic))
        ours.load_weights(path)
        assert_close(ours(x, training=False), keras_model(x, training=False), rtol=1e-5,
                     atol=1e-5)
    # The layer's own weights file keeps the warm-up's step, rmax and dmax.
    ours.layers[1](x, training=True)
    own = str(tmp_path / "own.weights.h5")
    ours.save_weights(own)
    again = model(lambda name: br.BatchRenormalization(epsilon=EPS, name=name,
                                                       moving_statistic="variance"))
    again.load_weights(own)
    for a, b in zip(again.weights, ours.weights):
        assert a.path.split("/", 1)[1] == b.path.split("/", 1)[1]  # the model's name differs
        assert_equal(a, b)
    assert int(as_numpy(again.layers[1].step)) == 1


def test_weight_paths_carry_the_model_prefix():
    model = keras.Sequential([keras.Input((3,)), br.BatchRenormalization(name="norm")],
                             name="outer")
    assert {w.path for w in model.weights} >= {"outer/norm/rmax", "outer/norm/step",
                                               "outer/norm/moving_mean"}


# ----------------------------------------------------------------------------
# The defaults and the in-layer warm-up
# ----------------------------------------------------------------------------
def test_default_layer_is_keras_batch_norm_during_its_warm_up():
    # Inputs far from the initial µ = 0, σ = 1: renorm from step 0 would clip r and d
    # against them (before the warm-up, the first output had mean 5 and sd 3).
    layer = br.BatchRenormalization()
    bn = keras.layers.BatchNormalization()
    assert layer.warmup_steps == 500 and layer.moving_statistic == "variance"
    rng = np.random.default_rng(0)
    for _ in range(3):
        x = (rng.normal(size=(32, 4)) * 50 + 100).astype(np.float32)
        assert_close(layer(x, training=True), bn(x, training=True), rtol=1e-4, atol=1e-4)
    assert_close(layer.moving_variance, bn.moving_variance, rtol=1e-5)
    assert_close(layer(x), bn(x), rtol=1e-4, atol=1e-4)
    assert (float(layer.rmax), float(layer.dmax), int(as_numpy(layer.step))) == (1.0, 0.0, 3)


def test_microbatch_default_keeps_sigma():
    layer = br.BatchRenormalization(microbatch_size=4)
    assert layer.moving_statistic == "stddev" and layer.warmup_steps == 500


@pytest.mark.parametrize("momentum, steps", [(0.99, 500), (0.9, 50), (0.0, 5), (1.0, 0)])
def test_automatic_warm_up_is_five_time_constants(momentum, steps):
    assert br.BatchRenormalization(momentum=momentum).warmup_steps == steps


@pytest.mark.parametrize("ramp", [dict(), dict(rmax_steps=7, dmax_steps=5)])
def test_warm_up_in_the_layer_follows_the_schedule(ramp):
    # The layer's bounds at each step against RenormSchedule's formula, and each
    # step's output against NumPy's Algorithm 1 with those bounds.
    settings = dict(rmax=3.0, dmax=2.0, warmup_steps=3, **ramp)
    layer = br.BatchRenormalization(momentum=0.5, epsilon=EPS, microbatch_size=2,
                                    moving_statistic="stddev", **settings)
    schedule = br.RenormSchedule(3, 3.0, ramp.get("rmax_steps", 3), 2.0,
                                 ramp.get("dmax_steps", 3))
    ref = NumpyRenorm(3, momentum=0.5, rmax=1.0, dmax=0.0, microbatch_size=2,
                      gamma=np.ones(3), beta=np.zeros(3))
    for step, x in enumerate(shifting_batches((8, 3), steps=9)):
        ref.rmax, ref.dmax = schedule(step)
        assert layer.bounds_at(step) == pytest.approx(schedule(step))
        assert_close(layer(x, training=True), ref.train_step(x), rtol=OUTPUT_TOLERANCE,
                     atol=OUTPUT_TOLERANCE)
        assert_close([float(layer.rmax), float(layer.dmax)], schedule(step), rtol=1e-6)
    assert int(as_numpy(layer.step)) == 9
    layer(x)  # inference does not count
    assert int(as_numpy(layer.step)) == 9


def test_warm_up_survives_saving(tmp_path):
    layer = br.BatchRenormalization(warmup_steps=2, rmax_steps=4, microbatch_size=2)
    model = keras.Sequential([keras.Input((3,)), layer])
    for x in shifting_batches((4, 3), steps=3):
        model(x, training=True)
    path = str(tmp_path / "m.keras")
    model.save(path)
    loaded = keras.saving.load_model(path).layers[0]
    assert loaded.get_config() == layer.get_config()
    assert loaded.get_config()["rmax"] == 3.0  # the bound it opens towards, not today's
    assert int(as_numpy(loaded.step)) == 3
    loaded(x, training=True)
    assert float(loaded.rmax) == pytest.approx(layer.bounds_at(3)[0])


def test_schedule_refuses_a_layer_with_its_own_warm_up():
    model = keras.Sequential([keras.Input((3,)), br.BatchRenormalization(name="norm")])
    with pytest.raises(ValueError, match="norm.*warmup_steps=500.*warmup_steps=None"):
        br.RenormSchedule().apply(model, 0)


@pytest.mark.parametrize("kwargs, names", [
    ({"warmup_steps": -1}, ["warmup_steps", "integer >= 0", '"auto"']),
    ({"warmup_steps": 1.5}, ["warmup_steps", "integer >= 0"]),
    ({"warmup_steps": 10, "rmax_steps": 5}, ["rmax_steps", ">= warmup_steps=10"]),
    ({"warmup_steps": None, "dmax_steps": 5}, ["dmax_steps", "warmup_steps"]),
])
def test_bad_warm_up_arguments_are_named(kwargs, names):
    with pytest.raises(ValueError) as error:
        br.BatchRenormalization(**kwargs)
    for name in names:
        assert name in str(error.value)


@pytest.mark.skipif(BACKEND != "jax", reason="JAX's stateless_call under jax.jit")
def test_warm_up_advances_inside_a_jitted_stateless_loop():
    # CrossQ-style: the state lives outside the model; a schedule applied to the model's
    # variables would never reach it, the layer's own step counter does.
    import jax

    layer = br.BatchRenormalization(warmup_steps=2, rmax_steps=4, dmax_steps=3,
                                    microbatch_size=2, moving_statistic="stddev")
    model = keras.Sequential([keras.Input((3,)), layer])
    trainable = [v.value for v in model.trainable_variables]
    state = [v.value for v in model.non_trainable_variables]
    names = [v.name for v in model.non_trainable_variables]
    ref = NumpyRenorm(3, momentum=0.99, rmax=1.0, dmax=0.0, microbatch_size=2,
                      gamma=np.ones(3), beta=np.zeros(3))

    @jax.jit
    def forward(state, x):
        return model.stateless_call(trainable, state, x, training=True)

    for step, x in enumerate(shifting_batches((4, 3), steps=6)):
        ref.rmax, ref.dmax = br.RenormSchedule(2, 3.0, 4, 5.0, 3)(step)
        y, state = forward(state, x)
        assert_close(y, ref.train_step(x), rtol=OUTPUT_TOLERANCE, atol=OUTPUT_TOLERANCE)
        values = dict(zip(names, state))
        assert_close([values["rmax"], values["dmax"]], [ref.rmax, ref.dmax], rtol=1e-6)
    assert int(values["step"]) == 6
    assert int(as_numpy(layer.step)) == 0  # the model's own variables were not touched


# ----------------------------------------------------------------------------
# SBX / CrossQ: Stable Baselines Jax's BatchRenorm, an independent reference
# ----------------------------------------------------------------------------
class SbxBatchRenorm:
    """SBX's Flax `BatchRenorm` (araffin/sbx, sbx/common/jax_layers.py), re-derived in float64.

    Written from reading SBX's arithmetic, not from its code. State ("batch_stats"):
    the moving `mean` (starts at 0) and `var` (at 1, the moving *variance*, as Keras's
    BatchNormalization keeps it), a call counter `steps` (at 0) and the bounds r_max = 3,
    d_max = 5, which SBX never changes. A training call, with µ_B and the biased var_B
    over every axis but the last:

        σ_B = sqrt(var_B + ε),  σ = sqrt(var + ε)
        r = clip(σ_B / σ, 1/r_max, r_max),  d = clip((µ_B − mean) / σ, −d_max, d_max)
        while steps < warm_up_steps:  µ' = µ_B,                     v' = var_B  (batch norm)
        from then on:                 µ' = µ_B − d·sqrt(var_B)/r,   v' = var_B / r²
        y = γ · (x − µ') / sqrt(v' + ε) + β
        mean ← m·mean + (1 − m)·µ_B,  var ← m·var + (1 − m)·var_B,  steps ← steps + 1

    and at inference y = γ · (x − mean) / sqrt(var + ε) + β.

    Where ε goes. r and d are brlib's (moving_statistic="variance": σ = sqrt(var + ε)),
    but SBX adds ε to the corrected variance var_B / r², after dividing by r²:

        SBX:    y = (x − µ_B) · r / sqrt(var_B + r²ε) + d · sqrt(var_B) / sqrt(var_B + r²ε)
        brlib:  y = (x − µ_B) · r / sqrt(var_B + ε)   + d              (Algorithm 1)

    (γ and β aside). The two agree where r = 1 and d = 0 (SBX's warm-up) and differ by
    O((r² − 1)·ε / var_B) in the scale and O(d·r²ε / var_B) in the shift otherwise.
    `placement="paper"` computes SBX's state and corrections with ε placed as brlib
    places it (µ' = µ_B − d·σ_B/r and sqrt(v' + ε) replaced by σ_B/r); `placement="sbx"`
    is SBX as it is.
    """

    def __init__(self, channels, momentum=0.99, epsilon=1e-3, warm_up_steps=100_000,
                 r_max=3.0, d_max=5.0, gamma=None, beta=None, placement="sbx"):
        self.mean, self.var, self.steps = np.zeros(channels), np.ones(channels), 0
        self.momentum, self.epsilon, self.warm_up_steps = momentum, epsilon, warm_up_steps
        self.r_max, self.d_max, self.placement = r_max, d_max, placement
        self.gamma = np.ones(channels) if gamma is None else np.asarray(gamma, np.float64)
        self.beta = np.zeros(channels) if beta is None else np.asarray(beta, np.float64)
        self.r = self.d = None

    def train_step(self, x):
        x = np.asarray(x, np.float64)
        axes = tuple(range(x.ndim - 1))
        mean_b = x.mean(axis=axes)
        var_b = np.maximum((x * x).mean(axis=axes) - mean_b ** 2, 0.0)  # Flax's fast variance
        eps = self.epsilon
        sigma_b, sigma = np.sqrt(var_b + eps), np.sqrt(self.var + eps)
        self.r = np.clip(sigma_b / sigma, 1.0 / self.r_max, self.r_max)
        self.d = np.clip((mean_b - self.mean) / sigma, -self.d_max, self.d_max)
        if self.steps < self.warm_up_steps:
            center, divisor = mean_b, np.sqrt(var_b + eps)
        elif self.placement == "sbx":
            center = mean_b - self.d * np.sqrt(var_b) / self.r
            divisor = np.sqrt(var_b / self.r ** 2 + eps)
        else:  # ε where Algorithm 1 puts it: (x − µ_B)/σ_B · r + d
            center, divisor = mean_b - self.d * sigma_b / self.r, sigma_b / self.r
        y = (x - center) / divisor * self.gamma + self.beta
        self.mean = self.momentum * self.mean + (1 - self.momentum) * mean_b
        self.var = self.momentum * self.var + (1 - self.momentum) * var_b
        self.steps += 1
        return y

    def infer(self, x):
        x = np.asarray(x, np.float64)
        return (x - self.mean) / np.sqrt(self.var + self.epsilon) * self.gamma + self.beta


def sbx_like_layer(channels, warm_up_steps, momentum=0.99, epsilon=1e-3, seed=3):
    """brlib's layer with SBX's settings: moving variance, its ε, bounds opening at once."""
    layer = br.BatchRenormalization(momentum=momentum, epsilon=epsilon, rmax=3.0, dmax=5.0,
                                    moving_statistic="variance", warmup_steps=warm_up_steps)
    layer.build((None, channels))
    rng = np.random.default_rng(seed)
    gamma, beta = rng.uniform(0.5, 2, channels), rng.normal(size=channels)
    layer.gamma.assign(gamma)
    layer.beta.assign(beta)
    return layer, gamma, beta


def sbx_batches(steps, shape=(32, 5), seed=0):
    """Batches that drift far enough between steps for r and d to be clipped at 3 and 5."""
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        scale = rng.uniform(0.3, 8.0, shape[1])
        shift = rng.uniform(-12, 12, shape[1])
        yield (rng.normal(size=shape) * scale + shift).astype(np.float32)


SBX_TOLERANCE = dict(rtol=1e-5, atol=1e-5)


def test_matches_sbx_batch_renorm_with_epsilon_placed_as_brlib_places_it():
    # Everything SBX computes but the placement of ε in the output: r, d, the warm-up
    # (batch norm for warm_up_steps calls, then r and d clipped at 3 and 5 at once), the
    # moving mean and moving variance, the call counter, and inference.
    warm_up, momentum = 4, 0.9
    layer, gamma, beta = sbx_like_layer(5, warm_up, momentum)
    sbx = SbxBatchRenorm(5, momentum, 1e-3, warm_up, gamma=gamma, beta=beta, placement="paper")
    clipped = []
    for step, x in enumerate(sbx_batches(12)):
        assert_close(layer(x, training=True), sbx.train_step(x), **SBX_TOLERANCE)
        assert_close(layer.moving_mean, sbx.mean, **SBX_TOLERANCE)
        assert_close(layer.moving_variance, sbx.var, **SBX_TOLERANCE)
        assert int(as_numpy(layer.step)) == sbx.steps
        bounds = (1.0, 0.0) if step < warm_up else (3.0, 5.0)
        assert (float(layer.rmax), float(layer.dmax)) == bounds
        if step >= warm_up:
            clipped.append(float(layer.fraction_r_clipped) + float(layer.fraction_d_clipped))
    assert max(clipped) > 0  # the data drove r or d into SBX's bounds
    assert_close(layer(x), sbx.infer(x), **SBX_TOLERANCE)


@pytest.mark.parametrize("epsilon", [1e-3, 1e-9])
def test_sbx_batch_renorm_differs_only_by_where_it_adds_epsilon(epsilon):
    # SBX as it is. During its warm-up (r = 1, d = 0) and in the moving statistics the two
    # agree to float32 rounding; after it, SBX divides by sqrt(var_B + r²ε) instead of
    # sqrt(var_B + ε) and shrinks d by sqrt(var_B / (var_B + r²ε)) (SbxBatchRenorm's
    # docstring), a difference of order ε/var_B: visible at SBX's default ε = 1e-3, below
    # float32 rounding at ε = 1e-9.
    warm_up, momentum = 3, 0.9
    layer, gamma, beta = sbx_like_layer(5, warm_up, momentum, epsilon)
    sbx = SbxBatchRenorm(5, momentum, epsilon, warm_up, gamma=gamma, beta=beta)
    after = []
    for step, x in enumerate(sbx_batches(10, seed=1)):
        ours, theirs = as_numpy(layer(x, training=True)), sbx.train_step(x)
        assert_close(layer.moving_mean, sbx.mean, **SBX_TOLERANCE)
        assert_close(layer.moving_variance, sbx.var, **SBX_TOLERANCE)
        if step < warm_up:
            assert_close(ours, theirs, **SBX_TOLERANCE)
        else:
            after.append(np.max(np.abs(ours - theirs) / (1 + np.abs(theirs))))
    assert_close(layer(x), sbx.infer(x), **SBX_TOLERANCE)
    if epsilon > 1e-6:
        assert 1e-5 < max(after) < 10 * 3.0 ** 2 * epsilon  # real, and of order r²ε
    else:
        assert max(after) < 1e-5
