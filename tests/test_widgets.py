"""brlib.widgets: the builders' wiring, against the diagnostics and figures they show."""

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from test_diagnostics import features, renorm_reference  # noqa: E402

from brlib import diagnostics, plots, widgets  # noqa: E402


def test_clip_explorer_updates_its_text_when_a_slider_moves():
    pytest.importorskip("ipywidgets")
    panel = widgets.clip_explorer({"a": features(0), "b": features(1)}, microbatch_size=2,
                                  rmax=1.1, dmax=0.2)
    rmax, dmax, microbatch, layer = panel.children[0].children
    label = panel.children[1]
    before = label.value
    rmax.value = 3.0
    assert label.value != before and "clipped" in label.value
    r, d = diagnostics.corrections_from_features(features(0), 2)
    assert diagnostics.clip_text(r, d, 3.0, 0.2) in label.value
    microbatch.value, layer.value = 8, "b"
    r, d = diagnostics.corrections_from_features(features(1), 8)
    assert diagnostics.clip_text(r, d, 3.0, 0.2) in label.value


def test_other_explorers_build():
    pytest.importorskip("ipywidgets")
    assert len(widgets.train_inference_explorer().children[0].children) == 4
    schedule = widgets.schedule_explorer()
    sliders = schedule.children[0].children
    sliders[0].value = 60000  # warm-up past the ramp ends: clamped, not an error
    assert len(sliders) == 5


def test_experiment_form_runs_compare_with_the_form_values(monkeypatch):
    pytest.importorskip("ipywidgets")
    from brlib import experiment

    calls = []

    def fake_compare(dataset, **settings):
        calls.append((dataset, settings))
        return {"batchnorm": (np.array([1, 2]), np.array([0.1, 0.2])),
                "batchrenorm": (np.array([1, 2]), np.array([0.1, 0.3]))}

    monkeypatch.setattr(experiment, "compare", fake_compare)
    form = widgets.experiment_form("data", steps=100, warmup_steps=50)
    microbatch, rmax, dmax = form.children[0].children
    warmup, steps, _ = form.children[1].children
    microbatch.value, rmax.value, dmax.value, warmup.value = 4, 2.0, 1.5, 0
    form.run_button.click()
    assert calls == [("data", dict(microbatch_size=4, rmax=2.0, dmax=1.5, steps=100,
                                   warmup_steps=0, minibatch_size=64))]


def test_partners_explorer_redraws_for_another_microbatch_size():
    pytest.importorskip("ipywidgets")
    panel = widgets.partners_explorer(features(), microbatch_size=2)
    label = panel.children[1]
    before = label.value
    panel.children[0].children[0].value = 32
    assert label.value != before and "RMS distance" in label.value


def test_experiment_form_starts_from_its_arguments():
    pytest.importorskip("ipywidgets")
    form = widgets.experiment_form("data", steps=300, warmup_steps=75, microbatch_size=4,
                                   rmax=2.0, dmax=1.0)
    microbatch, rmax, dmax = form.children[0].children
    warmup, steps, _ = form.children[1].children
    assert (microbatch.value, rmax.value, dmax.value, warmup.value, steps.value) == (
        4, 2.0, 1.0, 75, 300)


def test_train_inference_explorer_reports_the_clipped_shares_of_its_settings():
    pytest.importorskip("ipywidgets")
    panel = widgets.train_inference_explorer(microbatch_size=4, rmax=1.5, dmax=0.5)
    rmax, dmax, mu, sigma = panel.children[0].children
    label = panel.children[1]
    mu.value, sigma.value = 0.5, 1.5
    x = np.random.default_rng(0).normal(size=(64, 3)).astype(np.float32)
    _, _, (fraction_r, fraction_d) = renorm_reference(x, 4, 1.5, 0.5, 0.5, 1.5)
    assert f"{100 * fraction_r:.1f} %" in label.value and f"d in {100 * fraction_d:.1f} %" in label.value
    assert "clipped:" not in label.value  # the browser test finds the clip explorer by that text


def test_partners_explorer_reports_the_offset_of_the_histogram():
    pytest.importorskip("ipywidgets")
    values = features()
    panel = widgets.partners_explorer(values, microbatch_size=4)
    rng = np.random.default_rng(0)
    others = np.arange(1, len(values))
    outputs = []
    for _ in range(500):  # partner_outputs' draws for example 0, channel 0, written as a loop
        channel = np.concatenate([values[[0]], values[rng.choice(others, 3, replace=False)]])[..., 0]
        outputs.append((values[0, 1, 1, 0] - channel.mean()) / np.sqrt(channel.var() + 1e-3))
    random_groups = values[rng.integers(0, len(values), (500, 4))][..., 0]
    sigma = np.sqrt(random_groups.var(axis=(1, 2, 3)) + 1e-3).mean()
    inference = (values[0, 1, 1, 0] - values[..., 0].mean()) / sigma
    assert f"inference output: {np.mean(outputs) - inference:+.3f}" in panel.children[1].value


def test_gallery_links_its_slider_to_precomputed_panels_in_the_browser():
    pytest.importorskip("ipywidgets")
    import matplotlib.pyplot as plt

    drawn = []

    def draw(value):
        drawn.append(value)
        fig, ax = plt.subplots()
        ax.plot([0, value])
        return fig, f"value {value}"

    open_before = plt.get_fignums()
    box = widgets.gallery([1.0, 2.0, 4.0], draw, "x", value=2.0)
    assert drawn == [1.0, 2.0, 4.0] and plt.get_fignums() == open_before  # each drawn once, closed
    assert box.slider.index == 1 and box.panels.selected_index == 1
    pages = box.panels.children
    assert [page.children[0].value for page in pages] == ["<b>value 1.0</b>", "<b>value 2.0</b>",
                                                          "<b>value 4.0</b>"]
    assert [label for label, _ in box.slider.options] == ["1", "2", "4"]
    assert all(bytes(page.children[1].value).startswith(b"\x89PNG") for page in pages)
    # The link is a widget of its own (saved with the notebook), from the slider's index to
    # the panels' selected index: the browser, not the kernel, switches the panel.
    from ipywidgets.widgets.widget_link import Link

    assert isinstance(box.link, Link)
    assert box.link.source == (box.slider, "index")
    assert box.link.target == (box.panels, "selected_index")
    with pytest.raises(ValueError, match="`value` must be one of"):
        widgets.gallery([1.0], draw, "x", value=3.0)
    with pytest.raises(ValueError, match="`values` must hold"):
        widgets.gallery([], draw, "x")


def test_clip_gallery_shows_the_clip_explorers_text_at_each_rmax():
    pytest.importorskip("ipywidgets")
    box = widgets.clip_gallery({"a": features(0)}, rmax_values=(1.5, 3.0), dmax=0.2,
                               microbatch_size=2)
    r, d = diagnostics.corrections_from_features(features(0), 2)
    texts = [page.children[0].value for page in box.panels.children]
    assert texts == [f"<b>{diagnostics.clip_text(r, d, rmax, 0.2)}</b>" for rmax in (1.5, 3.0)]
    with pytest.raises(ValueError, match="`layer` must be one of"):
        widgets.clip_gallery({"a": features(0)}, layer="b")


def test_schedule_gallery_has_one_panel_per_warmup():
    pytest.importorskip("ipywidgets")
    box = widgets.schedule_gallery([0, 5000, 60000], value=5000)
    assert len(box.panels.children) == 3 and box.slider.value == 5000


def test_step_gallery_has_one_snapshot_per_evaluation(tmp_path):
    pytest.importorskip("ipywidgets")
    from test_results import write_runs

    from brlib import results

    write_runs(tmp_path, "batchnorm", [[0.2, 0.5, 0.7]], [[0.6, 0.6, 0.7]])
    loaded = results.load_results(tmp_path, "quick")
    box = widgets.step_gallery(loaded, value=20)
    assert box.slider.options == (("10", 10), ("20", 20), ("30", 30)) and box.slider.value == 20
    assert [page.children[0].value for page in box.panels.children] == [
        f"<b>{plots.step_snapshot_figure(loaded, step)[1]}</b>" for step in (10, 20, 30)]
    with pytest.raises(ValueError, match="`steps` must be evaluated steps"):
        widgets.step_gallery(loaded, steps=[10, 15])
