"""Result files and their statistics: CSVs, settings, `Results`, and paired differences.

Everything that reads or writes experiment results lives here. It never
imports TensorFlow itself, so the runner and the plots agree on one format
and reading results works on every backend. What the arms and presets
are is `brlib.protocol`'s.
"""

import collections.abc
import csv
import dataclasses
import io
import json
import re
from pathlib import Path

import numpy as np

from brlib.files import write_atomic
from brlib.validation import check_integer
from brlib.protocol import ARMS, BEFORE_THEY_EXISTED, PRESETS, Preset, check_arms, reported

# What every evaluation records. `train_accuracy` is the training-mode accuracy on the
# training minibatches since the last evaluation; `val_accuracy_minibatch_stats` is the
# test split in training mode, in groups drawn as the preset's training groups are (of
# the arm's own size; paired groups of 32 in a paired preset, for every arm), so that
# each group is normalized by its own statistics. Inference minus
# that accuracy is the train/inference mismatch. `train_loss` is measured in training
# mode too, so `train_loss_inference` and `train_accuracy_inference` score the inference
# model on fixed training examples instead. `test_examples` is how many test examples
# the row's three test accuracies scored (a sample before the last quarter of a run).
# (Results written before a column existed lack it, and load without it.)
COLUMNS = ["step", "val_accuracy", "val_loss", "val_accuracy_recalibrated",
           "val_loss_recalibrated", "train_loss", "r_clipped", "d_clipped", "wall_seconds",
           "train_accuracy", "val_accuracy_minibatch_stats", "train_loss_inference",
           "train_accuracy_inference", "test_examples"]
INTEGER_COLUMNS = ("step", "test_examples")
SETTINGS_FILE = "settings.json"


# ---------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------
def committed_results():
    """The directory of the committed results: the checkout's data/results, else the copy
    that ships inside the installed package (as in Colab, without a clone)."""
    here = Path(__file__).resolve().parent
    checkout = here.parent / "data" / "results"
    return checkout if checkout.is_dir() else here / "committed_results"


def result_path(results_dir, preset_name, arm, seed):
    return Path(results_dir) / preset_name / f"{arm}_seed{seed}.csv"


def rows_to_csv(rows):
    """CSV bytes of result rows, in COLUMNS order; a column absent from the rows is left out
    (results written before it existed), a key outside COLUMNS is an error."""
    columns = [name for name in COLUMNS if not rows or name in rows[0]]
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return text.getvalue().encode()


def same_runs(directory, other):
    """Per result CSV of `directory`: whether `other` holds the same file, byte for byte
    apart from the `wall_seconds` column. Returns {file name: bool}."""
    def without_wall_seconds(path):
        lines = Path(path).read_text().splitlines()
        column = lines[0].split(",").index("wall_seconds")
        return [[v for i, v in enumerate(line.split(",")) if i != column] for line in lines]

    return {path.name: (Path(other) / path.name).is_file()
            and without_wall_seconds(path) == without_wall_seconds(Path(other) / path.name)
            for path in sorted(Path(directory).glob("*.csv"))}


def read_csv(path):
    """Rows of a result CSV as dicts of numbers: `step` and `test_examples` ints, the rest floats.

    Written back with `rows_to_csv`, the rows give the same bytes (floats print as
    their shortest repr, which reads back to the same float).
    """
    with open(path, newline="") as handle:
        return [{k: int(v) if k in INTEGER_COLUMNS else float(v) for k, v in row.items()}
                for row in csv.DictReader(handle)]


def check_settings(directory, settings, ignore=("seeds",)):
    """Checks `settings` (a dict) against those recorded in `directory`; writes nothing.

    A results directory belongs to one set of settings. Writing results of
    other settings into it would mix them, and skipping finished seeds would
    return stale ones, so a mismatch is an error that names what differs.
    Keys in `ignore` may differ (more seeds of the same settings are fine).
    A setting the record lacks has the value that runs recorded before it
    existed trained with (`brlib.protocol.BEFORE_THEY_EXISTED`).
    A directory without a record is fine unless it holds result CSVs.
    Returns whether a record exists.
    """
    path = Path(directory) / SETTINGS_FILE
    # Tuples become lists, as on disk.
    wanted = {**BEFORE_THEY_EXISTED, **json.loads(json.dumps(settings))}
    if path.exists():
        stored = {**BEFORE_THEY_EXISTED, **json.loads(path.read_text())}
        differ = sorted(key for key in set(stored) | set(wanted) if key not in ignore
                        and stored.get(key) != wanted.get(key))
        if differ:
            details = "; ".join(f"{key}: {stored.get(key)!r} on disk, {wanted.get(key)!r} now"
                                for key in differ)
            raise ValueError(
                f"{directory} holds results of other settings ({details}). Pass another "
                f"`results_dir` (--results-dir), or delete {directory} to start over.")
        return True
    if Path(directory).exists() and any(Path(directory).glob("*.csv")):
        raise ValueError(f"{directory} holds result CSVs but no {SETTINGS_FILE}, so their "
                         "settings are unknown. Move them away or delete them.")
    return False


def record_settings(directory, settings):
    """Checks `settings` as `check_settings` does, and records them if nothing is recorded.

    The runner calls it when a run starts, so a command that fails before
    training (missing data, a bad setting) leaves no directory behind.
    """
    if not check_settings(directory, settings):
        wanted = json.loads(json.dumps(settings))
        write_atomic(Path(directory) / SETTINGS_FILE,
                     (json.dumps(wanted, indent=1, sort_keys=True) + "\n").encode())
    return Path(directory) / SETTINGS_FILE


def has_results(results_dir, preset_name):
    """Whether a preset has a finished run: a result CSV (not an unfinished run's hidden
    .partial.csv)."""
    return any(not path.name.startswith(".")
               for path in Path(results_dir, preset_name).glob("*_seed*.csv"))


def load_settings(results_dir, preset_name):
    """The settings recorded beside a preset's results, or None."""
    path = Path(results_dir) / preset_name / SETTINGS_FILE
    return json.loads(path.read_text()) if path.exists() else None


# ---------------------------------------------------------------------------
# Curves and statistics
# ---------------------------------------------------------------------------
@dataclasses.dataclass
class Curves:
    """One arm's results: every column as an array of shape (seeds, evaluations)."""

    steps: np.ndarray
    seeds: list
    columns: dict

    def __getitem__(self, column):
        return self.columns[column]


class Results(collections.abc.Mapping):
    """One preset's results: {arm: Curves} in `ARMS` order, and the preset that trained them.

    A read-only mapping from arm name to `Curves`, with `.preset`, the
    `brlib.protocol.Preset` that the results directory records. The tables,
    the figures and the paired differences read the preset's
    `final_evaluations` (how many last evaluations make a run's final
    accuracy) from it.
    """

    def __init__(self, preset, curves):
        if not isinstance(preset, Preset):
            raise TypeError(f"`preset` must be a brlib.protocol.Preset; got {type(preset).__name__}.")
        self.preset = preset
        self._curves = {arm: curves[arm] for arm in ARMS if arm in curves}
        unknown = set(curves) - set(self._curves)
        if unknown:
            raise ValueError(f"`curves` has arms that are not in ARMS: {sorted(unknown)}.")

    def __getitem__(self, arm):
        return self._curves[arm]

    def __iter__(self):
        return iter(self._curves)

    def __len__(self):
        return len(self._curves)

    def __repr__(self):
        return f"Results(preset={self.preset.name!r}, arms={list(self)})"

    @property
    def last(self):
        """How many last evaluations make a run's final accuracy (the preset's `final_evaluations`)."""
        return self.preset.final_evaluations

    def final(self, arm, column="val_accuracy"):
        """Per seed, `column` of `arm` at the end of the run: the mean of its last `last`
        evaluations, in % for accuracies and clip fractions (`in_percent`), as recorded
        for the others (losses)."""
        return scale_of(column) * final_values(self[arm][column], self.last)

    def only(self, arms):
        """The same results with only `arms` (those of them that have results), in ARMS order."""
        return Results(self.preset, {arm: self[arm] for arm in check_arms(arms) if arm in self})


def load_results(results_dir, preset_name, arms=None):
    """The `Results` of one preset: the arms with result CSVs on disk, and their preset.

    The preset is the one the directory's settings.json records; a directory
    without it (results copied by hand) is read with the named preset's
    current settings, which must then exist.

    Args:
        results_dir: The results root; the CSVs are in `<root>/<preset_name>/`.
        preset_name: The preset's name.
        arms: The arms to read; None for every arm with results.
    """
    results = {}
    for arm in check_arms(arms) if arms is not None else ARMS:
        # "batchnorm_seed*" would also match batchnorm_seedbug's files: match exactly.
        pattern = re.compile(rf"{re.escape(arm)}_seed(\d+)\.csv")
        found = {int(m.group(1)): path for path in Path(results_dir, preset_name).glob("*.csv")
                 if (m := pattern.fullmatch(path.name))}
        if not found:
            continue
        seeds = sorted(found)
        runs = [read_csv(found[seed]) for seed in seeds]
        length = min(len(run) for run in runs)
        columns = {name: np.array([[row[name] for row in run[:length]] for run in runs])
                   for name in COLUMNS if name in runs[0][0]}
        results[arm] = Curves(columns["step"][0], seeds, columns)
    if not results:
        raise FileNotFoundError(f"no result CSVs in {Path(results_dir, preset_name)}; "
                                f"run `python -m brlib reproduce --preset {preset_name}` first")
    return Results(load_preset(results_dir, preset_name), results)


def load_preset(results_dir, preset_name):
    """The preset that trained a results directory: its settings.json (with the named
    preset's values for settings it lacks), else `PRESETS[name]`."""
    settings = load_settings(results_dir, preset_name)
    if settings is not None:
        return Preset.from_settings(settings, base=PRESETS.get(preset_name))
    if preset_name not in PRESETS:
        raise FileNotFoundError(f"{Path(results_dir, preset_name, SETTINGS_FILE)} is missing, and "
                                f"{preset_name!r} is not one of the presets {sorted(PRESETS)}")
    return PRESETS[preset_name]


def in_percent(column):
    """Whether a recorded column is a fraction that results report in % (and differences in
    points): the accuracies and the clipped fractions of r and d, not the losses."""
    return "accuracy" in column or column in ("r_clipped", "d_clipped")


def scale_of(column):
    """What a recorded value is multiplied by when reported: 100 for `in_percent` columns, else 1."""
    return 100 if in_percent(column) else 1


def shared_seeds(results, arm, reference):
    """The seeds that both arms have, in order, or a ValueError."""
    common = sorted(set(results[arm].seeds) & set(results[reference].seeds))
    if not common:
        raise ValueError(f"arms {arm!r} and {reference!r} share no seed")
    return common


# The three test scores of one evaluation: moving averages, recalibrated, and minibatch
# statistics on test microbatches.
SNAPSHOT_SCORES = ("val_accuracy", "val_accuracy_recalibrated", "val_accuracy_minibatch_stats")


def scores_at(results, step):
    """{arm: {score column: per-seed values in %}} at one evaluated `step`, for the
    SNAPSHOT_SCORES each arm recorded."""
    steps = list(next(iter(results.values())).steps)
    if step not in steps:
        raise ValueError(f"`step` must be one of the evaluated steps {steps}; got step={step!r}.")
    return {arm: {column: 100 * curves[column][:, list(curves.steps).index(step)]
                  for column in SNAPSHOT_SCORES if column in curves.columns}
            for arm, curves in results.items()}


def lag_and_mismatch_at(results, step):
    """{arm: (lag, mismatch)} at `step`, in points of seed means: lag = recalibrated −
    moving averages, mismatch = moving averages − minibatch statistics (None where an
    arm did not record the minibatch-statistics score)."""
    found = {}
    for arm, scores in scores_at(results, step).items():
        moving, calibrated, minibatch = (scores[c].mean() if c in scores else None
                                         for c in SNAPSHOT_SCORES)
        found[arm] = (calibrated - moving, None if minibatch is None else moving - minibatch)
    return found


def format_lag_and_mismatch(results, step):
    """`lag_and_mismatch_at` as one line: "step 300: Batchnorm lag +12.0, mismatch -1.5; …"."""
    points = lambda value: f"{round(value, 1) + 0.0:+.1f}"  # + 0.0: no "-0.0"
    parts = [f"{ARMS[arm].label} lag {points(lag)}"
             + ("" if mismatch is None else f", mismatch {points(mismatch)}")
             for arm, (lag, mismatch) in lag_and_mismatch_at(results, step).items()]
    return f"step {step}: " + "; ".join(parts)


def final_values(values, last):
    """Per seed, the mean of the last `last` evaluations of (seeds, evaluations) values."""
    return np.asarray(values)[:, -last:].mean(axis=1)


def t_interval(samples, level=0.95):
    """Mean, sample sd and the two-sided t confidence interval of the mean."""
    from scipy import stats

    samples = np.asarray(samples, dtype=float)
    n = len(samples)
    mean = samples.mean()
    if n < 2:
        return mean, float("nan"), (float("nan"), float("nan"))
    sd = samples.std(ddof=1)
    half = stats.t.ppf(0.5 + level / 2, n - 1) * sd / np.sqrt(n)
    return mean, sd, (mean - half, mean + half)


def mean_band(values, level=0.95):
    """Per evaluation, the seed mean and the half-width of its t confidence interval."""
    from scipy import stats

    values = np.asarray(values, dtype=float)
    n = len(values)
    mean = values.mean(axis=0)
    if n < 2:
        return mean, np.zeros_like(mean)
    return mean, stats.t.ppf(0.5 + level / 2, n - 1) * values.std(axis=0, ddof=1) / np.sqrt(n)


@dataclasses.dataclass(frozen=True)
class Difference:
    """A paired per-seed difference between two arms: in points for accuracies, in the
    column's own units for losses (see `in_percent`)."""

    arm: str
    reference: str
    column: str
    seeds: int
    mean: float
    sd: float
    low: float
    high: float

    @property
    def distinguishable(self):
        """Whether the 95 % interval excludes zero."""
        return self.low > 0 or self.high < 0


def paired_difference(results, arm, reference, column="val_accuracy", level=0.95):
    """`arm` minus `reference` over the seeds both have, with a t-interval.

    In points for accuracies, in the column's units for losses (`Results.final`).

    Args:
        results: `Results` of one preset; a run's final value is the mean of
            its last `results.last` evaluations.
        arm: The arm whose value comes first.
        reference: The arm subtracted from it.
        column: The recorded quantity compared.
        level: The interval's confidence level; `bonferroni_level` gives the
            level of each interval of a family read together.
    """
    deltas = paired_deltas(results, arm, reference, column)
    mean, sd, (low, high) = t_interval(deltas, level)
    return Difference(arm, reference, column, len(deltas), mean, sd, low, high)


def bonferroni_level(family_size, level=0.95):
    """The confidence level of each of `family_size` intervals read together (Bonferroni).

    When every interval has this level, all of them cover their true values
    at once with probability `level` or more, whatever their dependence: an
    interval of the family that excludes zero is then a finding of the
    family, not one of the several that exclude zero by chance.
    """
    check_integer("family_size", family_size, "a positive integer", lambda v: v > 0)
    return 1 - (1 - level) / family_size


def paired_differences(results, pairs, column="val_accuracy", level=0.95):
    """The paired differences of (arm, reference) `pairs`, read as one family (Bonferroni).

    Each interval has level `bonferroni_level(len(pairs), level)`, so that
    together they hold at `level`.
    """
    each = bonferroni_level(len(pairs), level)
    return [paired_difference(results, arm, reference, column, each)
            for arm, reference in pairs]


@dataclasses.dataclass(frozen=True)
class Steadiness:
    """How far a paired difference moved over the last quarter of the runs, in the units of
    `paired_difference` (points for accuracies)."""

    arm: str
    reference: str
    column: str
    drift: float
    half_width: float

    @property
    def steady(self):
        """Whether the difference moved no more than the half-width of its 95 % interval."""
        return self.drift <= self.half_width

    def __str__(self):
        """"drift ≤ half-width" (or ">"), in points, as the tables print it."""
        return f"{self.drift:.2f} {'≤' if self.steady else '>'} {self.half_width:.2f}"


def format_difference(diff):
    """A difference as "mean [low, high]", saying so when its interval includes zero, and
    when every seed gave the same difference (no interval to speak of)."""
    if diff.sd == 0:
        return ("identical in every seed" if diff.mean == 0
                else f"{diff.mean:+.2f} in every seed")
    mark = "" if diff.distinguishable else " (not distinguishable from 0)"
    return f"{diff.mean:+.2f} [{diff.low:+.2f}, {diff.high:+.2f}]{mark}"


def paired_curves(results, arm, reference, column):
    """(seeds, evaluations) paired differences in `paired_difference`'s units, and the steps."""
    a, b = results[arm], results[reference]
    common = shared_seeds(results, arm, reference)
    if not np.array_equal(a.steps, b.steps):
        raise ValueError(f"arms {arm!r} and {reference!r} were evaluated at different steps")
    pick = lambda curves: scale_of(column) * np.asarray(curves[column])[
        [curves.seeds.index(s) for s in common]]
    return pick(a) - pick(b), np.asarray(a.steps)


def steady_state(results, arm, reference, column="val_accuracy"):
    """Whether the difference `arm` − `reference` has settled, against its own uncertainty.

    With D(t) the seed mean of the paired difference at evaluation t (the
    seeds both arms have) and D the difference reported (the mean of the last
    `results.last` evaluations), the drift is the largest |D(t) − D| over the
    evaluations in the last quarter of the run. The comparison is read at a
    steady state when the drift is no larger than the half-width of D's 95 %
    interval: over the last quarter the difference moved no more than the
    uncertainty of the number reported.

    Args:
        results: `Results` of one preset.
        arm: The arm whose value comes first.
        reference: The arm subtracted from it.
        column: The recorded quantity compared.
    """
    deltas, steps = paired_curves(results, arm, reference, column)
    reported = final_values(deltas, results.last)
    in_last_quarter = steps >= 0.75 * steps[-1]
    drift = float(np.max(np.abs(deltas.mean(axis=0)[in_last_quarter] - reported.mean())))
    _, _, (low, high) = t_interval(reported)
    return Steadiness(arm, reference, column, drift, (high - low) / 2)


@dataclasses.dataclass(frozen=True)
class Trend:
    """Where a paired difference was heading over the last quarter of the runs.

    `change` and its interval (`low`, `high`) are the change that the seeds'
    mean slope projects over one more quarter of the run, in the units of
    `paired_difference`; `half_width` is that of the reported difference.
    """

    arm: str
    reference: str
    column: str
    change: float
    low: float
    high: float
    half_width: float

    @property
    def steady(self):
        """Whether the projected change is no larger than the reported difference's half-width."""
        return abs(self.change) <= self.half_width

    def __str__(self):
        return (f"{self.change:+.2f} [{self.low:+.2f}, {self.high:+.2f}] "
                f"{'≤' if self.steady else '>'} {self.half_width:.2f}")


def trend(results, arm, reference, column="val_accuracy"):
    """The slope test of a steady state: where `arm` − `reference` was heading at the end.

    Per seed, the least-squares slope of the paired difference over the
    evaluations of the last quarter of the run; across seeds, its mean and
    95 % t-interval, times a quarter of the run's steps: the change that
    trend would add over one more quarter. The test passes when that change
    is no larger than the half-width of the reported difference's interval.
    `steady_state` asks how far the difference moved; this asks whether it
    was still moving.

    Args:
        results: `Results` of one preset; the last quarter must hold at least
            two evaluations.
        arm: The arm whose value comes first.
        reference: The arm subtracted from it.
        column: The recorded quantity compared.
    """
    deltas, steps = paired_curves(results, arm, reference, column)
    in_last_quarter = steps >= 0.75 * steps[-1]
    if in_last_quarter.sum() < 2:
        raise ValueError("the last quarter of the runs holds fewer than two evaluations: "
                         "no slope to fit")
    x = steps[in_last_quarter].astype(float)
    slopes = np.polyfit(x, deltas[:, in_last_quarter].T, 1)[0]  # one per seed
    quarter = 0.25 * steps[-1]
    mean, _, (low, high) = t_interval(slopes * quarter)
    _, _, (d_low, d_high) = t_interval(final_values(deltas, results.last))
    return Trend(arm, reference, column, float(mean), float(low), float(high),
                 float((d_high - d_low) / 2))


def format_table(results, reference="batchnorm"):
    """A Markdown table of each arm's final accuracy and its paired difference to `reference`.

    The last column checks each difference for a steady state (`steady_state`):
    its drift over the last quarter against its interval's half-width, with
    moving averages, then recalibrated.

    Args:
        results: `Results` of one preset; one row per arm.
        reference: The arm every other arm is paired with.
    """
    lines = ["| arm | seeds | moving averages (%) | recalibrated (%) | "
             f"− {ARMS[reference].label}, moving averages | − {ARMS[reference].label}, "
             "recalibrated | steady: last-quarter drift ≤ half-width |",
             "|---|---|---|---|---|---|---|"]
    for arm, curves in results.items():
        cells = [ARMS[arm].label, str(len(curves.seeds))]
        for column in ("val_accuracy", "val_accuracy_recalibrated"):
            mean, sd, _ = t_interval(results.final(arm, column))
            cells.append(f"{mean:.2f} ± {sd:.2f}")
        for column in ("val_accuracy", "val_accuracy_recalibrated"):
            if arm == reference or reference not in results:
                cells.append("—")
                continue
            cells.append(format_difference(paired_difference(results, arm, reference, column)))
        if arm == reference or reference not in results:
            cells.append("—")
        else:
            steady = [steady_state(results, arm, reference, column)
                      for column in ("val_accuracy", "val_accuracy_recalibrated")]
            cells.append(", ".join(map(str, steady)))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# The paper's Figure 3 columns beside the table: training, test with moving averages,
# test with minibatch statistics.
_PAPER_QUANTITIES = ("training", "test", "minibatch")


def _paper_cell(arm):
    """The paper's Figure 3 numbers of `arm`, as "training / test / minibatch stats"."""
    cells = []
    for quantity in _PAPER_QUANTITIES:
        found = reported("figure3", "paper", arm, quantity)
        cells.append(" ".join(f"{n.percent:.1f}" + (f" ({n.from_figure})" if n.from_figure else "")
                              for n in found) or "—")
    return " / ".join(cells)


NONIID_COLUMNS = (("train_accuracy", "training"),
                  ("train_accuracy_inference", "training examples, inference network"),
                  ("val_accuracy", "test, moving averages"),
                  ("val_accuracy_recalibrated", "test, recalibrated"),
                  ("val_accuracy_minibatch_stats", "test, minibatch statistics"))


def within_arm_difference(results, arm, column, reference):
    """`column` minus `reference` of one arm, paired by seed: (mean, (low, high)).

    In points for accuracies, in the columns' units for losses (`Results.final`).

    Args:
        results: `Results` of one preset.
        arm: The arm.
        column: The recorded quantity that comes first.
        reference: The recorded quantity subtracted from it.
    """
    mean, _, interval = t_interval(results.final(arm, column) - results.final(arm, reference))
    return mean, interval


def _within_arm_cell(results, arm, column, reference):
    """A within-arm difference as a table cell, "mean [low, high]" in points."""
    mean, (low, high) = within_arm_difference(results, arm, column, reference)
    return f"{mean:+.2f} [{low:+.2f}, {high:+.2f}]"


def format_noniid_table(results):
    """A Markdown table of the non-i.i.d. experiment beside the paper's Figure 3 numbers.

    Every accuracy is mean ± sd over seeds; below the table, each arm's
    generalization gap (training minus test with moving averages) and the
    gain from normalizing test groups by their own statistics, paired by seed.
    """
    # Results from before a column existed lack it: it is left out when no arm has it.
    shown = [(column, name) for column, name in NONIID_COLUMNS
             if any(column in curves.columns for curves in results.values())]
    header = " | ".join(f"{name} (%)" for _, name in shown)
    lines = [f"| arm | seeds | {header} | paper: training / test / minibatch stats |",
             "|---|---|" + "---|" * len(shown) + "---|"]
    for arm, curves in results.items():
        cells = [ARMS[arm].label, str(len(curves.seeds))]
        for column, _ in shown:
            if column not in curves.columns:
                cells.append("—")
                continue
            mean, sd, _ = t_interval(results.final(arm, column))
            cells.append(f"{mean:.2f} ± {sd:.2f}")
        cells.append(_paper_cell(arm))
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    for arm, curves in results.items():
        if not {"train_accuracy", "val_accuracy_minibatch_stats"} <= set(curves.columns):
            continue  # results from before these columns existed
        gap, (low, high) = within_arm_difference(results, arm, "train_accuracy", "val_accuracy")
        gain, (g_low, g_high) = within_arm_difference(results, arm, "val_accuracy_minibatch_stats",
                                                      "val_accuracy")
        lines.append(f"- {ARMS[arm].label}: training − test {gap:+.2f} [{low:+.2f}, {high:+.2f}]; "
                     f"minibatch statistics − moving averages {gain:+.2f} [{g_low:+.2f}, {g_high:+.2f}]")
    return "\n".join(lines)


# What each arm's inference model loses, and why, paired by seed within the arm.
WITHIN_ARM = (("mismatch", "val_accuracy", "val_accuracy_minibatch_stats",
               "inference − minibatch statistics"),
              ("lag", "val_accuracy_recalibrated", "val_accuracy",
               "recalibrated − moving averages"))


def format_mismatch_table(results):
    """A Markdown table of each arm's train/inference mismatch and lag, with 95 % intervals.

    The mismatch is the test accuracy of the inference model (moving
    averages) minus the same model's accuracy in training mode, with every
    test group normalized by its own statistics: how far the network that
    training shaped is from the one inference runs. The lag is the
    recalibrated accuracy minus the moving-average one: how far the moving
    averages trail the weights. Both are paired by seed, in points. Arms
    whose results predate the minibatch-statistics column show "—".
    """
    lines = ["| arm | seeds | training accuracy, training mode (%) | test, minibatch statistics (%) | "
             + " | ".join(f"{name}: {text}" for name, _, _, text in WITHIN_ARM) + " |",
             "|---|---|---|---|" + "---|" * len(WITHIN_ARM)]
    for arm, curves in results.items():
        cells = [ARMS[arm].label, str(len(curves.seeds))]
        for column in ("train_accuracy", "val_accuracy_minibatch_stats"):
            if column in curves.columns:
                mean, sd, _ = t_interval(results.final(arm, column))
                cells.append(f"{mean:.2f} ± {sd:.2f}")
            else:
                cells.append("—")
        for _, column, reference, _ in WITHIN_ARM:
            if column not in curves.columns or reference not in curves.columns:
                cells.append("—")
                continue
            cells.append(_within_arm_cell(results, arm, column, reference))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------
# Figure 3 against the number of classes
# ---------------------------------------------------------------------------
# What pairing costs, as paired − i.i.d. differences in one preset: for batch norm,
# for batch renorm, and the paper's comparison (renorm on pairs against batch norm on
# i.i.d. groups, which the paper found equal). Each is (name, arm, reference).
PAIRING_GAPS = (("batch norm: pairs − i.i.d.", "batchnorm", "batchnorm_iid"),
                ("batch renorm: pairs − i.i.d.", "batchrenorm", "batchrenorm_iid"),
                ("GroupNorm: pairs − i.i.d.", "groupnorm", "groupnorm_iid"),
                ("batch renorm on pairs − batch norm i.i.d.", "batchrenorm", "batchnorm_iid"))
# The same three gaps with norm4, the normalization of the class scores, removed.
RAW_LOGIT_GAPS = (
    ("batch norm, no norm4: pairs − i.i.d.", "batchnorm_rawlogits", "batchnorm_iid_rawlogits"),
    ("batch renorm, no norm4, on pairs − batch norm, no norm4, i.i.d.", "batchrenorm_rawlogits",
     "batchnorm_iid_rawlogits"),
    ("batch renorm, no norm4 − batch renorm", "batchrenorm_rawlogits", "batchrenorm"),
    ("batch norm, no norm4 − batch norm", "batchnorm_rawlogits", "batchnorm"))
# Renorm with no bounds at all, against clipped renorm and against batch norm on i.i.d. groups.
UNCLIPPED_GAPS = (("batch renorm, rmax = dmax = ∞ − batch renorm", "batchrenorm_unclipped",
                   "batchrenorm"),
                  ("batch renorm, rmax = dmax = ∞, on pairs − batch norm i.i.d.",
                   "batchrenorm_unclipped", "batchnorm_iid"))


# Figure 3 in the paper's structure (`glyphs_workers`): pairing's cost split into a partner in
# the group (pairs − re-mixed: the same examples, no pair inside a group) and the paired
# sampling itself (re-mixed − i.i.d.), and whether renorm repairs either. Read as one family.
WORKERS_GAPS = (
    ("batch norm: pairs − i.i.d.", "batchnorm", "batchnorm_iid"),
    ("batch norm: pairs − re-mixed (a partner in the group)", "batchnorm", "batchnorm_remixed"),
    ("batch norm: re-mixed − i.i.d. (the paired sampling)", "batchnorm_remixed", "batchnorm_iid"),
    ("batch renorm: pairs − i.i.d.", "batchrenorm", "batchrenorm_iid"),
    ("batch renorm: pairs − re-mixed (a partner in the group)", "batchrenorm",
     "batchrenorm_remixed"),
    ("batch renorm − batch norm, on pairs", "batchrenorm", "batchnorm"),
    ("batch renorm − batch norm, i.i.d.", "batchrenorm_iid", "batchnorm_iid"),
    ("batch renorm, warm-up × 2 − batch renorm, on pairs", "batchrenorm_longwarmup",
     "batchrenorm"),
    # Renorm with its warm-up twice as long: does it then repair pairing (the paper: renorm on
    # pairs level with batch norm on i.i.d. groups)?
    ("batch renorm, warm-up × 2 − batch norm, on pairs", "batchrenorm_longwarmup", "batchnorm"),
    ("batch renorm, warm-up × 2, on pairs − batch norm i.i.d.", "batchrenorm_longwarmup",
     "batchnorm_iid"))


# `glyphs_workers_long` (every phase twice as long) runs the headline arms: batch norm on pairs
# and i.i.d. and renorm on pairs; read as one family.
LONG_GAPS = (("batch norm: pairs − i.i.d.", "batchnorm", "batchnorm_iid"),
             ("batch renorm − batch norm, on pairs", "batchrenorm", "batchnorm"),
             ("batch renorm on pairs − batch norm i.i.d.", "batchrenorm", "batchnorm_iid"))


# The class sweep in the paper's structure (`glyphs_workers_classes<C>` beside `glyphs_workers`)
# runs batch norm on pairs and i.i.d. and both renorm warm-ups on pairs, and at 1000 classes
# batch norm re-mixed; at each number of classes the differences found are read as one family.
CLASS_SWEEP_GAPS = LONG_GAPS + (
    ("batch renorm, warm-up × 2 − batch norm, on pairs", "batchrenorm_longwarmup", "batchnorm"),
    ("batch renorm, warm-up × 2, on pairs − batch norm i.i.d.", "batchrenorm_longwarmup",
     "batchnorm_iid"),
    ("batch norm: pairs − re-mixed (a partner in the group)", "batchnorm", "batchnorm_remixed"),
    ("batch norm: re-mixed − i.i.d. (the paired sampling)", "batchnorm_remixed", "batchnorm_iid"))


def families_by_preset(loaded, named, column="val_accuracy_recalibrated"):
    """The `named` differences of each `Results` in `loaded`, each preset's read as one
    family (`gaps` with `family=True`): ({family size: level of each interval}, the gaps
    sorted by name, then number of classes)."""
    families = [gaps(one, named, column, family=True) for one in loaded]
    levels = {len(family): bonferroni_level(len(family)) for family in families if family}
    found = sorted((gap for family in families for gap in family),
                   key=lambda gap: (gap.name, gap.classes))
    return dict(sorted(levels.items())), found


def format_family_levels(levels):
    """{family size: level}, as the text names them: "99.00 % in a family of 5, ..."."""
    return ", ".join(f"{100 * level:.2f} % in a family of {size}" for size, level in levels.items())


def format_finals_by_classes(loaded, arms, column="val_accuracy_recalibrated"):
    """A Markdown table, one row per preset of `loaded` (a list of `Results` of glyph
    presets that differ in their number of classes), of each arm's final `column`: mean ±
    sd over seeds, the seeds in brackets."""
    from brlib.glyphs import TRAIN_IMAGES

    lines = ["| preset | classes | training images per class | "
             + " | ".join(ARMS[arm].label for arm in arms) + " |",
             "|---|---|---|" + "---|" * len(arms)]
    for results in sorted(loaded, key=lambda r: r.preset.classes):
        cells = [f"`{results.preset.name}`", str(results.preset.classes),
                 str(TRAIN_IMAGES // results.preset.classes)]
        for arm in arms:
            if arm not in results:
                cells.append("—")
                continue
            values = results.final(arm, column)
            spread = f" ± {values.std(ddof=1):.2f}" if len(values) > 1 else ""
            cells.append(f"{values.mean():.2f}{spread} ({len(values)})")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def welch_interval(samples, others, level=0.95):
    """Mean of `samples` − mean of `others` (independent, unequal variances), with its
    Welch t-interval: (difference, (low, high))."""
    from scipy import stats

    a, b = np.asarray(samples, dtype=float), np.asarray(others, dtype=float)
    if len(a) < 2 or len(b) < 2:
        raise ValueError(f"each sample needs at least 2 values; got {len(a)} and {len(b)}.")
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
    half = stats.t.ppf(0.5 + level / 2, df) * np.sqrt(va + vb)
    difference = a.mean() - b.mean()
    return difference, (difference - half, difference + half)


def paired_finals(results, arm, reference, column="val_accuracy"):
    """The final `column` of `arm` and of `reference` over the seeds both have, in the same
    seed order: two arrays (`Results.final`'s units)."""
    common = shared_seeds(results, arm, reference)
    pick = lambda name: results.final(name, column)[[results[name].seeds.index(s)
                                                      for s in common]]
    return pick(arm), pick(reference)


def paired_deltas(results, arm, reference, column="val_accuracy"):
    """Per shared seed, the final `arm` − `reference` (the samples of `paired_difference`)."""
    finals, reference_finals = paired_finals(results, arm, reference, column)
    return finals - reference_finals


def error_ratio(results, arm, reference, column="val_accuracy"):
    """(100 − mean final accuracy of `arm`) / (100 − that of `reference`), over the seeds
    both have: how many times the reference's test error the arm's is."""
    finals, reference_finals = paired_finals(results, arm, reference, column)
    return (100 - finals.mean()) / (100 - reference_finals.mean())


def format_change_table(first, second, named=LONG_GAPS, column="val_accuracy_recalibrated"):
    """Each named difference in the presets `first` and `second` (paired, 95 %), its error
    ratio, and second − first with its Welch interval (the runs of two presets are
    independent): whether a cost changes with what the presets change (their length,
    their head)."""
    lines = [f"| difference | `{first.preset.name}` ({first.preset.steps} steps) | error ratio | "
             f"`{second.preset.name}` ({second.preset.steps} steps) | error ratio | "
             f"`{second.preset.name}` − `{first.preset.name}` (Welch, 95 %) |",
             "|---|---|---|---|---|---|"]
    for name, arm, reference in named:
        if not all(a in r for r in (first, second) for a in (arm, reference)):
            continue
        cells = [name]
        for loaded in (first, second):
            cells += [format_difference(paired_difference(loaded, arm, reference, column)),
                      f"{error_ratio(loaded, arm, reference, column):.2f}"]
        second_deltas = paired_deltas(second, arm, reference, column)
        first_deltas = paired_deltas(first, arm, reference, column)
        if min(len(second_deltas), len(first_deltas)) < 2:
            cells.append("—")  # no interval from one seed
        else:
            change, (low, high) = welch_interval(second_deltas, first_deltas)
            cells.append(f"{change:+.2f} [{low:+.2f}, {high:+.2f}]")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) if len(lines) > 2 else ""


@dataclasses.dataclass(frozen=True)
class Gap:
    """One named paired difference of a preset, with its steady-state check."""

    name: str
    preset: str
    classes: int
    difference: Difference
    steadiness: Steadiness
    trend: Trend | None = None


def gaps(results, named=PAIRING_GAPS, column="val_accuracy", family=False):
    """The named differences whose two arms have results, as a list of Gap.

    Each is paired over the seeds both arms have, from the mean of the preset's
    last `final_evaluations` evaluations, with both steady-state checks
    (`steady_state`, and `trend` where the last quarter holds two evaluations).

    Args:
        results: `Results` of one preset.
        named: (name, arm, reference) triples, such as `PAIRING_GAPS`.
        column: The recorded quantity compared.
        family: Whether the differences are read together: each interval then
            has the Bonferroni level of the family (`bonferroni_level`), the
            family being the differences found; otherwise each is at 95 %.
    """
    preset = results.preset
    found = [(name, arm, reference) for name, arm, reference in named
             if arm in results and reference in results]
    level = bonferroni_level(len(found)) if family and found else 0.95
    steps = np.asarray(next(iter(results.values())).steps) if found else np.array([])
    has_trend = np.sum(steps >= 0.75 * steps[-1]) >= 2 if len(steps) else False
    return [Gap(name, preset.name, preset.classes,
                paired_difference(results, arm, reference, column, level),
                steady_state(results, arm, reference, column),
                trend(results, arm, reference, column) if has_trend else None)
            for name, arm, reference in found]


def format_gaps(found, level="95 %", trends=False):
    """A Markdown table of Gaps: preset, classes, seeds, the difference and its steadiness.

    Args:
        found: Gaps, as `gaps` returns them.
        level: How the header names the intervals' level ("95 %", or
            "Bonferroni, family of 6").
        trends: Whether to add the slope test's column (`trend`).
    """
    trend_header = " steady: projected change over one more quarter ≤ half-width |"
    lines = [f"| difference | preset | classes | seeds | points, {level} interval | "
             "steady: last-quarter drift ≤ half-width |" + (trend_header if trends else ""),
             "|---|---|---|---|---|---|" + ("---|" if trends else "")]
    for gap in found:
        trend_cell = f" {gap.trend if gap.trend is not None else '—'} |" if trends else ""
        lines.append(f"| {gap.name} | `{gap.preset}` | {gap.classes} | {gap.difference.seeds} | "
                     f"{format_difference(gap.difference)} | {gap.steadiness} |" + trend_cell)
    return "\n".join(lines)


# ---------------------------------------------------------------------------
# Figure 2 against the learning rate
# ---------------------------------------------------------------------------
# The arms of the sweep, and the two that "best for both" weighs equally: batch norm and
# renorm over the same microbatches.
SWEEP_ARMS = ("batchnorm", "batchrenorm", "baseline")
SWEEP_PAIR = ("batchnorm", "batchrenorm")


def load_learning_rate_sweep(results_dir, base_name):
    """{learning rate: Results} of the sweep of preset `base_name`, rates with results only.

    The rates are `brlib.protocol.learning_rate_sweep`'s; at the base preset's own
    rate the results are the base preset's (`protocol.learning_rate_sweep`).

    Args:
        results_dir: The results root.
        base_name: The swept preset ("quick" or "cpu").
    """
    from brlib.protocol import get_preset, learning_rate_sweep

    sweep = {}
    for rate, preset in sorted(learning_rate_sweep(get_preset(base_name)).items()):
        if has_results(results_dir, preset.name):
            sweep[rate] = load_results(results_dir, preset.name)
    if not sweep:
        raise FileNotFoundError(f"no learning-rate sweep of {base_name!r} in {results_dir}")
    return sweep


def diverged_seeds(results, arm):
    """The seeds of `arm` whose training loss is not finite at the last evaluation."""
    curves = results[arm]
    last = np.asarray(curves["train_loss"], dtype=float)[:, -1]
    return [seed for seed, loss in zip(curves.seeds, last) if not np.isfinite(loss)]


@dataclasses.dataclass(frozen=True)
class SweepPoint:
    """One arm at one learning rate: its final value over seeds, with a 95 % t-interval."""

    arm: str
    learning_rate: float
    preset: str
    seeds: int
    mean: float
    low: float
    high: float
    diverged: int


def sweep_points(sweep, column="val_accuracy"):
    """Every (arm, rate) of a sweep with results, as SweepPoints in rate order.

    A diverged seed stays in its point with whatever it scored; `diverged`
    counts such seeds.
    """
    points = []
    for rate, loaded in sweep.items():
        for arm in SWEEP_ARMS:
            if arm not in loaded:
                continue
            mean, _, (low, high) = t_interval(loaded.final(arm, column))
            points.append(SweepPoint(arm, rate, loaded.preset.name, len(loaded[arm].seeds),
                                     float(mean), float(low), float(high),
                                     len(diverged_seeds(loaded, arm))))
    return points


def best_learning_rates(sweep, column="val_accuracy"):
    """Each arm's best rate (highest mean final value), and "both": the rate whose mean of
    batch norm's and renorm's means is highest. Returns {arm or "both": rate}."""
    means = {(p.arm, p.learning_rate): p.mean for p in sweep_points(sweep, column)}
    best = {}
    for arm in SWEEP_ARMS:
        rates = [rate for (name, rate) in means if name == arm]
        if rates:
            best[arm] = max(rates, key=lambda rate: means[arm, rate])
    shared = [rate for rate in sweep if all((arm, rate) in means for arm in SWEEP_PAIR)]
    if shared:
        best["both"] = max(shared, key=lambda rate: sum(means[arm, rate] for arm in SWEEP_PAIR))
    return best


def at_learning_rates(sweep, rates):
    """One `Results` that holds each arm at its own rate: {arm: rate} picks the runs, so
    that paired differences compare every arm at its rate, paired by seed (a seed fixes
    the initial weights and the minibatches at every rate)."""
    first = sweep[next(iter(rates.values()))]
    return Results(first.preset, {arm: sweep[rate][arm] for arm, rate in rates.items()
                                  if rate in sweep and arm in sweep[rate]})


def _rate(rate):
    return f"{rate:g}"


def format_sweep_table(sweep, column="val_accuracy"):
    """A Markdown table of the sweep: per rate, each arm's final value (mean [95 % interval],
    seeds, diverged seeds), and renorm − batch norm paired by seed."""
    points = {(p.arm, p.learning_rate): p for p in sweep_points(sweep, column)}
    lines = ["| learning rate | " + " | ".join(f"{ARMS[arm].label} (%)" for arm in SWEEP_ARMS)
             + f" | {ARMS['batchrenorm'].label} − {ARMS['batchnorm'].label} | steady |",
             "|---|" + "---|" * (len(SWEEP_ARMS) + 2)]
    for rate, loaded in sweep.items():
        cells = [_rate(rate)]
        for arm in SWEEP_ARMS:
            point = points.get((arm, rate))
            cells.append("—" if point is None else
                         f"{point.mean:.2f} [{point.low:.2f}, {point.high:.2f}], "
                         f"n = {point.seeds}" + (f", {point.diverged} diverged"
                                                 if point.diverged else ""))
        if all(arm in loaded for arm in SWEEP_PAIR):
            cells.append(format_difference(paired_difference(loaded, "batchrenorm", "batchnorm",
                                                             column)))
            cells.append(str(steady_state(loaded, "batchrenorm", "batchnorm", column)))
        else:
            cells += ["—", "—"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def format_sweep_mismatch_table(sweep):
    """A Markdown table of the mismatch and the lag (`WITHIN_ARM`) of batch norm and renorm
    over microbatches at every rate, each paired by seed within the arm, in points."""
    arms = SWEEP_PAIR
    lines = ["| learning rate | " + " | ".join(f"{ARMS[arm].label}: {name}" for arm in arms
                                               for name, *_ in WITHIN_ARM) + " |",
             "|---|" + "---|" * (len(arms) * len(WITHIN_ARM))]
    for rate, loaded in sweep.items():
        cells = [_rate(rate)]
        for arm in arms:
            for _, column, reference, _ in WITHIN_ARM:
                if arm not in loaded:
                    cells.append("—")
                    continue
                cells.append(_within_arm_cell(loaded, arm, column, reference))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# The rates at which a sweep's arms are compared, by kind; "together, each" is one choice
# where the rate best for batch norm and renorm together is every arm's own best too.
CHOICE_LABELS = {"own": "the preset's own rate",
                 "together": "best for batch norm and renorm together",
                 "each": "each arm at its own best",
                 "together, each": "best for batch norm and renorm together, and each arm's own best"}


def chosen_learning_rates(sweep, column="val_accuracy"):
    """The comparisons a sweep is read at, as [(kind, {arm: rate})]: the base preset's own
    rate ("own"), the rate best for batch norm and renorm together ("together") and each
    arm at its own best ("each"), the last two as one ("together, each") when they agree."""
    best = best_learning_rates(sweep, column)
    base = next(rate for rate, loaded in sweep.items() if "_lr" not in loaded.preset.name)
    choices = [("own", dict.fromkeys(SWEEP_ARMS, base))]
    own_best = {arm: best[arm] for arm in SWEEP_ARMS if arm in best}
    together = dict.fromkeys(SWEEP_ARMS, best["both"]) if "both" in best else None
    if together == own_best:
        choices.append(("together, each", together))
    else:
        choices += [("together", together)] if together else []
        choices.append(("each", own_best))
    return choices


def format_best_table(sweep, column="val_accuracy"):
    """A Markdown table of the comparisons at `chosen_learning_rates`.

    Each row gives the rates, renorm − batch norm and batch norm over groups of 32 −
    batch norm over microbatches, paired by seed, with their steady-state checks.
    """
    lines = ["| rates | " + " | ".join(f"{ARMS[arm].label}" for arm in SWEEP_ARMS) +
             f" | {ARMS['batchrenorm'].label} − {ARMS['batchnorm'].label} | steady | "
             f"{ARMS['baseline'].label} − {ARMS['batchnorm'].label} | steady |",
             "|---|" + "---|" * (len(SWEEP_ARMS) + 4)]
    for kind, rates in chosen_learning_rates(sweep, column):
        loaded = at_learning_rates(sweep, rates)
        cells = [CHOICE_LABELS[kind]] + [_rate(rates[arm]) if arm in rates else "—" for arm in SWEEP_ARMS]
        for arm in ("batchrenorm", "baseline"):
            if arm in loaded and "batchnorm" in loaded:
                cells.append(format_difference(paired_difference(loaded, arm, "batchnorm",
                                                                 column)))
                cells.append(str(steady_state(loaded, arm, "batchnorm", column)))
            else:
                cells += ["—", "—"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
