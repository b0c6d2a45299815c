"""Wall time of a preset trained run after run and with several runs at once, and the cost of
fixing each run's thread count.

Three measurements, each through the command line a reader types, into a scratch
directory (the committed results are never touched):

1. the whole preset with `--jobs 1` (one run after another, each in its own process
   with the preset's 1 thread), then with `--jobs N` (N runs at once); the speed-up
   and the efficiency per core (speed-up / N); and whether every CSV of the two
   is the same, byte for byte, apart from `wall_seconds` (and, if the checkout's
   committed results have the same settings, the same as those too);
2. the cost of the fixed thread count: one seed of every arm, one run after
   another, with `--threads 1` against `--threads <cores>` (what TensorFlow
   would use by default).

    python benchmarks/parallel_seeds.py [--preset quick] [--jobs N] [--keep DIR]

`--keep DIR` keeps the runs there (DIR/jobs1, DIR/jobsN, DIR/threads*).
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from brlib import results

ROOT = Path(__file__).resolve().parent.parent


def reproduce(out, preset, *options):
    """Runs `python -m brlib reproduce` into `out`; returns its wall time in seconds."""
    command = [sys.executable, "-m", "brlib", "reproduce", "--preset", preset,
               "--results-dir", str(out), *options]
    started = time.perf_counter()
    subprocess.run(command, check=True, stderr=subprocess.DEVNULL,
                   env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    return time.perf_counter() - started


def same_files(a, b):
    """Whether two results directories hold the same CSV names and contents (but wall time)."""
    return sorted(p.name for p in Path(b).glob("*.csv")) == sorted(
        p.name for p in Path(a).glob("*.csv")) and all(results.same_runs(a, b).values())


def minutes(seconds):
    return f"{int(seconds // 60)} min {seconds % 60:04.1f} s"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="quick")
    parser.add_argument("--jobs", type=int, default=os.cpu_count())
    parser.add_argument("--keep", help="keep the runs in this directory")
    args = parser.parse_args()
    out = Path(args.keep or tempfile.mkdtemp(prefix="brlib-parallel-"))
    out.mkdir(parents=True, exist_ok=True)
    if any(out.iterdir()):
        sys.exit(f"{out} is not empty: the timings need runs that start from nothing")
    cores = os.cpu_count()
    print(f"preset {args.preset!r} on {cores} CPU cores\n")
    try:
        one = reproduce(out / "jobs1", args.preset, "--jobs", "1")
        many = reproduce(out / f"jobs{args.jobs}", args.preset, "--jobs", str(args.jobs))
        speedup = one / many
        print(f"| runs at once | wall time | speed-up | efficiency per core |\n|---|---|---|---|\n"
              f"| 1 | {minutes(one)} | 1.00 | — |\n"
              f"| {args.jobs} | {minutes(many)} | {speedup:.2f} | {speedup / args.jobs:.2f} |")
        a, b = out / "jobs1" / args.preset, out / f"jobs{args.jobs}" / args.preset
        print(f"\nevery CSV the same with --jobs 1 and --jobs {args.jobs} (but wall_seconds): "
              f"{same_files(a, b)}")
        committed = ROOT / "data" / "results" / args.preset
        stored = results.load_settings(committed.parent, args.preset)
        if stored and stored == json.loads((a / results.SETTINGS_FILE).read_text()):
            print(f"the same as the committed {committed.relative_to(ROOT)}: "
                  f"{same_files(a, committed)}")
        # One seed of every arm, one after another: one thread per run against the cores.
        timed = {threads: reproduce(out / f"threads{threads}", args.preset, "--seeds", "1",
                                    "--jobs", "1", "--threads", str(threads))
                 for threads in (1, cores)}
        print(f"\none seed of every arm, one run after another: --threads 1 "
              f"{minutes(timed[1])}, --threads {cores} {minutes(timed[cores])}; one thread "
              f"per run takes {timed[1] / timed[cores]:.2f}× as long")
        runs = len(list(a.glob("*.csv")))
        per_seed = len(list((out / f"threads{cores}" / args.preset).glob("*.csv")))
        before = timed[cores] * runs / per_seed  # one run after another, all cores each
        print(f"the whole preset one run after another with {cores} threads each would take "
              f"about {minutes(before)} ({runs} runs); --jobs {args.jobs} with 1 thread each "
              f"takes {many / before:.2f}× that")
    finally:
        if not args.keep:
            shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()
