"""brlib.plots: the Figure 2 drawing against values computed here, and the figure helper."""

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
from scipy import stats  # noqa: E402
from test_results import write_runs  # noqa: E402

from brlib import plots, results  # noqa: E402


def test_figure2_draws_means_with_95_percent_bands_and_final_values(tmp_path):
    accuracies = np.array([[0.3, 0.8, 0.82], [0.4, 0.9, 0.88], [0.35, 0.85, 0.86]])
    minibatch = accuracies - np.array([[0.02], [0.05], [0.03]])
    write_runs(tmp_path, "batchrenorm", accuracies, recalibrated=accuracies - 0.1,
               pairs=(accuracies, minibatch))
    fig = plots.figure2(results.load_results(tmp_path, "quick"), "test", last=2)
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
               pairs=(accuracies + 0.05, accuracies - 0.03))
    fig = plots.figure3(results.load_results(tmp_path, "noniid_quick"), "test", last=1)
    moving, minibatch, training, table = fig.axes
    np.testing.assert_allclose(moving.get_lines()[0].get_ydata(), 100 * accuracies.mean(0))
    np.testing.assert_allclose(moving.get_lines()[1].get_ydata(), 100 * accuracies.mean(0))
    np.testing.assert_allclose(minibatch.get_lines()[0].get_ydata(),
                               100 * (accuracies - 0.03).mean(0))
    np.testing.assert_allclose(training.get_lines()[0].get_ydata(),
                               100 * (accuracies + 0.05).mean(0))
    cells = [cell.get_text().get_text() for cell in table.tables[0].get_celld().values()]
    assert "67.0" in cells and "paper, batch renorm" in cells


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
