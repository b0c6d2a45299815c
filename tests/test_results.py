"""brlib.results: settings records, result loading, and statistics against SciPy's own tests."""

import dataclasses
import json

import numpy as np
import pytest
from scipy import stats

from brlib import results
from brlib.files import write_atomic
from brlib.protocol import PRESETS


def write_runs(directory, arm, accuracies, recalibrated=None, preset="quick", pairs=None,
               last=None):
    """One CSV per seed, with the given accuracy curves (evaluations every 10 steps).

    `pairs`, if given, is (training accuracies, minibatch-statistics accuracies), the two
    columns of the mismatch measurement (results from before it lack them). `last`, if
    given, is recorded as the preset's `final_evaluations`; otherwise the named preset's
    own value applies.
    """
    if last is not None:
        results.record_settings(directory / preset, {"final_evaluations": last})
    recalibrated = accuracies if recalibrated is None else recalibrated
    for seed, (values, calibrated) in enumerate(zip(accuracies, recalibrated)):
        rows = [{"step": 10 * (i + 1), "val_accuracy": v, "val_loss": 1.0,
                 "val_accuracy_recalibrated": c, "val_loss_recalibrated": 1.0,
                 "train_loss": 2.0 - v, "r_clipped": 0.0, "d_clipped": 0.0, "wall_seconds": 1.0}
                for i, (v, c) in enumerate(zip(values, calibrated))]
        if pairs is not None:
            for i, row in enumerate(rows):
                row["train_accuracy"] = pairs[0][seed][i]
                row["val_accuracy_minibatch_stats"] = pairs[1][seed][i]
        write_atomic(directory / preset / f"{arm}_seed{seed}.csv", results.rows_to_csv(rows))


def test_settings_are_recorded_then_enforced(tmp_path):
    directory = tmp_path / "quick"
    settings = {"steps": 100, "widths": (8, 16), "seeds": 5}
    assert results.check_settings(directory, settings) is False  # nothing recorded, nothing written
    assert not directory.exists()
    results.record_settings(directory, settings)
    assert json.loads((directory / "settings.json").read_text()) == {
        "steps": 100, "widths": [8, 16], "seeds": 5}
    results.check_settings(directory, dict(settings, seeds=10))  # more seeds: same settings
    with pytest.raises(ValueError) as error:
        results.check_settings(directory, dict(settings, steps=200, widths=(8, 32)))
    message = str(error.value)
    assert "steps: 100 on disk, 200 now" in message and "widths: [8, 16] on disk" in message


def test_results_without_a_settings_record_are_not_adopted(tmp_path):
    write_runs(tmp_path, "batchnorm", [[0.1, 0.2]])
    with pytest.raises(ValueError, match="settings are unknown"):
        results.check_settings(tmp_path / "quick", {"steps": 20})


def test_load_results_reads_every_column_by_seed(tmp_path):
    write_runs(tmp_path, "batchnorm", [[0.1, 0.5], [0.2, 0.7], [0.1, 0.6]])
    write_runs(tmp_path, "batchrenorm", [[0.3, 0.8], [0.4, 0.9]])
    loaded = results.load_results(tmp_path, "quick")
    assert list(loaded) == ["batchnorm", "batchrenorm"]
    curves = loaded["batchnorm"]
    np.testing.assert_array_equal(curves.steps, [10, 20])
    assert curves.seeds == [0, 1, 2]
    np.testing.assert_array_equal(curves["val_accuracy"], [[0.1, 0.5], [0.2, 0.7], [0.1, 0.6]])
    np.testing.assert_allclose(curves["train_loss"], 2 - curves["val_accuracy"])


def test_missing_results_say_how_to_make_them(tmp_path):
    with pytest.raises(FileNotFoundError, match="python -m brlib reproduce --preset quick"):
        results.load_results(tmp_path, "quick")


def test_paired_difference_matches_scipys_paired_t_test(tmp_path):
    rng = np.random.default_rng(0)
    base = rng.uniform(0.6, 0.8, (7, 4))
    better = base + rng.normal(0.02, 0.01, base.shape)
    write_runs(tmp_path, "batchnorm", base, last=2)
    write_runs(tmp_path, "batchrenorm", better, last=2)
    loaded = results.load_results(tmp_path, "quick")
    diff = results.paired_difference(loaded, "batchrenorm", "batchnorm")
    a, b = 100 * better[:, -2:].mean(1), 100 * base[:, -2:].mean(1)
    test = stats.ttest_rel(a, b)
    interval = test.confidence_interval(0.95)
    assert diff.seeds == 7
    assert diff.mean == pytest.approx(np.mean(a - b))
    assert (diff.low, diff.high) == pytest.approx((interval.low, interval.high))
    assert diff.distinguishable == (test.pvalue < 0.05)


def test_paired_difference_uses_only_shared_seeds(tmp_path):
    write_runs(tmp_path, "batchnorm", [[0.5], [0.6], [0.7]])
    write_runs(tmp_path, "batchnorm_seedbug", [[0.6], [0.8]])
    loaded = results.load_results(tmp_path, "quick")
    diff = results.paired_difference(loaded, "batchnorm_seedbug", "batchnorm")
    assert diff.seeds == 2 and diff.mean == pytest.approx(15.0)


def test_t_interval_and_band_agree_with_scipy():
    samples = np.array([1.0, 2.5, 0.5, 3.0, 2.0])
    mean, sd, (low, high) = results.t_interval(samples)
    expected = stats.t.interval(0.95, len(samples) - 1, loc=samples.mean(),
                                scale=stats.sem(samples))
    assert (low, high) == pytest.approx(expected) and sd == pytest.approx(samples.std(ddof=1))
    values = np.stack([samples, 2 * samples])
    centre, half = results.mean_band(values.T)
    np.testing.assert_allclose(centre, values.mean(1))
    np.testing.assert_allclose(half, [expected[1] - samples.mean(),
                                      2 * (expected[1] - samples.mean())])


def test_steady_state_compares_the_difference_drift_with_its_own_half_width(tmp_path):
    # Evaluations at steps 10 … 80: the last quarter is steps 60, 70, 80.
    reference = [[0.1, 0.3, 0.5, 0.6, 0.7, 0.80, 0.81, 0.80],
                 [0.1, 0.3, 0.5, 0.6, 0.7, 0.82, 0.83, 0.84],
                 [0.2, 0.3, 0.4, 0.6, 0.7, 0.79, 0.80, 0.80]]
    # Still climbing against the reference: +0, +1, +2 points over the last quarter.
    climbing = [[v + (0.01 * (i - 5) if i >= 5 else 0.0) + 0.002 * (seed % 2)
                 for i, v in enumerate(row)] for seed, row in enumerate(reference)]
    write_runs(tmp_path, "batchnorm", reference, last=2)
    write_runs(tmp_path, "batchrenorm", climbing, last=2)
    loaded = results.load_results(tmp_path, "quick")
    check = results.steady_state(loaded, "batchrenorm", "batchnorm")
    # Reference: NumPy and SciPy on the per-seed differences.
    deltas = 100 * (np.array(climbing) - np.array(reference))
    reported = deltas[:, -2:].mean(axis=1)
    expected_drift = np.max(np.abs(deltas.mean(axis=0)[5:] - reported.mean()))
    half = stats.t.ppf(0.975, 2) * reported.std(ddof=1) / np.sqrt(3)
    assert check.drift == pytest.approx(expected_drift) and check.half_width == pytest.approx(half)
    assert check.steady == (expected_drift <= half)
    # The same difference with the trend gone is steady; identical arms are steady too.
    write_runs(tmp_path, "baseline", [[v + 0.002 * (seed % 2) for v in row]
                                      for seed, row in enumerate(reference)])
    flat = results.steady_state(results.load_results(tmp_path, "quick"), "baseline", "batchnorm")
    assert flat.drift == pytest.approx(0.0, abs=1e-9) and flat.steady
    last_one = results.Results(dataclasses.replace(loaded.preset, final_evaluations=1), loaded)
    assert not results.steady_state(last_one, "batchrenorm", "batchnorm").steady


def test_table_names_each_difference_and_whether_it_is_distinguishable(tmp_path):
    write_runs(tmp_path, "batchnorm", [[0.50], [0.60], [0.70]], last=1)
    write_runs(tmp_path, "batchrenorm", [[0.60], [0.70], [0.80]])  # +10 in every seed
    write_runs(tmp_path, "baseline", [[0.55], [0.55], [0.75]])
    table = results.format_table(results.load_results(tmp_path, "quick"))
    lines = table.splitlines()
    assert len(lines) == 5
    assert "+10.00 in every seed" in lines[3] and "not distinguishable" not in lines[3]
    assert "not distinguishable from 0" in lines[4]


def test_results_carry_their_preset_and_keep_the_arms_order(tmp_path):
    results.record_settings(tmp_path / "quick", {"final_evaluations": 2, "steps": 40,
                                                 "font_sha256": {"a.ttf": "0"}})
    write_runs(tmp_path, "batchrenorm", [[0.1, 0.2], [0.3, 0.4]])
    write_runs(tmp_path, "batchnorm", [[0.5, 0.6], [0.7, 0.9]])
    loaded = results.load_results(tmp_path, "quick")
    # The recorded settings win; those not recorded are the named preset's.
    assert (loaded.preset.name, loaded.preset.steps, loaded.last) == ("quick", 40, 2)
    assert loaded.preset.widths == PRESETS["quick"].widths and loaded.preset.threads is None
    assert list(loaded) == ["batchnorm", "batchrenorm"]  # ARMS order, not the files' order
    np.testing.assert_allclose(loaded.final("batchnorm"), [55.0, 80.0])  # accuracies in %
    np.testing.assert_allclose(loaded.final("batchnorm", "train_loss"), [1.45, 1.2])  # losses as recorded
    only = loaded.only(["batchrenorm", "baseline"])  # arms without results are left out
    assert list(only) == ["batchrenorm"] and only.preset is loaded.preset
    with pytest.raises(ValueError, match="arms"):
        loaded.only(["layernorm"])
    with pytest.raises(ValueError, match="not in ARMS"):
        results.Results(loaded.preset, {"layernorm": loaded["batchnorm"]})
    with pytest.raises(TypeError, match="Preset"):
        results.Results({"final_evaluations": 2}, {})


def test_noniid_table_gives_within_arm_gaps_with_paired_intervals(tmp_path):
    rng = np.random.default_rng(0)
    test = rng.uniform(0.6, 0.7, size=(4, 3))
    train = test + rng.uniform(0.02, 0.08, size=(4, 3))
    minibatch = test + 0.05
    write_runs(tmp_path, "batchnorm", test, preset="noniid_quick", pairs=(train, minibatch),
               last=2)
    loaded = results.load_results(tmp_path, "noniid_quick")
    assert {"train_accuracy", "val_accuracy_minibatch_stats"} <= set(loaded["batchnorm"].columns)
    gap = 100 * (train[:, -2:].mean(1) - test[:, -2:].mean(1))
    low, high = stats.t.interval(0.95, 3, loc=gap.mean(), scale=stats.sem(gap))
    mean, interval = results.within_arm_difference(loaded, "batchnorm", "train_accuracy",
                                                   "val_accuracy")
    np.testing.assert_allclose((mean, *interval), (gap.mean(), low, high))
    table = results.format_noniid_table(loaded)
    assert f"training − test {gap.mean():+.2f} [{low:+.2f}, {high:+.2f}]" in table
    assert "minibatch statistics − moving averages +5.00 [+5.00, +5.00]" in table
    assert "72.8 / 67.0 / 76.5" in table  # the paper's Figure 3 beside it


def test_mismatch_and_lag_are_paired_within_each_arm(tmp_path):
    rng = np.random.default_rng(1)
    moving = rng.uniform(0.6, 0.7, size=(5, 4))
    recalibrated = moving + rng.uniform(-0.01, 0.03, size=(5, 4))
    train = moving + 0.01
    minibatch = moving - rng.uniform(0.0, 0.1, size=(5, 4))
    write_runs(tmp_path, "batchnorm", moving, recalibrated, pairs=(train, minibatch), last=2)
    write_runs(tmp_path, "baseline", moving[:3])  # results from before the mismatch columns
    loaded = results.load_results(tmp_path, "quick")
    table = results.format_mismatch_table(loaded)
    for name, column, reference in (("mismatch", moving, minibatch),
                                    ("lag", recalibrated, moving)):
        difference = 100 * (column[:, -2:].mean(1) - reference[:, -2:].mean(1))
        low, high = stats.t.interval(0.95, 4, loc=difference.mean(), scale=stats.sem(difference))
        assert f"{difference.mean():+.2f} [{low:+.2f}, {high:+.2f}]" in table, name
    baseline = next(line for line in table.splitlines() if line.startswith("| Batchnorm, groups"))
    assert baseline.count("—") == 3  # no minibatch statistics, no mismatch; the lag is there


def test_csv_rows_read_back_to_the_same_bytes(tmp_path):
    rows = [{"step": 100, "val_accuracy": 0.1 + 0.2, "val_loss": 1 / 3,
             "val_accuracy_recalibrated": 0.7301, "val_loss_recalibrated": 2.5e-8,
             "train_loss": 0.5, "r_clipped": 0.0, "d_clipped": 1.0, "wall_seconds": 12.34,
             "train_accuracy": 0.75, "val_accuracy_minibatch_stats": 0.6999999999999}]
    path = tmp_path / "run.csv"
    write_atomic(path, results.rows_to_csv(rows))
    again = results.read_csv(path)
    assert again == rows and isinstance(again[0]["step"], int)
    assert results.rows_to_csv(again) == path.read_bytes()
    with pytest.raises(ValueError):
        results.rows_to_csv([dict(rows[0], unknown=1.0)])


def test_a_difference_that_is_the_same_in_every_seed_is_said_so():
    same = results.Difference("a", "b", "val_accuracy", 3, 0.0, 0.0, 0.0, 0.0)
    assert results.format_difference(same) == "identical in every seed"
    shifted = results.Difference("a", "b", "val_accuracy", 3, 1.5, 0.0, 1.5, 1.5)
    assert results.format_difference(shifted) == "+1.50 in every seed"
    wide = results.Difference("a", "b", "val_accuracy", 3, 0.5, 1.0, -0.2, 1.2)
    assert results.format_difference(wide) == "+0.50 [-0.20, +1.20] (not distinguishable from 0)"


def test_pairing_gaps_are_scipy_paired_intervals_with_the_number_of_classes(tmp_path):
    rng = np.random.default_rng(0)
    final = {arm: rng.uniform(0.4, 0.8, size=4) for arm in
             ("batchnorm", "batchnorm_iid", "batchrenorm", "batchrenorm_iid")}
    results.record_settings(tmp_path / "glyphs_classes30",
                            {"dataset": "glyphs30", "final_evaluations": 2})
    for arm, values in final.items():
        # Four evaluations; the last two (the final window) hold the value, earlier ones differ.
        write_runs(tmp_path, arm, [[0.1, 0.2, v, v] for v in values], preset="glyphs_classes30")
    found = results.gaps(results.load_results(tmp_path, "glyphs_classes30"))
    named = [gap for gap in results.PAIRING_GAPS if gap[1] in final and gap[2] in final]
    assert [gap.name for gap in found] == [name for name, _, _ in named] and len(named) == 3
    for gap, (_, arm, reference) in zip(found, named):
        test = stats.ttest_rel(100 * final[arm], 100 * final[reference])
        interval = test.confidence_interval(0.95)
        assert gap.classes == 30 and gap.difference.seeds == 4
        assert gap.difference.mean == pytest.approx(100 * (final[arm] - final[reference]).mean())
        assert (gap.difference.low, gap.difference.high) == pytest.approx(
            (interval.low, interval.high))
        assert gap.steadiness.steady  # the last quarter is the final window itself
    table = results.format_gaps(found)
    assert table.count("`glyphs_classes30` | 30 | 4 |") == 3


def test_gaps_leave_out_differences_whose_arms_have_no_results(tmp_path):
    results.record_settings(tmp_path / "noniid", {"dataset": "fashion_mnist",
                                                  "final_evaluations": 1})
    write_runs(tmp_path, "batchnorm", [[0.5], [0.6]], preset="noniid")
    write_runs(tmp_path, "batchnorm_iid", [[0.55], [0.62]], preset="noniid")
    found = results.gaps(results.load_results(tmp_path, "noniid"))
    assert [(gap.name, gap.classes) for gap in found] == [("batch norm: pairs − i.i.d.", 10)]


def test_noniid_table_shows_the_inference_fit_of_training_examples_where_recorded(tmp_path):
    test = np.full((2, 2), 0.6)
    write_runs(tmp_path, "batchnorm", test, preset="noniid", pairs=(test, test), last=1)
    write_runs(tmp_path, "batchrenorm", test, preset="noniid", pairs=(test, test))
    for seed in (0, 1):  # only renorm's runs have the column, as after a runner update
        path = tmp_path / "noniid" / f"batchrenorm_seed{seed}.csv"
        rows = results.read_csv(path)
        for row, value in zip(rows, (0.7, 0.75 + 0.05 * seed)):
            row["train_loss_inference"], row["train_accuracy_inference"] = 1.0, value
        write_atomic(path, results.rows_to_csv(rows))
    loaded = results.load_results(tmp_path, "noniid")
    table = results.format_noniid_table(loaded)
    assert "training examples, inference network (%)" in table.splitlines()[0]
    assert table.splitlines()[2].startswith("| Batchnorm | 2 | 60.00 ± 0.00 | — |")
    sd = 100 * np.std([0.75, 0.80], ddof=1)
    assert table.splitlines()[3].startswith(f"| Batch Renorm | 2 | 60.00 ± 0.00 | 77.50 ± {sd:.2f} |")
    without = results.format_noniid_table(loaded.only(["batchnorm"]))
    assert "inference network" not in without


def test_noniid_table_leaves_out_the_gaps_of_results_without_their_columns(tmp_path):
    write_runs(tmp_path, "batchnorm", [[0.5], [0.6]], preset="noniid", pairs=([[0.6], [0.7]],
               [[0.55], [0.65]]), last=1)
    write_runs(tmp_path, "batchnorm_iid", [[0.55], [0.62]], preset="noniid")  # an older run
    table = results.format_noniid_table(results.load_results(tmp_path, "noniid"))
    assert "- Batchnorm: training − test +10.00" in table
    assert "- Batchnorm, i.i.d. groups:" not in table


def test_steadiness_and_difference_of_a_loss_share_its_units(tmp_path):
    rng = np.random.default_rng(2)
    write_runs(tmp_path, "batchnorm", rng.uniform(0.5, 0.8, (4, 4)), last=2)
    write_runs(tmp_path, "batchrenorm", rng.uniform(0.5, 0.8, (4, 4)))
    loaded = results.load_results(tmp_path, "quick")
    for column in ("train_loss", "val_accuracy"):  # a loss as recorded, an accuracy in points
        diff = results.paired_difference(loaded, "batchrenorm", "batchnorm", column)
        check = results.steady_state(loaded, "batchrenorm", "batchnorm", column)
        assert check.half_width == pytest.approx((diff.high - diff.low) / 2)



# ---------------------------------------------------------------------------
# Figure 2 against the learning rate
# ---------------------------------------------------------------------------
def write_sweep(root, finals, rng_seed=0):
    """Runs of the three sweep arms of `quick` at each rate of `finals` ({rate: {arm: per-seed
    final accuracies}}), each a curve of three evaluations that ends at its final value."""
    rng = np.random.default_rng(rng_seed)
    for rate, arms in finals.items():
        name = "quick" if rate == PRESETS["quick"].learning_rate else f"quick_lr{rate:g}"
        for arm, values in arms.items():
            values = np.asarray(values)
            curves = np.stack([values - 0.2, values + rng.normal(0, 0.01, len(values)), values], 1)
            minibatch = curves - 0.05 * (arm == "batchnorm")
            write_runs(root, arm, curves, preset=name, last=1,
                       pairs=(curves, minibatch))


SWEEP = {1e-3: {"batchnorm": [0.80, 0.81, 0.79], "batchrenorm": [0.83, 0.83, 0.82],
                "baseline": [0.84, 0.85, 0.84]},
         1e-2: {"batchnorm": [0.86, 0.87, 0.85], "batchrenorm": [0.86, 0.86, 0.85],
                "baseline": [0.88, 0.89, 0.88]},
         3e-2: {"batchnorm": [0.85, 0.84, 0.86], "batchrenorm": [0.87, 0.86, 0.86],
                "baseline": [0.87, 0.88, 0.86]}}


def test_the_sweep_reads_the_base_preset_at_its_own_rate_and_the_others_by_name(tmp_path):
    write_sweep(tmp_path, SWEEP)
    sweep = results.load_learning_rate_sweep(tmp_path, "quick")
    assert list(sweep) == [1e-3, 1e-2, 3e-2]
    assert [loaded.preset.name for loaded in sweep.values()] == [
        "quick", "quick_lr0.01", "quick_lr0.03"]
    assert sweep[1e-2].preset.learning_rate == 1e-2
    # An unfinished run's hidden partial file is not a result.
    (tmp_path / "quick_lr0.003").mkdir()
    (tmp_path / "quick_lr0.003" / ".batchnorm_seed0.partial.csv").write_text("step\n")
    assert list(results.load_learning_rate_sweep(tmp_path, "quick")) == [1e-3, 1e-2, 3e-2]
    with pytest.raises(FileNotFoundError, match="no learning-rate sweep"):
        results.load_learning_rate_sweep(tmp_path / "nothing", "quick")


def test_sweep_points_are_scipy_t_intervals_of_the_final_accuracies(tmp_path):
    write_sweep(tmp_path, SWEEP)
    points = results.sweep_points(results.load_learning_rate_sweep(tmp_path, "quick"))
    assert len(points) == 9
    for point in points:
        values = 100 * np.asarray(SWEEP[point.learning_rate][point.arm])
        low, high = stats.t.interval(0.95, 2, loc=values.mean(), scale=stats.sem(values))
        np.testing.assert_allclose([point.mean, point.low, point.high],
                                   [values.mean(), low, high])
        assert point.seeds == 3 and point.diverged == 0


def test_a_diverged_seed_is_counted_and_kept(tmp_path):
    write_sweep(tmp_path, SWEEP)
    path = tmp_path / "quick_lr0.03" / "batchnorm_seed1.csv"
    lines = path.read_text().splitlines()
    header = lines[0].split(",")
    last = lines[-1].split(",")
    last[header.index("train_loss")] = "nan"
    path.write_text("\n".join(lines[:-1] + [",".join(last)]) + "\n")
    sweep = results.load_learning_rate_sweep(tmp_path, "quick")
    assert results.diverged_seeds(sweep[3e-2], "batchnorm") == [1]
    point = next(p for p in results.sweep_points(sweep)
                 if p.arm == "batchnorm" and p.learning_rate == 3e-2)
    assert point.diverged == 1 and point.seeds == 3
    assert "1 diverged" in results.format_sweep_table(sweep)


def test_best_rates_are_each_arms_highest_mean_and_the_pairs_highest_average(tmp_path):
    write_sweep(tmp_path, SWEEP)
    sweep = results.load_learning_rate_sweep(tmp_path, "quick")
    means = {(rate, arm): np.mean(values) for rate, arms in SWEEP.items()
             for arm, values in arms.items()}
    expected = {arm: max(SWEEP, key=lambda rate: means[rate, arm])
                for arm in ("batchnorm", "batchrenorm", "baseline")}
    expected["both"] = max(SWEEP, key=lambda rate: means[rate, "batchnorm"]
                           + means[rate, "batchrenorm"])
    assert results.best_learning_rates(sweep) == expected
    # Neither arm's own best is "both" here: the two arms disagree, and 1e-2 sums highest.
    assert expected == {"batchnorm": 1e-2, "batchrenorm": 3e-2, "baseline": 1e-2, "both": 1e-2}


def test_arms_at_their_own_rates_are_paired_by_seed_across_presets(tmp_path):
    write_sweep(tmp_path, SWEEP)
    sweep = results.load_learning_rate_sweep(tmp_path, "quick")
    mixed = results.at_learning_rates(sweep, {"batchnorm": 1e-2, "batchrenorm": 3e-2})
    deltas = 100 * (np.array(SWEEP[3e-2]["batchrenorm"]) - np.array(SWEEP[1e-2]["batchnorm"]))
    low, high = stats.t.interval(0.95, 2, loc=deltas.mean(), scale=stats.sem(deltas))
    diff = results.paired_difference(mixed, "batchrenorm", "batchnorm")
    np.testing.assert_allclose([diff.mean, diff.low, diff.high], [deltas.mean(), low, high])
    table = results.format_best_table(sweep)
    own = next(line for line in table.splitlines() if line.startswith("| each arm at its own"))
    assert f"{deltas.mean():+.2f} [{low:+.2f}, {high:+.2f}]" in own
    assert "| the preset's own rate | 0.001 | 0.001 | 0.001 |" in table


def test_the_best_table_has_one_row_when_every_arm_is_best_at_the_shared_rate(tmp_path):
    agreeing = {rate: dict(arms) for rate, arms in SWEEP.items()}
    agreeing[3e-2]["batchrenorm"] = [0.80, 0.80, 0.80]  # now 1e-2 is every arm's best
    write_sweep(tmp_path, agreeing)
    table = results.format_best_table(results.load_learning_rate_sweep(tmp_path, "quick"))
    rows = [line for line in table.splitlines()[2:]]
    assert [row.split(" | ")[0] for row in rows] == [
        "| the preset's own rate", "| best for batch norm and renorm together, and each arm's own best"]
    assert "| 0.01 | 0.01 | 0.01 |" in rows[1]


def test_the_sweep_tables_give_each_rates_paired_difference_and_mismatch(tmp_path):
    write_sweep(tmp_path, SWEEP)
    sweep = results.load_learning_rate_sweep(tmp_path, "quick")
    table = results.format_sweep_table(sweep)
    row = next(line for line in table.splitlines() if line.startswith("| 0.01 |"))
    deltas = 100 * (np.array(SWEEP[1e-2]["batchrenorm"]) - np.array(SWEEP[1e-2]["batchnorm"]))
    low, high = stats.t.interval(0.95, 2, loc=deltas.mean(), scale=stats.sem(deltas))
    assert f"{deltas.mean():+.2f} [{low:+.2f}, {high:+.2f}]" in row
    mismatch = results.format_sweep_mismatch_table(sweep)
    row = next(line for line in mismatch.splitlines() if line.startswith("| 0.03 |"))
    assert row.split(" | ")[1] == "+5.00 [+5.00, +5.00]"  # batch norm's, written as 0.05


def test_trend_projects_the_seeds_slopes_over_one_more_quarter(tmp_path):
    # Evaluations at steps 10 … 80: the last quarter is steps 60, 70, 80.
    reference = [[0.1, 0.3, 0.5, 0.6, 0.7, 0.80, 0.81, 0.80],
                 [0.1, 0.3, 0.5, 0.6, 0.7, 0.82, 0.83, 0.84],
                 [0.2, 0.3, 0.4, 0.6, 0.7, 0.79, 0.80, 0.80]]
    climbing = [[v + (0.01 * (i - 5) * (1 + seed) if i >= 5 else 0.0)
                 for i, v in enumerate(row)] for seed, row in enumerate(reference)]
    write_runs(tmp_path, "batchnorm", reference, last=2)
    write_runs(tmp_path, "batchrenorm", climbing, last=2)
    found = results.trend(results.load_results(tmp_path, "quick"), "batchrenorm", "batchnorm")
    # Reference: SciPy's linear regression per seed, and its t-interval across seeds.
    deltas = 100 * (np.array(climbing) - np.array(reference))
    slopes = [stats.linregress([60, 70, 80], row[5:]).slope for row in deltas]
    projected = np.array(slopes) * 20  # a quarter of 80 steps
    low, high = stats.t.interval(0.95, 2, loc=projected.mean(), scale=stats.sem(projected))
    assert found.change == pytest.approx(projected.mean())
    assert (found.low, found.high) == pytest.approx((low, high))
    reported = deltas[:, -2:].mean(axis=1)
    assert found.half_width == pytest.approx(stats.t.ppf(0.975, 2) * stats.sem(reported))
    assert found.steady == (abs(projected.mean()) <= found.half_width)
    assert not found.steady  # +2, +4, +6 points per quarter against a half-width near 2.5
    # A difference that stopped moving passes.
    write_runs(tmp_path, "baseline", [[v + 0.01 * seed for v in row]
                                      for seed, row in enumerate(reference)])
    flat = results.trend(results.load_results(tmp_path, "quick"), "baseline", "batchnorm")
    assert flat.change == pytest.approx(0.0, abs=1e-9) and flat.steady


def test_a_family_of_differences_gets_bonferroni_intervals(tmp_path):
    write_runs(tmp_path, "batchnorm", [[0.5, 0.6], [0.5, 0.62], [0.55, 0.61], [0.5, 0.6]])
    write_runs(tmp_path, "batchrenorm", [[0.5, 0.63], [0.5, 0.64], [0.55, 0.62], [0.5, 0.65]])
    write_runs(tmp_path, "baseline", [[0.5, 0.59], [0.5, 0.66], [0.55, 0.6], [0.5, 0.61]])
    loaded = results.load_results(tmp_path, "quick")
    loaded = results.Results(dataclasses.replace(loaded.preset, final_evaluations=1), loaded)
    pairs = [("batchrenorm", "batchnorm"), ("baseline", "batchnorm"), ("baseline", "batchrenorm")]
    family = results.paired_differences(loaded, pairs)
    for (arm, reference), diff in zip(pairs, family):
        d = np.array(loaded.final(arm)) - np.array(loaded.final(reference))  # in points
        # Each interval at 1 − 0.05 / 3: SciPy's t-interval at that level.
        low, high = stats.t.interval(1 - 0.05 / 3, len(d) - 1, loc=d.mean(), scale=stats.sem(d))
        assert (diff.low, diff.high) == pytest.approx((low, high))
    assert results.bonferroni_level(1) == pytest.approx(0.95)
    with pytest.raises(ValueError, match="`family_size`"):
        results.bonferroni_level(0)


def test_gaps_read_as_a_family_share_the_bonferroni_level_of_those_found(tmp_path):
    write_runs(tmp_path, "batchnorm", [[0.5, 0.6, 0.6], [0.5, 0.62, 0.6], [0.55, 0.61, 0.63]])
    write_runs(tmp_path, "batchnorm_iid", [[0.5, 0.66, 0.7], [0.5, 0.64, 0.69], [0.5, 0.65, 0.7]])
    write_runs(tmp_path, "batchnorm_remixed", [[0.5, 0.64, 0.66], [0.5, 0.63, 0.65],
                                               [0.5, 0.66, 0.67]])
    loaded = results.load_results(tmp_path, "quick")
    found = results.gaps(loaded, results.WORKERS_GAPS, family=True)
    assert [gap.name for gap in found] == [name for name, *_ in results.WORKERS_GAPS[:3]]
    for gap, (_, arm, reference) in zip(found, results.WORKERS_GAPS):
        d = np.array(loaded.final(arm)) - np.array(loaded.final(reference))
        low, high = stats.t.interval(1 - 0.05 / 3, 2, loc=d.mean(), scale=stats.sem(d))
        assert (gap.difference.low, gap.difference.high) == pytest.approx((low, high))
    single = results.gaps(loaded, results.WORKERS_GAPS)[0].difference
    assert single.high - single.low < found[0].difference.high - found[0].difference.low


def test_lag_and_mismatch_at_a_step_are_differences_of_seed_means(tmp_path):
    moving = [[0.2, 0.5], [0.4, 0.6]]
    calibrated = [[0.6, 0.6], [0.8, 0.7]]
    minibatch = [[0.1, 0.3], [0.2, 0.4]]
    write_runs(tmp_path, "batchnorm", moving, calibrated, pairs=(moving, minibatch))
    write_runs(tmp_path, "batchrenorm", moving, calibrated)  # no minibatch-statistics score
    loaded = results.load_results(tmp_path, "quick")
    scores = results.scores_at(loaded, 10)
    np.testing.assert_allclose(scores["batchnorm"]["val_accuracy_minibatch_stats"], [10.0, 20.0])
    assert set(scores["batchrenorm"]) == {"val_accuracy", "val_accuracy_recalibrated"}
    found = results.lag_and_mismatch_at(loaded, 20)
    # Step 20: moving 0.55, recalibrated 0.65, minibatch statistics 0.35 (seed means).
    np.testing.assert_allclose(found["batchnorm"], (10.0, 20.0))
    assert found["batchrenorm"][1] is None
    assert results.format_lag_and_mismatch(loaded, 20) == (
        "step 20: Batchnorm lag +10.0, mismatch +20.0; Batch Renorm lag +10.0")
    with pytest.raises(ValueError, match="`step` must be one of the evaluated steps"):
        results.scores_at(loaded, 15)


def test_welch_interval_is_scipys_unequal_variance_interval():
    from scipy import stats

    a, b = [1.0, 2.5, 3.0, 4.5, 2.0], [0.5, 0.1, 1.9]
    difference, (low, high) = results.welch_interval(a, b)
    reference = stats.ttest_ind(a, b, equal_var=False).confidence_interval(0.95)
    assert difference == pytest.approx(np.mean(a) - np.mean(b))
    assert (low, high) == pytest.approx((reference.low, reference.high))
    with pytest.raises(ValueError, match="at least 2 values"):
        results.welch_interval([1.0], b)


def test_error_ratio_divides_the_seed_mean_test_errors_over_shared_seeds(tmp_path):
    write_runs(tmp_path, "batchnorm", [[0.1, 0.80], [0.1, 0.70], [0.1, 0.10]], last=1)
    write_runs(tmp_path, "batchnorm_iid", [[0.1, 0.90], [0.1, 0.95]])
    loaded = results.load_results(tmp_path, "quick")
    # Seeds 0 and 1 only: errors 25 % against 7.5 %.
    assert results.error_ratio(loaded, "batchnorm", "batchnorm_iid") == pytest.approx(25 / 7.5)
    np.testing.assert_allclose(results.paired_deltas(loaded, "batchnorm", "batchnorm_iid"),
                               [-10.0, -25.0])
