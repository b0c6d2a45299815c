"""Train-step time of the seed convnet under five normalization layers, as ratios to Keras's.

Arms are interleaved round by round in one process, so that drift of the
machine hits them alike; each arm's time is the median over rounds.

    python benchmarks/layer_overhead.py [--backend jax] [--rounds 7] [--steps 5] [--batch 256]

On TensorFlow a training step is a `tf.function` (no XLA); on JAX and PyTorch
it is Keras's own compiled `train_on_batch` (jitted on JAX), the same for every
arm, so ratios compare layers within one backend, not backends.
"""

import argparse
import os
import sys
import time


def parse():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default="tensorflow", choices=["tensorflow", "jax", "torch"])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=5, help="train steps timed per round")
    parser.add_argument("--batch", type=int, default=256)
    return parser.parse_args()


ARGS = parse()
os.environ["KERAS_BACKEND"] = ARGS.backend  # before Keras is imported
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import brlib as br  # noqa: E402  first: on TensorFlow it imports it without the C++ start-up lines
import keras  # noqa: E402
import numpy as np  # noqa: E402

ARMS = {
    "keras BatchNormalization": lambda name: keras.layers.BatchNormalization(name=name),
    "keras BatchNormalization(renorm=True)": lambda name: keras.layers.BatchNormalization(
        renorm=True, renorm_clipping={"rmin": 1 / 1.5, "rmax": 1.5, "dmax": 0.5}, name=name),
    "brlib whole batch": lambda name: br.BatchRenormalization(rmax=1.5, dmax=0.5, name=name),
    "brlib batch norm, microbatch 2": lambda name: br.BatchRenormalization(
        rmax=1.0, dmax=0.0, microbatch_size=2, name=name),
    "brlib renorm, microbatch 2": lambda name: br.BatchRenormalization(
        rmax=1.5, dmax=0.5, microbatch_size=2, name=name),
}


def make_step(normalization, batch):
    """One training step of the seed convnet; returns a callable whose result can be waited on."""
    model = br.models.seed_convnet((32, 32, 3), 100, normalization, dropout=0)
    optimizer = keras.optimizers.Adam(1e-4)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    rng = np.random.default_rng(0)
    images = rng.uniform(size=(batch, 32, 32, 3)).astype(np.float32)
    labels = rng.integers(0, 100, size=batch)
    if ARGS.backend != "tensorflow":
        model.compile(optimizer=optimizer, loss=loss_fn)
        return lambda: model.train_on_batch(images, labels)
    import tensorflow as tf

    images, labels = tf.constant(images), tf.constant(labels)

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            loss = loss_fn(labels, model(images, training=True))
        gradients = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(gradients, model.trainable_variables))
        return loss

    return step


def seconds_per_step(step, steps):
    start = time.perf_counter()
    for _ in range(steps):
        loss = step()
    float(keras.ops.convert_to_numpy(loss))  # wait for the last step
    return (time.perf_counter() - start) / steps


def main():
    args = ARGS
    keras.utils.set_random_seed(0)
    if args.backend == "tensorflow":
        import tensorflow as tf

        tf.get_logger().setLevel("ERROR")  # one tf.function per arm is intended, not retracing
    steps = {name: make_step(factory, args.batch) for name, factory in ARMS.items()}
    for step in steps.values():  # trace and warm up
        seconds_per_step(step, 2)
    times = {name: [] for name in ARMS}
    for _ in range(args.rounds):
        for name, step in steps.items():
            times[name].append(seconds_per_step(step, args.steps))

    baseline = np.median(times["keras BatchNormalization"])
    versions = {"tensorflow": "tensorflow", "jax": "jax", "torch": "torch"}
    backend_version = sys.modules[versions[args.backend]].__version__
    print(f"seed convnet, batch {args.batch}, {args.rounds} rounds x {args.steps} steps, "
          f"Keras {keras.__version__} on {args.backend} {backend_version}, {os.cpu_count()} CPUs")
    print(f"| {'arm':<40} | ms/step | ratio |")
    print(f"|{'-' * 42}|---------|-------|")
    for name, values in times.items():
        median = np.median(values)
        print(f"| {name:<40} | {1000 * median:7.1f} | {median / baseline:5.2f} |")


if __name__ == "__main__":
    main()
