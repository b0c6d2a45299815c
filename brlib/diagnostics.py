"""What normalization does to examples: r and d of real features, partners, clipping, and
per-layer probes of a model's BatchRenormalization layers.

Pure functions that return arrays, numbers and text: the notebooks, the
widgets (`brlib.widgets`) and the figures (`brlib.plots`) share them.
"""

import keras
import numpy as np

from brlib.layers import BatchRenormalization, batch_renorm, clip_corrections
from brlib.recalibration import untouched
from brlib.schedule import renorm_layers
from brlib.validation import check_integer


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
    with untouched(layers):
        train = keras.tree.flatten(probe(images, training=True))  # a list even for one layer
    infer = keras.tree.flatten(probe(images, training=False))
    return [float(np.sqrt(np.mean((np.asarray(a) - np.asarray(b)) ** 2)))
            for a, b in zip(train, infer)]


def layer_inputs(model, images):
    """{layer name: the inputs of that BatchRenormalization layer}, in training mode.

    The inputs are what a layer normalizes: their microbatch statistics are
    the µ_B and σ_B of the paper. Moving statistics and counters are
    restored afterwards, as in `train_inference_gap`.
    """
    layers = renorm_layers(model)
    probe = keras.Model(model.input, [layer.input for layer in layers])
    with untouched(layers):
        outputs = keras.tree.flatten(probe(images, training=True))
    return {layer.name: np.asarray(output) for layer, output in zip(layers, outputs)}


def _check_group_size(microbatch_size):
    check_integer("microbatch_size", microbatch_size,
                  "an integer >= 2 (one example has σ_B = √ε)", lambda m: m >= 2)


def _moments(groups, axes, epsilon):
    """µ_B and σ_B = sqrt(var + ε) of each group, reducing `axes`."""
    return groups.mean(axis=axes), np.sqrt(groups.var(axis=axes) + epsilon)


def corrections_from_features(features, microbatch_size, microbatches=2000, seed=0,
                              epsilon=1e-3, mu=None, sigma=None):
    """Unclipped r and d of random microbatches of real features, per (microbatch, channel).

    Microbatches of `microbatch_size` examples are drawn from `features`
    (examples first, channels last; a convolution's spatial positions are
    reduced too, as the layer does). µ is the features' mean and σ = E[σ_B],
    the mean of σ_B over the drawn microbatches: the values the moving
    averages converge to, so that E[r] = 1 and E[d] = 0.

    Args:
        features: Array of shape (examples, ..., channels), e.g. a layer's inputs.
        microbatch_size: Examples per microbatch, m >= 2 (one example has σ_B = √ε).
        microbatches: How many microbatches to draw.
        seed: Seed of the draw.
        epsilon: The layer's ε, added to the variance.
        mu: µ per channel, for example a layer's moving mean; None for the
            features' mean.
        sigma: σ per channel, for example a layer's moving stddev; None for
            E[σ_B] over the drawn microbatches.

    Returns:
        (r, d), two arrays of shape (microbatches, channels).

    Reference:
        Sergey Ioffe, "Batch Renormalization: Towards Reducing Minibatch
        Dependence in Batch-Normalized Models", NIPS 2017, arXiv:1702.03275,
        Algorithm 1 (r and d before clipping).
    """
    _check_group_size(microbatch_size)
    features = np.asarray(features, dtype=np.float64)
    axes = tuple(range(features.ndim - 1))
    picks = np.random.default_rng(seed).integers(0, len(features), (microbatches, microbatch_size))
    groups = features[picks]                      # (microbatches, m, ..., channels)
    mean_b, sigma_b = _moments(groups, tuple(range(1, groups.ndim - 1)), epsilon)
    mu = features.mean(axis=axes) if mu is None else np.asarray(mu, np.float64)
    sigma = sigma_b.mean(axis=0) if sigma is None else np.asarray(sigma, np.float64)
    # Unclipped: the bounds at infinity leave r = σ_B/σ and d = (µ_B − µ)/σ as they are.
    step = batch_renorm(None, mean_b, sigma_b, mu, sigma, rmax=np.inf, dmax=np.inf)
    return keras.ops.convert_to_numpy(step.r), keras.ops.convert_to_numpy(step.d)


def partner_outputs(features, microbatch_size, example=0, channel=0, partners=500, seed=0,
                    epsilon=1e-3, statistics=False):
    """One value of one example, normalized in training mode with many different partners.

    The value is `features[example]` at its central position in `channel`.
    Each draw puts the example in a microbatch with `microbatch_size` − 1
    random other examples and normalizes it by that microbatch's µ_B and σ_B
    (batch norm). Inference normalizes by µ, the features' mean, and by
    σ = E[σ_B] over random microbatches of the same size, the values the
    moving averages hold; σ therefore depends on the microbatch size.

    Args:
        features: Array of shape (examples, ..., channels), e.g. a layer's inputs.
        microbatch_size: Examples per microbatch, m >= 2, the example included.
        example: Index of the example followed.
        channel: The channel whose value is followed.
        partners: How many microbatches (draws of partners).
        seed: Seed of the draws.
        epsilon: The layer's ε, added to the variance.
        statistics: If True, also return a dict with the example's `value`,
            its own mean over the channel's positions (`example_mean`), `mu`,
            `sigma`, and each draw's `mean_b` and `sigma_b`.

    Returns:
        (training-mode outputs, one per draw; the inference-mode output), and
        the dict when `statistics` is True.
    """
    _check_group_size(microbatch_size)
    features = np.asarray(features, dtype=np.float64)[..., channel]
    centre = tuple(size // 2 for size in features.shape[1:])
    value = features[(example,) + centre]
    rng = np.random.default_rng(seed)
    others = np.delete(np.arange(len(features)), example)
    picks = np.stack([rng.choice(others, microbatch_size - 1, replace=False)
                      for _ in range(partners)])
    groups = np.concatenate([np.broadcast_to(features[example], (partners, 1) + features.shape[1:]),
                             features[picks]], axis=1)
    axes = tuple(range(1, groups.ndim))
    mean_b, sigma_b = _moments(groups, axes, epsilon)
    random_groups = features[rng.integers(0, len(features), (partners, microbatch_size))]
    sigma = _moments(random_groups, axes, epsilon)[1].mean()  # E[σ_B]
    mu = features.mean()
    outputs = ((value - mean_b) / sigma_b, (value - mu) / sigma)
    if not statistics:
        return outputs
    return outputs + ({"value": value, "example_mean": features[example].mean(), "mu": mu,
                       "sigma": sigma, "mean_b": mean_b, "sigma_b": sigma_b},)


def clip_fractions(r, d, rmax, dmax):
    """Fractions of r outside [1/rmax, rmax] and of d outside [−dmax, dmax]."""
    _, _, r_clipped, d_clipped = clip_corrections(np.asarray(r), np.asarray(d), rmax, dmax)
    return (float(np.mean(keras.ops.convert_to_numpy(r_clipped))),
            float(np.mean(keras.ops.convert_to_numpy(d_clipped))))


def clip_text(r, d, rmax, dmax):
    """The clipped fractions of r and d as the clip explorer prints them."""
    fraction_r, fraction_d = clip_fractions(r, d, rmax, dmax)
    return f"clipped: r {100 * fraction_r:.1f} %, d {100 * fraction_d:.1f} %"


def train_vs_inference(x, microbatch_size, rmax, dmax, mu=0.0, sigma=1.0, fractions=False):
    """Outputs of brlib's layer in training and in inference mode on the same x.

    Both modes use the same moving statistics µ = `mu` and σ = `sigma` (per
    channel, or one number for all): the training call corrects towards them
    with r and d, and inference normalizes by them. The defaults are the
    population's of a standard-normal x. Without clipping the two outputs
    agree whatever µ and σ are (the identity of r and d); with clipping the
    gap grows as µ and σ move away from the microbatches' statistics.

    Returns:
        (training output, inference output), and with `fractions` also the
        fractions of r and of d that were clipped in the training call.
    """
    channels = x.shape[-1]
    mu = np.broadcast_to(np.asarray(mu, dtype=np.float32), (channels,))
    sigma = np.broadcast_to(np.asarray(sigma, dtype=np.float32), (channels,))
    # Every setting spelled out: the probe's bounds hold from this one call (no warm-up),
    # and σ is the statistic assigned below.
    layer = BatchRenormalization(rmax=rmax, dmax=dmax, microbatch_size=microbatch_size,
                                 warmup_steps=None, moving_statistic="stddev")
    layer.build(x.shape)
    layer.moving_mean.assign(mu)
    layer.moving_stddev.assign(sigma)
    train = np.asarray(layer(x, training=True))
    clipped = (float(layer.fraction_r_clipped), float(layer.fraction_d_clipped))
    layer.moving_mean.assign(mu)  # the training call moved them; inference uses the same µ, σ
    layer.moving_stddev.assign(sigma)
    outputs = (train, np.asarray(layer(x, training=False)))
    return outputs + (clipped,) if fractions else outputs
