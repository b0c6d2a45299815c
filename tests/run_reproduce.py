"""Program for the Ctrl-C test: `reproduce` of two tiny runs, two at a time.

    python run_reproduce.py RESULTS STEPS

Exits 130 after Ctrl-C (SIGINT), as `python -m brlib reproduce` does.
"""

import sys

from toy import TINY, tiny_data

from brlib import experiment, protocol

def main():
    results, steps = sys.argv[1], int(sys.argv[2])
    preset = protocol.get_preset("quick", **dict(TINY, steps=steps, eval_every=10))
    try:
        experiment.reproduce(preset, ["batchnorm", "batchrenorm"], results_dir=results,
                             dataset=tiny_data(), jobs=2, verbose=False)
    except KeyboardInterrupt:
        print("stopped", flush=True)
        sys.exit(130)
    print("finished", flush=True)


if __name__ == "__main__":  # the training processes start by importing this file
    main()
