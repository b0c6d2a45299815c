"""Command line: `python -m brlib reproduce --preset quick`, then `python -m brlib figure --preset
quick`; `python -m brlib report` writes the results page."""

import argparse
import os
import sys

from brlib.protocol import ARMS, DEFAULT_ARMS, NONIID_ARMS, NONIID_FIGURE_ARMS


def _parser():
    parser = argparse.ArgumentParser(prog="python -m brlib")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("reproduce", help="train every arm and seed of a preset")
    run.add_argument("--preset", required=True)
    run.add_argument("--seeds", type=int, help="number of seeds (default: the preset's)")
    run.add_argument("--arms", nargs="+",
                     help=f"default: {' '.join(DEFAULT_ARMS)} (noniid presets: "
                          f"{' '.join(NONIID_ARMS)}); all: {' '.join(ARMS)}")
    run.add_argument("--steps", type=int, help="override the preset's training steps")
    run.add_argument("--eval-every", type=int, help="override the evaluation interval")
    run.add_argument("--threads", type=int, help="override the preset's CPU threads per run "
                     "(results reproduce bit for bit only at one count; default 1)")
    run.add_argument("--jobs", type=int, help="runs trained at once, each in a process of its "
                     "own (default: the machine's cores, at most the runs left)")
    run.add_argument("--results-dir", default="data/results")
    run.add_argument("--data-dir", help="directory with the dataset's files")
    run.add_argument("--multi-worker", action="store_true",
                     help="train with tf.distribute.MultiWorkerMirroredStrategy: start one such "
                          "command per worker, each with its TF_CONFIG; only the chief writes")
    run.add_argument("--collective-timeout", type=float, default=300.0,
                     help="with --multi-worker: seconds a collective operation may wait for the "
                          "other workers before the run stops with an error (default 300)")
    figure = commands.add_parser(
        "figure", help="print the paired differences and draw figures/figure2_<preset>.png and "
        ".svg (figure3_<preset> for the noniid presets; figure2_<preset>_<arms> for --arms)")
    figure.add_argument("--preset", required=True)
    figure.add_argument("--arms", nargs="+", help=f"arms to draw (the table lists every arm "
                        f"with results); default: {' '.join(DEFAULT_ARMS)} (noniid presets: "
                        f"{' '.join(NONIID_FIGURE_ARMS)})")
    figure.add_argument("--results-dir", default="data/results")
    figure.add_argument("--figures-dir", default="figures")
    figure.add_argument("--compare", metavar="DIR", help="results directory to set these "
                        "results beside (e.g. the committed data/results): its table, and "
                        "whether each run's CSV is the same there")
    report = commands.add_parser("report", help="write the results page (docs/results.md) "
                                 "from the result files")
    report.add_argument("--results-dir", default="data/results")
    report.add_argument("--out", default="docs/results.md")
    report.add_argument("--figures-dir", default="figures",
                        help="where to draw the learning-rate sweeps' figures (default figures)")
    report.add_argument("--readme", default="README.md",
                        help="the README whose findings block to regenerate (default README.md; "
                        "'' for none)")
    return parser


def reproduce(args):
    from brlib import experiment, protocol

    preset = protocol.get_preset(args.preset, steps=args.steps, eval_every=args.eval_every,
                                 threads=args.threads)
    strategy = None
    if args.multi_worker:
        experiment.fix_threads(preset.threads)  # before the strategy starts TensorFlow
        strategy = experiment.multi_worker_strategy(args.collective_timeout)
    paths = experiment.reproduce(preset, args.arms, args.seeds, args.results_dir, args.data_dir,
                                 strategy=strategy, jobs=args.jobs)
    print(f"\n{len(paths)} result files in {os.path.join(args.results_dir, preset.name)}")


def figure(args):
    import matplotlib

    matplotlib.use("Agg")
    from brlib import plots, protocol, results

    chosen = protocol.check_arms(args.arms) if args.arms else None  # before reading anything
    loaded = results.load_results(args.results_dir, args.preset)  # the table has every arm
    preset = loaded.preset
    print(f"Preset '{args.preset}': final accuracy = mean of the last {loaded.last} "
          "evaluation(s) per seed; differences are paired by seed, with 95 % t-intervals, "
          "in points.\n")
    print(results.format_table(loaded))
    print("\nWithin each arm, paired by seed (points): the train/inference mismatch, and the lag "
          "of the moving averages.\n")
    print(results.format_mismatch_table(loaded))
    if preset.sampling == "pairs":
        print("\n" + results.format_noniid_table(loaded))
    fig, name = plots.preset_figure(loaded, chosen)
    for path in plots.save_figure(fig, name, args.figures_dir):
        print(path)
    if args.compare:
        _compare(args)


def _compare(args):
    """Prints the results of `args.compare` for the same preset, and whether the runs agree."""
    from brlib import results

    other = results.load_settings(args.compare, args.preset)
    print(f"\nBeside {os.path.join(args.compare, args.preset)}:")
    if other is None:
        print("  no results of this preset there.")
        return
    settings = results.load_settings(args.results_dir, args.preset) or {}
    if {k: v for k, v in other.items() if k != "seeds"} != {
            k: v for k, v in settings.items() if k != "seeds"}:
        print("  recorded with other settings: the runs are not comparable one to one.")
    else:
        same = results.same_runs(os.path.join(args.results_dir, args.preset),
                                 os.path.join(args.compare, args.preset))
        print(f"  same settings; {sum(same.values())} of {len(same)} runs wrote the same CSV "
              "there, apart from wall_seconds" + ("" if all(same.values()) else
                                                  f" (differ: {[n for n, ok in same.items() if not ok]})"))
    print()
    print(results.format_table(results.load_results(args.compare, args.preset)))


def report(args):
    from brlib import report as results_page

    print(results_page.write(args.results_dir, args.out, args.figures_dir))
    if args.readme:
        print(results_page.write_findings(args.results_dir, args.readme))


COMMANDS = {"reproduce": reproduce, "figure": figure, "report": report}


def main(argv=None):
    args = _parser().parse_args(argv)
    # As quiet as the notebooks: the training processes started below inherit it, and level 3
    # also drops the C++ error lines of a CPU-only machine ("failed call to cuInit").
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    try:
        COMMANDS[args.command](args)
    except (ValueError, FileNotFoundError, RuntimeError) as error:  # incl. a failed or lost run
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\nstopped: finished runs are kept; the same command resumes the others from "
              "their last checkpoint", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
