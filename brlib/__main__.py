"""Command line: `python -m brlib reproduce --preset quick`, then `python -m brlib figure --preset quick`."""

import argparse
import os
import sys


def _parser():
    parser = argparse.ArgumentParser(prog="python -m brlib")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("reproduce", help="train every arm and seed of a preset")
    run.add_argument("--preset", required=True)
    run.add_argument("--seeds", type=int, help="number of seeds (default: the preset's)")
    run.add_argument("--arms", nargs="+", help="default: batchnorm batchrenorm baseline")
    run.add_argument("--steps", type=int, help="override the preset's training steps")
    run.add_argument("--eval-every", type=int, help="override the evaluation interval")
    run.add_argument("--results-dir", default="data/results")
    run.add_argument("--data-dir", help="directory with the dataset's files")
    figure = commands.add_parser("figure", help="draw figures/figure2_<preset>.png and .svg")
    figure.add_argument("--preset", required=True)
    figure.add_argument("--results-dir", default="data/results")
    figure.add_argument("--figures-dir", default="figures")
    return parser


def main(argv=None):
    args = _parser().parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from brlib import experiment

    try:
        preset = experiment.get_preset(args.preset, **(
            {"steps": args.steps, "eval_every": args.eval_every}
            if args.command == "reproduce" else {}))
        if args.command == "reproduce":
            paths = experiment.reproduce(preset, args.arms or experiment.ARMS, args.seeds,
                                         args.results_dir, args.data_dir)
            print(f"\n{len(paths)} result files in {os.path.join(args.results_dir, preset.name)}")
        else:
            import matplotlib

            matplotlib.use("Agg")
            from brlib import plots

            results = plots.load_results(args.results_dir, preset.name)
            fig = plots.figure2(results, f"Microbatch experiment, preset '{preset.name}'")
            for path in plots.save_figure(fig, f"figure2_{preset.name}", args.figures_dir):
                print(path)
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
