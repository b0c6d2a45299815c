"""Program for the lost-worker test: one worker of a two-worker cluster training one whole run.

    python run_cluster_worker.py INDEX PORT0 PORT1 RESULTS_DIR STEPS TIMEOUT

TF_CONFIG names two workers on 127.0.0.1; this process is worker INDEX (worker 0
is the chief). Both train the same tiny run with `run_one` into RESULTS_DIR,
through `multi_worker_strategy` with a collective timeout of TIMEOUT seconds.
Exits 0 when the run is finished, 3 with the error on stderr when a worker is lost.
"""

import json
import os
import sys

index, ports, results, steps, timeout = (int(sys.argv[1]), sys.argv[2:4], sys.argv[4],
                                         int(sys.argv[5]), float(sys.argv[6]))
os.environ["TF_CONFIG"] = json.dumps({
    "cluster": {"worker": [f"127.0.0.1:{port}" for port in ports]},
    "task": {"type": "worker", "index": index}})

from toy import TINY, tiny_data  # noqa: E402

from brlib import experiment, protocol  # noqa: E402

preset = protocol.get_preset("quick", **dict(TINY, dropout=0.0, optimizer="sgd",
                                                learning_rate=0.05, steps=steps, eval_every=10))
experiment.fix_threads(preset.threads)  # before the strategy starts TensorFlow
strategy = experiment.multi_worker_strategy(timeout)
try:
    experiment.run_one(preset, "batchrenorm", 0, tiny_data(), results, strategy,
                       on_step=lambda step: print("step", step, flush=True))
except experiment.WorkerLost as error:
    print(f"error: {error}", file=sys.stderr, flush=True)
    sys.exit(3)
print("finished", flush=True)
