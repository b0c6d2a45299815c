"""brlib.widgets: the pure functions against direct computations, and the builders' wiring."""

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

import brlib as br  # noqa: E402
from brlib import widgets  # noqa: E402


def features(seed=0):
    """Conv-like features: 300 examples, 3×3 positions, 2 channels of different scale."""
    rng = np.random.default_rng(seed)
    return rng.normal([1.0, -2.0], [0.5, 3.0], size=(300, 3, 3, 2))


def test_corrections_match_a_loop_over_microbatches():
    values = features()
    r, d = widgets.corrections_from_features(values, 4, microbatches=50, seed=1)
    picks = np.random.default_rng(1).integers(0, len(values), (50, 4))
    sigma_b = np.array([[np.sqrt(values[rows][..., c].var() + 1e-3) for c in range(2)]
                        for rows in picks])
    mean_b = np.array([[values[rows][..., c].mean() for c in range(2)] for rows in picks])
    sigma = sigma_b.mean(axis=0)  # σ = E[σ_B], what the moving averages converge to
    np.testing.assert_allclose(r, sigma_b / sigma)
    np.testing.assert_allclose(d, (mean_b - values.mean(axis=(0, 1, 2))) / sigma)
    np.testing.assert_allclose(r.mean(axis=0), 1.0)  # E[r] = 1 by construction


def test_smaller_microbatches_spread_r_and_d_wider():
    spreads = [np.std(widgets.corrections_from_features(features(), m)[0]) for m in (32, 8, 2)]
    assert spreads[0] < spreads[1] < spreads[2]
    with pytest.raises(ValueError, match="microbatch_size"):
        widgets.corrections_from_features(features(), 1)


def test_clip_fractions_count_values_outside_the_bounds():
    r = np.array([0.4, 0.6, 1.0, 1.4, 1.6, 2.5])
    d = np.array([-0.9, -0.2, 0.0, 0.3, 0.6, 2.0])
    expected_r = sum(1 for v in r if v < 1 / 1.5 or v > 1.5) / len(r)
    expected_d = sum(1 for v in d if abs(v) > 0.5) / len(d)
    assert widgets.clip_fractions(r, d, 1.5, 0.5) == (expected_r, expected_d)
    assert widgets.clip_text(r, d, 1.5, 0.5) == "clipped: r 66.7 %, d 50.0 %"


def test_wider_bounds_clip_less():
    r, d = widgets.corrections_from_features(features(), 2)
    fractions = [widgets.clip_fractions(r, d, rmax, rmax - 1) for rmax in (1.0, 1.05, 1.2, 1.5)]
    assert fractions[0] == (1.0, 1.0)
    shares_of_r = [fraction_r for fraction_r, _ in fractions]
    assert all(wide < narrow for narrow, wide in zip(shares_of_r, shares_of_r[1:]))


def test_train_and_inference_agree_only_without_clipping():
    x = np.random.default_rng(0).normal(size=(32, 3)).astype(np.float32)
    train, infer = widgets.train_vs_inference(x, 4, rmax=1e6, dmax=1e6)
    np.testing.assert_allclose(train, infer, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(infer, x, rtol=1e-5, atol=1e-5)  # µ = 0, σ = 1
    train, infer = widgets.train_vs_inference(x, 4, rmax=1.0, dmax=0.0)
    assert np.sqrt(np.mean((train - infer) ** 2)) > 0.1


def test_schedule_figure_draws_the_schedule():
    fig = widgets.schedule_figure(10, 3.0, 50, 5.0, 30, steps=100)
    rmax_line, dmax_line = fig.axes[0].get_lines()[:2]
    expected = br.RenormSchedule(10, 3.0, 50, 5.0, 30)(rmax_line.get_xdata())
    np.testing.assert_allclose(rmax_line.get_ydata(), expected[0])
    np.testing.assert_allclose(dmax_line.get_ydata(), expected[1])


def test_schedule_figure_clips_a_recorded_run_with_the_schedule_of_each_step():
    rng = np.random.default_rng(0)
    at = [0, 20, 40, 60]
    r_values = [rng.lognormal(0, 0.5, 100) for _ in at]
    d_values = [rng.normal(0, 1.0, 100) for _ in at]
    fig = widgets.schedule_figure(10, 3.0, 50, 5.0, 30, steps=100, recorded=(at, r_values, d_values))
    r_line, d_line = fig.axes[1].get_lines()[:2]
    schedule = br.RenormSchedule(10, 3.0, 50, 5.0, 30)
    for index, step in enumerate(at):
        rmax, dmax = schedule(step)
        r, d = r_values[index], d_values[index]
        assert r_line.get_ydata()[index] == pytest.approx(100 * np.mean((r < 1 / rmax) | (r > rmax)))
        assert d_line.get_ydata()[index] == pytest.approx(100 * np.mean(np.abs(d) > dmax))
    assert r_line.get_ydata()[0] == 100  # rmax = 1 in the warm-up: every r is clipped


def test_corrections_can_be_taken_against_given_moving_averages():
    values = features()
    r, d = widgets.corrections_from_features(values, 4, microbatches=20, mu=[0.0, 0.0],
                                             sigma=[2.0, 4.0])
    picks = np.random.default_rng(0).integers(0, len(values), (20, 4))
    sigma_b = np.array([[np.sqrt(values[rows][..., c].var() + 1e-3) for c in range(2)]
                        for rows in picks])
    mean_b = np.array([[values[rows][..., c].mean() for c in range(2)] for rows in picks])
    np.testing.assert_allclose(r, sigma_b / [2.0, 4.0])
    np.testing.assert_allclose(d, mean_b / [2.0, 4.0])


def test_clip_explorer_updates_its_text_when_a_slider_moves():
    pytest.importorskip("ipywidgets")
    panel = widgets.clip_explorer({"a": features(0), "b": features(1)}, microbatch_size=2,
                                  rmax=1.1, dmax=0.2)
    rmax, dmax, microbatch, layer = panel.children[0].children
    label = panel.children[1]
    before = label.value
    rmax.value = 3.0
    assert label.value != before and "clipped" in label.value
    r, d = widgets.corrections_from_features(features(0), 2)
    assert widgets.clip_text(r, d, 3.0, 0.2) in label.value
    microbatch.value, layer.value = 8, "b"
    r, d = widgets.corrections_from_features(features(1), 8)
    assert widgets.clip_text(r, d, 3.0, 0.2) in label.value


def test_other_explorers_build():
    pytest.importorskip("ipywidgets")
    assert len(widgets.train_inference_explorer().children[0].children) == 4
    schedule = widgets.schedule_explorer()
    sliders = schedule.children[0].children
    sliders[0].value = 60000  # warm-up past the ramp ends: clamped, not an error
    assert len(sliders) == 5


def test_colab_url():
    assert widgets.colab_url("02_renorm_derivation.ipynb").endswith(
        "/blob/main/notebooks/02_renorm_derivation.ipynb")


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


def test_comparison_figure_draws_both_accuracies_of_each_arm():
    import matplotlib

    matplotlib.use("Agg")
    steps = np.array([5, 10])
    curves = {"batchnorm": (steps, np.array([0.2, 0.4]), np.array([0.5, 0.6])),
              "batchrenorm": (steps, np.array([0.3, 0.7]), np.array([0.6, 0.7]))}
    fig = widgets.comparison_figure(curves)
    lines = fig.axes[0].get_lines()
    np.testing.assert_allclose([line.get_ydata() for line in lines],
                               [[20, 40], [50, 60], [30, 70], [60, 70]])
    assert [line.get_linestyle() for line in lines] == ["-", "--", "-", "--"]
    assert "recalibrated (60.0%)" in fig.axes[0].get_legend().get_texts()[1].get_text()


def test_partner_outputs_normalize_the_example_with_each_microbatch():
    values = features()
    train, inference = widgets.partner_outputs(values, 4, example=5, channel=1, partners=30,
                                               seed=2)
    rng = np.random.default_rng(2)
    others = np.delete(np.arange(len(values)), 5)
    expected = []
    for _ in range(30):  # the same draws, written as a loop
        group = np.concatenate([values[[5]], values[rng.choice(others, 3, replace=False)]])
        channel = group[..., 1]
        expected.append((values[5, 1, 1, 1] - channel.mean()) / np.sqrt(channel.var() + 1e-3))
    np.testing.assert_allclose(train, expected)
    random_groups = values[rng.integers(0, len(values), (30, 4))][..., 1]
    sigma = np.sqrt(random_groups.var(axis=(1, 2, 3)) + 1e-3).mean()
    assert inference == pytest.approx((values[5, 1, 1, 1] - values[..., 1].mean()) / sigma)


def test_partners_spread_less_in_larger_microbatches():
    spreads = [np.std(widgets.partner_outputs(features(), m)[0]) for m in (2, 8, 32)]
    assert spreads[0] > spreads[1] > spreads[2]
    pytest.importorskip("ipywidgets")
    panel = widgets.partners_explorer(features(), microbatch_size=2)
    label = panel.children[1]
    before = label.value
    panel.children[0].children[0].value = 32
    assert label.value != before and "RMS distance" in label.value


def test_comparison_figure_keeps_coinciding_curves_visible_and_marks_the_warmup():
    steps = np.array([5, 10])
    same = (steps, np.array([0.2, 0.4]), np.array([0.5, 0.6]))
    fig = widgets.comparison_figure({"batchnorm": same, "batchrenorm": same}, warmup_steps=6)
    lines = fig.axes[0].get_lines()
    first, second = lines[0], lines[2]  # the moving-average curves of the two arms
    assert first.get_linewidth() > second.get_linewidth()  # the first arm shows around the second
    assert first.get_marker() != second.get_marker()
    assert lines[1].get_markerfacecolor() == "white"  # recalibrated: hollow markers
    assert lines[-1].get_xdata()[0] == 6 and lines[-1].get_linestyle() == ":"
    title = fig.axes[0].get_title()
    assert "solid: moving averages" in title and "dashed: recalibrated" in title


def test_experiment_form_starts_from_its_arguments():
    pytest.importorskip("ipywidgets")
    form = widgets.experiment_form("data", steps=300, warmup_steps=75, microbatch_size=4,
                                   rmax=2.0, dmax=1.0)
    microbatch, rmax, dmax = form.children[0].children
    warmup, steps, _ = form.children[1].children
    assert (microbatch.value, rmax.value, dmax.value, warmup.value, steps.value) == (
        4, 2.0, 1.0, 75, 300)


def test_partner_statistics_are_those_of_each_draw():
    values = features()
    train, inference, stats = widgets.partner_outputs(values, 4, example=5, channel=1, partners=30,
                                                      seed=2, statistics=True)
    rng = np.random.default_rng(2)
    others = np.delete(np.arange(len(values)), 5)
    means, sigmas = [], []
    for _ in range(30):  # the same draws, written as a loop
        channel = np.concatenate([values[[5]], values[rng.choice(others, 3, replace=False)]])[..., 1]
        means.append(channel.mean())
        sigmas.append(np.sqrt(channel.var() + 1e-3))
    np.testing.assert_allclose(stats["mean_b"], means)
    np.testing.assert_allclose(stats["sigma_b"], sigmas)
    random_groups = values[rng.integers(0, len(values), (30, 4))][..., 1]
    assert stats["sigma"] == pytest.approx(np.sqrt(random_groups.var(axis=(1, 2, 3)) + 1e-3).mean())
    assert stats["mu"] == pytest.approx(values[..., 1].mean())
    assert stats["value"] == values[5, 1, 1, 1]
    assert stats["example_mean"] == pytest.approx(values[5, ..., 1].mean())
    np.testing.assert_allclose(train, (stats["value"] - np.array(means)) / np.array(sigmas))
    assert inference == pytest.approx((stats["value"] - stats["mu"]) / stats["sigma"])


def test_partners_figure_marks_each_sizes_own_inference_output_and_mean():
    rng = np.random.default_rng(0)
    outputs = {2: rng.normal(0.3, 0.4, 200), 32: rng.normal(0.1, 0.1, 200)}
    fig = widgets.partners_figure(outputs, {2: 0.5, 32: 0.2})
    for ax, size, inference in zip(fig.axes, (2, 32), (0.5, 0.2)):
        red, mean = ax.get_lines()
        assert list(red.get_xdata()) == [inference, inference]
        assert mean.get_xdata()[0] == pytest.approx(np.mean(outputs[size]))
        assert mean.get_linestyle() == "--"
    fig = widgets.partners_figure(outputs, 0.4)  # one value for every row
    assert [ax.get_lines()[0].get_xdata()[0] for ax in fig.axes] == [0.4, 0.4]


def renorm_reference(x, m, rmax, dmax, mu, sigma, epsilon=1e-3):
    """Algorithm 1 in NumPy over contiguous microbatches (γ = 1, β = 0), and inference."""
    groups = x.astype(np.float64).reshape(-1, m, x.shape[-1])
    mean_b = groups.mean(axis=1, keepdims=True)
    sigma_b = np.sqrt(groups.var(axis=1, keepdims=True) + epsilon)
    r, d = sigma_b / sigma, (mean_b - mu) / sigma
    fractions = (np.mean((r < 1 / rmax) | (r > rmax)), np.mean(np.abs(d) > dmax))
    train = (groups - mean_b) / sigma_b * np.clip(r, 1 / rmax, rmax) + np.clip(d, -dmax, dmax)
    return train.reshape(x.shape), (x - mu) / sigma, fractions


def test_train_vs_inference_with_given_moving_statistics_matches_numpy():
    x = np.random.default_rng(0).normal(size=(32, 3)).astype(np.float32)
    gaps = {}
    for rmax, dmax in ((1.0, 0.0), (1.5, 0.5), (1e6, 1e6)):
        train, infer, fractions = widgets.train_vs_inference(x, 4, rmax, dmax, mu=0.5, sigma=1.5,
                                                             fractions=True)
        expected_train, expected_infer, expected_fractions = renorm_reference(x, 4, rmax, dmax, 0.5, 1.5)
        np.testing.assert_allclose(train, expected_train, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(infer, expected_infer, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(fractions, expected_fractions, atol=1e-6)
        gaps[rmax] = np.sqrt(np.mean((train - infer) ** 2))
    assert gaps[1e6] < 1e-4 < gaps[1.5] < gaps[1.0]  # partial clipping: between renorm and batch norm
    sigma = np.array([1.0, 2.0, 0.5])  # one σ per channel
    train, infer = widgets.train_vs_inference(x, 4, 1.2, 0.3, mu=[0.0, 1.0, -1.0], sigma=sigma)
    expected_train, expected_infer, _ = renorm_reference(x, 4, 1.2, 0.3, np.array([0.0, 1.0, -1.0]), sigma)
    np.testing.assert_allclose(train, expected_train, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(infer, expected_infer, rtol=1e-5, atol=1e-5)


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


def test_schedule_figure_draws_how_wide_the_recorded_corrections_are():
    rng = np.random.default_rng(1)
    at = [0, 20, 40]
    r_values = [rng.lognormal(0, 0.5, 200) for _ in at]
    d_values = [rng.normal(0, 1.0, 200) for _ in at]
    fig = widgets.schedule_figure(10, 3.0, 50, 5.0, 30, steps=100, recorded=(at, r_values, d_values))
    lines = fig.axes[0].get_lines()
    r_spread, d_spread = lines[3], lines[4]  # after rmax, dmax and the end of the warm-up

    def percentile_99(values):  # linear interpolation between the sorted values around rank 0.99·(n − 1)
        ordered = np.sort(values)
        rank = 0.99 * (len(ordered) - 1)
        low = int(rank)
        return ordered[low] + (rank - low) * (ordered[low + 1] - ordered[low])

    for index in range(len(at)):
        r, d = r_values[index], d_values[index]
        assert r_spread.get_ydata()[index] == pytest.approx(percentile_99(np.maximum(r, 1 / r)))
        assert d_spread.get_ydata()[index] == pytest.approx(percentile_99(np.abs(d)))
    assert len(fig.axes[1].patches) == 1  # the shaded warm-up
    assert not widgets.schedule_figure(0, 3.0, 50, 5.0, 30, steps=100,
                                       recorded=(at, r_values, d_values)).axes[1].patches


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
