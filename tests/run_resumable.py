"""Program for the kill-and-resume test: one tiny batchrenorm run, `python run_resumable.py RESULTS STEPS`."""

import sys

from toy import TINY, tiny_data

from brlib import experiment, protocol

results, steps = sys.argv[1], int(sys.argv[2])
preset = protocol.get_preset("quick", **dict(TINY, steps=steps))
experiment.run_one(preset, "batchrenorm", 0, tiny_data(), results)
