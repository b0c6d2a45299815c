"""Program for the multi-worker test: one worker of a MultiWorkerMirroredStrategy cluster.

    python run_multiworker.py INDEX PORT0 PORT1 OUT.npz RESULTS_DIR

TF_CONFIG names two workers on 127.0.0.1; this process is worker INDEX. It
trains the runner for a few steps and saves its weights, moving statistics
and the slice of the minibatch that its replica received. Then both workers
run one whole run with `run_one` into the shared RESULTS_DIR, where only the
chief (worker 0) may write.
"""

import json
import os
import sys

index, ports, out, results = int(sys.argv[1]), sys.argv[2:4], sys.argv[4], sys.argv[5]
os.environ["TF_CONFIG"] = json.dumps({
    "cluster": {"worker": [f"127.0.0.1:{port}" for port in ports]},
    "task": {"type": "worker", "index": index}})

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from toy import TINY, tiny_data  # noqa: E402

from brlib import experiment, protocol  # noqa: E402

STEPS = 6
experiment.fix_threads(protocol.DEFAULT_THREADS)  # before TensorFlow starts
strategy = tf.distribute.MultiWorkerMirroredStrategy()
assert strategy.num_replicas_in_sync == 2
preset = protocol.get_preset("quick", **dict(TINY, dropout=0.0, optimizer="sgd",
                                                learning_rate=0.05))
data = tiny_data()
run = experiment.Run(preset, "batchrenorm", 0, data, strategy)
for step in range(STEPS):
    run.train_step(step)

# What this worker's replica was given of the next minibatch.
images = data[0][0][run.minibatch(STEPS)]
local = strategy.experimental_local_results(run._distribute(images, images[:, 0, 0, 0])[0])
np.savez(out, slice=np.asarray(local[0]), minibatch=images,
         **{f"{layer.name}/{v.name}": v.numpy() for layer in run.model.layers
            for v in layer.variables})

# A whole run, checkpoints and CSV included, into the directory both workers share.
experiment.run_one(preset, "batchrenorm", 1, data, results, strategy)
