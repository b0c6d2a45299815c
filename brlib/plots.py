"""Figures: the paper's Figures 2 and 3 from result files, the notebooks' figures of r, d
and the schedule, and the one helper that saves figures.

It never imports the runner or TensorFlow: the figures of results read
`brlib.results`, and the one figure that needs the layer's arithmetic
(`schedule_figure`) imports it when called.
"""

from pathlib import Path

import numpy as np

from brlib.protocol import ARMS, reported
from brlib.results import mean_band, within_arm_difference

PANELS = [("val_accuracy", "test accuracy (%), moving averages", 100),
          ("val_accuracy_recalibrated", "test accuracy (%), recalibrated", 100)]
# Solid: the inference network on fixed training examples (what training fitted); dashed:
# training mode on each step's minibatch (for batch norm over microbatches, a noisy pass).
LOSSES = (("train_loss_inference", "-"), ("train_loss", "--"))
MISMATCH = ("val_accuracy", "val_accuracy_minibatch_stats")  # inference − minibatch statistics


def final_accuracy(results, arm, column="val_accuracy"):
    """Mean and sample sd over seeds of an arm's final `column` (`Results.final`), in %."""
    final = results.final(arm, column)
    return final.mean(), (final.std(ddof=1) if len(final) > 1 else 0.0)


def _curves(ax, results, column, scale):
    """Per arm, the seed mean of `column` with its 95 % confidence band."""
    for arm, curves in results.items():
        if column not in curves.columns:
            continue
        mean, half = mean_band(scale * curves[column])
        final, sd = final_accuracy(results, arm, column)
        label = f"{ARMS[arm].label} ({final:.1f}% ± {sd:.1f}, {len(curves.seeds)} seeds)"
        ax.plot(curves.steps, mean, color=ARMS[arm].color, label=label)
        ax.fill_between(curves.steps, mean - half, mean + half, color=ARMS[arm].color, alpha=0.2)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=7, title="mean, band: 95 % CI of the mean",
              title_fontsize=7)


def _losses(ax, results):
    """Per arm, the seed-mean training loss of the inference network and in training mode."""
    for arm, curves in results.items():
        for column, style in LOSSES:
            if column in curves.columns:
                ax.plot(curves.steps, curves[column].mean(axis=0), style, color=ARMS[arm].color,
                        label=ARMS[arm].label if style == "-" or LOSSES[0][0] not in
                        curves.columns else None)
    ax.plot([], [], "-", color="grey", label="inference network, fixed training examples")
    ax.plot([], [], "--", color="grey", label="training mode, each step's minibatch")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper right", fontsize=7, title="seed means", title_fontsize=7)
    ax.set(xlabel="training step", ylabel="training loss (cross-entropy)")


def _mismatch(ax, results):
    """Per arm, inference minus minibatch-statistics test accuracy over training, in points.

    The band is the 95 % interval of the seed mean; the legend gives the
    final mismatch with its paired 95 % interval. Arms whose results have no
    minibatch-statistics column are left out.
    """
    measured = {arm: curves for arm, curves in results.items()
                if all(column in curves.columns for column in MISMATCH)}
    if not measured:
        ax.text(0.5, 0.5, "no minibatch-statistics accuracy\nin these results", ha="center",
                va="center", transform=ax.transAxes)
    for arm, curves in measured.items():
        mean, half = mean_band(100 * (curves[MISMATCH[0]] - curves[MISMATCH[1]]))
        final, (low, high) = within_arm_difference(results, arm, *MISMATCH)
        ax.plot(curves.steps, mean, color=ARMS[arm].color,
                label=f"{ARMS[arm].label} ({final:+.1f} [{low:+.1f}, {high:+.1f}])")
        ax.fill_between(curves.steps, mean - half, mean + half, color=ARMS[arm].color, alpha=0.2)
    ax.axhline(0, color="black", lw=0.8)
    ax.grid(alpha=0.3)
    if measured:
        ax.legend(loc="lower right", fontsize=7, title="final, paired 95 % interval",
                  title_fontsize=7)
    ax.set(xlabel="training step",
           ylabel="mismatch (points): inference − minibatch statistics")


def _reference_rows(figure):
    """The reported numbers of `figure` as (label, value) rows of the figures' context table."""
    # Shorter than the arms' labels, to fit the table's column.
    short = {"batchnorm": "BN", "batchrenorm": "renorm", "baseline": "BN, groups of 32",
             "batchnorm_halves": "BN, two halves", "batchnorm_iid": "BN, i.i.d."}
    rows = []
    for number in reported(figure):
        label = f"{number.source}: {short.get(number.arm, ARMS[number.arm].label)}"
        if number.quantity != "test":
            label += ", training" if number.quantity == "training" else ", minibatch stats"
        if number.microbatch:
            label += f" ({number.microbatch})"
        if number.source == "student":
            label += ",\nCIFAR-100"
        rows.append((label, f"{number.percent:.1f}"))
    return rows


def _reference_table(ax, rows):
    ax.axis("off")
    table = ax.table(cellText=[[name, value] for name, value in rows],
                     colLabels=["for context", "final %"], loc="center", cellLoc="left",
                     colWidths=[0.8, 0.3])
    table.auto_set_font_size(False)
    table.set_fontsize(8)
    table.scale(1, 1.6)
    for (row, _), cell in table.get_celld().items():  # two-line labels need taller rows
        if row > 0 and "\n" in rows[row - 1][0]:
            cell.set_height(cell.get_height() * 1.8)


def figure2(results, title=None):
    """The paper's Figure 2 from results: per arm, the seed mean with its 95 % band, for four
    quantities.

    Panels: test accuracy of the inference model with moving averages, the
    same recalibrated, the train/inference mismatch (inference minus
    minibatch-statistics accuracy), and the training loss, of the inference
    network on fixed training examples (solid, where the results have it)
    and in training mode on each step's minibatch (dashed). Legends give the
    final accuracy (`Results.final`) as mean ± sd over seeds, and the final
    mismatch with its paired 95 % interval. A table gives the numbers that
    the paper and the student reproduction reported (`brlib.protocol.REPORTED`).

    Args:
        results: `brlib.results.Results` of one preset.
        title: The first panel's title; None names the preset.

    Reference:
        Sergey Ioffe, "Batch Renormalization: Towards Reducing Minibatch
        Dependence in Batch-Normalized Models", NIPS 2017, arXiv:1702.03275,
        Figure 2.
    """
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 5, figsize=(23, 4.6), width_ratios=[3, 3, 3, 3, 1.6])
    for ax, (column, ylabel, scale) in zip(axes[:2], PANELS):
        _curves(ax, results, column, scale)
        ax.set(xlabel="training step", ylabel=ylabel)
    _mismatch(axes[2], results)
    _losses(axes[3], results)
    axes[0].set_title(title or f"Microbatch experiment, preset '{results.preset.name}'",
                      loc="left")
    _reference_table(axes[4], _reference_rows("figure2"))
    fig.tight_layout()
    return fig


PANELS_NONIID = [("val_accuracy", "test accuracy (%), moving averages"),
                 ("val_accuracy_minibatch_stats",
                  "test accuracy (%), minibatch statistics on paired test groups"),
                 ("train_accuracy", "training accuracy (%), training mode")]


def figure3(results, title=None):
    """The non-i.i.d. experiment: per arm, seed means with 95 % confidence bands.

    Panels: test accuracy of the inference model with moving averages
    (recalibrated dashed), test accuracy with each paired test group
    normalized by its own statistics (the paper's first control), and the
    training accuracy in training mode; then the paper's numbers
    (`brlib.protocol.REPORTED`).

    Args:
        results: `brlib.results.Results` of one preset.
        title: The first panel's title; None names the preset.

    Reference:
        Sergey Ioffe, "Batch Renormalization: Towards Reducing Minibatch
        Dependence in Batch-Normalized Models", NIPS 2017, arXiv:1702.03275,
        Figure 3.
    """
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(18, 4.8), width_ratios=[3, 3, 3, 1.8])
    for ax, (column, ylabel) in zip(axes, PANELS_NONIID):
        _curves(ax, results, column, 100)
        ax.set(xlabel="training step", ylabel=ylabel)
    for arm, curves in results.items():
        mean, _ = mean_band(100 * curves["val_accuracy_recalibrated"])
        axes[0].plot(curves.steps, mean, color=ARMS[arm].color, ls="--", lw=1)
    preset = results.preset
    title = title or f"Non-i.i.d. pairs, {preset.classes} classes, preset '{preset.name}'"
    axes[0].set_title(title + " (dashed: recalibrated)", loc="left", fontsize=9)
    _reference_table(axes[3], _reference_rows("figure3"))
    fig.tight_layout()
    return fig


def preset_figure(results, arms=None):
    """The figure of a preset's results: Figure 3 for paired sampling, else Figure 2.

    Args:
        results: `brlib.results.Results` of one preset.
        arms: The arms to draw (those of them with results); None for the
            preset's own (`Preset.figure_arms`).

    Returns:
        (figure, name). `name` is the one file name that the command line and
        the notebooks save the figure under: `Preset.figure` for the preset's
        own arms, and that name followed by the arms for another choice, so
        that a choice never overwrites the preset's figure.
    """
    preset = results.preset
    chosen = preset.figure_arms if arms is None else arms
    shown = results.only(chosen)
    if not len(shown):
        raise ValueError(f"no results of the arms {list(chosen)} of preset {preset.name!r} "
                         "to draw")
    draw = figure3 if preset.sampling == "pairs" else figure2
    name = preset.figure if arms is None else f"{preset.figure}_{'-'.join(shown)}"
    return draw(shown), name


def class_sweep(sweep, others=(), title="What pairing costs, against the number of classes",
                interval="paired 95 % interval"):
    """Paired differences (points, 95 % intervals) against the number of classes.

    Args:
        sweep: `brlib.results.Gap`s of one protocol at several numbers of
            classes, drawn as filled markers joined by lines, one line per
            kind of difference.
        others: Gaps of other protocols (for example Fashion-MNIST's
            `noniid` preset), drawn as open markers and labelled by preset.
        title: The axes' title.
        interval: What the bars are, for the legend ("paired 95 % interval", or a
            family's level).
    """
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.6))
    names = list(dict.fromkeys(gap.name for gap in (*sweep, *others)))
    # The arms' colours (batch norm blue, renorm red, GroupNorm green); other kinds in turn.
    known = (("batch norm", "tab:blue"), ("batch renorm on pairs", "tab:purple"),
             ("batch renorm", "tab:red"), ("GroupNorm", "tab:green"))
    spare = iter(("tab:orange", "tab:brown", "tab:pink", "tab:olive"))
    colors = {name: next((color for start, color in known if name.startswith(start)), None)
              or next(spare) for name in names}
    for index, name in enumerate(names):
        # A small horizontal offset per kind keeps the error bars apart on the log axis.
        shift = 1.06 ** (index - (len(names) - 1) / 2)
        for group, filled in ((sweep, True), (others, False)):
            mine = sorted((gap for gap in group if gap.name == name), key=lambda g: g.classes)
            if not mine:
                continue
            x = np.array([gap.classes for gap in mine]) * shift
            y = np.array([gap.difference.mean for gap in mine])
            error = np.array([[gap.difference.mean - gap.difference.low,
                               gap.difference.high - gap.difference.mean] for gap in mine]).T
            label = name if filled else f"{name} ({', '.join(sorted({g.preset for g in mine}))})"
            ax.errorbar(x, y, yerr=error, fmt="o-" if filled else "s", color=colors[name],
                        mfc=colors[name] if filled else "white", capsize=3, label=label)
    ax.axhline(0, color="black", lw=0.8)
    ax.set_xscale("log")
    ax.set(xlabel="number of classes", ylabel="difference in test accuracy (points)")
    ax.set_title(title, loc="left", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, title=f"mean over seeds, bars: {interval}", title_fontsize=7)
    fig.tight_layout()
    return fig


def learning_rate_sweep(sweep, title=None):
    """Figure 2 against the learning rate: each arm's final accuracy, and what separates them.

    Left: per arm, the final test accuracy (moving averages) at each rate,
    the seed mean with its 95 % t-interval; a cross marks a rate where a seed
    diverged. Middle: renorm − batch norm over the same microbatches, paired
    by seed, beside batch norm's own mismatch (inference − minibatch
    statistics) and lag (recalibrated − moving averages), each with its
    paired 95 % interval. Right: the numbers the paper and the student reproduction
    reported, for context (another dataset and network).

    Args:
        sweep: {learning rate: Results}, from `brlib.results.load_learning_rate_sweep`.
        title: The first panel's title; None names the swept preset.

    Reference:
        Sergey Ioffe, "Batch Renormalization: Towards Reducing Minibatch
        Dependence in Batch-Normalized Models", NIPS 2017, arXiv:1702.03275,
        Figure 2.
    """
    import matplotlib.pyplot as plt

    from brlib.results import (SWEEP_PAIR, paired_difference, sweep_points)

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.6), width_ratios=[3, 3, 1.6])
    points = sweep_points(sweep)
    for arm in dict.fromkeys(p.arm for p in points):
        mine = [p for p in points if p.arm == arm]
        x = np.array([p.learning_rate for p in mine])
        y = np.array([p.mean for p in mine])
        error = np.array([[p.mean - p.low, p.high - p.mean] for p in mine]).T
        fewest, most = min(p.seeds for p in mine), max(p.seeds for p in mine)
        seeds = str(fewest) if fewest == most else f"{fewest}–{most}"
        axes[0].errorbar(x, y, yerr=error, fmt="o-", color=ARMS[arm].color, capsize=3,
                         label=f"{ARMS[arm].label} (n = {seeds})")
        broke = [p for p in mine if p.diverged]
        if broke:
            axes[0].plot([p.learning_rate for p in broke], [p.mean for p in broke], "x",
                         color="black", ms=10, label=f"{ARMS[arm].label}: a seed diverged")
    axes[0].set(xscale="log", xlabel="learning rate (Adam)",
                ylabel="final test accuracy (%), moving averages")
    base = next(loaded.preset for loaded in sweep.values() if "_lr" not in loaded.preset.name)
    axes[0].set_title(title or f"Figure 2 against the learning rate, preset '{base.name}'",
                      loc="left", fontsize=10)
    axes[0].legend(fontsize=7, title="mean over seeds, bars: 95 % interval", title_fontsize=7)

    rates = [rate for rate, loaded in sweep.items() if all(arm in loaded for arm in SWEEP_PAIR)]
    renorm, bn = SWEEP_PAIR[1], SWEEP_PAIR[0]
    series = (
        (f"{ARMS[renorm].label} − {ARMS[bn].label}", "tab:red", "o-",
         lambda loaded: _as_tuple(paired_difference(loaded, renorm, bn))),
        (f"{ARMS[bn].label}: mismatch (inference − minibatch statistics)", "tab:blue", "s--",
         lambda loaded: paired_difference_within(loaded, bn, *MISMATCH)),
        (f"{ARMS[bn].label}: recalibrated − moving averages (lag)", "tab:blue", "^:",
         lambda loaded: paired_difference_within(loaded, bn, "val_accuracy_recalibrated",
                                                 "val_accuracy")))
    for index, (label, color, fmt, difference) in enumerate(series):
        found = [difference(sweep[rate]) for rate in rates]
        shift = 1.05 ** (index - 1)  # keeps the error bars apart on the log axis
        axes[1].errorbar(np.array(rates) * shift, np.array([d[0] for d in found], dtype=float),
                         yerr=np.array([[d[0] - d[1], d[2] - d[0]] for d in found]).T,
                         fmt=fmt, color=color, capsize=3, label=label)
    axes[1].axhline(0, color="black", lw=0.8)
    axes[1].set(xscale="log", xlabel="learning rate (Adam)", ylabel="difference (points)")
    axes[1].set_title("paired by seed, bars: 95 % interval", loc="left", fontsize=10)
    axes[1].legend(fontsize=7)
    for ax in axes[:2]:
        ax.grid(alpha=0.3)
    _reference_table(axes[2], _reference_rows("figure2"))
    fig.tight_layout()
    return fig


# How the paired-difference figure names a recorded quantity.
NAMES = {"val_accuracy": "test accuracy, moving averages",
         "val_accuracy_recalibrated": "test accuracy, recalibrated"}
# The two within-arm differences of `lag_and_mismatch_figure`: (name, column, reference, axis label).
WITHIN_ARM = (("lag", "val_accuracy_recalibrated", "val_accuracy",
               "recalibrated − moving averages (points)"),
              ("mismatch", *MISMATCH, "inference − minibatch statistics (points)"))


def _layered(index):
    """Line styles that keep coinciding curves visible: the first arm drawn wider, paler and
    beneath, every later arm thinner and on top of the ones before (as `comparison_figure`)."""
    return dict(lw=3.0 if index == 0 else 1.3, alpha=0.6 if index == 0 else 1.0,
                zorder=2 + index)


def lag_and_mismatch_figure(results_by_preset, arms=None):
    """Each arm's lag and mismatch over training, per preset: seed means with 95 % bands.

    Rows: the lag (recalibrated − moving-average test accuracy) and the
    mismatch (inference − minibatch-statistics test accuracy), each taken
    within one arm, per seed, at every evaluation; columns: the presets.
    The first arm is drawn wider and beneath the others, so that where two
    arms coincide (renorm is batch norm until its warm-up ends) both stay
    visible.

    Args:
        results_by_preset: {preset name: `brlib.results.Results`}.
        arms: The arms to draw, in drawing order (the first beneath); None for
            `brlib.protocol.DEFAULT_ARMS`.
    """
    import matplotlib.pyplot as plt

    from brlib.protocol import DEFAULT_ARMS

    arms = DEFAULT_ARMS if arms is None else arms
    presets = list(results_by_preset)
    fig, axes = plt.subplots(len(WITHIN_ARM), len(presets), figsize=(6.5 * len(presets), 7.2),
                             sharex="col", squeeze=False)
    for row, (name, column, reference, ylabel) in enumerate(WITHIN_ARM):
        for ax, preset in zip(axes[row], presets):
            loaded = results_by_preset[preset]
            for index, arm in enumerate(a for a in arms if a in loaded):
                curves, style = loaded[arm], _layered(index)
                mean, half = mean_band(100 * (curves[column] - curves[reference]))
                ax.plot(curves.steps, mean, color=ARMS[arm].color, label=ARMS[arm].label, **style)
                ax.fill_between(curves.steps, mean - half, mean + half, color=ARMS[arm].color,
                                alpha=0.2, lw=0, zorder=style["zorder"] - 0.5)
            ax.axhline(0, color="black", lw=0.8)
            ax.set(ylabel=ylabel, title=f"{name}, preset '{preset}'")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8, title="mean, band: 95 % CI (first arm drawn wide, beneath)",
                      title_fontsize=8)
    for ax in axes[-1]:
        ax.set(xlabel="training step")
    fig.tight_layout()
    return fig


def paired_difference_figure(results, arm, reference, columns=("val_accuracy",
                                                              "val_accuracy_recalibrated"),
                             title=None):
    """`arm` − `reference` over training, paired by seed, with the 95 % band of its mean.

    One column of panels per recorded quantity. The top row draws the whole
    run; the bottom row the last quarter, where the steady-state check reads
    the difference, with the final difference (`brlib.results.paired_difference`:
    per seed the mean of the last `results.last` evaluations) as a black line
    and its paired 95 % interval shaded over those evaluations. The band at
    each evaluation is the t-interval of the seed mean of the per-seed
    differences, over the seeds both arms have.

    Args:
        results: `brlib.results.Results` of one preset.
        arm: The arm whose value comes first.
        reference: The arm subtracted from it.
        columns: The recorded quantities, one column of panels each.
        title: The figure's title; None names the two arms and the preset.
    """
    import matplotlib.pyplot as plt

    from brlib.results import paired_curves, paired_difference, scale_of

    # (seeds both arms have, evaluations) per column; raises before drawing when they cannot pair.
    paired = [paired_curves(results, arm, reference, column) for column in columns]
    fig, axes = plt.subplots(2, len(columns), figsize=(6.5 * len(columns), 6.4), squeeze=False)
    for (whole, end), column, (deltas, steps) in zip(axes.T, columns, paired):
        last_quarter = steps >= 0.75 * steps[-1]
        mean, half = mean_band(deltas)
        final = paired_difference(results, arm, reference, column)
        unit = "points" if scale_of(column) == 100 else "loss"
        for ax, shown in ((whole, slice(None)), (end, last_quarter)):
            ax.plot(steps[shown], mean[shown], color=ARMS[arm].color, marker=".",
                    label=f"per evaluation, {len(deltas)} seeds")
            ax.fill_between(steps[shown], (mean - half)[shown], (mean + half)[shown],
                            color=ARMS[arm].color, alpha=0.2, lw=0)
            ax.axhline(0, color="black", lw=0.8)
            ax.grid(alpha=0.3)
            ax.set(ylabel=f"difference ({unit})")
        read = steps[-results.last:]  # the evaluations a run's final value averages
        end.fill_between(read, final.low, final.high, color="black", alpha=0.15, lw=0)
        end.errorbar(read[-1], final.mean, yerr=[[final.mean - final.low],
                                                 [final.high - final.mean]],
                     fmt="s", color="black", capsize=4,
                     label=f"final: {final.mean:+.2f} [{final.low:+.2f}, {final.high:+.2f}]")
        name = NAMES.get(column, column)
        whole.set_title(f"{name}: whole run", loc="left", fontsize=9)
        end.set_title(f"{name}: last quarter", loc="left", fontsize=9)
        end.set(xlabel="training step")
        whole.legend(fontsize=7, title="mean, band: 95 % CI of the mean", title_fontsize=7)
        end.legend(fontsize=7, title="final (grey: its paired 95 % interval)",
                   title_fontsize=7)
    fig.suptitle(title or f"{ARMS[arm].label} − {ARMS[reference].label}, paired by seed, "
                 f"preset '{results.preset.name}'", fontsize=10)
    fig.tight_layout()
    return fig


def _as_tuple(difference):
    return difference.mean, difference.low, difference.high


def paired_difference_within(results, arm, column, reference):
    """(mean, low, high) of `column` − `reference` within one arm, paired by seed, in points."""
    mean, (low, high) = within_arm_difference(results, arm, column, reference)
    return mean, low, high


# ---------------------------------------------------------------------------
# The notebooks' figures of r, d, partners and the schedule (the widgets redraw them)
# ---------------------------------------------------------------------------
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

    from brlib.diagnostics import clip_fractions
    from brlib.schedule import RenormSchedule

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


def comparison_figure(curves, warmup_steps=None):
    """Test accuracy of `experiment.compare`'s arms: moving averages solid, recalibrated dashed.

    Each arm has its colour and marker (filled: moving averages, hollow:
    recalibrated), and the first arm is drawn wider beneath the others, so
    curves that coincide stay visible. The legend gives the final accuracies.
    With `warmup_steps`, a dotted line marks the end of renorm's warm-up.
    """
    import matplotlib.pyplot as plt

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


# How a snapshot draws each of `results.SNAPSHOT_SCORES`.
SNAPSHOT_STYLES = (("moving averages", 0.45, ""), ("recalibrated", 0.75, "//"),
                   ("minibatch statistics", 1.0, ".."))


def training_phase(preset, step):
    """Where `step` falls in `preset`'s protocol, in words: renorm's warm-up, its bounds
    opening, the learning rate falling, or the rate at its floor."""
    if step <= preset.warmup_steps:
        return "warm-up: renorm is batch norm"
    if preset.lr_decay_end is not None and step >= preset.lr_decay_end:
        return "learning rate at its floor"
    if step < max(preset.rmax_steps, preset.dmax_steps):
        return "renorm's bounds opening"
    return "bounds open, learning rate falling"


def step_snapshot_figure(results, step):
    """Each arm's three test accuracies at one evaluation (`results.scores_at`): moving
    averages, recalibrated, and minibatch statistics on test microbatches. Bars are
    seed means, dots the seeds.

    Returns (figure, `results.format_lag_and_mismatch` at that step).
    """
    import matplotlib.pyplot as plt

    from brlib.results import SNAPSHOT_SCORES, format_lag_and_mismatch, scores_at

    scores = scores_at(results, step)
    fig, ax = plt.subplots(figsize=(7, 3.4))
    width = 0.8 / len(SNAPSHOT_SCORES)
    for position, (arm, by_column) in enumerate(scores.items()):
        for k, column in enumerate(SNAPSHOT_SCORES):
            if column not in by_column:
                continue
            seeds, (_, alpha, hatch) = by_column[column], SNAPSHOT_STYLES[k]
            x = position + (k - 1) * width
            ax.bar(x, seeds.mean(), width * 0.9, color=ARMS[arm].color, alpha=alpha,
                   hatch=hatch, edgecolor="black", lw=0.5)
            ax.plot(np.full(len(seeds), x), seeds, "k.", ms=3)
    for label, alpha, hatch in SNAPSHOT_STYLES:  # the legend's key, in grey
        ax.bar([0], [0], 0, color="grey", alpha=alpha, hatch=hatch, edgecolor="black", lw=0.5,
               label=label)
    ax.set_xticks(range(len(scores)), [ARMS[arm].label for arm in scores], fontsize=8)
    ax.set(ylim=(0, 115), yticks=range(0, 101, 20), ylabel="test accuracy (%)")
    seeds = len(next(iter(results.values())).seeds)
    ax.set_title(f"step {step} of {results.preset.steps} ({training_phase(results.preset, step)})"
                 f"; bars: mean of {seeds} seeds, dots: seeds", fontsize=9)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7, loc="upper center", ncol=3)
    fig.tight_layout()
    return fig, "points, seed means; " + format_lag_and_mismatch(results, step)


def save_figure(fig, name, figures_dir="figures"):
    """Saves `fig` as figures/<name>.png and .svg; returns the two paths."""
    import matplotlib

    directory = Path(figures_dir)
    directory.mkdir(parents=True, exist_ok=True)
    paths = [directory / f"{name}.{suffix}" for suffix in ("png", "svg")]
    # A fixed salt and no date make the SVG's ids and text the same on every run,
    # so regenerating a figure changes its file only if the figure changed.
    with matplotlib.rc_context({"svg.hashsalt": "brlib"}):
        for path in paths:
            fig.savefig(path, dpi=120, bbox_inches="tight",
                        metadata={"Date": None} if path.suffix == ".svg" else None)
    return paths


def paired_differences(results, named, column="val_accuracy_recalibrated", title=None):
    """Several paired differences of one preset over training, each with the 95 % band of its mean.

    One line per (label, arm, reference) of `named`: at every evaluation,
    the seed mean of `arm` − `reference` over the seeds both have, and the
    t-interval of that mean; the final value's interval (`brlib.results.
    paired_difference`) is drawn as an error bar at the last step.

    Args:
        results: `brlib.results.Results` of one preset.
        named: (label, arm, reference) triples, such as
            `brlib.results.WORKERS_GAPS`; those whose arms lack results are
            left out.
        column: The recorded quantity compared.
        title: The panel's title; None names the quantity and the preset.
    """
    import matplotlib.pyplot as plt

    from brlib.results import paired_curves, paired_difference

    shown = [(label, arm, ref) for label, arm, ref in named if arm in results and ref in results]
    if not shown:
        raise ValueError("none of the named differences has results for both of its arms")
    fig, ax = plt.subplots(figsize=(8, 4.8))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for index, (label, arm, ref) in enumerate(shown):
        deltas, steps = paired_curves(results, arm, ref, column)
        mean, half = mean_band(deltas)
        color = colors[index % len(colors)]
        ax.plot(steps, mean, color=color, marker=".", label=label)
        ax.fill_between(steps, mean - half, mean + half, color=color, alpha=0.15, lw=0)
        final = paired_difference(results, arm, ref, column)
        ax.errorbar(steps[-1] + (index + 1) * 0.01 * steps[-1], final.mean,
                    yerr=[[final.mean - final.low], [final.high - final.mean]], fmt="s",
                    color=color, capsize=3)
    ax.axhline(0, color="black", lw=0.8)
    ax.set(xlabel="training step", ylabel="paired difference (points)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, title="seed mean, band: 95 % CI; squares: final value",
              title_fontsize=8)
    ax.set_title(title or f"{NAMES.get(column, column)}, preset '{results.preset.name}'",
                 loc="left", fontsize=9)
    fig.tight_layout()
    return fig
