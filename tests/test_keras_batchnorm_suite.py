"""Keras's own BatchNormalization tests, ported to brlib.BatchRenormalization.

A port of keras/src/layers/normalization/batch_normalization_test.py (Keras
3.15), case by case and at the upstream tolerances, with
`keras.src.testing.TestCase.run_layer_test` where upstream uses it. Keras's
`BatchNormalization()` is batch norm; this layer spells that `renorm=False`
(rmax = 1, dmax = 0 and Keras's moving variance), so the ported cases build
it that way, and the cases that read the moving variance also run with the
renorm paper's moving σ (`rmax=1, dmax=0`, moving_statistic="stddev"), with
the assertion on the variance restated for σ = sqrt(var + ε). Runs on the
TensorFlow, JAX and PyTorch backends (KERAS_BACKEND).

Deliberately different from upstream, and why:

- Weight counts in every `run_layer_test`: 7 non-trainable weights, not 2
  (batch norm) or 5 (renorm). The layer adds the clip bounds `rmax`, `dmax`
  and three diagnostics (`fraction_r_clipped`, `fraction_d_clipped`,
  `skipped_updates`), and keeps one moving statistic of spread and one pair
  of moving statistics in renorm mode (no `renorm_mean`, `renorm_stddev`, and
  no `moving_variance` beside `moving_stddev`). `test_trainable_behavior`
  counts 9 weights instead of 4 for the same reason.
- `test_input_fully_masked`: upstream's parametrization compares the
  function `backend.backend` with a string, so it never runs
  `synchronized=True`; the port runs it on TensorFlow. The port also asserts
  that an entirely masked batch leaves the moving statistics as they were;
  Keras moves them towards zero there.
- `test_renorm_basics`, `test_serialization`: `renorm_clipping` has
  'rmin': 1/3 instead of 0.3, because the layer clips r to [1/rmax, rmax];
  the port asserts that 0.3 is refused. `test_serialization` sets
  `momentum` equal to `renorm_momentum`.
- `test_renorm_invalid_clipping_keys`: the same three refusals, matched
  against the layer's own messages, which name the offending key.
- `test_renorm_stddev_initializer`: the layer has no `renorm_stddev`; the
  port asserts `moving_stddev` and that there is no second σ.
- `test_renorm_inference`: upstream copies standard-normal draws into both
  layers' `moving_variance`, negative ones included (NaN on both sides). The
  renorm layer here keeps σ, not a variance, so the port draws legal
  variances v and gives the renorm layer σ = sqrt(v + ε), the σ that Keras's
  renorm layer would store for the same inference.
- `test_renorm_correctness`: upstream sets `renorm_momentum` (0.8) apart from
  `momentum` (0.9) and keeps two pairs of statistics; the layer keeps one
  pair and refuses unequal momenta (asserted). The port uses 0.9 for both and
  upstream's renorm pair as the one pair, and checks `moving_mean` and
  `moving_stddev` (no derived `moving_variance`).
"""

import numpy as np
import pytest
from absl.testing import parameterized
from keras.src import backend
from keras.src import initializers
from keras.src import layers
from keras.src import ops
from keras.src import random
from keras.src import testing
from keras.src import utils
from keras.src.losses import MeanSquaredError
from keras.src.models import Model

from brlib import BatchRenormalization

NON_TRAINABLE = 7  # moving_mean, moving σ or variance, rmax, dmax and three diagnostics
WARM_UP = 1  # the step counter of a layer with its warm-up (the defaults; not with `renorm`)
SYNCHRONIZED = (False, True) if backend.backend() == "tensorflow" else (False,)


def batch_norm(moving_statistic, **kwargs):
    """Batch norm, with Keras's moving variance (renorm=False) or the paper's moving σ."""
    if moving_statistic == "variance":
        return BatchRenormalization(renorm=False, **kwargs)
    # Spelled out: without them a whole-batch layer keeps a variance and counts warm-up steps.
    return BatchRenormalization(rmax=1.0, dmax=0.0, moving_statistic="stddev",
                                warmup_steps=None, **kwargs)


class BatchNormalizationTest(testing.TestCase):
    @parameterized.parameters({}, {"renorm": False}, {"microbatch_size": 2})
    def test_bn_basics(self, **flavor):
        # The default layer (no `renorm`) also counts its warm-up's steps.
        non_trainable = NON_TRAINABLE + (0 if "renorm" in flavor else WARM_UP)
        # vector case
        self.run_layer_test(
            BatchRenormalization,
            init_kwargs={"center": True, "scale": True, **flavor},
            call_kwargs={"training": True},
            input_shape=(2, 3),
            expected_output_shape=(2, 3),
            expected_num_trainable_weights=2,
            expected_num_non_trainable_weights=non_trainable,
            expected_num_seed_generators=0,
            expected_num_losses=0,
            supports_masking=True,
        )
        self.run_layer_test(
            BatchRenormalization,
            init_kwargs={"center": False, "scale": False, **flavor},
            call_kwargs={"training": True},
            input_shape=(2, 3),
            expected_output_shape=(2, 3),
            expected_num_trainable_weights=0,
            expected_num_non_trainable_weights=non_trainable,
            expected_num_seed_generators=0,
            expected_num_losses=0,
            supports_masking=True,
        )
        # image case, with regularizers
        self.run_layer_test(
            BatchRenormalization,
            init_kwargs={
                "center": True,
                "scale": True,
                "beta_regularizer": "l2",
                "gamma_regularizer": "l2",
                **flavor,
            },
            call_kwargs={"training": True},
            input_shape=(2, 4, 4, 3),
            expected_output_shape=(2, 4, 4, 3),
            expected_num_trainable_weights=2,
            expected_num_non_trainable_weights=non_trainable,
            expected_num_seed_generators=0,
            expected_num_losses=2,  # we have 2 regularizers.
            supports_masking=True,
        )

    @parameterized.product(
        axis=(-1, 1),
        input_shape=((5, 2, 3), (5, 3, 3, 2)),
        moving_mean_initializer=("zeros", "ones"),
        moving_variance_initializer=("zeros", "ones"),
        moving_statistic=("variance", "stddev"),
    )
    def test_correctness(
        self,
        axis,
        input_shape,
        moving_mean_initializer,
        moving_variance_initializer,
        moving_statistic,
    ):
        # Training. With the moving σ, the variance initializer is converted to σ.
        layer = batch_norm(
            moving_statistic,
            axis=axis,
            momentum=0,
            moving_mean_initializer=moving_mean_initializer,
            moving_variance_initializer=moving_variance_initializer,
        )
        # Random data centered on 5.0, variance 10.0
        x = np.random.normal(loc=5.0, scale=10.0, size=input_shape)
        out = x
        for _ in range(3):
            out = layer(out, training=True)

        # Assert the normalization is correct.
        broadcast_shape = [1] * len(input_shape)
        broadcast_shape[axis] = input_shape[axis]
        out = backend.convert_to_numpy(out)
        out = out - np.reshape(backend.convert_to_numpy(layer.beta), broadcast_shape)
        out = out / np.reshape(backend.convert_to_numpy(layer.gamma), broadcast_shape)

        reduction_axes = list(range(len(input_shape)))
        del reduction_axes[axis]
        reduction_axes = tuple(reduction_axes)
        self.assertAllClose(np.mean(out, axis=reduction_axes), 0.0, atol=1e-3)
        self.assertAllClose(np.std(out, axis=reduction_axes), 1.0, atol=1e-3)
        self.assertAllClose(layer.moving_mean, 0.0, atol=1e-3)
        if moving_statistic == "variance":
            self.assertAllClose(layer.moving_variance, 1.0, atol=1e-3)
        else:
            self.assertAllClose(layer.moving_stddev, 1.0, atol=1e-3)

        # Inference done before training shouldn't match.
        inference_out = layer(x, training=False)
        training_out = layer(x, training=True)
        self.assertNotAllClose(inference_out, training_out)

        # Since momentum is zero, inference after training should match.
        training_out = layer(x, training=True)
        inference_out = layer(x, training=False)
        self.assertAllClose(inference_out, training_out)

        # Masked result with no training should not differ
        x[:, 1, :] = 0.0
        unmasked_out = layer(x, training=False)
        masked = layers.Masking()(x)
        masked_out = layer(masked, training=False)
        self.assertAllClose(unmasked_out, masked_out)

        # Masked result should differ from unmasked result
        unmasked_out = layer(x, training=False)
        x[:, 1, :] = 0.0
        masked = layers.Masking()(x)
        masked_out = layer(masked, training=True)
        self.assertNotAllClose(unmasked_out, masked_out)

    @parameterized.product(
        synchronized=SYNCHRONIZED, moving_statistic=("variance", "stddev")
    )
    def test_input_fully_masked(self, synchronized, moving_statistic):
        norm = batch_norm(
            moving_statistic,
            scale=False,
            center=False,
            synchronized=synchronized,
        )
        x = np.zeros((4, 5))
        mask = np.zeros((4,), dtype=np.float32)
        y = norm(x, mask=mask, training=True)
        self.assertAllClose(y, np.zeros_like(x, dtype=np.float32))
        # Not upstream: an empty batch leaves the moving statistics as they were.
        self.assertAllClose(norm.moving_mean, np.zeros(5))
        spread = norm.moving_variance if moving_statistic == "variance" else norm.moving_stddev
        self.assertAllClose(spread, np.ones(5))

    @parameterized.product(
        run_eagerly=(True, False),
        mask_value=(0.0, 0.1, 1),
        moving_statistic=("variance", "stddev"),
    )
    def test_bachnorm_ignore_masked_values(self, run_eagerly, mask_value, moving_statistic):
        padded_data = np.array(
            [
                [
                    [1, 5],
                    [2, 5],
                    [mask_value, mask_value],
                    [mask_value, mask_value],
                ]
                for _ in range(10)
            ],
            dtype="float32",
        )

        inputs = layers.Input((None, 2))
        masked = layers.Masking(mask_value=mask_value)(inputs)
        normed = batch_norm(moving_statistic, momentum=0.0)(masked)
        model = Model(inputs, normed)
        loss = MeanSquaredError()
        model.compile(
            "rmsprop",
            loss=loss,
            run_eagerly=run_eagerly,
        )
        model.fit(x=padded_data, y=padded_data, batch_size=10, epochs=5, verbose=0)
        norm = model.layers[2]
        self.assertAllClose(norm.moving_mean, [1.5, 5.0])
        if moving_statistic == "variance":
            self.assertAllClose(norm.moving_variance, [0.25, 0.0])
        else:
            self.assertAllClose(norm.moving_stddev, np.sqrt(np.array([0.25, 0.0]) + norm.epsilon))

    @parameterized.parameters("variance", "stddev")
    def test_trainable_behavior(self, moving_statistic):
        layer = batch_norm(moving_statistic, axis=-1, momentum=0.8, epsilon=1e-7)
        layer.build((1, 4, 4, 3))
        layer.trainable = False
        self.assertEqual(len(layer.weights), 2 + NON_TRAINABLE)
        self.assertEqual(len(layer.trainable_weights), 0)
        self.assertEqual(len(layer.non_trainable_weights), 2 + NON_TRAINABLE)

        # Random data centered on 5.0, variance 10.0
        x = np.random.normal(loc=5.0, scale=10.0, size=(200, 4, 4, 3))

        out = layer(x, training=True)
        self.assertAllClose(out, x)

        layer.trainable = True
        self.assertEqual(len(layer.weights), 2 + NON_TRAINABLE)
        self.assertEqual(len(layer.trainable_weights), 2)
        self.assertEqual(len(layer.non_trainable_weights), NON_TRAINABLE)

        for _ in range(10):
            out = layer(x, training=True)

        out = backend.convert_to_numpy(out)
        out = out - np.reshape(backend.convert_to_numpy(layer.beta), (1, 1, 1, 3))
        out = out / np.reshape(backend.convert_to_numpy(layer.gamma), (1, 1, 1, 3))

        self.assertAllClose(np.mean(out, axis=(0, 1, 2)), 0.0, atol=1e-3)
        self.assertAllClose(np.std(out, axis=(0, 1, 2)), 1.0, atol=1e-3)

    @parameterized.parameters("variance", "stddev")
    def test_large_value_within_autocast_scope(self, moving_statistic):
        layer = batch_norm(moving_statistic)
        layer.build((1, 4, 4, 3))
        spread = layer.moving_variance if moving_statistic == "variance" else layer.moving_stddev
        # Use 70000 to trigger overflow for float16
        large_value = ops.full(spread.shape, 70000)
        with backend.AutocastScope("float16"):
            spread.assign(large_value)
            self.assertAllClose(spread.value, large_value)

    @parameterized.parameters("variance", "stddev")
    def test_masked_broadcast_normalization(self, moving_statistic):
        input_shape = (1, 2, 3, 4)
        mask_shape = (1, 2, 1)
        x = ops.ones(input_shape)
        mask = ops.ones(mask_shape)

        layer = batch_norm(moving_statistic, axis=-1, momentum=0.0, epsilon=1e-3)

        y = layer(x, training=True, mask=mask)

        mean_y = ops.mean(y, axis=[0, 1, 2])

        self.assertAllClose(mean_y, ops.zeros((4,)), atol=1e-6)
        self.assertAllClose(y, ops.zeros_like(y), atol=1e-6)

        self.assertAllClose(layer.moving_mean, ops.ones((4,)), atol=1e-6)
        if moving_statistic == "variance":
            self.assertAllClose(layer.moving_variance, ops.zeros((4,)), atol=1e-6)
        else:
            self.assertAllClose(layer.moving_stddev, np.full(4, np.sqrt(1e-3)), atol=1e-6)

    def test_renorm_basics(self):
        # Test basic renorm functionality
        self.run_layer_test(
            BatchRenormalization,
            init_kwargs={
                "center": True,
                "scale": True,
                "renorm": True,
            },
            call_kwargs={"training": True},
            input_shape=(2, 3),
            expected_output_shape=(2, 3),
            expected_num_trainable_weights=2,
            expected_num_non_trainable_weights=NON_TRAINABLE,
            expected_num_seed_generators=0,
            expected_num_losses=0,
            supports_masking=True,
        )
        # Test renorm with clipping; r is clipped symmetrically, so rmin = 1/rmax.
        self.run_layer_test(
            BatchRenormalization,
            init_kwargs={
                "center": True,
                "scale": True,
                "renorm": True,
                "renorm_clipping": {"rmax": 3.0, "rmin": 1 / 3.0, "dmax": 5.0},
            },
            call_kwargs={"training": True},
            input_shape=(2, 4, 4, 3),
            expected_output_shape=(2, 4, 4, 3),
            expected_num_trainable_weights=2,
            expected_num_non_trainable_weights=NON_TRAINABLE,
            expected_num_seed_generators=0,
            expected_num_losses=0,
            supports_masking=True,
        )
        with self.assertRaisesRegex(ValueError, "must clip r symmetrically"):
            BatchRenormalization(
                renorm=True, renorm_clipping={"rmax": 3.0, "rmin": 0.3, "dmax": 5.0}
            )

    def test_renorm_invalid_clipping_keys(self):
        with self.assertRaisesRegex(ValueError, "renorm_clipping` takes only the keys"):
            BatchRenormalization(renorm=True, renorm_clipping={"random_key": 1.0})
        with self.assertRaisesRegex(ValueError, r"renorm_clipping\['rmax'\]` must be >= 1"):
            BatchRenormalization(renorm=True, renorm_clipping={"rmax": 0.0, "rmin": 1.0})
        with self.assertRaisesRegex(ValueError, r"renorm_clipping\['dmax'\]` must be >= 0"):
            BatchRenormalization(renorm=True, renorm_clipping={"rmax": 1.0, "dmax": -1.0})

    def test_renorm_stddev_initializer(self):
        # `moving_stddev` should be initialized as `sqrt` of
        # `moving_variance_initializer`; there is no second σ.
        layer = BatchRenormalization(
            renorm=True,
            moving_variance_initializer=initializers.Constant(4.0),
        )
        layer.build((None, 5))

        self.assertAllClose(layer.moving_stddev, np.full((5,), 2.0), atol=1e-6)
        self.assertFalse(hasattr(layer, "renorm_stddev"))

    def test_renorm_inference(self):
        # At inference time, the behaviour of both with and without renorm
        # should be the same.
        bn = BatchRenormalization(renorm=False)
        bn_renorm = BatchRenormalization(renorm=True)

        bn.build((None, 10))
        bn_renorm.build((None, 10))

        # Copy the vars to renorm layer; it keeps σ where batch norm keeps the variance.
        for attr in ["gamma", "beta", "moving_mean"]:
            getattr(bn, attr).assign(random.normal(shape=(10,)))
            getattr(bn_renorm, attr).assign(getattr(bn, attr))
        variance = ops.abs(random.normal(shape=(10,)))
        bn.moving_variance.assign(variance)
        bn_renorm.moving_stddev.assign(ops.sqrt(variance + bn.epsilon))

        x = np.random.normal(size=(4, 10))
        out = bn(x, training=False)
        out_renorm = bn_renorm(x, training=False)

        self.assertAllClose(out, out_renorm, atol=1e-5, rtol=1e-5)

    def test_renorm_correctness(self):
        utils.set_random_seed(1337)

        epsilon = 1e-3
        momentum = 0.9

        # One pair of moving statistics, so renorm_momentum equals momentum.
        with self.assertRaisesRegex(ValueError, "renorm_momentum` must equal `momentum"):
            BatchRenormalization(renorm=True, momentum=momentum, renorm_momentum=0.8)
        layer = BatchRenormalization(
            axis=-1,
            epsilon=epsilon,
            momentum=momentum,
            renorm=True,
            renorm_momentum=momentum,
        )
        layer.build((None, 3))

        # Assign initial values (drawn as upstream draws them).
        size = (3,)
        np.random.normal(0.0, 1.0, size=size)  # upstream's moving mean
        np.abs(np.random.normal(1.0, 0.5, size=size))  # upstream's moving variance
        init_renorm_mean = np.random.normal(0.0, 1.0, size=size)
        init_renorm_stddev = np.abs(np.random.normal(1.0, 0.5, size=size))
        init_gamma = np.random.normal(1.0, 0.1, size=size)
        init_beta = np.random.normal(0.0, 0.1, size=size)

        layer.moving_mean.assign(init_renorm_mean)
        layer.moving_stddev.assign(init_renorm_stddev)
        layer.gamma.assign(init_gamma)
        layer.beta.assign(init_beta)

        # Input data
        x = np.array(
            [[4.0, 6.0, 2.0], [8.0, -2.0, 5.0], [6.0, 4.0, 3.0]],
            dtype="float32",
        )

        # Manually compute expected output.
        # Normalise input.
        batch_mean = np.mean(x, axis=0)
        batch_var = np.var(x, axis=0)
        batch_stddev = np.sqrt(batch_var + epsilon)

        # Compute r, d, and then expected output.
        r = batch_stddev / init_renorm_stddev
        d = (batch_mean - init_renorm_mean) / init_renorm_stddev

        expected_output = (((x - batch_mean) / batch_stddev) * r + d) * init_gamma + init_beta
        actual_output = layer(x, training=True)
        self.assertAllClose(actual_output, expected_output, atol=1e-5)

        # Verify moving statistics.
        expected_moving_mean = init_renorm_mean * momentum + batch_mean * (1 - momentum)
        self.assertAllClose(layer.moving_mean, expected_moving_mean, atol=1e-5)
        expected_moving_stddev = init_renorm_stddev * momentum + batch_stddev * (1 - momentum)
        self.assertAllClose(layer.moving_stddev, expected_moving_stddev, atol=1e-5)

    def test_serialization(self):
        layer = BatchRenormalization(
            renorm=True,
            renorm_clipping={"rmax": 3.0, "rmin": 1 / 3.0, "dmax": 5.0},
            renorm_momentum=0.95,
            momentum=0.95,
        )

        config = layer.get_config()
        new_layer = BatchRenormalization.from_config(config)
        self.assertEqual(new_layer.get_config(), config)


@pytest.mark.parametrize("rmin", [0.3, None])
def test_asymmetric_renorm_clipping_is_refused(rmin):
    clipping = {"rmax": 3.0, "dmax": 5.0} | ({} if rmin is None else {"rmin": rmin})
    with pytest.raises(ValueError, match="renorm_clipping"):
        BatchRenormalization(renorm=True, renorm_clipping=clipping)
