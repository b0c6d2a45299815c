"""Figures: the paper's Figures 2 and 3 from result files, and the one helper that saves figures.

Only reads results (through `brlib.results`); it never imports the runner or
TensorFlow.
"""

from pathlib import Path

import numpy as np

from brlib.results import (ARMS, final_values, load_results, mean_band,  # noqa: F401
                           within_arm_difference)

# Final accuracies for context (%): Ioffe (2017), Figure 2, ImageNet, Inception-v3;
# and the student reproduction on CIFAR-100.
# Microbatch sizes in brackets.
REFERENCE = [("paper: BN, groups of 32", "78.3"), ("paper: BN (4)", "74.2"),
             ("paper: renorm (4)", "76.5"), ("student: BN (2),\nCIFAR-100", "17.7"),
             ("student: renorm (2),\nCIFAR-100", "25.7")]
PANELS = [("val_accuracy", "test accuracy (%), moving averages", 100),
          ("val_accuracy_recalibrated", "test accuracy (%), recalibrated", 100)]
# Solid: the inference network on fixed training examples (what training fitted); dashed:
# training mode on each step's minibatch (for batch norm over microbatches, a noisy pass).
LOSSES = (("train_loss_inference", "-"), ("train_loss", "--"))
MISMATCH = ("val_accuracy", "val_accuracy_minibatch_stats")  # inference − minibatch statistics


def final_accuracy(values, last=1):
    """Mean and sample sd over seeds of the mean of the last `last` evaluations, in %."""
    final = 100 * final_values(values, last)
    return final.mean(), (final.std(ddof=1) if len(final) > 1 else 0.0)


def _curves(ax, results, column, scale, last):
    """Per arm, the seed mean of `column` with its 95 % confidence band."""
    for arm, curves in results.items():
        if column not in curves.columns:
            continue
        mean, half = mean_band(scale * curves[column])
        final, sd = final_accuracy(curves[column], last)
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


def _mismatch(ax, results, last):
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
        final, (low, high) = within_arm_difference(curves, *MISMATCH, last)
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


def figure2(results, title, last=1):
    """Per arm, the seed mean with its 95 % confidence band, for four quantities.

    Panels: test accuracy of the inference model with moving averages, the
    same recalibrated, the train/inference mismatch (inference minus
    minibatch-statistics accuracy), and the training loss, of the inference
    network on fixed training examples (solid, where the results have it)
    and in training mode on each step's minibatch (dashed). Legends give the
    final accuracy (mean of the last `last` evaluations) as mean ± sd over
    seeds, and the final mismatch with its paired 95 % interval.
    """
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 5, figsize=(23, 4.6), width_ratios=[3, 3, 3, 3, 1.6])
    for ax, (column, ylabel, scale) in zip(axes[:2], PANELS):
        _curves(ax, results, column, scale, last)
        ax.set(xlabel="training step", ylabel=ylabel)
    _mismatch(axes[2], results, last)
    _losses(axes[3], results)
    axes[0].set_title(title, loc="left")
    _reference_table(axes[4], REFERENCE)
    fig.tight_layout()
    return fig


# Ioffe (2017), Figure 3: ImageNet, Inception-v3, minibatches of 16 pairs of one label per
# worker of 32; the i.i.d. batch-norm number is Figure 1's baseline.
REFERENCE_NONIID = [("paper, BN, validation", "67.0"), ("paper, BN, training", "72.8"),
                    ("paper, BN, minibatch stats", "76.5"), ("paper, BN, two halves", "77.4"),
                    ("paper, batch renorm", "78.6"), ("paper, BN, i.i.d.", "78.3")]
PANELS_NONIID = [("val_accuracy", "test accuracy (%), moving averages"),
                 ("val_accuracy_minibatch_stats",
                  "test accuracy (%), minibatch statistics on paired test groups"),
                 ("train_accuracy", "training accuracy (%), training mode")]


def figure3(results, title, last=1):
    """The non-i.i.d. experiment: per arm, seed means with 95 % confidence bands.

    Panels: test accuracy of the inference model with moving averages
    (recalibrated dashed), test accuracy with each paired test group
    normalized by its own statistics (the paper's first control), and the
    training accuracy in training mode; then the paper's numbers.
    """
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(18, 4.8), width_ratios=[3, 3, 3, 1.8])
    for ax, (column, ylabel) in zip(axes, PANELS_NONIID):
        _curves(ax, results, column, 100, last)
        ax.set(xlabel="training step", ylabel=ylabel)
    for arm, curves in results.items():
        mean, _ = mean_band(100 * curves["val_accuracy_recalibrated"])
        axes[0].plot(curves.steps, mean, color=ARMS[arm].color, ls="--", lw=1)
    axes[0].set_title(title + " (dashed: recalibrated)", loc="left", fontsize=9)
    _reference_table(axes[3], REFERENCE_NONIID)
    fig.tight_layout()
    return fig


def class_sweep(sweep, others=(), title="What pairing costs, against the number of classes"):
    """Paired differences (points, 95 % intervals) against the number of classes.

    Args:
        sweep: `brlib.results.Gap`s of one protocol at several numbers of
            classes, drawn as filled markers joined by lines, one line per
            kind of difference.
        others: Gaps of other protocols (for example Fashion-MNIST's
            `noniid` preset), drawn as open markers and labelled by preset.
        title: The axes' title.
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
    ax.legend(fontsize=7, title="mean over seeds, bars: paired 95 % interval", title_fontsize=7)
    fig.tight_layout()
    return fig


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
