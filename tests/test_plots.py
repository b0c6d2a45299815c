"""brlib.plots: the Figure 2 drawing against values computed here, and the figure helper."""

import matplotlib

matplotlib.use("Agg")

import dataclasses  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from scipy import stats  # noqa: E402
from test_results import write_runs  # noqa: E402

import brlib as br  # noqa: E402
from brlib import plots, results  # noqa: E402


def test_figure2_draws_means_with_95_percent_bands_and_final_values(tmp_path):
    accuracies = np.array([[0.3, 0.8, 0.82], [0.4, 0.9, 0.88], [0.35, 0.85, 0.86]])
    minibatch = accuracies - np.array([[0.02], [0.05], [0.03]])
    write_runs(tmp_path, "batchrenorm", accuracies, recalibrated=accuracies - 0.1,
               pairs=(accuracies, minibatch), last=2)
    fig = plots.figure2(results.load_results(tmp_path, "quick"), "test")
    moving, recalibrated, mismatch, loss = fig.axes[:4]
    final = 100 * accuracies[:, -2:].mean(1)
    label = moving.get_legend().get_texts()[0].get_text()
    assert label == f"Batch Renorm ({final.mean():.1f}% ± {final.std(ddof=1):.1f}, 3 seeds)"
    assert "95 % CI" in moving.get_legend().get_title().get_text()
    np.testing.assert_allclose(moving.get_lines()[0].get_ydata(), 100 * accuracies.mean(0))
    np.testing.assert_allclose(recalibrated.get_lines()[0].get_ydata(),
                               100 * (accuracies - 0.1).mean(0))
    # The loss panel: the training-mode loss dashed (these runs predate the inference one).
    np.testing.assert_allclose(loss.get_lines()[0].get_ydata(), (2 - accuracies).mean(0))
    assert loss.get_lines()[0].get_linestyle() == "--"
    # The mismatch panel: inference − minibatch statistics per evaluation, and in the legend
    # the final value with its paired t-interval.
    np.testing.assert_allclose(mismatch.get_lines()[0].get_ydata(),
                               100 * (accuracies - minibatch).mean(0))
    gaps = np.array([2.0, 5.0, 3.0])
    low, high = stats.t.interval(0.95, 2, loc=gaps.mean(), scale=stats.sem(gaps))
    assert mismatch.get_legend().get_texts()[0].get_text() == (
        f"Batch Renorm ({gaps.mean():+.1f} [{low:+.1f}, {high:+.1f}])")
    band = moving.collections[0].get_paths()[0].vertices
    half = stats.t.ppf(0.975, 2) * stats.sem(100 * accuracies, axis=0)
    upper = 100 * accuracies.mean(0) + half
    assert np.isclose(band[:, 1].max(), upper.max())


def test_figure2_draws_the_inference_loss_solid_beside_the_training_mode_loss(tmp_path):
    accuracies = np.array([[0.3, 0.8], [0.4, 0.9]])
    write_runs(tmp_path, "batchnorm", accuracies)
    for seed, values in enumerate(accuracies):  # add the inference-network loss to each CSV
        path = tmp_path / "quick" / f"batchnorm_seed{seed}.csv"
        rows = results.read_csv(path)
        for row, value in zip(rows, values):
            row["train_loss_inference"] = 1.0 - value
        path.write_bytes(results.rows_to_csv(rows))
    fig = plots.figure2(results.load_results(tmp_path, "quick"), "test")
    solid, dashed = fig.axes[3].get_lines()[:2]
    assert (solid.get_linestyle(), dashed.get_linestyle()) == ("-", "--")
    np.testing.assert_allclose(solid.get_ydata(), (1 - accuracies).mean(0))
    np.testing.assert_allclose(dashed.get_ydata(), (2 - accuracies).mean(0))
    labels = [text.get_text() for text in fig.axes[3].get_legend().get_texts()]
    assert labels == ["Batchnorm", "inference network, fixed training examples",
                      "training mode, each step's minibatch"]


def test_figure3_draws_each_column_and_the_papers_numbers(tmp_path):
    accuracies = np.array([[0.3, 0.8, 0.82], [0.4, 0.9, 0.88]])
    write_runs(tmp_path, "batchnorm", accuracies, preset="noniid_quick",
               pairs=(accuracies + 0.05, accuracies - 0.03), last=1)
    fig = plots.figure3(results.load_results(tmp_path, "noniid_quick"), "test")
    moving, minibatch, training, table = fig.axes
    np.testing.assert_allclose(moving.get_lines()[0].get_ydata(), 100 * accuracies.mean(0))
    np.testing.assert_allclose(moving.get_lines()[1].get_ydata(), 100 * accuracies.mean(0))
    np.testing.assert_allclose(minibatch.get_lines()[0].get_ydata(),
                               100 * (accuracies - 0.03).mean(0))
    np.testing.assert_allclose(training.get_lines()[0].get_ydata(),
                               100 * (accuracies + 0.05).mean(0))
    cells = [cell.get_text().get_text() for cell in table.tables[0].get_celld().values()]
    assert "67.0" in cells and "paper: renorm" in cells


def test_the_figures_context_tables_read_the_one_table_of_reported_numbers(tmp_path, monkeypatch):
    from brlib import protocol

    write_runs(tmp_path, "batchnorm", [[0.3, 0.8], [0.4, 0.9]], preset="noniid_quick",
               pairs=([[0.3, 0.8], [0.4, 0.9]], [[0.3, 0.8], [0.4, 0.9]]), last=1)
    write_runs(tmp_path, "batchnorm", [[0.3, 0.8], [0.4, 0.9]], last=1)
    changed = tuple(dataclasses.replace(n, percent=n.percent + 0.05) for n in protocol.REPORTED)
    monkeypatch.setattr(protocol, "REPORTED", changed)
    for figure, preset in (("figure2", "quick"), ("figure3", "noniid_quick")):
        loaded = results.load_results(tmp_path, preset)
        fig, name = plots.preset_figure(loaded)
        assert name == f"{figure}_{preset}" == loaded.preset.figure
        cells = [c.get_text().get_text() for c in fig.axes[-1].tables[0].get_celld().values()]
        expected = [f"{n.percent:.1f}" for n in changed if n.figure == figure]
        assert [c for c in cells if c in expected] == expected  # every number, in order


def test_save_figure_writes_png_and_reproducible_svg(tmp_path):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    first = plots.save_figure(fig, "line", tmp_path / "a")
    second = plots.save_figure(fig, "line", tmp_path / "b")
    assert [p.name for p in first] == ["line.png", "line.svg"]
    assert first[1].read_bytes() == second[1].read_bytes()
    assert first[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_modules_that_read_results_do_not_import_the_runner():
    import ast
    from pathlib import Path

    for module in ("plots", "results"):
        tree = ast.parse(Path(plots.__file__).with_name(f"{module}.py").read_text())
        imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
        imported |= {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import)
                     for alias in node.names}
        assert not {"brlib.experiment", "tensorflow"} & imported, (module, imported)


def test_schedule_figure_draws_the_schedule():
    fig = plots.schedule_figure(10, 3.0, 50, 5.0, 30, steps=100)
    rmax_line, dmax_line = fig.axes[0].get_lines()[:2]
    expected = br.RenormSchedule(10, 3.0, 50, 5.0, 30)(rmax_line.get_xdata())
    np.testing.assert_allclose(rmax_line.get_ydata(), expected[0])
    np.testing.assert_allclose(dmax_line.get_ydata(), expected[1])


def test_schedule_figure_clips_a_recorded_run_with_the_schedule_of_each_step():
    rng = np.random.default_rng(0)
    at = [0, 20, 40, 60]
    r_values = [rng.lognormal(0, 0.5, 100) for _ in at]
    d_values = [rng.normal(0, 1.0, 100) for _ in at]
    fig = plots.schedule_figure(10, 3.0, 50, 5.0, 30, steps=100, recorded=(at, r_values, d_values))
    r_line, d_line = fig.axes[1].get_lines()[:2]
    schedule = br.RenormSchedule(10, 3.0, 50, 5.0, 30)
    for index, step in enumerate(at):
        rmax, dmax = schedule(step)
        r, d = r_values[index], d_values[index]
        assert r_line.get_ydata()[index] == pytest.approx(100 * np.mean((r < 1 / rmax) | (r > rmax)))
        assert d_line.get_ydata()[index] == pytest.approx(100 * np.mean(np.abs(d) > dmax))
    assert r_line.get_ydata()[0] == 100  # rmax = 1 in the warm-up: every r is clipped


def test_comparison_figure_draws_both_accuracies_of_each_arm():
    import matplotlib

    matplotlib.use("Agg")
    steps = np.array([5, 10])
    curves = {"batchnorm": (steps, np.array([0.2, 0.4]), np.array([0.5, 0.6])),
              "batchrenorm": (steps, np.array([0.3, 0.7]), np.array([0.6, 0.7]))}
    fig = plots.comparison_figure(curves)
    lines = fig.axes[0].get_lines()
    np.testing.assert_allclose([line.get_ydata() for line in lines],
                               [[20, 40], [50, 60], [30, 70], [60, 70]])
    assert [line.get_linestyle() for line in lines] == ["-", "--", "-", "--"]
    assert "recalibrated (60.0%)" in fig.axes[0].get_legend().get_texts()[1].get_text()


def test_comparison_figure_keeps_coinciding_curves_visible_and_marks_the_warmup():
    steps = np.array([5, 10])
    same = (steps, np.array([0.2, 0.4]), np.array([0.5, 0.6]))
    fig = plots.comparison_figure({"batchnorm": same, "batchrenorm": same}, warmup_steps=6)
    lines = fig.axes[0].get_lines()
    first, second = lines[0], lines[2]  # the moving-average curves of the two arms
    assert first.get_linewidth() > second.get_linewidth()  # the first arm shows around the second
    assert first.get_marker() != second.get_marker()
    assert lines[1].get_markerfacecolor() == "white"  # recalibrated: hollow markers
    assert lines[-1].get_xdata()[0] == 6 and lines[-1].get_linestyle() == ":"
    title = fig.axes[0].get_title()
    assert "solid: moving averages" in title and "dashed: recalibrated" in title


def test_partners_figure_marks_each_sizes_own_inference_output_and_mean():
    rng = np.random.default_rng(0)
    outputs = {2: rng.normal(0.3, 0.4, 200), 32: rng.normal(0.1, 0.1, 200)}
    fig = plots.partners_figure(outputs, {2: 0.5, 32: 0.2})
    for ax, size, inference in zip(fig.axes, (2, 32), (0.5, 0.2)):
        red, mean = ax.get_lines()
        assert list(red.get_xdata()) == [inference, inference]
        assert mean.get_xdata()[0] == pytest.approx(np.mean(outputs[size]))
        assert mean.get_linestyle() == "--"
    fig = plots.partners_figure(outputs, 0.4)  # one value for every row
    assert [ax.get_lines()[0].get_xdata()[0] for ax in fig.axes] == [0.4, 0.4]


def test_schedule_figure_draws_how_wide_the_recorded_corrections_are():
    rng = np.random.default_rng(1)
    at = [0, 20, 40]
    r_values = [rng.lognormal(0, 0.5, 200) for _ in at]
    d_values = [rng.normal(0, 1.0, 200) for _ in at]
    fig = plots.schedule_figure(10, 3.0, 50, 5.0, 30, steps=100, recorded=(at, r_values, d_values))
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
    assert not plots.schedule_figure(0, 3.0, 50, 5.0, 30, steps=100,
                                       recorded=(at, r_values, d_values)).axes[1].patches


def test_a_choice_of_arms_gets_its_own_file_name(tmp_path):
    write_runs(tmp_path, "batchnorm", [[0.3, 0.8], [0.4, 0.9]], last=1)
    write_runs(tmp_path, "batchrenorm", [[0.3, 0.8], [0.4, 0.9]])
    loaded = results.load_results(tmp_path, "quick")
    fig, name = plots.preset_figure(loaded, ["batchrenorm", "baseline"])
    assert name == "figure2_quick_batchrenorm"  # never the preset's own figure2_quick
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()][0].startswith("Batch Renorm")
    with pytest.raises(ValueError, match="no results of the arms"):
        plots.preset_figure(loaded, ["baseline"])



def test_learning_rate_figure_draws_each_arms_points_and_the_paired_differences(tmp_path):
    from test_results import SWEEP, write_sweep

    write_sweep(tmp_path, SWEEP)
    sweep = results.load_learning_rate_sweep(tmp_path, "quick")
    fig = plots.learning_rate_sweep(sweep)
    accuracy, differences = fig.axes[:2]
    # Each errorbar's container carries the label; its first line is the data.
    lines = {bars.get_label(): bars.lines[0] for bars in accuracy.containers}
    for arm in ("batchnorm", "batchrenorm", "baseline"):
        line = lines[f"{br.protocol.ARMS[arm].label} (n = 3)"]
        np.testing.assert_allclose(line.get_xdata(), [1e-3, 1e-2, 3e-2])
        np.testing.assert_allclose(line.get_ydata(),
                                   [100 * np.mean(SWEEP[rate][arm]) for rate in SWEEP])
    lines = {bars.get_label(): bars.lines[0] for bars in differences.containers}
    renorm = lines["Batch Renorm − Batchnorm"]
    np.testing.assert_allclose(renorm.get_ydata(), [
        100 * np.mean(np.subtract(SWEEP[rate]["batchrenorm"], SWEEP[rate]["batchnorm"]))
        for rate in SWEEP])
    mismatch = next(line for label, line in lines.items() if "mismatch" in label)
    np.testing.assert_allclose(mismatch.get_ydata(), [5.0, 5.0, 5.0])
    assert accuracy.get_xscale() == "log"


def test_lag_and_mismatch_figure_draws_batch_norm_beneath_renorm_where_they_coincide(tmp_path):
    accuracies = np.array([[0.3, 0.8, 0.82], [0.4, 0.9, 0.88], [0.35, 0.85, 0.86]])
    recalibrated = accuracies + np.array([[0.05, 0.01, 0.0], [0.07, 0.02, 0.01], [0.03, 0.0, 0.0]])
    minibatch = accuracies - np.array([[0.02], [0.05], [0.03]])
    for arm in ("batchnorm", "batchrenorm"):  # the same curves: renorm in its warm-up
        write_runs(tmp_path, arm, accuracies, recalibrated=recalibrated,
                   pairs=(accuracies, minibatch), last=1)
    fig = plots.lag_and_mismatch_figure({"quick": results.load_results(tmp_path, "quick")})
    lag, mismatch = fig.axes
    half = lambda values: stats.t.ppf(0.975, 2) * stats.sem(values, axis=0)
    for ax, values in ((lag, 100 * (recalibrated - accuracies)),
                       (mismatch, 100 * (accuracies - minibatch))):
        below, above = ax.get_lines()[:2]
        for line in (below, above):
            np.testing.assert_allclose(line.get_ydata(), values.mean(0))
        assert below.get_label() == "Batchnorm" and above.get_label() == "Batch Renorm"
        # Batch norm shows around renorm: wider, and drawn beneath it.
        assert below.get_linewidth() > above.get_linewidth()
        assert below.get_zorder() < above.get_zorder()
        band = ax.collections[0].get_paths()[0].vertices[:, 1]
        assert np.isclose(band.max(), (values.mean(0) + half(values)).max())
        assert np.isclose(band.min(), (values.mean(0) - half(values)).min())
    assert lag.get_title() == "lag, preset 'quick'"


def test_paired_difference_figure_draws_the_difference_over_training_and_its_final_interval(
        tmp_path):
    arm = np.array([[0.3, 0.8, 0.82, 0.84], [0.4, 0.9, 0.88, 0.87], [0.35, 0.85, 0.86, 0.9]])
    reference = np.array([[0.2, 0.7, 0.83, 0.83], [0.45, 0.8, 0.86, 0.88]])  # seeds 0 and 1
    write_runs(tmp_path, "batchrenorm_noramp", arm, recalibrated=arm - 0.01, last=2)
    write_runs(tmp_path, "batchrenorm", reference, recalibrated=reference + 0.02, last=2)
    fig = plots.paired_difference_figure(results.load_results(tmp_path, "quick"),
                                         "batchrenorm_noramp", "batchrenorm")
    (whole, whole_recalibrated), (end, end_recalibrated) = np.reshape(fig.axes, (2, 2))
    # Only the seeds both arms have, paired: seeds 0 and 1.
    for ax_whole, ax_end, deltas in ((whole, end, 100 * (arm[:2] - reference)),
                                     (whole_recalibrated, end_recalibrated,
                                      100 * ((arm[:2] - 0.01) - (reference + 0.02)))):
        line = ax_whole.get_lines()[0]
        np.testing.assert_allclose(line.get_xdata(), [10, 20, 30, 40])
        np.testing.assert_allclose(line.get_ydata(), deltas.mean(0))
        half = stats.t.ppf(0.975, 1) * stats.sem(deltas, axis=0)
        band = ax_whole.collections[0].get_paths()[0].vertices[:, 1]
        assert np.isclose(band.max(), (deltas.mean(0) + half).max())
        # The last quarter: steps 30 and 40, and the final difference (mean of the last two
        # evaluations per seed) with its paired t-interval.
        np.testing.assert_allclose(ax_end.get_lines()[0].get_xdata(), [30, 40])
        final = deltas[:, -2:].mean(1)
        low, high = stats.t.interval(0.95, 1, loc=final.mean(), scale=stats.sem(final))
        labels = [text.get_text() for text in ax_end.get_legend().get_texts()]
        assert f"final: {final.mean():+.2f} [{low:+.2f}, {high:+.2f}]" in labels
    assert "recalibrated" in whole_recalibrated.get_title(loc="left")
    assert fig._suptitle.get_text().startswith("Batch Renorm, no ramp − Batch Renorm")


def test_paired_differences_draws_each_named_difference_with_its_band(tmp_path):
    reference = [[0.5, 0.6, 0.7], [0.52, 0.61, 0.72], [0.5, 0.63, 0.69]]
    other = [[0.5, 0.62, 0.74], [0.5, 0.66, 0.75], [0.52, 0.61, 0.73]]
    write_runs(tmp_path, "batchnorm", reference)
    write_runs(tmp_path, "batchnorm_iid", other)
    loaded = results.load_results(tmp_path, "quick")
    named = [("i.i.d. − pairs", "batchnorm_iid", "batchnorm"), ("absent", "groupnorm", "batchnorm")]
    fig = plots.paired_differences(loaded, named, "val_accuracy")
    ax = fig.axes[0]
    line = next(l for l in ax.lines if l.get_label() == "i.i.d. − pairs")
    deltas = 100 * (np.array(other) - np.array(reference))  # independent: NumPy and SciPy
    np.testing.assert_allclose(line.get_ydata(), deltas.mean(axis=0))
    band = ax.collections[0].get_paths()[0].vertices[:, 1]
    half = stats.t.ppf(0.975, 2) * deltas.std(axis=0, ddof=1) / np.sqrt(3)
    assert band.max() == pytest.approx((deltas.mean(axis=0) + half).max())
    assert len(ax.get_legend().get_texts()) == 1  # the pair without results is left out
    with pytest.raises(ValueError, match="none of the named differences"):
        plots.paired_differences(loaded, named[1:])


def test_step_snapshot_names_the_lag_and_mismatch_of_each_arm_at_that_step(tmp_path):
    import matplotlib.pyplot as plt

    moving = [[0.2, 0.5, 0.7], [0.4, 0.5, 0.9]]
    calibrated = [[0.6, 0.6, 0.7], [0.8, 0.7, 0.9]]
    minibatch = [[0.1, 0.3, 0.6], [0.2, 0.4, 0.5]]
    write_runs(tmp_path, "batchnorm", moving, calibrated, pairs=(moving, minibatch))
    loaded = results.load_results(tmp_path, "quick")
    fig, text = plots.step_snapshot_figure(loaded, 20)
    # Seed means at step 20: moving 0.5, recalibrated 0.65, minibatch statistics 0.35.
    assert text == "points, seed means; step 20: Batchnorm lag +15.0, mismatch +15.0"
    heights = sorted(round(patch.get_height(), 6) for patch in fig.axes[0].patches
                     if patch.get_height() > 0)
    assert heights == [35.0, 50.0, 65.0]
    fig_end, text_end = plots.step_snapshot_figure(loaded, 30)
    assert "lag +0.0, mismatch +25.0" in text_end
    plt.close(fig)
    plt.close(fig_end)


def test_training_phase_follows_the_presets_warmup_ramps_and_learning_rate():
    preset = br.protocol.get_preset("quick")  # warm-up 300, ramps to 700, floor from 900
    assert [plots.training_phase(preset, step) for step in (300, 301, 699, 700, 899, 900)] == [
        "warm-up: renorm is batch norm", "renorm's bounds opening", "renorm's bounds opening",
        "bounds open, learning rate falling", "bounds open, learning rate falling",
        "learning rate at its floor"]


def test_class_sweep_draws_each_difference_at_its_number_of_classes_with_its_interval(tmp_path):
    rng = np.random.default_rng(4)
    for preset in ("glyphs_workers", "glyphs_workers_classes30"):
        for arm, level in (("batchnorm", 0.9), ("batchnorm_iid", 0.95)):
            write_runs(tmp_path, arm, np.clip(level + rng.normal(0, 0.02, (3, 4)), 0, 1),
                       preset=preset, last=2)
    found = [gap for preset in ("glyphs_workers", "glyphs_workers_classes30") for gap in
             results.gaps(results.load_results(tmp_path, preset), family=True)]
    fig = plots.class_sweep(found, interval="a family's interval")
    ax = fig.axes[0]
    drawn = next(c for c in ax.containers if c.get_label() == "batch norm: pairs − i.i.d.")
    points, _, (bars,) = drawn.lines
    assert np.allclose(points.get_xdata() / points.get_xdata()[0], [1, 10])  # 30 and 300 classes
    final = lambda preset, arm: 100 * results.load_results(tmp_path, preset)[arm][
        "val_accuracy"][:, -2:].mean(axis=1)
    deltas = final("glyphs_workers_classes30", "batchnorm") - final("glyphs_workers_classes30",
                                                                   "batchnorm_iid")
    assert points.get_ydata()[0] == pytest.approx(deltas.mean())
    low, high = stats.t.interval(0.95, 2, loc=deltas.mean(), scale=stats.sem(deltas))
    first = bars.get_segments()[0][:, 1]  # 30 classes; a family of one: 95 %
    np.testing.assert_allclose(sorted(first), [low, high])
    assert ax.get_legend().get_title().get_text() == "mean over seeds, bars: a family's interval"
    matplotlib.pyplot.close(fig)
