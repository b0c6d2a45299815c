"""Figures: the paper's Figure 2 from result CSVs, and the one helper that saves figures."""

from pathlib import Path

import numpy as np

from brlib.experiment import ARMS, read_csv

LABELS = {"baseline": "Batchnorm, groups of 32", "batchnorm": "Batchnorm",
          "batchrenorm": "Batch Renorm"}
COLORS = {"baseline": "tab:gray", "batchnorm": "tab:blue", "batchrenorm": "tab:red"}
# Final accuracies for context (%): Ioffe (2017), Figure 2, ImageNet, Inception-v3;
# and the student reproduction on CIFAR-100.
REFERENCE = [("paper, groups of 32", "78.3"), ("paper, batchnorm (4)", "74.2"),
             ("paper, batch renorm (4)", "76.5"), ("seed, batchnorm (2)", "17.7"),
             ("seed, batch renorm (2)", "25.7")]


def load_results(results_dir, preset_name):
    """{arm: (steps, accuracies of shape (seeds, evaluations))} for the arms on disk."""
    results = {}
    for arm in ARMS:
        paths = sorted(Path(results_dir, preset_name).glob(f"{arm}_seed*.csv"))
        if not paths:
            continue
        runs = [read_csv(path) for path in paths]
        length = min(len(run) for run in runs)
        steps = np.array([row["step"] for row in runs[0][:length]])
        accuracy = np.array([[row["val_accuracy"] for row in run[:length]] for run in runs])
        results[arm] = (steps, accuracy)
    if not results:
        raise FileNotFoundError(f"no result CSVs in {Path(results_dir, preset_name)}; "
                                f"run `python -m brlib reproduce --preset {preset_name}` first")
    return results


def final_accuracy(accuracy):
    """Mean and sample standard deviation over seeds of the last evaluation, in %."""
    final = 100 * accuracy[:, -1]
    return final.mean(), (final.std(ddof=1) if len(final) > 1 else 0.0)


def figure2(results, title):
    """Test accuracy against steps: mean over seeds with a ±1 sd band, per arm."""
    import matplotlib.pyplot as plt

    fig, (ax, side) = plt.subplots(1, 2, figsize=(10, 4.5), width_ratios=[3, 1.2])
    for arm, (steps, accuracy) in results.items():
        mean, sd = 100 * accuracy.mean(0), 100 * accuracy.std(0)
        final, final_sd = final_accuracy(accuracy)
        label = f"{LABELS[arm]} ({final:.1f}% ± {final_sd:.1f}, {len(accuracy)} seeds)"
        ax.plot(steps, mean, color=COLORS[arm], label=label)
        ax.fill_between(steps, mean - sd, mean + sd, color=COLORS[arm], alpha=0.2)
    ax.set(xlabel="training step", ylabel="test accuracy (%)", title=title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    side.axis("off")
    table = side.table(cellText=[[name, value] for name, value in REFERENCE],
                       colLabels=["for context", "final %"], loc="center", cellLoc="left",
                       colWidths=[0.8, 0.3])
    table.auto_set_font_size(False)
    table.set_fontsize(9)
    table.scale(1, 1.6)
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
