"""The batch renormalization layer, over whole batches or contiguous microbatches."""

from typing import NamedTuple

import keras
import numpy as np
from keras import ops

from brlib.validation import check_integer, check_number


def check_rmax(rmax):
    """Raises a ValueError unless `rmax` is a number >= 1."""
    check_number("rmax", rmax, "a number >= 1 (1 turns r off)", lambda v: v >= 1)


def check_dmax(dmax):
    """Raises a ValueError unless `dmax` is a number >= 0."""
    check_number("dmax", dmax, "a number >= 0 (0 turns d off)", lambda v: v >= 0)


def _check_microbatch_size(microbatch_size):
    if microbatch_size is not None:
        check_integer("microbatch_size", microbatch_size,
                      "None (normalize the whole batch) or a positive integer", lambda v: v > 0)


def clip_corrections(r, d, rmax, dmax):
    """Clips renorm's corrections; the one place where their clipping is computed.

    Args:
        r: Unclipped r = σ_B / σ, any shape.
        d: Unclipped d = (µ_B − µ) / σ, the same shape.
        rmax: Clip bound for r, >= 1.
        dmax: Clip bound for d, >= 0.

    Returns:
        (clipped r, clipped d, mask of r outside [1/rmax, rmax], mask of d
        outside [−dmax, dmax]).

    Reference:
        Sergey Ioffe, "Batch Renormalization", arXiv:1702.03275, Algorithm 1.
    """
    r_clipped = ops.logical_or(r < 1.0 / rmax, r > rmax)
    d_clipped = ops.abs(d) > dmax
    r = ops.clip(r, 1.0 / rmax, rmax)  # r = clip(σ_B/σ, 1/rmax, rmax)
    d = ops.clip(d, -dmax, dmax)  # d = clip((µ_B − µ)/σ, −dmax, dmax)
    return r, d, r_clipped, d_clipped


class Renormalized(NamedTuple):
    """What `batch_renorm` computes for one training step."""

    outputs: object  # y = γ((x − µ_B)/σ_B · r + d) + β, or None when no x was given
    r: object  # clipped r, a constant for the gradient
    d: object  # clipped d, a constant for the gradient
    r_clipped: object  # where σ_B/σ fell outside [1/rmax, rmax]
    d_clipped: object  # where (µ_B − µ)/σ fell outside [−dmax, dmax]


def batch_renorm(x, mean_b, sigma_b, mean, stddev, rmax, dmax, gamma=1.0, beta=0.0):
    """Algorithm 1's training-mode arithmetic, from the statistics to the output.

    The pure core of `BatchRenormalization`: the layer computes the statistics
    and keeps the moving averages; this function turns them into r, d, the
    clip masks and the output. The widgets and the notebooks' checks call it
    too, so the arithmetic exists once. Written in `keras.ops`; NumPy arrays
    are accepted.

    Args:
        x: Inputs grouped by microbatch, or None to compute only r, d and the
            masks. Every other argument must broadcast against it.
        mean_b: µ_B of each microbatch and channel.
        sigma_b: σ_B = sqrt(var_B + ε) of each microbatch and channel.
        mean: The moving mean µ.
        stddev: The moving standard deviation σ.
        rmax: Clip bound for r, >= 1.
        dmax: Clip bound for d, >= 0.
        gamma: The learned scale γ.
        beta: The learned offset β.

    Returns:
        A `Renormalized` (outputs, r, d, r_clipped, d_clipped).

    Reference:
        Sergey Ioffe, "Batch Renormalization", arXiv:1702.03275, Algorithm 1.
    """
    # NumPy arrays become tensors first: torch cannot mix them with its own.
    x, mean_b, sigma_b, mean, stddev, gamma, beta = (
        ops.convert_to_tensor(v) if isinstance(v, np.ndarray) else v
        for v in (x, mean_b, sigma_b, mean, stddev, gamma, beta))
    r = ops.stop_gradient(sigma_b / stddev)  # r and d are constants for the gradient
    d = ops.stop_gradient((mean_b - mean) / stddev)
    r, d, r_clipped, d_clipped = clip_corrections(r, d, rmax, dmax)
    outputs = None
    if x is not None:
        # γ((x − µ_B)/σ_B · r + d) + β folds into one scale and one shift per
        # (microbatch, channel), so the activations are touched in one pass.
        x_scale = gamma * r / sigma_b
        x_shift = beta + gamma * d - mean_b * x_scale
        outputs = x * x_scale + x_shift
    return Renormalized(outputs, r, d, r_clipped, d_clipped)


@keras.saving.register_keras_serializable(package="brlib")
class BatchRenormalization(keras.layers.Layer):
    """Batch renormalization over the whole batch or over contiguous microbatches.

    In training, every microbatch B (rows [0, m), [m, 2m), ... of the batch)
    is normalized with its own statistics and then corrected towards the
    moving statistics µ and σ:

        x̂ = (x − µ_B) / σ_B · r + d,    y = γ · x̂ + β,

    with r = clip(σ_B / σ, 1/rmax, rmax) and d = clip((µ_B − µ) / σ, −dmax, dmax)
    treated as constants by the gradient. At inference, y = γ · (x − µ) / σ + β.
    With `rmax=1, dmax=0` the layer is batch norm over the same microbatches.

    µ and σ are updated once per training step, from the mean over the
    step's microbatches: µ ← µ + α · (mean(µ_B) − µ), likewise σ, with
    α = 1 − momentum. `rmax` and `dmax` are non-trainable scalar weights, so
    assigning them (`layer.rmax.assign(2.0)`, or with `brlib.RenormSchedule`)
    takes effect inside an already traced `model.fit`.

    A training step whose statistics are not finite (the batch held NaN or
    Inf) leaves µ and σ as they were and adds one to `layer.skipped_updates`,
    so a single bad batch cannot poison inference for the rest of training.
    The step's output is still computed from the batch, so the loss shows it.

    For teaching, `layer.fraction_r_clipped` and `layer.fraction_d_clipped`
    hold the fraction of (microbatch, channel) values of r and d that fell
    outside their clip bounds in the last training step.

    Args:
        axis: The channel axis; every other axis is reduced. -1 for
            channels-last, 1 for channels-first.
        momentum: Momentum of the moving statistics, in [0, 1]; the update
            rate is α = 1 − momentum (0.01 in the paper).
        epsilon: Added to the variance before the square root, > 0.
        center: Whether to add the learned offset β.
        scale: Whether to multiply by the learned scale γ.
        rmax: Initial clip bound for r, >= 1.
        dmax: Initial clip bound for d, >= 0.
        microbatch_size: None to normalize the whole batch, or the number m of
            consecutive examples normalized together. m must divide the batch.
        beta_initializer: Initializer for β.
        gamma_initializer: Initializer for γ.
        moving_mean_initializer: Initializer for µ.
        moving_stddev_initializer: Initializer for σ.
        beta_regularizer: Optional regularizer for β.
        gamma_regularizer: Optional regularizer for γ.
        **kwargs: Base `keras.layers.Layer` arguments such as `name`, `dtype`.

    Call arguments:
        inputs: A tensor of rank >= 2, examples first. In training its batch
            size must be a multiple of `microbatch_size`.
        training: True to normalize by the microbatches' statistics, correct
            by r and d, and update µ and σ; False or None (inference) to
            normalize by µ and σ alone. A layer with `trainable=False` always
            runs in inference mode.

    Example:

    >>> import numpy as np
    >>> import brlib as br
    >>> layer = br.BatchRenormalization(microbatch_size=2, rmax=1.0, dmax=0.0)
    >>> x = np.array([[1.0], [3.0], [10.0], [30.0]], dtype="float32")
    >>> y = layer(x, training=True)   # each pair alone: batch norm over 2 examples
    >>> np.round(np.asarray(y)[:, 0], 2).tolist()
    [-1.0, 1.0, -1.0, 1.0]

    Reference:
        Sergey Ioffe, "Batch Renormalization: Towards Reducing Minibatch
        Dependence in Batch-Normalized Models", NIPS 2017, arXiv:1702.03275,
        Algorithm 1.
    """

    def __init__(
        self,
        axis=-1,
        momentum=0.99,
        epsilon=1e-3,
        center=True,
        scale=True,
        rmax=3.0,
        dmax=5.0,
        microbatch_size=None,
        beta_initializer="zeros",
        gamma_initializer="ones",
        moving_mean_initializer="zeros",
        moving_stddev_initializer="ones",
        beta_regularizer=None,
        gamma_regularizer=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        check_integer("axis", axis, "an integer")
        check_number("momentum", momentum, "a number in [0, 1]", lambda v: 0 <= v <= 1)
        check_number("epsilon", epsilon, "a number > 0", lambda v: v > 0)
        check_rmax(rmax)
        check_dmax(dmax)
        _check_microbatch_size(microbatch_size)
        self.axis = int(axis)
        self.momentum = float(momentum)
        self.epsilon = float(epsilon)
        self.center = center
        self.scale = scale
        self.microbatch_size = None if microbatch_size is None else int(microbatch_size)
        self.beta_initializer = keras.initializers.get(beta_initializer)
        self.gamma_initializer = keras.initializers.get(gamma_initializer)
        self.moving_mean_initializer = keras.initializers.get(moving_mean_initializer)
        self.moving_stddev_initializer = keras.initializers.get(moving_stddev_initializer)
        self.beta_regularizer = keras.regularizers.get(beta_regularizer)
        self.gamma_regularizer = keras.regularizers.get(gamma_regularizer)
        # Scalars that the training step reads, so assigning them between
        # steps changes an already traced function.
        # Set between steps, identically on every replica: the first replica's value counts.
        self.rmax = self._scalar_weight("rmax", float(rmax), self.variable_dtype,
                                        aggregation="only_first_replica")
        self.dmax = self._scalar_weight("dmax", float(dmax), self.variable_dtype,
                                        aggregation="only_first_replica")
        # Diagnostics, kept in float32 whatever the layer's dtype, averaged over replicas.
        self.fraction_r_clipped = self._scalar_weight("fraction_r_clipped", 0.0, "float32",
                                                      aggregation="mean")
        self.fraction_d_clipped = self._scalar_weight("fraction_d_clipped", 0.0, "float32",
                                                      aggregation="mean")
        self.skipped_updates = self._scalar_weight("skipped_updates", 0.0, "float32",
                                                   aggregation="mean")

    def _scalar_weight(self, name, value, dtype, aggregation):
        return self.add_weight(
            shape=(),
            name=name,
            # keras.initializers.Constant rounds through float32; build the
            # value directly in the weight's dtype instead.
            initializer=lambda shape, dtype=None: ops.full(shape, value, dtype=dtype),
            dtype=dtype,
            trainable=False,
            autocast=False,
            aggregation=aggregation,
        )

    def build(self, input_shape):
        rank = len(input_shape)
        if rank < 2:
            raise ValueError(
                "BatchRenormalization needs inputs of rank >= 2 (batch, ..., "
                f"channels); got an input of shape {tuple(input_shape)}."
            )
        if not -rank <= self.axis < rank:
            raise ValueError(
                f"`axis` must be in [{-rank}, {rank - 1}] for inputs of rank "
                f"{rank}; got axis={self.axis}."
            )
        channel_axis = self.axis % rank
        if channel_axis == 0:
            raise ValueError("`axis` must not be the batch axis 0; got axis=0.")
        channels = input_shape[channel_axis]
        if channels is None:
            raise ValueError(f"The channel axis {self.axis} of the input must be known.")
        # Statistics are taken on the input reshaped to (groups, m, ...):
        # reduce over the microbatch's examples and every non-channel axis.
        self._grouped_channel_axis = channel_axis + 1
        self._grouped_reduction_axes = [
            a for a in range(1, rank + 1) if a != self._grouped_channel_axis
        ]
        self._broadcast_shape = [1] * (rank + 1)
        self._broadcast_shape[self._grouped_channel_axis] = channels
        shape = (channels,)
        # γ and β are learned; µ and σ are updated by the training step and averaged
        # across replicas (each replica computes them from its own microbatches).
        self.gamma = self._channel_weight(
            "gamma", shape, self.gamma_initializer, trainable=True, aggregation="none",
            regularizer=self.gamma_regularizer) if self.scale else None
        self.beta = self._channel_weight(
            "beta", shape, self.beta_initializer, trainable=True, aggregation="none",
            regularizer=self.beta_regularizer) if self.center else None
        self.moving_mean = self._channel_weight(
            "moving_mean", shape, self.moving_mean_initializer, trainable=False,
            aggregation="mean")
        self.moving_stddev = self._channel_weight(
            "moving_stddev", shape, self.moving_stddev_initializer, trainable=False,
            aggregation="mean")
        self.input_spec = keras.layers.InputSpec(ndim=rank, axes={channel_axis: channels})

    def _channel_weight(self, name, shape, initializer, trainable, aggregation,
                        regularizer=None):
        return self.add_weight(
            shape=shape,
            name=name,
            initializer=initializer,
            regularizer=regularizer,
            trainable=trainable,
            autocast=False,
            aggregation=aggregation,
        )

    def compute_output_shape(self, input_shape):
        return input_shape

    def call(self, inputs, training=None):
        stats_dtype = keras.backend.result_type(inputs.dtype, "float32")
        x = ops.cast(inputs, stats_dtype)
        if training and self.trainable:
            outputs = ops.reshape(self._train_step(self._group(x)), ops.shape(x))
        else:
            outputs = self._infer(x)
        return ops.cast(outputs, self.compute_dtype)

    def _param(self, weight, dtype, default):
        if weight is None:
            return ops.cast(default, dtype)
        return ops.reshape(ops.cast(weight, dtype), self._broadcast_shape)

    def _group(self, x):
        """Reshapes (N, ...) to (N / m, m, ...); the whole batch is one group."""
        if self.microbatch_size is None:
            return ops.expand_dims(x, 0)
        m = self.microbatch_size
        batch = x.shape[0]
        if batch is not None and batch % m:
            raise ValueError(
                f"`microbatch_size`={m} must divide the batch size; got a batch "
                f"of {batch} examples. Use a batch size that is a multiple of {m}."
            )
        if batch is None:
            x = _assert_divisible(x, m)
        return ops.reshape(x, (-1, m) + tuple(ops.shape(x)[1:]))

    def _train_step(self, x):
        dtype = x.dtype
        gamma = self._param(self.gamma, dtype, 1.0)
        beta = self._param(self.beta, dtype, 0.0)
        mu = self._param(self.moving_mean, dtype, 0.0)
        sigma = self._param(self.moving_stddev, dtype, 1.0)
        rmax = ops.cast(self.rmax, dtype)
        dmax = ops.cast(self.dmax, dtype)

        mean_b, var_b = ops.moments(x, axes=self._grouped_reduction_axes, keepdims=True)
        sigma_b = ops.sqrt(var_b + self.epsilon)  # σ_B = sqrt(var + ε)
        step = batch_renorm(x, mean_b, sigma_b, mu, sigma, rmax, dmax, gamma, beta)

        self._update_moving_statistics(mean_b, sigma_b)
        self.fraction_r_clipped.assign(ops.mean(ops.cast(step.r_clipped, "float32")))
        self.fraction_d_clipped.assign(ops.mean(ops.cast(step.d_clipped, "float32")))
        return step.outputs

    def _infer(self, x):
        dtype = x.dtype
        gamma, beta = self._param(self.gamma, dtype, 1.0), self._param(self.beta, dtype, 0.0)
        mu = self._param(self.moving_mean, dtype, 0.0)
        sigma = self._param(self.moving_stddev, dtype, 1.0)
        x_scale = ops.squeeze(gamma / sigma, 0)  # y = γ(x − µ)/σ + β
        x_shift = ops.squeeze(beta - mu * gamma / sigma, 0)
        return x * x_scale + x_shift

    def _update_moving_statistics(self, mean_b, sigma_b):
        step_mean = ops.reshape(ops.mean(mean_b, axis=0), (-1,))
        step_sigma = ops.reshape(ops.mean(sigma_b, axis=0), (-1,))
        finite = ops.logical_and(ops.all(ops.isfinite(step_mean)),
                                 ops.all(ops.isfinite(step_sigma)))
        alpha = 1.0 - self.momentum
        for weight, target in ((self.moving_mean, step_mean), (self.moving_stddev, step_sigma)):
            old = ops.cast(weight, target.dtype)
            new = old + alpha * (target - old)  # µ := µ + α(µ_B − µ)
            weight.assign(ops.cast(ops.where(finite, new, old), weight.dtype))
        self.skipped_updates.assign(self.skipped_updates + ops.where(finite, 0.0, 1.0))

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "axis": self.axis,
                "momentum": self.momentum,
                "epsilon": self.epsilon,
                "center": self.center,
                "scale": self.scale,
                "rmax": float(ops.convert_to_numpy(self.rmax)),
                "dmax": float(ops.convert_to_numpy(self.dmax)),
                "microbatch_size": self.microbatch_size,
                "beta_initializer": keras.initializers.serialize(self.beta_initializer),
                "gamma_initializer": keras.initializers.serialize(self.gamma_initializer),
                "moving_mean_initializer": keras.initializers.serialize(
                    self.moving_mean_initializer
                ),
                "moving_stddev_initializer": keras.initializers.serialize(
                    self.moving_stddev_initializer
                ),
                "beta_regularizer": keras.regularizers.serialize(self.beta_regularizer),
                "gamma_regularizer": keras.regularizers.serialize(self.gamma_regularizer),
            }
        )
        return config


def _assert_divisible(x, m):
    """Fails at run time when a batch of unknown size is not a multiple of m."""
    if keras.backend.backend() != "tensorflow":
        return x
    import tensorflow as tf

    check = tf.debugging.assert_equal(
        tf.math.floormod(tf.shape(x)[0], m),
        0,
        message=f"`microbatch_size`={m} must divide the batch size",
    )
    with tf.control_dependencies([check]):
        return tf.identity(x)
