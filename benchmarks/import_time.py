"""What `import brlib` costs beyond Keras itself, and which heavy modules it loads.

    python benchmarks/import_time.py [--repeats 7] [--backend tensorflow]

Each import runs in a fresh interpreter under `python -X importtime`,
`repeats` times, and medians are kept: of the wall time of the import
statement, and of the time spent in brlib's own modules (the sum of the
self-times that `-X importtime` gives the modules named brlib*, which leaves
out Keras and the backend). Three statements are timed: `import keras` (with
the backend's own package, the floor any Keras layer pays), `import brlib`,
and `import brlib` followed by a first use of the layer. The script prints
the medians, the ratio of brlib's wall time to Keras's, and which of
matplotlib (and pyplot), SciPy (and scipy.stats), ipywidgets, IPython and
pandas each statement loads that `import keras` alone does not.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys

HEAVY = ("matplotlib", "matplotlib.pyplot", "scipy", "scipy.stats", "ipywidgets", "IPython",
         "pandas", "tensorflow")
BACKEND_PACKAGE = {"tensorflow": "tensorflow", "jax": "jax", "torch": "torch"}

PROBE = """
import json, sys, time
start = time.perf_counter()
{statement}
seconds = time.perf_counter() - start
print(json.dumps({{"seconds": seconds,
                  "loaded": [name for name in {heavy!r} if name in sys.modules]}}))
"""


def parse():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--backend", default="tensorflow", choices=sorted(BACKEND_PACKAGE))
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error(f"--repeats must be at least 1, got {args.repeats}")
    return args


def own_seconds(importtime_log):
    """Seconds spent in brlib's own modules: the sum of their `-X importtime` self-times."""
    total_us = 0
    for line in importtime_log.splitlines():
        fields = line.removeprefix("import time:").split("|")
        if len(fields) == 3 and fields[2].strip().startswith("brlib") and fields[0].strip().isdigit():
            total_us += int(fields[0])
    return total_us / 1e6


def time_import(statement, backend, repeats):
    """Medians of the statement's wall seconds and of brlib's own seconds, and the heavy
    modules it loaded, over `repeats` fresh interpreters."""
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3")
    seconds, own, loaded = [], [], None
    for _ in range(repeats):
        out = subprocess.run([sys.executable, "-X", "importtime", "-c",
                              PROBE.format(statement=statement, heavy=HEAVY)],
                             env=env, capture_output=True, text=True, check=True)
        probe = json.loads(out.stdout.strip().splitlines()[-1])
        seconds.append(probe["seconds"])
        own.append(own_seconds(out.stderr))
        loaded = probe["loaded"]
    return statistics.median(seconds), statistics.median(own), loaded


def main():
    args = parse()
    statements = {
        "keras": f"import {BACKEND_PACKAGE[args.backend]}, keras",
        "brlib": "import brlib",
        "brlib + layer": "import brlib; brlib.BatchRenormalization(microbatch_size=2)",
    }
    print(f"Median of {args.repeats} fresh interpreters, backend {args.backend}:")
    medians, floor = {}, None
    for name, statement in statements.items():
        medians[name], own, loaded = time_import(statement, args.backend, args.repeats)
        floor = loaded if floor is None else floor
        added = [module for module in loaded if module not in floor]
        print(f"  {name:14s} {medians[name]:6.2f} s, of which brlib's own modules {own:5.3f} s; "
              f"loads beyond import keras: {', '.join(added) or 'none of ' + ', '.join(HEAVY[:-1])}")
    print(f"import brlib / import keras: {medians['brlib'] / medians['keras']:.2f}")


if __name__ == "__main__":
    main()
