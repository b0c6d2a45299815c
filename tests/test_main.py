"""brlib.__main__: the figure command prints the paired differences and draws the figure."""

import numpy as np
from test_results import write_runs

from brlib import __main__ as cli
from brlib import results
from brlib.files import write_atomic


def test_figure_prints_the_table_of_every_arm_and_draws_the_main_ones(tmp_path, capsys):
    results.record_settings(tmp_path / "quick", {"final_evaluations": 2})
    moving = np.array([[0.50, 0.60], [0.52, 0.62], [0.55, 0.61]])
    minibatch = moving - np.array([[0.10], [0.07], [0.04]])
    write_runs(tmp_path, "batchnorm", moving, pairs=(moving, minibatch))
    write_runs(tmp_path, "batchrenorm", [[0.55, 0.66], [0.50, 0.65], [0.60, 0.70]])
    write_runs(tmp_path, "batchnorm_seedbug", [[0.40, 0.50], [0.45, 0.55]])
    code = cli.main(["figure", "--preset", "quick", "--results-dir", str(tmp_path),
                     "--figures-dir", str(tmp_path / "figures")])
    out = capsys.readouterr().out
    assert code == 0
    assert "mean of the last 2 evaluation(s)" in out and "95 % t-intervals" in out
    loaded = results.load_results(tmp_path, "quick")
    assert loaded.last == 2  # from the recorded settings
    expected = results.paired_difference(loaded, "batchrenorm", "batchnorm")
    assert f"{expected.mean:+.2f} [{expected.low:+.2f}, {expected.high:+.2f}]" in out
    assert "Batchnorm, α = 0.99" in out  # the table lists the ablation too
    # Then each arm's mismatch (inference − minibatch statistics) with its paired interval.
    mismatch, (low, high) = results.within_arm_difference(
        loaded, "batchnorm", "val_accuracy", "val_accuracy_minibatch_stats")
    assert np.isclose(mismatch, 7.0) and "mismatch: inference − minibatch statistics" in out
    assert f"{mismatch:+.2f} [{low:+.2f}, {high:+.2f}]" in out
    assert sorted(p.name for p in (tmp_path / "figures").iterdir()) == [
        "figure2_quick.png", "figure2_quick.svg"]
    assert np.isfinite(expected.mean)


def test_figure_without_results_says_how_to_make_them(tmp_path, capsys):
    assert cli.main(["figure", "--preset", "quick", "--results-dir", str(tmp_path)]) == 2
    assert "python -m brlib reproduce --preset quick" in capsys.readouterr().err


def test_figure_sets_a_rerun_beside_the_committed_results(tmp_path, capsys):
    for root in ("runs", "committed"):
        results.record_settings(tmp_path / root / "quick", {"final_evaluations": 1})
        write_runs(tmp_path / root, "batchnorm", [[0.50, 0.60], [0.52, 0.62]])
    # The same run twice, then a different one: only wall_seconds may differ.
    path = tmp_path / "runs" / "quick" / "batchnorm_seed0.csv"
    path.write_text(path.read_text().replace(",1.0\n", ",7.5\n"))
    assert results.same_runs(tmp_path / "runs" / "quick", tmp_path / "committed" / "quick") == {
        "batchnorm_seed0.csv": True, "batchnorm_seed1.csv": True}
    write_runs(tmp_path / "committed", "batchnorm", [[0.50, 0.60], [0.52, 0.63]])
    code = cli.main(["figure", "--preset", "quick", "--results-dir", str(tmp_path / "runs"),
                     "--figures-dir", str(tmp_path / "figures"),
                     "--compare", str(tmp_path / "committed")])
    out = capsys.readouterr().out
    assert code == 0
    assert "same settings; 1 of 2 runs wrote the same CSV" in out and "batchnorm_seed1.csv" in out
    write_atomic(tmp_path / "committed" / "quick" / results.SETTINGS_FILE, b'{"steps": 9}')
    cli.main(["figure", "--preset", "quick", "--results-dir", str(tmp_path / "runs"),
              "--figures-dir", str(tmp_path / "figures"), "--compare", str(tmp_path / "committed")])
    assert "recorded with other settings" in capsys.readouterr().out
