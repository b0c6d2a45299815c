"""The batch renormalization layer, over whole batches or contiguous microbatches."""

import math
import numbers
from typing import NamedTuple

import keras
import numpy as np
from keras import ops

from brlib.validation import check_integer, check_number, check_value


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


def _check_bool(name, value):
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"`{name}` must be True or False; got {name}={value!r}.")


def floor_stddev(stddev, epsilon):
    """σ as it divides: max(σ, √ε), so that a moving σ of zero gives no 0/0.

    σ_B = sqrt(var_B + ε) is never below √ε, so the floor changes nothing once
    σ has followed σ_B for a while; it matters for a σ initialized at zero
    (`moving_stddev_initializer="zeros"`), where a channel whose µ_B equals µ
    would otherwise give d = 0/0. Keras's renorm floors its σ the same way.

    Args:
        stddev: The moving standard deviation σ, any shape.
        epsilon: The ε of σ_B = sqrt(var_B + ε), > 0.

    Returns:
        max(σ, √ε), elementwise.
    """
    return ops.maximum(stddev, math.sqrt(epsilon))


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


def batch_renorm(x, mean_b, sigma_b, mean, stddev, rmax, dmax, gamma=1.0, beta=0.0,
                 epsilon=1e-3):
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
        stddev: The moving standard deviation σ. It divides as max(σ, √ε)
            (`floor_stddev`), so σ = 0 gives no NaN.
        rmax: Clip bound for r, >= 1.
        dmax: Clip bound for d, >= 0.
        gamma: The learned scale γ.
        beta: The learned offset β.
        epsilon: The ε of σ_B = sqrt(var_B + ε), which sets σ's floor √ε;
            the layer passes its own, and the default is the layer's default.

    Returns:
        A `Renormalized` (outputs, r, d, r_clipped, d_clipped).

    Reference:
        Sergey Ioffe, "Batch Renormalization", arXiv:1702.03275, Algorithm 1.
    """
    # NumPy arrays become tensors first: torch cannot mix them with its own.
    x, mean_b, sigma_b, mean, stddev, gamma, beta = (
        ops.convert_to_tensor(v) if isinstance(v, np.ndarray) else v
        for v in (x, mean_b, sigma_b, mean, stddev, gamma, beta))
    stddev = floor_stddev(stddev, epsilon)  # σ = 0 (a zeros initializer) must not give 0/0
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


_MOVING_STATISTICS = ("stddev", "variance")
_KERAS_GETTERS = {"initializer": keras.initializers.get, "regularizer": keras.regularizers.get,
                  "constraint": keras.constraints.get}


def _keras_object(kind, name, identifier):
    """`keras.<kind>s.get(identifier)`, with a ValueError that names the argument."""
    try:
        return _KERAS_GETTERS[kind](identifier)
    except (ValueError, TypeError) as error:
        raise ValueError(f"`{name}` must be a Keras {kind} or its name or config; got "
                         f"{name}={identifier!r} ({error})") from error


_RENORM_CLIPPING_KEYS = ("rmax", "rmin", "dmax")


def _renorm_clipping_bounds(renorm_clipping):
    """rmax and dmax from Keras's `renorm_clipping` dict, whose absent keys mean no clipping."""
    clipping = {} if renorm_clipping is None else renorm_clipping
    if not isinstance(clipping, dict):
        raise ValueError("`renorm_clipping` must be None or a dict with keys among 'rmax', "
                         f"'rmin' and 'dmax'; got renorm_clipping={renorm_clipping!r}.")
    unknown = sorted(set(clipping) - set(_RENORM_CLIPPING_KEYS), key=str)
    if unknown:
        raise ValueError("`renorm_clipping` takes only the keys 'rmax', 'rmin' and 'dmax'; "
                         f"got the unknown keys {unknown} in renorm_clipping={clipping!r}.")
    for key, value in clipping.items():
        check_number(f"renorm_clipping['{key}']", value, "a number")
    dmax = float(clipping.get("dmax", math.inf))
    if dmax < 0:
        raise ValueError("`renorm_clipping['dmax']` must be >= 0 (d is clipped to [-dmax, dmax]); "
                         f"got renorm_clipping={clipping!r}.")
    rmax = float(clipping.get("rmax", math.inf))
    rmin = float(clipping.get("rmin", 0.0))
    if rmax < 1:
        raise ValueError("`renorm_clipping['rmax']` must be >= 1 (this layer clips r to "
                         f"[1/rmax, rmax]); got renorm_clipping={clipping!r}.")
    unclipped = rmax == math.inf and rmin == 0
    if not unclipped and not math.isclose(rmin * rmax, 1.0, rel_tol=1e-6):
        raise ValueError(
            "`renorm_clipping` must clip r symmetrically: this layer clips r to [1/rmax, rmax], "
            f"so 'rmin' must be 1/rmax = {1 / rmax!r} (Keras takes a missing 'rmin' as 0 and a "
            f"missing 'rmax' as infinity); got renorm_clipping={clipping!r}.")
    return rmax, dmax


def _keras_renorm_settings(renorm, renorm_clipping, renorm_momentum, momentum, rmax, dmax,
                           moving_statistic):
    """(rmax, dmax, moving_statistic, default warm-up) from this layer's or Keras's spelling.

    The moving statistic is None where the caller picks it from `microbatch_size`.
    """
    if renorm is None:
        for name, value in (("renorm_clipping", renorm_clipping),
                            ("renorm_momentum", renorm_momentum)):
            if value is not None:
                raise ValueError(
                    f"`{name}` applies only with renorm=True (Keras's renorm arguments); got "
                    f"{name}={value!r} without `renorm`. Pass renorm=True, or use this "
                    "layer's own rmax, dmax and momentum.")
        return (3.0 if rmax is None else rmax, 5.0 if dmax is None else dmax,
                moving_statistic, "auto")
    _check_bool("renorm", renorm)
    for name, value in (("rmax", rmax), ("dmax", dmax)):
        if value is not None:
            raise ValueError(
                "`renorm` (with `renorm_clipping`) is Keras's spelling of the clip bounds; give "
                f"it or `{name}`, not both; got renorm={renorm!r} and {name}={value!r}.")
    if not renorm:
        for name, value in (("renorm_clipping", renorm_clipping),
                            ("renorm_momentum", renorm_momentum)):
            if value is not None:
                raise ValueError(
                    f"`{name}` applies only with renorm=True; renorm=False is batch norm "
                    "(rmax=1, dmax=0), which clips nothing and keeps one pair of moving "
                    f"statistics; got {name}={value!r}.")
        return 1.0, 0.0, moving_statistic or "variance", None
    rmax, dmax = _renorm_clipping_bounds(renorm_clipping)
    if renorm_momentum is not None:
        check_number("renorm_momentum", renorm_momentum, "a number equal to `momentum`")
        if float(renorm_momentum) != float(momentum):
            raise ValueError(
                "`renorm_momentum` must equal `momentum`: Keras's renorm keeps a second pair "
                "of moving statistics for r and d, updated with renorm_momentum; this layer "
                "keeps one pair (µ, σ) for r, d and inference, as Algorithm 1 does, updated "
                f"with momentum. Got renorm_momentum={renorm_momentum!r} and "
                f"momentum={momentum!r}; leave renorm_momentum out or set it to momentum.")
    # Keras's renorm renormalizes from its first step with fixed bounds (here the weights,
    # which a RenormSchedule may move) and keeps the average of σ_B for r.
    return rmax, dmax, moving_statistic or "stddev", None


def _warmup_settings(warmup_steps, rmax_steps, dmax_steps, momentum):
    """(warmup_steps, rmax_steps, dmax_steps) resolved: "auto" and None spelled out."""
    if warmup_steps == "auto":
        # Five time constants of the moving averages: the initial µ = 0, σ = 1 then
        # weigh e^-5 < 1 % in them. Frozen averages (momentum = 1) never get better.
        alpha = 1.0 - float(momentum)
        warmup_steps = round(5.0 / alpha) if alpha > 0 else 0
    elif warmup_steps is None:
        for name, value in (("rmax_steps", rmax_steps), ("dmax_steps", dmax_steps)):
            if value is not None:
                raise ValueError(
                    f"`{name}` is the end of the in-layer ramp, which needs `warmup_steps`; got "
                    f"{name}={value!r} with warmup_steps=None (bounds held by the weights, "
                    "set by you or a RenormSchedule). Pass warmup_steps=<int> too, or drop "
                    f"`{name}`.")
        return None, None, None
    else:
        check_integer("warmup_steps", warmup_steps,
                      '"auto", None (no warm-up in the layer) or an integer >= 0',
                      lambda v: v >= 0)
        warmup_steps = int(warmup_steps)
    ends = []
    for name, value in (("rmax_steps", rmax_steps), ("dmax_steps", dmax_steps)):
        if value is None:
            ends.append(warmup_steps)
            continue
        check_integer(name, value, f"None (open at the end of the warm-up) or an integer >= "
                      f"warmup_steps={warmup_steps}", lambda v: v >= warmup_steps)
        ends.append(int(value))
    return warmup_steps, ends[0], ends[1]


def _progress(step, start, end):
    """The ramp's progress at `step`: 0 until `start`, 1 from `end`, linear between."""
    if end > start:
        return min(max((step - start) / (end - start), 0.0), 1.0)
    return float(step >= end)


def _ramp_value(step, start, end, first, final):
    """`first` → `final` linearly between steps `start` and `end`, exactly `final` at the end."""
    progress = _progress(step, start, end)
    if progress >= 1:
        return final
    return first + progress * (final - first) if progress > 0 else first  # never 0 × ∞


def _ramp_tensor(step, start, end, first, final):
    """`_ramp_value` in `keras.ops`, for a step counter held in a weight (of the bounds' dtype)."""
    if end > start:
        progress = ops.clip((step - start) / float(end - start), 0.0, 1.0)
    else:
        progress = ops.cast(step >= end, step.dtype)
    middle = ops.where(progress > 0, first + progress * (final - first), first)
    return ops.where(progress >= 1, final, middle)


def _stddev_initializer_from_variance(moving_variance_initializer):
    """The σ initializer equal to the square root of a variance initializer, where one exists."""
    initializer = _keras_object("initializer", "moving_variance_initializer",
                                moving_variance_initializer)
    if isinstance(initializer, keras.initializers.Zeros):
        return keras.initializers.Zeros()
    if isinstance(initializer, keras.initializers.Ones):
        return keras.initializers.Ones()
    if type(initializer) is keras.initializers.Constant:
        value = initializer.value
        if (isinstance(value, numbers.Real) and not isinstance(value, bool)
                and math.isfinite(value) and value >= 0):
            return keras.initializers.Constant(math.sqrt(value))
    raise ValueError(
        "`moving_variance_initializer` is accepted with moving_statistic='stddev' only where it "
        "converts to the moving standard deviation that the layer keeps: 'zeros', 'ones' or "
        "Constant(v) with v >= 0 become their square roots. Got moving_variance_initializer="
        f"{moving_variance_initializer!r}; pass `moving_stddev_initializer` to initialize σ "
        "itself, or moving_statistic='variance' to keep a moving variance.")


def _spread_initializers(moving_statistic, moving_stddev_initializer,
                         moving_variance_initializer):
    """(σ initializer, variance initializer): the one the layer keeps, the other None."""
    if moving_statistic == "variance":
        if moving_stddev_initializer is not None:
            raise ValueError(
                "`moving_stddev_initializer` applies only with moving_statistic='stddev'; with "
                "moving_statistic='variance' the layer keeps a moving variance, initialized by "
                "`moving_variance_initializer`; got moving_stddev_initializer="
                f"{moving_stddev_initializer!r}.")
        if moving_variance_initializer is None:
            moving_variance_initializer = "ones"
        return None, _keras_object("initializer", "moving_variance_initializer",
                                   moving_variance_initializer)
    if moving_variance_initializer is None:
        if moving_stddev_initializer is None:
            moving_stddev_initializer = "ones"
        return _keras_object("initializer", "moving_stddev_initializer",
                             moving_stddev_initializer), None
    if moving_stddev_initializer is not None:
        raise ValueError(
            "Give `moving_stddev_initializer` or `moving_variance_initializer`, not both: the "
            "layer keeps one moving statistic of spread (here σ, moving_statistic='stddev'); "
            f"got moving_stddev_initializer={moving_stddev_initializer!r} and "
            f"moving_variance_initializer={moving_variance_initializer!r}.")
    return _stddev_initializer_from_variance(moving_variance_initializer), None


@keras.saving.register_keras_serializable(package="brlib")
class BatchRenormalization(keras.layers.Layer):
    """Batch renormalization over the whole batch or over contiguous microbatches.

    In training, every microbatch B (rows [0, m), [m, 2m), ... of the batch)
    is normalized with its own statistics and then corrected towards the
    moving statistics µ and σ:

        x̂ = (x − µ_B) / σ_B · r + d,    y = γ · x̂ + β,

    with σ_B = sqrt(var_B + ε), r = clip(σ_B / σ, 1/rmax, rmax) and
    d = clip((µ_B − µ) / σ, −dmax, dmax) treated as constants by the gradient.
    At inference, y = γ · (x − µ) / σ + β. Wherever σ divides, in training and
    at inference, it is max(σ, √ε), as in Keras's renorm: a σ initialized at
    zero then gives no 0/0 in a channel whose µ_B equals µ (zero padding, a
    dead ReLU). With `rmax=1, dmax=0` the training step is batch norm over
    the same microbatches.

    µ and σ are updated once per training step, from the mean over the
    step's microbatches: µ ← µ + α · (mean(µ_B) − µ), likewise σ, with
    α = 1 − momentum. `rmax` and `dmax` are non-trainable scalar weights, so
    assigning them (`layer.rmax.assign(2.0)`, or with `brlib.RenormSchedule`)
    takes effect inside an already traced `model.fit`.

    Inference statistics. By default (`moving_statistic="stddev"`) the layer
    keeps the moving average of σ_B, the rule of the renorm paper's
    Algorithm 1, and divides by it at inference. Batch norm's conventions
    differ: Keras's `BatchNormalization` keeps the moving average of the
    biased var_B and divides by sqrt(moving variance + ε); PyTorch averages the
    unbiased variance; the batch-norm paper uses m/(m − 1) · E[var_B]. These
    estimates part at small m: for Gaussian data with standard deviation σ at
    m = 2, E[σ_B] ≈ 0.57σ, √E[var_B] ≈ 0.71σ, and the unbiased variance gives
    σ. So "rmax = 1, dmax = 0 is batch norm" holds for the training step;
    the inference statistics follow the renorm paper's rule, and at m = 2
    the inference network divides by about 0.8 times the σ that Keras's rule
    would give. The σ average is the one renorm needs (E[r] = 1 requires
    σ = E[σ_B]); for a batch norm that must match Keras at inference too,
    `moving_statistic="variance"` keeps Keras's moving variance instead, with
    σ = sqrt(moving variance + ε) for r, d and inference. With `rmax=1, dmax=0`
    (or `renorm=False`) the layer then computes what
    `keras.layers.BatchNormalization` computes, in training and inference,
    over the whole batch. With larger clip bounds that σ is a biased target
    for r at small m (E[r] < 1), so renorm should keep the default.

    Masking. With a Keras mask (shape (batch, time) for inputs of shape
    (batch, time, channels): every axis but the last, broadcast over the
    last, as Keras's `BatchNormalization` reads it), µ_B and var_B are taken
    over the unmasked entries of each microbatch. Every position, masked or
    not, is then normalized with those statistics, as Keras does. A
    microbatch with no unmasked entry in a channel gets µ_B = 0 and
    var_B = 0 there (Keras's values for an empty batch), and the step's
    update of µ and σ averages only the microbatches that hold unmasked
    entries; a channel with none keeps µ and σ as they were (Keras would
    move them towards 0 and 0). At inference the mask changes nothing: every
    position is normalized by µ and σ. The mask is passed on to the next
    layer.

    A training step whose statistics are not finite (the batch held NaN or
    Inf) leaves µ and σ as they were and adds one to `layer.skipped_updates`,
    so a single bad batch cannot poison inference for the rest of training.
    The step's output is still computed from the batch, so the loss shows it.

    For teaching, `layer.fraction_r_clipped` and `layer.fraction_d_clipped`
    hold the fraction of (microbatch, channel) values of r and d that fell
    outside their clip bounds in the last training step (over the
    microbatches that hold unmasked entries).

    Keras's arguments. Every argument of `keras.layers.BatchNormalization`
    (Keras 3.15) is accepted. `renorm=True` with `renorm_clipping` is mapped
    to `rmax` and `dmax` (a missing key means no clipping, as in Keras; r is
    clipped symmetrically, so 'rmin' must be 1/'rmax'), `renorm_momentum`
    must equal `momentum` (the layer keeps one pair of moving statistics,
    Keras's renorm two), and `renorm=False` means `rmax=1, dmax=0` with
    `moving_statistic="variance"`. `moving_variance_initializer` is converted
    to σ where it can be ('zeros', 'ones', Constant(v ≥ 0)). Anything else
    that does not apply raises a ValueError that names it.

    Args:
        axis: The channel axis; every other axis is reduced. -1 for
            channels-last, 1 for channels-first.
        momentum: Momentum of the moving statistics, in [0, 1]; the update
            rate is α = 1 − momentum (0.01 in the paper).
        epsilon: Added to the variance before the square root, > 0; σ is
            floored at √ε where it divides.
        center: Whether to add the learned offset β.
        scale: Whether to multiply by the learned scale γ.
        rmax: Clip bound for r, >= 1 (default 3; 1 with renorm=False): the
            bound the warm-up opens to, or without one the weight's initial value.
        dmax: Clip bound for d, >= 0 (default 5; 0 with renorm=False), likewise.
        microbatch_size: None to normalize the whole batch, or the number m of
            consecutive examples normalized together. A batch that is not a
            multiple of m ends in a shorter microbatch of its last N mod m rows.
        beta_initializer: Initializer for β.
        gamma_initializer: Initializer for γ.
        moving_mean_initializer: Initializer for µ.
        moving_stddev_initializer: Initializer for σ (default "ones"), with
            moving_statistic="stddev".
        beta_regularizer: Optional regularizer for β.
        gamma_regularizer: Optional regularizer for γ.
        moving_statistic: "stddev" to keep the moving average of σ_B, as
            Algorithm 1 does, in the weight `moving_stddev`; "variance" to keep
            the moving average of var_B, as Keras's `BatchNormalization` does,
            in the weight `moving_variance`. Default: "variance" for whole
            batches (it agrees with Keras at inference), "stddev" with a
            `microbatch_size` (E[r] = 1), "stddev" with renorm=True and
            "variance" with renorm=False. docs/layer.md gives the measurements.
        moving_variance_initializer: Initializer for the moving variance
            (default "ones"), with moving_statistic="variance". With
            "stddev", accepted where it converts to σ: 'zeros', 'ones' or
            Constant(v) with v >= 0.
        beta_constraint: Optional constraint for β.
        gamma_constraint: Optional constraint for γ.
        synchronized: Whether to compute the whole batch's statistics across
            all replicas of a `tf.distribute` strategy (an all-reduce per
            step). TensorFlow backend and microbatch_size=None only: a
            microbatch lives on one replica.
        renorm: Keras's switch. True: renorm with the clip bounds of
            `renorm_clipping`; False: batch norm as Keras computes it
            (rmax=1, dmax=0, moving_statistic="variance"). Not together
            with rmax or dmax.
        renorm_clipping: Keras's clip bounds, a dict with keys among "rmax",
            "rmin" (must be 1/rmax) and "dmax"; with renorm=True only.
        renorm_momentum: Keras's momentum of its second pair of moving
            statistics; with renorm=True only, and equal to `momentum`.
        warmup_steps: Training steps during which the layer is batch norm
            (rmax = 1, dmax = 0) before its bounds open to `rmax` and `dmax`;
            "auto" (the default) for round(5 / (1 − momentum)), five time
            constants of the moving averages; None for no warm-up in the layer
            (the bounds are what the weights hold, set by you or a
            `RenormSchedule`; the default with `renorm`). Counted in the weight
            `step`, advanced by every training call.
        rmax_steps: Step at which rmax reaches `rmax`, linearly from 1 after
            the warm-up; None for at once, at `warmup_steps`.
        dmax_steps: Step at which dmax reaches `dmax`, likewise from 0.
        **kwargs: Base `keras.layers.Layer` arguments such as `name`, `dtype`.

    Call arguments:
        inputs: A tensor of rank >= 2, examples first, of any batch size.
        training: True to normalize by the microbatches' statistics, correct
            by r and d, and update µ and σ; False or None (inference) to
            normalize by µ and σ alone. A layer with `trainable=False` always
            runs in inference mode.
        mask: Optional boolean tensor with one axis fewer than `inputs`
            (every axis but the last), True where an entry counts for the
            statistics. Keras passes it from a masking layer upstream.

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
        Algorithm 1. Sergey Ioffe and Christian Szegedy, "Batch
        Normalization", ICML 2015, arXiv:1502.03167, Algorithm 2 (inference
        statistics).
    """

    def __init__(
        self,
        axis=-1,
        momentum=0.99,
        epsilon=1e-3,
        center=True,
        scale=True,
        rmax=None,
        dmax=None,
        microbatch_size=None,
        beta_initializer="zeros",
        gamma_initializer="ones",
        moving_mean_initializer="zeros",
        moving_stddev_initializer=None,
        beta_regularizer=None,
        gamma_regularizer=None,
        moving_statistic=None,
        moving_variance_initializer=None,
        beta_constraint=None,
        gamma_constraint=None,
        synchronized=False,
        renorm=None,
        renorm_clipping=None,
        renorm_momentum=None,
        warmup_steps="auto",
        rmax_steps=None,
        dmax_steps=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        check_integer("axis", axis, "an integer")
        check_number("momentum", momentum, "a number in [0, 1]", lambda v: 0 <= v <= 1)
        check_number("epsilon", epsilon, "a number > 0", lambda v: v > 0)
        _check_bool("center", center)
        _check_bool("scale", scale)
        _check_bool("synchronized", synchronized)
        if moving_statistic is not None:
            check_value("moving_statistic", moving_statistic,
                        f"one of {list(_MOVING_STATISTICS)}", lambda v: v in _MOVING_STATISTICS)
        rmax, dmax, moving_statistic, default_warmup = _keras_renorm_settings(
            renorm, renorm_clipping, renorm_momentum, momentum, rmax, dmax, moving_statistic)
        check_rmax(rmax)
        check_dmax(dmax)
        _check_microbatch_size(microbatch_size)
        if moving_statistic is None:
            # Measured in docs/layer.md ("Which moving statistic"): over whole batches the
            # moving variance agrees with Keras's BatchNormalization at inference and biases
            # E[r] by under 1/(4N); over small microbatches only the average of σ_B keeps
            # E[r] = 1.
            moving_statistic = "variance" if microbatch_size is None else "stddev"
        if renorm is False:
            warmup_steps = None if warmup_steps == "auto" else warmup_steps
        elif warmup_steps == "auto" and default_warmup != "auto":
            warmup_steps = default_warmup
        self.warmup_steps, self.rmax_steps, self.dmax_steps = _warmup_settings(
            warmup_steps, rmax_steps, dmax_steps, momentum)
        if synchronized and microbatch_size is not None:
            raise ValueError(
                "synchronized=True applies only to whole-batch normalization "
                "(microbatch_size=None): a microbatch lives on one replica, so its statistics "
                f"never involve another replica's examples; got microbatch_size={microbatch_size}.")
        if synchronized and keras.backend.backend() != "tensorflow":
            raise ValueError(
                "synchronized=True needs the TensorFlow backend: the statistics are summed "
                "across replicas with tf.distribute's all-reduce; the Keras backend here is "
                f"{keras.backend.backend()!r}.")
        self.axis = int(axis)
        self.momentum = float(momentum)
        self.epsilon = float(epsilon)
        self.center = bool(center)
        self.scale = bool(scale)
        self.microbatch_size = None if microbatch_size is None else int(microbatch_size)
        self.moving_statistic = moving_statistic
        self.synchronized = bool(synchronized)
        self.beta_initializer = _keras_object("initializer", "beta_initializer", beta_initializer)
        self.gamma_initializer = _keras_object("initializer", "gamma_initializer",
                                               gamma_initializer)
        self.moving_mean_initializer = _keras_object("initializer", "moving_mean_initializer",
                                                     moving_mean_initializer)
        self.moving_stddev_initializer, self.moving_variance_initializer = _spread_initializers(
            moving_statistic, moving_stddev_initializer, moving_variance_initializer)
        self.beta_regularizer = _keras_object("regularizer", "beta_regularizer", beta_regularizer)
        self.gamma_regularizer = _keras_object("regularizer", "gamma_regularizer",
                                               gamma_regularizer)
        self.beta_constraint = _keras_object("constraint", "beta_constraint", beta_constraint)
        self.gamma_constraint = _keras_object("constraint", "gamma_constraint", gamma_constraint)
        self.supports_masking = True
        # The clip bounds: the values the in-layer warm-up opens towards, or, without one,
        # the initial values of the weights `rmax` and `dmax`.
        self._rmax_value, self._dmax_value = float(rmax), float(dmax)
        # Weights are made in `build`, under the model's name scope, so that their paths
        # carry the model's prefix ("model/norm/rmax").
        self.gamma = self.beta = self.moving_mean = None
        self._moving_stddev = self._moving_variance = None  # build keeps one of them
        self.rmax = self.dmax = self.step = None
        self.fraction_r_clipped = self.fraction_d_clipped = self.skipped_updates = None

    @property
    def moving_stddev(self):
        """σ: the weight with moving_statistic="stddev"; else sqrt(moving variance + ε), read-only.

        sqrt(v + ε) is what divides at inference either way, so the two spellings
        normalize identically. None before the layer is built.
        """
        if self.moving_statistic == "stddev" or self._moving_variance is None:
            return self._moving_stddev
        return ops.sqrt(ops.convert_to_tensor(self._moving_variance) + self.epsilon)

    @property
    def moving_variance(self):
        """The weight with moving_statistic="variance"; else max(σ, √ε)² − ε, read-only.

        That is the variance v for which Keras's sqrt(v + ε) equals the σ this
        layer divides by, so a Keras `BatchNormalization` given it infers the same.
        None before the layer is built.
        """
        if self.moving_statistic == "variance" or self._moving_stddev is None:
            return self._moving_variance
        sigma = floor_stddev(ops.convert_to_tensor(self._moving_stddev), self.epsilon)
        return ops.maximum(ops.square(sigma) - self.epsilon, 0.0)

    @property
    def moving_spread(self):
        """The weight of spread that the layer keeps and updates: `moving_stddev` or `moving_variance`."""
        return self._moving_stddev if self.moving_statistic == "stddev" else self._moving_variance

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

    def _build_scalars(self):
        # Scalars that the training step reads, so assigning them between
        # steps changes an already traced function.
        # Set between steps, identically on every replica: the first replica's value counts.
        if self.warmup_steps is None:
            rmax, dmax = self._rmax_value, self._dmax_value
        else:
            rmax, dmax = self.bounds_at(0)
        self.rmax = self._scalar_weight("rmax", rmax, self.variable_dtype,
                                        aggregation="only_first_replica")
        self.dmax = self._scalar_weight("dmax", dmax, self.variable_dtype,
                                        aggregation="only_first_replica")
        # Diagnostics, kept in float32 whatever the layer's dtype, averaged over replicas.
        self.fraction_r_clipped = self._scalar_weight("fraction_r_clipped", 0.0, "float32",
                                                      aggregation="mean")
        self.fraction_d_clipped = self._scalar_weight("fraction_d_clipped", 0.0, "float32",
                                                      aggregation="mean")
        self.skipped_updates = self._scalar_weight("skipped_updates", 0.0, "float32",
                                                   aggregation="mean")

    def bounds_at(self, step):
        """(rmax, dmax) of the in-layer warm-up after `step` training steps, as floats.

        rmax = 1 and dmax = 0 until `warmup_steps`; then each grows linearly to
        the layer's `rmax` and `dmax`, reached at `rmax_steps` and `dmax_steps`
        (at once where those equal `warmup_steps`). The same rule as
        `brlib.RenormSchedule`. Without a warm-up (warmup_steps=None), the
        values the weights were built with.
        """
        if self.warmup_steps is None:
            return self._rmax_value, self._dmax_value
        rmax = _ramp_value(step, self.warmup_steps, self.rmax_steps, 1.0, self._rmax_value)
        dmax = _ramp_value(step, self.warmup_steps, self.dmax_steps, 0.0, self._dmax_value)
        return rmax, dmax

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
        self._build_scalars()  # first: the order of the weights is that of earlier versions
        # γ and β are learned; µ and σ are updated by the training step and averaged
        # across replicas (each replica computes them from its own microbatches).
        self.gamma = self._channel_weight(
            "gamma", shape, self.gamma_initializer, trainable=True, aggregation="none",
            regularizer=self.gamma_regularizer,
            constraint=self.gamma_constraint) if self.scale else None
        self.beta = self._channel_weight(
            "beta", shape, self.beta_initializer, trainable=True, aggregation="none",
            regularizer=self.beta_regularizer,
            constraint=self.beta_constraint) if self.center else None
        self.moving_mean = self._channel_weight(
            "moving_mean", shape, self.moving_mean_initializer, trainable=False,
            aggregation="mean")
        if self.moving_statistic == "stddev":
            self._moving_stddev = self._channel_weight(
                "moving_stddev", shape, self.moving_stddev_initializer, trainable=False,
                aggregation="mean")
        else:
            self._moving_variance = self._channel_weight(
                "moving_variance", shape, self.moving_variance_initializer, trainable=False,
                aggregation="mean")
        if self.warmup_steps is not None:
            # Training steps taken, for the warm-up: state, so that jitted and stateless
            # loops (JAX's `stateless_call`) carry it with the other variables. Last, so
            # that a layer without a warm-up has the weights of earlier versions.
            self.step = self.add_weight(
                shape=(), name="step", initializer="zeros", dtype="int32", trainable=False,
                autocast=False, aggregation="only_first_replica")
        self.input_spec = keras.layers.InputSpec(ndim=rank, axes={channel_axis: channels})

    def _channel_weight(self, name, shape, initializer, trainable, aggregation,
                        regularizer=None, constraint=None):
        return self.add_weight(
            shape=shape,
            name=name,
            initializer=initializer,
            regularizer=regularizer,
            constraint=constraint,
            trainable=trainable,
            autocast=False,
            aggregation=aggregation,
        )

    def compute_output_shape(self, input_shape):
        return input_shape

    def call(self, inputs, training=None, mask=None):
        stats_dtype = keras.backend.result_type(inputs.dtype, "float32")
        x = ops.cast(inputs, stats_dtype)
        if mask is not None:
            mask = self._broadcast_mask(mask, x)
        if training and self.trainable:
            outputs = self._train(x, mask)
        else:
            outputs = self._infer(x)
        return ops.cast(outputs, self.compute_dtype)

    def _train(self, x, mask):
        """The training step over the batch's microbatches, the last one possibly shorter.

        A batch of N = k·m + j examples (0 < j < m) is normalized as k
        microbatches of m and one of j, its last j rows: the rows are padded
        to (k + 1)·m, the padding is masked out of the statistics, and cut
        off the output. A batch whose size is a multiple of m (or unknown
        until run time: TensorFlow graphs of a dynamic batch) takes the
        reshape alone, or the same padding with a padding of size 0.
        """
        m = self.microbatch_size
        batch = x.shape[0]
        if m is None or (batch is not None and batch % m == 0):
            grouped_mask = None if mask is None else self._group(mask)
            return ops.reshape(self._train_step(self._group(x), grouped_mask), ops.shape(x))
        size = ops.shape(x)[0]
        padding = (-size) % m  # a Python int for a known batch, a tensor for a dynamic one
        widths = [[0, padding]] + [[0, 0]] * (len(x.shape) - 1)
        padded = ops.pad(x, widths)
        rows = ops.arange(ops.shape(padded)[0]) < size
        keep = ops.broadcast_to(ops.reshape(rows, (-1,) + (1,) * (len(x.shape) - 1)),
                                ops.shape(padded))
        if mask is not None:
            # Padded as numbers: not every backend pads booleans.
            keep = ops.logical_and(keep, ops.pad(ops.cast(mask, "float32"), widths) > 0.5)
        outputs = ops.reshape(self._train_step(self._group(padded), self._group(keep)),
                              ops.shape(padded))
        return ops.slice(outputs, [0] * len(x.shape), ops.shape(x))

    def _broadcast_mask(self, mask, x):
        """Keras's mask over every axis but the last, as a boolean of the inputs' shape."""
        mask_shape, shape = tuple(mask.shape), tuple(x.shape)
        fits = len(mask_shape) == len(shape) - 1 and all(
            a is None or b is None or a in (1, b) for a, b in zip(mask_shape, shape))
        if not fits:
            raise ValueError(
                "`mask` must have one axis fewer than the inputs, every axis but the last "
                "(e.g. (batch, time) for inputs (batch, time, channels)), each of the inputs' "
                f"size or 1; got mask.shape={mask_shape} for inputs of shape {shape}.")
        mask = ops.expand_dims(ops.cast(mask, "bool"), -1)
        return ops.broadcast_to(mask, ops.shape(x))

    def _param(self, weight, dtype, default):
        if weight is None:
            return ops.cast(default, dtype)
        return ops.reshape(ops.cast(weight, dtype), self._broadcast_shape)

    def _moving_statistics(self, dtype):
        """µ and σ as they enter r, d and inference: σ floored at √ε, or sqrt(variance + ε)."""
        mu = self._param(self.moving_mean, dtype, 0.0)
        if self.moving_statistic == "stddev":
            sigma = floor_stddev(self._param(self.moving_stddev, dtype, 1.0), self.epsilon)
        else:
            sigma = ops.sqrt(self._param(self.moving_variance, dtype, 1.0) + self.epsilon)
        return mu, sigma

    def _group(self, x):
        """Reshapes (N, ...) to (N / m, m, ...); the whole batch is one group."""
        if self.microbatch_size is None:
            return ops.expand_dims(x, 0)
        return ops.reshape(x, (-1, self.microbatch_size) + tuple(ops.shape(x)[1:]))

    def _moments(self, x, mask):
        """µ_B and var_B of each group over its unmasked entries, and where a group has any.

        Without a mask and without synchronization, `ops.moments`, and `valid`
        is None. An empty group gets µ_B = 0 and var_B = 0.
        """
        axes = self._grouped_reduction_axes
        if mask is None and not self.synchronized:
            mean, variance = ops.moments(x, axes=axes, keepdims=True)
            return mean, variance, None
        keep = ops.ones_like(x, dtype="bool") if mask is None else mask
        count = self._sum_over_replicas(
            ops.sum(ops.cast(keep, x.dtype), axis=axes, keepdims=True))
        total = self._sum_over_replicas(
            ops.sum(ops.where(keep, x, 0.0), axis=axes, keepdims=True))
        divisor = ops.maximum(count, 1.0)
        mean = total / divisor
        squares = ops.sum(ops.where(keep, ops.square(x - mean), 0.0), axis=axes, keepdims=True)
        variance = self._sum_over_replicas(squares) / divisor
        return mean, variance, None if mask is None else count > 0

    def _sum_over_replicas(self, value):
        """The sum over a tf.distribute strategy's replicas when synchronized, else `value`."""
        if not self.synchronized:
            return value
        import tensorflow as tf

        context = tf.distribute.get_replica_context()
        if context is None or context.num_replicas_in_sync == 1:
            return value
        return context.all_reduce(tf.distribute.ReduceOp.SUM, value)

    def _train_step(self, x, mask):
        dtype = x.dtype
        gamma = self._param(self.gamma, dtype, 1.0)
        beta = self._param(self.beta, dtype, 0.0)
        mu, sigma = self._moving_statistics(dtype)
        if self.warmup_steps is None:
            rmax, dmax = self.rmax, self.dmax
        else:
            # The warm-up's bounds at this step, kept in the weights so they show them.
            step = ops.cast(self.step, self.rmax.dtype)
            rmax = _ramp_tensor(step, self.warmup_steps, self.rmax_steps, 1.0, self._rmax_value)
            dmax = _ramp_tensor(step, self.warmup_steps, self.dmax_steps, 0.0, self._dmax_value)
            self.rmax.assign(ops.cast(rmax, self.rmax.dtype))
            self.dmax.assign(ops.cast(dmax, self.dmax.dtype))
            self.step.assign(self.step + 1)
        rmax = ops.cast(rmax, dtype)
        dmax = ops.cast(dmax, dtype)

        mean_b, var_b, valid = self._moments(x, mask)
        sigma_b = ops.sqrt(var_b + self.epsilon)  # σ_B = sqrt(var + ε)
        step = batch_renorm(x, mean_b, sigma_b, mu, sigma, rmax, dmax, gamma, beta,
                            epsilon=self.epsilon)

        spread_b = sigma_b if self.moving_statistic == "stddev" else var_b
        self._update_moving_statistics(mean_b, spread_b, valid)
        self.fraction_r_clipped.assign(_fraction(step.r_clipped, valid))
        self.fraction_d_clipped.assign(_fraction(step.d_clipped, valid))
        return step.outputs

    def _infer(self, x):
        dtype = x.dtype
        gamma, beta = self._param(self.gamma, dtype, 1.0), self._param(self.beta, dtype, 0.0)
        mu, sigma = self._moving_statistics(dtype)
        x_scale = ops.squeeze(gamma / sigma, 0)  # y = γ(x − µ)/σ + β
        x_shift = ops.squeeze(beta - mu * gamma / sigma, 0)
        return x * x_scale + x_shift

    def _update_moving_statistics(self, mean_b, spread_b, valid):
        """µ and σ (or the variance) towards the mean over the groups that hold data."""
        if valid is None:
            step_mean = ops.reshape(ops.mean(mean_b, axis=0), (-1,))
            step_spread = ops.reshape(ops.mean(spread_b, axis=0), (-1,))
            has_data = True
        else:
            count = ops.sum(ops.cast(valid, mean_b.dtype), axis=0)
            divisor = ops.maximum(count, 1.0)
            step_mean = ops.reshape(ops.sum(ops.where(valid, mean_b, 0.0), axis=0) / divisor,
                                    (-1,))
            step_spread = ops.reshape(
                ops.sum(ops.where(valid, spread_b, 0.0), axis=0) / divisor, (-1,))
            has_data = ops.reshape(count > 0, (-1,))  # per channel
        finite = ops.logical_and(ops.all(ops.isfinite(step_mean)),
                                 ops.all(ops.isfinite(step_spread)))
        update = ops.logical_and(finite, has_data)
        alpha = 1.0 - self.momentum
        for weight, target in ((self.moving_mean, step_mean), (self.moving_spread, step_spread)):
            old = ops.cast(weight, target.dtype)
            new = old + alpha * (target - old)  # µ := µ + α(µ_B − µ)
            weight.assign(ops.cast(ops.where(update, new, old), weight.dtype))
        self.skipped_updates.assign(self.skipped_updates + ops.where(finite, 0.0, 1.0))

    def get_config(self):
        config = super().get_config()
        serialize = keras.initializers.serialize
        config.update(
            {
                "axis": self.axis,
                "momentum": self.momentum,
                "epsilon": self.epsilon,
                "center": self.center,
                "scale": self.scale,
                # Without a warm-up, the bounds as the weights hold them now; with one,
                # the bounds it opens towards.
                "rmax": self._bound_for_config(self.rmax, self._rmax_value),
                "dmax": self._bound_for_config(self.dmax, self._dmax_value),
                "microbatch_size": self.microbatch_size,
                "warmup_steps": self.warmup_steps,
                "rmax_steps": None if self.warmup_steps is None else self.rmax_steps,
                "dmax_steps": None if self.warmup_steps is None else self.dmax_steps,
                "moving_statistic": self.moving_statistic,
                "beta_initializer": serialize(self.beta_initializer),
                "gamma_initializer": serialize(self.gamma_initializer),
                "moving_mean_initializer": serialize(self.moving_mean_initializer),
                # The one the layer keeps; the other is None.
                "moving_stddev_initializer": None if self.moving_stddev_initializer is None
                else serialize(self.moving_stddev_initializer),
                "moving_variance_initializer": None if self.moving_variance_initializer is None
                else serialize(self.moving_variance_initializer),
                "beta_regularizer": keras.regularizers.serialize(self.beta_regularizer),
                "gamma_regularizer": keras.regularizers.serialize(self.gamma_regularizer),
                "beta_constraint": keras.constraints.serialize(self.beta_constraint),
                "gamma_constraint": keras.constraints.serialize(self.gamma_constraint),
                "synchronized": self.synchronized,
            }
        )
        return config

    def _bound_for_config(self, weight, value):
        if self.warmup_steps is not None or weight is None:
            return value
        return float(ops.convert_to_numpy(weight))

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        # Configurations written before the warm-up and the batch-size-dependent default
        # had neither key: those layers kept σ and held their bounds in the weights.
        if "warmup_steps" not in config:
            config["warmup_steps"] = None
            if config.get("moving_statistic") is None:
                config["moving_statistic"] = "stddev"
        return cls(**config)

    # ------------------------------------------------------------------
    # Keras BatchNormalization's weights: [γ, β, µ, variance], in and out
    # ------------------------------------------------------------------
    def _keras_batch_norm_count(self):
        """How many weights Keras's BatchNormalization with the same `center` and `scale` has."""
        return int(self.scale) + int(self.center) + 2

    def get_weights(self, keras_batch_norm=False):
        """The layer's weights; with `keras_batch_norm=True`, Keras BatchNormalization's list.

        Args:
            keras_batch_norm: False for every weight of this layer, in the order
                `set_weights` takes back (γ, β, rmax, dmax, the two clip fractions,
                skipped updates, µ, the moving statistic, and the warm-up's step
                where there is one). True for the list that
                `keras.layers.BatchNormalization(center=..., scale=...)` takes:
                [γ, β, µ, moving variance] (γ and β where present), with the
                variance max(σ, √ε)² − ε where the layer keeps σ, so that Keras's
                sqrt(v + ε) divides by the same σ.

        Returns:
            A list of NumPy arrays.
        """
        if not keras_batch_norm:
            return super().get_weights()
        self._check_built("get_weights(keras_batch_norm=True)")
        kept = [w for w in (self.gamma, self.beta) if w is not None]
        return [ops.convert_to_numpy(w) for w in kept + [self.moving_mean, self.moving_variance]]

    def set_weights(self, weights):
        """Sets the weights from this layer's full list or from Keras BatchNormalization's.

        Keras's list is [γ, β, µ, moving variance] (without γ or β where
        `scale` or `center` is False): γ, β and µ are copied, and the variance v
        becomes σ = sqrt(v + ε) where the layer keeps σ, so inference computes
        what Keras's layer computed. rmax, dmax, the counters and the warm-up's
        step keep their values. Any other length must be the layer's own list
        (`get_weights()`).

        Args:
            weights: A list of NumPy arrays.
        """
        weights = list(weights)
        if len(weights) == self._keras_batch_norm_count() != len(self.weights):
            self._set_keras_batch_norm_weights(weights)
        else:
            super().set_weights(weights)

    def _check_built(self, what):
        if not self.built:
            raise ValueError(f"Layer '{self.name}' must be built before {what}: call it on an "
                             "input or call `layer.build(input_shape)` first.")

    def _set_keras_batch_norm_weights(self, weights):
        self._check_built("set_weights")
        kept = [w for w in (self.gamma, self.beta) if w is not None]
        targets = kept + [self.moving_mean, self.moving_spread]
        names = [w.name for w in kept] + ["moving_mean", "moving_variance"]
        values = [np.asarray(v) for v in weights]
        for name, target, value in zip(names, targets, values):
            if tuple(value.shape) != tuple(target.shape):
                raise ValueError(
                    f"Layer '{self.name}' took Keras BatchNormalization's weights "
                    f"[{', '.join(names)}], and `{name}` must have shape {tuple(target.shape)}; "
                    f"got shape {tuple(value.shape)}.")
        if self.moving_statistic == "stddev":
            # Keras divides by sqrt(v + ε); σ = sqrt(v + ε) divides by the same.
            values[-1] = np.sqrt(np.maximum(values[-1].astype(np.float64), 0.0) + self.epsilon)
        for target, value in zip(targets, values):
            target.assign(np.asarray(value, dtype=target.dtype))

    def load_own_variables(self, store):
        """Loads this layer's variables, or Keras BatchNormalization's from its weights file.

        Keras stores a layer's variables by the snake-cased class name, so a
        weights file saved from a model with `BatchNormalization` where this
        model has `BatchRenormalization` holds them under `batch_normalization`
        instead of `batch_renormalization`; they are looked up there and
        converted as `set_weights` converts Keras's list. A file saved before
        the layer had its warm-up step counter loads with the counter at 0.
        """
        count = len(store.keys())
        ours = self._trainable_variables + self._non_trainable_variables
        if count == 0:
            store = self._keras_batch_norm_store(store) or store
            count = len(store.keys())
        if count == self._keras_batch_norm_count() != len(ours):
            self._set_keras_batch_norm_weights([store[str(i)] for i in range(count)])
        elif self.step is not None and count == len(ours) - 1:
            for i, variable in enumerate(v for v in ours if v is not self.step):
                variable.assign(store[str(i)])
        else:
            super().load_own_variables(store)

    @staticmethod
    def _keras_batch_norm_store(store):
        """The store of the `BatchNormalization` saved where this layer now sits, if any.

        Keras's weights files name a layer's entry by its class
        ("layers/batch_normalization_1"); this reads Keras's store through its
        `get(path)` and the path it was last given.
        """
        path = getattr(store, "_h5_entry_path", None)
        if not isinstance(path, str) or not hasattr(store, "get"):
            return None
        head, _, name = path.rpartition("/")
        if not name.startswith("batch_renormalization"):
            return None
        other = name.replace("batch_renormalization", "batch_normalization", 1)
        found = store.get(f"{head}/{other}" if head else other)
        return found if len(found.keys()) else None


def _fraction(clipped, valid):
    """The fraction of (group, channel) values clipped, over the groups that hold data."""
    clipped = ops.cast(clipped, "float32")
    if valid is None:
        return ops.mean(clipped)
    weight = ops.cast(ops.broadcast_to(valid, ops.shape(clipped)), "float32")
    return ops.sum(clipped * weight) / ops.maximum(ops.sum(weight), 1.0)
