"""Interactive panels for the notebooks: builders that wire ipywidgets sliders to brlib's
pure functions.

What a panel computes is `brlib.diagnostics`' (r, d, partners, clipping) and
what it draws is `brlib.plots`'; both are unit-tested without a browser, and
each panel's static twin in the notebooks calls the same two. The builders
return ipywidgets containers and work with ipywidgets 7.7 (Colab) and 8.
The explorers redraw in the kernel; the galleries (`gallery`, `clip_gallery`,
`schedule_gallery`, `step_gallery`) draw a few panels up front and switch between them in
the browser, so they also move on a static page of the notebook.
ipywidgets, IPython and matplotlib are imported when a panel is built.
"""

import numpy as np

from brlib import diagnostics, plots


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


def _png(fig):
    """A figure's PNG bytes, and the figure closed."""
    import io

    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


def gallery(values, draw, description, value=None, format_value="{:g}".format):
    """One slider over a few precomputed panels: it moves without a kernel.

    Every panel is drawn when the gallery is built. The slider's position and
    the shown panel are linked in the browser (`jslink`), so the link survives
    in a notebook's saved widget state: a static page of the notebook (the
    book, nbviewer) still switches panels when the slider moves. A Stack holds
    the panels on ipywidgets 8; 7.7 has none, and there a Tab does.

    Args:
        values: The slider's positions, in order.
        draw: `draw(value)` returns (figure, text or None) for one position.
        description: The slider's label.
        value: The position shown first (default: the first of `values`).
        format_value: How the slider writes a position.

    Returns:
        A VBox of the slider and the panels, with `.slider`, `.panels` and
        `.link` (the browser-side link between them).
    """
    import ipywidgets as widgets

    values = list(values)
    if not values:
        raise ValueError("`values` must hold at least one position; got none.")
    if value is not None and value not in values:
        raise ValueError(f"`value` must be one of `values` {values}; got value={value!r}.")
    pages = []
    for position in values:
        fig, text = draw(position)
        image = widgets.Image(value=_png(fig), format="png",
                              layout=widgets.Layout(max_width="100%", height="auto"))
        pages.append(widgets.VBox(([widgets.HTML(f"<b>{text}</b>")] if text else []) + [image]))
    slider = widgets.SelectionSlider(options=[(format_value(v), v) for v in values],
                                     value=values[0] if value is None else value,
                                     description=description, continuous_update=True)
    stack_type = getattr(widgets, "Stack", None) or widgets.Tab
    panels = stack_type(children=pages, selected_index=slider.index)
    link = widgets.jslink((slider, "index"), (panels, "selected_index"))
    box = widgets.VBox([slider, panels])
    box.slider, box.panels, box.link = slider, panels, link
    return box


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
            cache[layer, microbatch_size] = diagnostics.corrections_from_features(features[layer],
                                                                      microbatch_size)
        r, d = cache[layer, microbatch_size]
        title = f"{layer}, m = {microbatch_size}: "
        return plots.clip_figure(r, d, rmax, dmax, title), diagnostics.clip_text(r, d, rmax, dmax)

    return _panel(controls, draw)


def clip_gallery(features, rmax_values=(1.0, 1.25, 1.5, 2.0, 3.0, 5.0), dmax=0.5,
                 microbatch_size=4, layer=None, value=None):
    """The clip explorer at a few values of rmax, precomputed: it moves without a kernel.

    Args:
        features: {layer name: that layer's inputs}, or one array.
        rmax_values: The slider's rmax positions.
        dmax: The fixed dmax.
        microbatch_size: The fixed microbatch size.
        layer: The layer shown (default: the first).
        value: The rmax shown first (default: the first of `rmax_values`).
    """
    features = features if isinstance(features, dict) else {"features": features}
    layer = next(iter(features)) if layer is None else layer
    if layer not in features:
        raise ValueError(f"`layer` must be one of {list(features)}; got layer={layer!r}.")
    r, d = diagnostics.corrections_from_features(features[layer], microbatch_size)
    title = f"{layer}, m = {microbatch_size}: "

    def draw(rmax):
        return plots.clip_figure(r, d, rmax, dmax, title), diagnostics.clip_text(r, d, rmax, dmax)

    return gallery(rmax_values, draw, "rmax", value)


def partners_explorer(features, microbatch_size=2, microbatch_sizes=(2, 4, 8, 32), channel=0):
    """A choice of microbatch size over one example's training outputs with random partners."""
    import ipywidgets as widgets

    size = widgets.Dropdown(options=list(microbatch_sizes), value=microbatch_size,
                            description="microbatch")

    def draw(microbatch_size):
        values, inference = diagnostics.partner_outputs(features, microbatch_size, channel=channel)
        spread = np.sqrt(np.mean((values - inference) ** 2))
        return (plots.partners_figure({microbatch_size: values}, inference),
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
        train, infer, (fraction_r, fraction_d) = diagnostics.train_vs_inference(
            x, microbatch_size, rmax, dmax, mu, sigma, fractions=True)
        return (plots.train_vs_inference_figure(train, infer, rmax, dmax, mu, sigma),
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
        fig = plots.schedule_figure(warmup_steps, rmax_final, rmax_steps, dmax_final, dmax_steps,
                              steps=max_steps, recorded=recorded)
        return fig, None

    return _panel(sliders, draw)


def schedule_gallery(warmup_values, rmax_final=3.0, rmax_steps=40000, dmax_final=5.0,
                     dmax_steps=25000, recorded=None, max_steps=80000, value=None):
    """The schedule at a few warm-up lengths, precomputed: it moves without a kernel.

    Ramps that would end before the warm-up end with it, as in `schedule_explorer`.
    """
    def draw(warmup_steps):
        fig = plots.schedule_figure(warmup_steps, rmax_final, max(rmax_steps, warmup_steps),
                                    dmax_final, max(dmax_steps, warmup_steps), steps=max_steps,
                                    recorded=recorded)
        return fig, None

    return gallery(warmup_values, draw, "warm-up", value, format_value="{:d}".format)


def step_gallery(results, steps=None, value=None):
    """A preset's runs evaluation by evaluation, precomputed: it moves without a kernel.

    Each position draws `plots.step_snapshot_figure`: every arm's test
    accuracy with moving averages, recalibrated and with minibatch statistics,
    and the lag and mismatch they imply.

    Args:
        results: A `brlib.results.Results`.
        steps: The slider's evaluated steps (default: every evaluation).
        value: The step shown first (default: the first of `steps`).
    """
    evaluated = list(next(iter(results.values())).steps)
    steps = evaluated if steps is None else list(steps)
    missing = [step for step in steps if step not in evaluated]
    if missing:
        raise ValueError(f"`steps` must be evaluated steps {evaluated}; got {missing}.")
    return gallery(steps, lambda step: plots.step_snapshot_figure(results, step), "step", value,
                   format_value="{:d}".format)


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
            fig = plots.comparison_figure(curves, warmup_steps=warmup.value)
            display(fig)
            plt.close(fig)

    button.on_click(run)
    box = widgets.VBox([widgets.HBox([microbatch, rmax_slider, dmax_slider]),
                        widgets.HBox([warmup, step_count, button]), output])
    box.run_button = button
    return box
