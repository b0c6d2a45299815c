"""The runner's training throughput against a bare loop, its memory, and the cost of recalibration.

For each preset: examples/s of `Run.train_step` (shuffle, gather, schedule,
distributed step) and of a bare loop calling the same compiled step on batches
prepared in advance, interleaved over rounds, medians; then the resident
memory at the start and end of a longer run. Images are random arrays of the
preset's dataset shape (10k test images, as in Fashion-MNIST), so CIFAR-100
need not be present.

Then, per arm, the cost that recalibrated evaluation adds to a run: the time
of one recalibrated evaluation over the time of what a run does without it
between two evaluations (`eval_every` training steps and one evaluation with
moving averages), median over rounds. Renorm arms recalibrate in several
passes, batch-norm arms in one.

    python benchmarks/runner_throughput.py [--presets quick cpu seed] [--rounds 5]
"""

import argparse
import os
import resource
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from brlib import experiment, protocol  # noqa: E402

SHAPES = {"fashion_mnist": ((28, 28, 1), 10), "cifar10": ((32, 32, 3), 10),
          "cifar100": ((32, 32, 3), 100)}


def synthetic(preset, train=None, test=10000):
    shape, classes = SHAPES[preset.dataset]
    train = train or 4 * preset.minibatch_size
    rng = np.random.default_rng(0)

    def split(n):
        return (rng.uniform(size=(n,) + shape).astype(np.float32),
                rng.integers(0, classes, n).astype(np.int32))

    return split(train), split(test)


def rss_mb():
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def runner_seconds(run, first, steps):
    start = time.perf_counter()
    for step in range(first, first + steps):
        run.train_step(step)
    run.sums.numpy()  # wait for the last step
    return time.perf_counter() - start


def bare_seconds(run, batches):
    start = time.perf_counter()
    for images, labels in batches:
        run._train(images, labels)
    run.sums.numpy()
    return time.perf_counter() - start


def measure(preset, rounds, steps, memory_steps):
    run = experiment.Run(preset, "batchrenorm", 0, synthetic(preset))
    size = preset.minibatch_size
    batches = []
    for step in range(steps):  # what the runner would feed, gathered in advance
        order = experiment.epoch_order(0, step // 4, 4 * size)[(step % 4) * size:
                                                                (step % 4 + 1) * size]
        batches.append((run.x_train[order], run.y_train[order]))
    runner_seconds(run, 0, 2)  # trace
    runner, bare = [], []
    for round_ in range(rounds):  # alternate which goes first, so order cannot favour one
        first_step = 2 + round_ * steps
        if round_ % 2:
            bare.append(bare_seconds(run, batches))
        runner.append(runner_seconds(run, first_step, steps))
        if not round_ % 2:
            bare.append(bare_seconds(run, batches))
    runner_rate = steps * size / np.median(runner)
    bare_rate = steps * size / np.median(bare)
    before = rss_mb()
    runner_seconds(run, 10**5, memory_steps)
    after = rss_mb()
    return runner_rate, bare_rate, before, after


def recalibration_cost(preset, arm, rounds):
    """Seconds of (eval_every steps + an evaluation) and of a recalibrated evaluation."""
    run = experiment.Run(preset, arm, 0, synthetic(preset))
    first = max(preset.rmax_steps, preset.dmax_steps)  # r and d opened, as late in a run
    runner_seconds(run, first, 2)
    run.evaluate(), run.evaluate_recalibrated()  # trace
    base, extra = [], []
    for round_ in range(rounds):
        start = time.perf_counter()
        runner_seconds(run, first + 2 + round_ * preset.eval_every, preset.eval_every)
        run.evaluate()
        base.append(time.perf_counter() - start)
        start = time.perf_counter()
        run.evaluate_recalibrated()
        extra.append(time.perf_counter() - start)
    return np.median(base), np.median(extra)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["quick", "cpu", "seed"])
    parser.add_argument("--recalibration-presets", nargs="*", default=["quick", "cpu"])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=20, help="steps per round (seed: 1/4 of it)")
    parser.add_argument("--memory-steps", type=int, default=400,
                        help="steps of the memory run (seed: 1/20 of it)")
    args = parser.parse_args()
    print(f"| preset | runner ex/s | bare loop ex/s | ratio | RSS start → end (MB), steps |")
    print("|---|---|---|---|---|")
    for name in args.presets:
        preset = protocol.get_preset(name)
        heavy = preset.minibatch_size > 512
        steps = max(2, args.steps // 4) if heavy else args.steps
        memory_steps = max(5, args.memory_steps // 20) if heavy else args.memory_steps
        runner, bare, before, after = measure(preset, args.rounds, steps, memory_steps)
        print(f"| {name} | {runner:.0f} | {bare:.0f} | {runner / bare:.3f} | "
              f"{before:.0f} → {after:.0f}, {memory_steps} |", flush=True)
    print("\n| preset | arm | K | steps + evaluation (s) | recalibrated evaluation (s) | added cost |")
    print("|---|---|---|---|---|---|")
    for name in args.recalibration_presets:
        preset = protocol.get_preset(name)
        for arm in protocol.DEFAULT_ARMS:
            base, extra = recalibration_cost(preset, arm, args.rounds)
            print(f"| {name} | {arm} | {preset.recalibration_batches} | {base:.2f} | "
                  f"{extra:.2f} | {100 * extra / base:.0f} % |", flush=True)


if __name__ == "__main__":
    main()
