"""Interactive panels for the notebooks: pure functions that compute and draw, and builders that wire sliders to them.

The pure functions take numbers and return arrays, text or a matplotlib
figure, so they are unit-tested without a browser. The builders return
ipywidgets containers and work with ipywidgets 7.7 (Colab) and 8.
"""

import keras
import numpy as np

from brlib.layers import BatchRenormalization, batch_renorm, clip_corrections
from brlib.schedule import RenormSchedule
from brlib._metadata import DISTRIBUTION, repository
from brlib.validation import check_integer

REPOSITORY = repository()  # GitHub owner/name, from [project.urls] in pyproject.toml


def colab_url(notebook):
    """The Colab address of a notebook of this repository."""
    if REPOSITORY is None:
        raise RuntimeError(f"brlib is not installed as `{DISTRIBUTION}`, so its repository "
                           "is unknown; install it with `pip install -e .`.")
    return f"https://colab.research.google.com/github/{REPOSITORY}/blob/main/notebooks/{notebook}"


# ---------------------------------------------------------------------------
# Pure functions
# ---------------------------------------------------------------------------
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


def partners_figure(outputs, inference):
    """Histograms of an example's training-mode outputs, one row per microbatch size.

    `outputs` maps a microbatch size to the outputs of `partner_outputs`;
    `inference` is the inference-mode output, one number or a mapping from
    microbatch size to that size's value (σ = E[σ_B] depends on the size).
    Each row marks its inference-mode output (red; batch renorm with
    unclipped r and d outputs exactly that value whatever the partners, since
    its training output is (x − µ)/σ) and the mean of the histogram (black,
    dashed).
    """
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(outputs), 1, figsize=(7, 1.5 + 1.1 * len(outputs)),
                             sharex=True, squeeze=False)
    for ax, (size, values) in zip(axes[:, 0], outputs.items()):
        value = inference[size] if hasattr(inference, "keys") else inference
        ax.hist(values, bins=50, color="tab:blue", alpha=0.7)
        ax.axvline(value, color="tab:red", lw=2)
        ax.axvline(np.mean(values), color="black", lw=1, ls="--")
        ax.set_ylabel(f"m = {size}")
        ax.set_yticks([])
    axes[0, 0].set_title("training output of one example over random partners (batch norm);\n"
                         "red: inference output at this m (renorm's training output); "
                         "dashed: mean of the histogram", fontsize=9)
    axes[-1, 0].set_xlabel("normalized value")
    fig.tight_layout()
    return fig


def clip_fractions(r, d, rmax, dmax):
    """Fractions of r outside [1/rmax, rmax] and of d outside [−dmax, dmax]."""
    _, _, r_clipped, d_clipped = clip_corrections(np.asarray(r), np.asarray(d), rmax, dmax)
    return (float(np.mean(keras.ops.convert_to_numpy(r_clipped))),
            float(np.mean(keras.ops.convert_to_numpy(d_clipped))))


def clip_text(r, d, rmax, dmax):
    fraction_r, fraction_d = clip_fractions(r, d, rmax, dmax)
    return f"clipped: r {100 * fraction_r:.1f} %, d {100 * fraction_d:.1f} %"


def clip_figure(r, d, rmax, dmax, title=""):
    """Histograms of r and d with the clip bounds drawn in."""
    import matplotlib.pyplot as plt

    r, d = np.ravel(r), np.ravel(d)
    fig, (ax_r, ax_d) = plt.subplots(1, 2, figsize=(9, 3))
    ax_r.hist(r, bins=60, color="tab:blue", alpha=0.7)
    for bound in (1 / rmax, rmax):
        ax_r.axvline(bound, color="tab:red")
    ax_r.set(xlabel="r = σ_B / σ", title=f"{title}rmax = {rmax:.2f}")
    ax_d.hist(d, bins=60, color="tab:green", alpha=0.7)
    for bound in (-dmax, dmax):
        ax_d.axvline(bound, color="tab:red")
    ax_d.set(xlabel="d = (µ_B − µ) / σ", title=f"{title}dmax = {dmax:.2f}")
    fig.tight_layout()
    return fig


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
    layer = BatchRenormalization(rmax=rmax, dmax=dmax, microbatch_size=microbatch_size)
    layer.build(x.shape)
    layer.moving_mean.assign(mu)
    layer.moving_stddev.assign(sigma)
    train = np.asarray(layer(x, training=True))
    clipped = (float(layer.fraction_r_clipped), float(layer.fraction_d_clipped))
    layer.moving_mean.assign(mu)  # the training call moved them; inference uses the same µ, σ
    layer.moving_stddev.assign(sigma)
    outputs = (train, np.asarray(layer(x, training=False)))
    return outputs + (clipped,) if fractions else outputs


def train_vs_inference_figure(train, infer, rmax, dmax, mu=None, sigma=None):
    """Training-mode against inference-mode outputs, with the diagonal and the RMS gap.

    With `mu` and `sigma` (numbers), the title names the moving statistics too.
    """
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 4))
    ax.scatter(infer.ravel(), train.ravel(), s=4, alpha=0.5)
    line = np.array([infer.min(), infer.max()])
    ax.plot(line, line, color="black", lw=1)
    gap = np.sqrt(np.mean((train - infer) ** 2))
    statistics = "" if mu is None else f", µ {mu:g}, σ {sigma:g}"
    ax.set(xlabel="inference output (x − µ)/σ", ylabel="training output",
           title=f"rmax {rmax:.2f}, dmax {dmax:.2f}{statistics}: RMS gap {gap:.3f}")
    ax.title.set_fontsize(9)
    fig.tight_layout()
    return fig


def schedule_figure(warmup_steps, rmax_final, rmax_steps, dmax_final, dmax_steps, steps=None,
                    recorded=None):
    """The rmax/dmax schedule, and what it would clip of a recorded run's r and d.

    Args:
        warmup_steps, rmax_final, rmax_steps, dmax_final, dmax_steps: The
            schedule, as for `RenormSchedule`.
        steps: The last step drawn.
        recorded: Optional (steps, r, d): at each recorded step, arrays of the
            unclipped r and d of a run's microbatches against its moving
            averages. The upper panel then also draws, at each recorded step,
            the 99th percentile of max(r, 1/r) and of |d| (how wide the bounds
            must be to pass 99 % of them), and a second panel shows the share
            the schedule clips. During the warm-up (rmax = 1, dmax = 0) that
            share is 100 % by definition, for every r ≠ 1 and d ≠ 0: the
            layer is batch norm there, and the shaded span marks it.
    """
    import matplotlib.pyplot as plt

    schedule = RenormSchedule(warmup_steps, rmax_final, rmax_steps, dmax_final, dmax_steps)
    steps = np.linspace(0, steps or 1.25 * max(rmax_steps, dmax_steps, 1), 400)
    rmax, dmax = schedule(steps)
    rows = 2 if recorded is not None else 1
    fig, axes = plt.subplots(rows, 1, figsize=(6, 2.6 * rows + 0.4), sharex=True, squeeze=False)
    ax = axes[0, 0]
    ax.plot(steps, rmax, label="rmax")
    ax.plot(steps, dmax, label="dmax")
    ax.axvline(warmup_steps, color="gray", ls=":", label="end of warm-up")
    ax.set(ylabel="clip bound")
    ax.legend(fontsize=8)
    if recorded is not None:
        at, r_values, d_values = recorded
        r_spread = [np.percentile(np.maximum(r, 1 / r), 99) for r in r_values]
        d_spread = [np.percentile(np.abs(d), 99) for d in d_values]
        ax.plot(at, r_spread, color="tab:blue", ls="--", marker=".", lw=1,
                label="run: 99th percentile of max(r, 1/r)")
        ax.plot(at, d_spread, color="tab:orange", ls="--", marker=".", lw=1,
                label="run: 99th percentile of |d|")
        ax.legend(fontsize=7)
        shares = np.array([clip_fractions(r, d, *schedule(int(step)))
                           for step, r, d in zip(at, r_values, d_values)])
        clipped = axes[1, 0]
        if warmup_steps > 0:
            clipped.axvspan(0, warmup_steps, color="gray", alpha=0.15, lw=0,
                            label="warm-up: batch norm, 100 % by definition")
        clipped.plot(at, 100 * shares[:, 0], marker=".", label="r clipped")
        clipped.plot(at, 100 * shares[:, 1], marker=".", label="d clipped")
        clipped.axvline(warmup_steps, color="gray", ls=":")
        clipped.set(ylabel="% clipped", ylim=(-3, 103))
        clipped.legend(fontsize=7)
    axes[-1, 0].set_xlabel("training step")
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------------------
# Builders
# ---------------------------------------------------------------------------
def _panel(sliders, draw):
    """Sliders above an output area; `draw(**values)` returns (figure, text or None)."""
    import ipywidgets as widgets
    import matplotlib.pyplot as plt
    from IPython.display import display

    label = widgets.HTML()
    output = widgets.Output()

    def refresh(_change=None):
        fig, text = draw(**{name: slider.value for name, slider in sliders.items()})
        label.value = f"<b>{text}</b>" if text else ""
        with output:
            output.clear_output(wait=True)
            display(fig)
        plt.close(fig)

    for slider in sliders.values():
        slider.observe(refresh, names="value")
    refresh()
    return widgets.VBox([widgets.HBox(list(sliders.values())), label, output])


def _slider(description, value, low, high, step):
    import ipywidgets as widgets

    return widgets.FloatSlider(value=value, min=low, max=high, step=step,
                               description=description, continuous_update=False)


def _clip_sliders(rmax, dmax):
    return {"rmax": _slider("rmax", rmax, 1.0, 5.0, 0.05),
            "dmax": _slider("dmax", dmax, 0.0, 5.0, 0.05)}


def clip_explorer(features, microbatch_size=4, rmax=1.5, dmax=0.5,
                  microbatch_sizes=(2, 4, 8, 16, 32)):
    """Sliders for rmax and dmax, and a choice of layer and microbatch size, over r and d.

    Args:
        features: {layer name: that layer's inputs}, as from
            `brlib.diagnostics.layer_inputs`, or one array.
        microbatch_size: The microbatch size shown first.
        rmax: The rmax shown first.
        dmax: The dmax shown first.
        microbatch_sizes: The sizes to choose from.
    """
    import ipywidgets as widgets

    features = features if isinstance(features, dict) else {"features": features}
    controls = _clip_sliders(rmax, dmax)
    controls["microbatch_size"] = widgets.Dropdown(
        options=list(microbatch_sizes), value=microbatch_size, description="microbatch")
    controls["layer"] = widgets.Dropdown(options=list(features), description="layer")
    cache = {}

    def draw(rmax, dmax, microbatch_size, layer):
        if (layer, microbatch_size) not in cache:
            cache[layer, microbatch_size] = corrections_from_features(features[layer],
                                                                      microbatch_size)
        r, d = cache[layer, microbatch_size]
        title = f"{layer}, m = {microbatch_size}: "
        return clip_figure(r, d, rmax, dmax, title), clip_text(r, d, rmax, dmax)

    return _panel(controls, draw)


def partners_explorer(features, microbatch_size=2, microbatch_sizes=(2, 4, 8, 32), channel=0):
    """A choice of microbatch size over one example's training outputs with random partners."""
    import ipywidgets as widgets

    size = widgets.Dropdown(options=list(microbatch_sizes), value=microbatch_size,
                            description="microbatch")

    def draw(microbatch_size):
        values, inference = partner_outputs(features, microbatch_size, channel=channel)
        spread = np.sqrt(np.mean((values - inference) ** 2))
        return (partners_figure({microbatch_size: values}, inference),
                f"RMS distance from the inference output: {spread:.3f}; "
                f"mean of the histogram − inference output: {np.mean(values) - inference:+.3f}")

    return _panel({"microbatch_size": size}, draw)


def train_inference_explorer(microbatch_size=4, rmax=1.0, dmax=0.0, mu=0.0, sigma=1.0, seed=0):
    """Sliders for rmax, dmax, µ and σ over training-mode against inference-mode outputs.

    The data are 64 standard-normal examples of 3 channels; µ and σ are the
    moving statistics both modes use (0 and 1: the population's).
    """
    x = np.random.default_rng(seed).normal(size=(64, 3)).astype(np.float32)
    sliders = _clip_sliders(rmax, dmax)
    sliders["mu"] = _slider("µ", mu, -2.0, 2.0, 0.05)
    sliders["sigma"] = _slider("σ", sigma, 0.25, 3.0, 0.05)

    def draw(rmax, dmax, mu, sigma):
        train, infer, (fraction_r, fraction_d) = train_vs_inference(
            x, microbatch_size, rmax, dmax, mu, sigma, fractions=True)
        return (train_vs_inference_figure(train, infer, rmax, dmax, mu, sigma),
                f"r outside its bounds in {100 * fraction_r:.1f} % of the (microbatch, channel) "
                f"pairs, d in {100 * fraction_d:.1f} %")

    return _panel(sliders, draw)


def schedule_explorer(warmup_steps=5000, rmax_final=3.0, rmax_steps=40000, dmax_final=5.0,
                      dmax_steps=25000, recorded=None, max_steps=80000):
    """Sliders for the warm-up end, the ramp ends and the final values of the schedule.

    With `recorded` (see `schedule_figure`) the panel also shows the share of
    a real run's r and d that the chosen schedule clips, step by step.
    """
    import ipywidgets as widgets

    def steps_slider(description, value):
        return widgets.IntSlider(value=value, min=0, max=max_steps, step=max(max_steps // 160, 1),
                                 description=description, continuous_update=False)

    sliders = {"warmup_steps": steps_slider("warm-up", warmup_steps),
               "rmax_steps": steps_slider("rmax end", rmax_steps),
               "dmax_steps": steps_slider("dmax end", dmax_steps),
               "rmax_final": _slider("rmax", rmax_final, 1.0, 5.0, 0.1),
               "dmax_final": _slider("dmax", dmax_final, 0.0, 8.0, 0.1)}

    def draw(warmup_steps, rmax_final, rmax_steps, dmax_final, dmax_steps):
        # A ramp may not end before the warm-up does: clamp instead of failing mid-drag.
        rmax_steps, dmax_steps = max(rmax_steps, warmup_steps), max(dmax_steps, warmup_steps)
        fig = schedule_figure(warmup_steps, rmax_final, rmax_steps, dmax_final, dmax_steps,
                              steps=max_steps, recorded=recorded)
        return fig, None

    return _panel(sliders, draw)


def comparison_figure(curves, warmup_steps=None):
    """Test accuracy of `experiment.compare`'s arms: moving averages solid, recalibrated dashed.

    Each arm has its colour and marker (filled: moving averages, hollow:
    recalibrated), and the first arm is drawn wider beneath the others, so
    curves that coincide stay visible. The legend gives the final accuracies.
    With `warmup_steps`, a dotted line marks the end of renorm's warm-up.
    """
    import matplotlib.pyplot as plt

    from brlib.results import ARMS

    markers = ("o", "s", "^", "D")
    fig, ax = plt.subplots(figsize=(7, 4))
    for index, (arm, (steps, accuracy, *recalibrated)) in enumerate(curves.items()):
        style = dict(color=ARMS[arm].color, marker=markers[index % len(markers)],
                     lw=3.0 if index == 0 else 1.3, ms=8 if index == 0 else 5,
                     alpha=0.6 if index == 0 else 1.0, zorder=2 + index)
        ax.plot(steps, 100 * accuracy, ls="-", **style,
                label=f"{ARMS[arm].label}, moving averages ({100 * accuracy[-1]:.1f}%)")
        if recalibrated:
            ax.plot(steps, 100 * recalibrated[0], ls="--", mfc="white", **style,
                    label=f"{ARMS[arm].label}, recalibrated ({100 * recalibrated[0][-1]:.1f}%)")
    if warmup_steps:
        ax.axvline(warmup_steps, color="gray", ls=":", lw=1, label="end of renorm's warm-up")
    ax.set(xlabel="training step", ylabel="test accuracy (%)",
           title="one seed, no interval; solid: moving averages, dashed: recalibrated")
    ax.title.set_fontsize(9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def experiment_form(dataset, steps=1200, warmup_steps=300, microbatch_size=2, rmax=3.0,
                    dmax=5.0, minibatch_size=64):
    """Microbatch size, rmax, dmax, warm-up and steps, with a Run button that trains both arms.

    The Run button calls `experiment.compare` with the form's values: the
    renorm arm is batch norm during the warm-up, its bounds open by half the
    run, and the learning rate is annealed to 1 % by three quarters of it.
    The arguments are the form's first values; `minibatch_size` has no
    control. The returned box has `.run_button`, so a notebook can also
    press it from code.
    """
    import ipywidgets as widgets
    import matplotlib.pyplot as plt
    from IPython.display import display

    from brlib import experiment

    longest = max(2400, steps, warmup_steps)
    microbatch = widgets.Dropdown(options=sorted({2, 4, 8, 16, 32, microbatch_size}),
                                  value=microbatch_size, description="microbatch")
    rmax_slider = _slider("rmax", rmax, 1.0, 5.0, 0.1)
    dmax_slider = _slider("dmax", dmax, 0.0, 8.0, 0.1)
    warmup = widgets.IntSlider(value=warmup_steps, min=0, max=longest, step=50,
                               description="warm-up", continuous_update=False)
    step_count = widgets.IntSlider(value=steps, min=min(100, steps), max=longest, step=100,
                                   description="steps", continuous_update=False)
    button = widgets.Button(description="Run", button_style="primary")
    output = widgets.Output()

    def run(_button=None):
        with output:
            output.clear_output(wait=True)
            print(f"training batch norm and batch renorm for {step_count.value} steps each, "
                  f"on minibatches of {minibatch_size} …")
            curves = experiment.compare(dataset, microbatch_size=microbatch.value,
                                        rmax=rmax_slider.value, dmax=dmax_slider.value,
                                        steps=step_count.value, warmup_steps=warmup.value,
                                        minibatch_size=minibatch_size)
            output.clear_output(wait=True)
            fig = comparison_figure(curves, warmup_steps=warmup.value)
            display(fig)
            plt.close(fig)

    button.on_click(run)
    box = widgets.VBox([widgets.HBox([microbatch, rmax_slider, dmax_slider]),
                        widgets.HBox([warmup, step_count, button]), output])
    box.run_button = button
    return box
