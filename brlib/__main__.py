"""Command line: `python -m brlib reproduce --preset quick`, then `python -m brlib figure --preset quick`."""

import argparse
import os
import sys

from brlib.results import ARMS, DEFAULT_ARMS


def _parser():
    parser = argparse.ArgumentParser(prog="python -m brlib")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("reproduce", help="train every arm and seed of a preset")
    run.add_argument("--preset", required=True)
    run.add_argument("--seeds", type=int, help="number of seeds (default: the preset's)")
    run.add_argument("--arms", nargs="+",
                     help=f"default: {' '.join(DEFAULT_ARMS)}; all: {' '.join(ARMS)}")
    run.add_argument("--steps", type=int, help="override the preset's training steps")
    run.add_argument("--eval-every", type=int, help="override the evaluation interval")
    run.add_argument("--results-dir", default="data/results")
    run.add_argument("--data-dir", help="directory with the dataset's files")
    figure = commands.add_parser(
        "figure", help="print the paired differences and draw figures/figure2_<preset>.png and .svg")
    figure.add_argument("--preset", required=True)
    figure.add_argument("--arms", nargs="+", help=f"arms to draw (the table lists every arm "
                        f"with results); default: {' '.join(DEFAULT_ARMS)}")
    figure.add_argument("--results-dir", default="data/results")
    figure.add_argument("--figures-dir", default="figures")
    return parser


def reproduce(args):
    from brlib import experiment

    preset = experiment.get_preset(args.preset, steps=args.steps, eval_every=args.eval_every)
    paths = experiment.reproduce(preset, args.arms or DEFAULT_ARMS, args.seeds,
                                 args.results_dir, args.data_dir)
    print(f"\n{len(paths)} result files in {os.path.join(args.results_dir, preset.name)}")


def figure(args):
    import matplotlib

    matplotlib.use("Agg")
    from brlib import plots, results

    drawn = results.check_arms(args.arms) if args.arms else DEFAULT_ARMS
    loaded = results.load_results(args.results_dir, args.preset)  # the table has every arm
    settings = results.load_settings(args.results_dir, args.preset) or {}
    last = settings.get("final_evaluations", 1)
    print(f"Preset '{args.preset}': final accuracy = mean of the last {last} evaluation(s) per "
          "seed; differences are paired by seed, with 95 % t-intervals, in points.\n")
    print(results.format_table(loaded, last))
    shown = {arm: curves for arm, curves in loaded.items() if arm in drawn}
    if not shown:
        raise FileNotFoundError(f"no results of the arms {list(drawn)} to draw")
    fig = plots.figure2(shown, f"Microbatch experiment, preset '{args.preset}'", last)
    for path in plots.save_figure(fig, f"figure2_{args.preset}", args.figures_dir):
        print(path)


def main(argv=None):
    args = _parser().parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        (reproduce if args.command == "reproduce" else figure)(args)
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
