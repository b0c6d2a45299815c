"""brlib.plots: result loading and the Figure 2 drawing, against values computed here."""

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402

from brlib import experiment, plots  # noqa: E402


def write_runs(directory, arm, accuracies):
    for seed, values in enumerate(accuracies):
        rows = [{"step": 10 * (i + 1), "val_accuracy": v, "val_loss": 1.0, "train_loss": 1.0,
                 "r_clipped": 0.0, "d_clipped": 0.0, "wall_seconds": 1.0}
                for i, v in enumerate(values)]
        experiment.write_atomic(directory / "quick" / f"{arm}_seed{seed}.csv",
                                experiment.rows_to_csv(rows))


def test_load_results_and_final_accuracy(tmp_path):
    write_runs(tmp_path, "batchnorm", [[0.1, 0.5], [0.2, 0.7], [0.1, 0.6]])
    write_runs(tmp_path, "batchrenorm", [[0.3, 0.8], [0.4, 0.9]])
    results = plots.load_results(tmp_path, "quick")
    assert set(results) == {"batchnorm", "batchrenorm"}
    steps, accuracy = results["batchnorm"]
    np.testing.assert_array_equal(steps, [10, 20])
    mean, sd = plots.final_accuracy(accuracy)
    assert np.isclose(mean, 60.0) and np.isclose(sd, np.std([50, 70, 60], ddof=1))


def test_figure2_legend_carries_the_final_accuracy(tmp_path):
    write_runs(tmp_path, "batchrenorm", [[0.3, 0.8], [0.4, 0.9]])
    fig = plots.figure2(plots.load_results(tmp_path, "quick"), "test")
    labels = [text.get_text() for text in fig.axes[0].get_legend().get_texts()]
    assert labels == [f"Batch Renorm (85.0% ± {np.std([80, 90], ddof=1):.1f}, 2 seeds)"]
    mean_line = fig.axes[0].get_lines()[0]
    np.testing.assert_allclose(mean_line.get_ydata(), [35.0, 85.0])


def test_save_figure_writes_png_and_reproducible_svg(tmp_path):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    first = plots.save_figure(fig, "line", tmp_path / "a")
    second = plots.save_figure(fig, "line", tmp_path / "b")
    assert [p.name for p in first] == ["line.png", "line.svg"]
    assert first[1].read_bytes() == second[1].read_bytes()
    assert first[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_missing_results_say_how_to_make_them(tmp_path):
    try:
        plots.load_results(tmp_path, "quick")
    except FileNotFoundError as error:
        assert "python -m brlib reproduce --preset quick" in str(error)
    else:
        raise AssertionError("expected FileNotFoundError")
