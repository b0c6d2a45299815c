"""How noisy is recalibrated accuracy, as a function of K, the number of minibatches it uses?

Trains one run per arm of a preset to its end (seed 0, real Fashion-MNIST),
then recalibrates the final model on `--sets` disjoint sets of K training
minibatches and scores each on the test split. The sd across sets is the
recalibrated estimate's own noise; it should be small beside the sd across
seeds (see `python -m brlib figure`), so that K does not blur the comparison.

    python benchmarks/recalibration_noise.py [--preset quick] [--ks 1 2 5 10 20] [--sets 6]
"""

import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

import brlib as br  # noqa: E402
from brlib import experiment, protocol  # noqa: E402


def trained_run(preset, arm, dataset):
    run = experiment.Run(preset, arm, 0, dataset)
    for step in range(preset.steps):
        run.train_step(step)
    return run


def accuracies(run, k, sets):
    """Test accuracy (%) after recalibration on each of `sets` disjoint sets of k minibatches."""
    size = run.preset.minibatch_size
    order = np.random.default_rng(123).permutation(len(run.x_train))
    scores = []
    for index in range(sets):
        chunk = order[index * k * size:(index + 1) * k * size].reshape(k, size)
        with br.recalibrated(run.model, [run.x_train[rows] for rows in chunk], run._forward):
            scores.append(100 * run.evaluate()[0])
    return np.array(scores)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="quick")
    parser.add_argument("--ks", nargs="+", type=int, default=[1, 2, 5, 10, 20])
    parser.add_argument("--sets", type=int, default=6)
    args = parser.parse_args()
    preset = protocol.get_preset(args.preset)
    dataset = br.data.load(preset.dataset)
    print(f"preset {preset.name}: recalibrated test accuracy over {args.sets} disjoint sets "
          f"of K minibatches of {preset.minibatch_size}, final model of seed 0")
    print("| arm | moving averages (%) | K | mean (%) | sd across sets (points) |")
    print("|---|---|---|---|---|")
    for arm in protocol.DEFAULT_ARMS:
        run = trained_run(preset, arm, dataset)
        moving = 100 * run.evaluate()[0]
        for k in args.ks:
            scores = accuracies(run, k, args.sets)
            print(f"| {arm} | {moving:.2f} | {k} | {scores.mean():.2f} | "
                  f"{scores.std(ddof=1):.3f} |", flush=True)


if __name__ == "__main__":
    main()
