"""The microbatch experiment of the paper's Figure 2: presets, arms, and a resumable runner.

Every training step draws a minibatch from a shuffle that changes every
epoch; the gradient is taken over the whole minibatch, while normalization
runs over contiguous microbatches of it. Each (preset, arm, seed) writes one
CSV, atomically, and keeps a checkpoint while it runs, so that an interrupted
run resumes where it stopped and finished runs are skipped.
"""

import csv
import dataclasses
import io
import json
import os
import time
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

import brlib.data
from brlib.layers import BatchRenormalization
from brlib.models import seed_convnet
from brlib.schedule import RenormSchedule, renorm_layers

COLUMNS = ["step", "val_accuracy", "val_loss", "train_loss", "r_clipped", "d_clipped",
           "wall_seconds"]
ARMS = ("batchnorm", "batchrenorm", "baseline")
BASELINE_GROUP = 32  # each of the paper's workers normalized its own 32 examples


@dataclasses.dataclass(frozen=True)
class Preset:
    """Settings of one experiment. Schedule steps are absolute training steps."""

    name: str
    dataset: str
    minibatch_size: int
    microbatch_size: int
    steps: int
    learning_rate: float
    warmup_steps: int
    rmax_final: float
    rmax_steps: int
    dmax_final: float
    dmax_steps: int
    eval_every: int
    seeds: int = 3
    optimizer: str = "adam"
    widths: tuple = (64, 128, 256)
    dropout: float = 0.5

    def schedule(self):
        return RenormSchedule(self.warmup_steps, self.rmax_final, self.rmax_steps,
                              self.dmax_final, self.dmax_steps)

    def validate(self):
        for name in ("minibatch_size", "microbatch_size", "steps", "eval_every", "seeds"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"`{name}` must be a positive integer; got {name}={value!r}.")
        for group in (self.microbatch_size, BASELINE_GROUP):
            if self.minibatch_size % group:
                raise ValueError(
                    f"`minibatch_size`={self.minibatch_size} must be a multiple of the "
                    f"microbatch size {group} (`microbatch_size`, or the baseline's 32).")
        if self.dataset not in brlib.data.LOADERS:
            raise ValueError(f"`dataset` must be one of {sorted(brlib.data.LOADERS)}; "
                             f"got dataset={self.dataset!r}.")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"`optimizer` must be one of {sorted(OPTIMIZERS)}; "
                             f"got optimizer={self.optimizer!r}.")
        self.schedule()  # checks the schedule's own arguments
        return self


OPTIMIZERS = {"adam": keras.optimizers.Adam, "rmsprop": keras.optimizers.RMSprop,
              "sgd": keras.optimizers.SGD}

# The student reproduction: 1600 = 800 × 2, 300 epochs of 31 steps, Adam 1e-4,
# rmax/dmax 1/0 until epoch 20, then linear to 1.5/0.5 at epoch 300.
SEED = Preset(name="seed", dataset="cifar100", minibatch_size=1600, microbatch_size=2,
              steps=9300, learning_rate=1e-4, warmup_steps=620, rmax_final=1.5,
              rmax_steps=9300, dmax_final=0.5, dmax_steps=9300, eval_every=31, seeds=5)
# The paper's schedule shape on the seed's data: 5k/160k warm-up, rmax 3 at
# 40k/160k, dmax 5 at 25k/160k, microbatches of 4.
PAPER = dataclasses.replace(SEED, name="paper", microbatch_size=4, warmup_steps=291,
                            rmax_final=3.0, rmax_steps=2325, dmax_final=5.0, dmax_steps=1453)
# Sized for a 2-core CPU: 3 arms × 3 seeds in about ten minutes.
QUICK = Preset(name="quick", dataset="fashion_mnist", minibatch_size=256, microbatch_size=2,
               steps=480, learning_rate=1e-3, warmup_steps=15, rmax_final=3.0,
               rmax_steps=120, dmax_final=5.0, dmax_steps=75, eval_every=40, seeds=3,
               widths=(16, 32, 64), dropout=0.0)
PRESETS = {preset.name: preset for preset in (SEED, PAPER, QUICK)}


def get_preset(name, **overrides):
    """A preset by name, with any field overridden, validated."""
    if name not in PRESETS:
        raise ValueError(f"`preset` must be one of {sorted(PRESETS)}; got preset={name!r}.")
    unknown = set(overrides) - {f.name for f in dataclasses.fields(Preset)}
    if unknown:
        raise ValueError(f"unknown preset settings: {sorted(unknown)}")
    overrides = {k: v for k, v in overrides.items() if v is not None}
    return dataclasses.replace(PRESETS[name], **overrides).validate()


def check_arms(arms):
    bad = [arm for arm in arms if arm not in ARMS]
    if bad or not arms:
        raise ValueError(f"`arms` must be a non-empty subset of {list(ARMS)}; got {list(arms)}.")
    return list(arms)


def group_size(arm, preset):
    """Examples normalized together in `arm`: 32 for the baseline, else the microbatch."""
    return BASELINE_GROUP if arm == "baseline" else preset.microbatch_size


def normalization_for(arm, preset):
    """A factory of the arm's normalization layer.

    Every arm starts as batch norm (rmax = 1, dmax = 0); only batchrenorm's
    bounds are then opened, step by step, by its RenormSchedule.
    """
    group = group_size(arm, preset)
    return lambda: BatchRenormalization(rmax=1.0, dmax=0.0, microbatch_size=group)


def build_model(arm, preset, input_shape, classes):
    return seed_convnet(input_shape, classes, normalization_for(arm, preset),
                        dropout=preset.dropout, widths=preset.widths)


# ---------------------------------------------------------------------------
# Files: results and checkpoints, written atomically
# ---------------------------------------------------------------------------
def write_atomic(path, payload):
    """Writes bytes to `path` through a temporary file and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    with open(temporary, "wb") as handle:
        handle.write(payload)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


def result_path(results_dir, preset, arm, seed):
    return Path(results_dir) / preset.name / f"{arm}_seed{seed}.csv"


def rows_to_csv(rows):
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return text.getvalue().encode()


def read_csv(path):
    with open(path, newline="") as handle:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(handle)]


class Checkpoint:
    """Model, optimizer and bookkeeping of an unfinished run, in one .npz file."""

    def __init__(self, path):
        self.path = Path(path)

    def save(self, variables, step, rows, wall_seconds):
        buffer = io.BytesIO()
        meta = json.dumps({"step": step, "rows": rows, "wall_seconds": wall_seconds})
        np.savez(buffer, meta=np.array(meta),
                 **{f"v{i}": np.asarray(v) for i, v in enumerate(variables)})
        write_atomic(self.path, buffer.getvalue())

    def restore(self, variables):
        """Assigns the saved values; returns (step, rows, wall_seconds), or None."""
        if not self.path.exists():
            return None
        with np.load(self.path) as saved:
            for i, variable in enumerate(variables):
                variable.assign(saved[f"v{i}"])
            meta = json.loads(str(saved["meta"]))
        return meta["step"], meta["rows"], meta["wall_seconds"]

    def delete(self):
        self.path.unlink(missing_ok=True)


# ---------------------------------------------------------------------------
# One run
# ---------------------------------------------------------------------------
def epoch_order(seed, epoch, size):
    """The shuffle of one epoch, a function of (seed, epoch) alone so that resuming repeats it."""
    return np.random.default_rng([seed, epoch]).permutation(size)


class Run:
    """Trains one (preset, arm, seed) and evaluates the inference model every k steps."""

    def __init__(self, preset, arm, seed, dataset, strategy=None):
        self.preset, self.arm, self.seed = preset, arm, seed
        (self.x_train, self.y_train), (self.x_test, self.y_test) = dataset
        self.strategy = strategy or tf.distribute.get_strategy()
        replicas = self.strategy.num_replicas_in_sync
        group = group_size(arm, preset)
        if preset.minibatch_size % (replicas * group):
            raise ValueError(
                f"`minibatch_size`={preset.minibatch_size} must split into {replicas} "
                f"replicas of whole microbatches of {group}: microbatches stay on one replica.")
        keras.utils.set_random_seed(seed)
        classes = int(max(self.y_train.max(), self.y_test.max())) + 1
        with self.strategy.scope():
            self.model = build_model(arm, preset, self.x_train.shape[1:], classes)
            self.optimizer = OPTIMIZERS[preset.optimizer](preset.learning_rate)
            self.optimizer.build(self.model.trainable_variables)
            self.sums = tf.Variable(tf.zeros(4), trainable=False)  # loss, r, d, count
        self.layers = renorm_layers(self.model)
        self.loss_fn = keras.losses.SparseCategoricalCrossentropy(
            from_logits=True, reduction="sum")
        self.schedule = preset.schedule() if arm == "batchrenorm" else None
        self._train = tf.function(self._distributed_step)
        self._predict = tf.function(lambda x: self.model(x, training=False))

    @property
    def variables(self):
        return list(self.model.variables) + list(self.optimizer.variables) + [self.sums]

    def _replica_step(self, images, labels):
        with tf.GradientTape() as tape:
            logits = self.model(images, training=True)
            # The gradient is the mean over the whole minibatch, on every replica.
            loss = self.loss_fn(labels, logits) / self.preset.minibatch_size
        gradients = tape.gradient(loss, self.model.trainable_variables)
        self.optimizer.apply_gradients(zip(gradients, self.model.trainable_variables))
        r = tf.reduce_mean([tf.convert_to_tensor(l.fraction_r_clipped) for l in self.layers])
        d = tf.reduce_mean([tf.convert_to_tensor(l.fraction_d_clipped) for l in self.layers])
        return loss, r, d

    def _distributed_step(self, images, labels):
        loss, r, d = self.strategy.run(self._replica_step, args=(images, labels))
        reduce = self.strategy.reduce
        replicas = self.strategy.num_replicas_in_sync
        loss = reduce(tf.distribute.ReduceOp.SUM, loss, axis=None)
        r = reduce(tf.distribute.ReduceOp.SUM, r, axis=None) / replicas
        d = reduce(tf.distribute.ReduceOp.SUM, d, axis=None) / replicas
        self.sums.assign_add(tf.stack([loss, r, d, 1.0]))

    def _distribute(self, images, labels):
        """Splits a minibatch into contiguous per-replica slices, one per worker."""
        replicas = self.strategy.num_replicas_in_sync
        if replicas == 1:
            return images, labels
        per = len(images) // replicas

        def piece(array):
            return self.strategy.experimental_distribute_values_from_function(
                lambda context: array[context.replica_id_in_sync_group * per:
                                      (context.replica_id_in_sync_group + 1) * per])

        return piece(images), piece(labels)

    def train_step(self, step):
        size = self.preset.minibatch_size
        per_epoch = len(self.x_train) // size
        epoch, index = divmod(step, per_epoch)
        order = epoch_order(self.seed, epoch, len(self.x_train))[index * size:(index + 1) * size]
        if self.schedule is not None:
            self.schedule.apply(self.model, step)
        self._train(*self._distribute(self.x_train[order], self.y_train[order]))

    def evaluate(self, batch_size=1000):
        """Accuracy and mean loss of the inference model on the test split."""
        correct, total_loss = 0, 0.0
        for start in range(0, len(self.x_test), batch_size):
            images = self.x_test[start:start + batch_size]
            labels = self.y_test[start:start + batch_size]
            logits = self._predict(images)
            correct += int(np.sum(np.argmax(logits, axis=-1) == labels))
            total_loss += float(self.loss_fn(labels, logits))
        return correct / len(self.x_test), total_loss / len(self.x_test)

    def row(self, step, wall_seconds):
        loss, r, d, count = (float(v) for v in self.sums.numpy())
        self.sums.assign(np.zeros(4, np.float32))
        accuracy, val_loss = self.evaluate()
        return {"step": step, "val_accuracy": accuracy, "val_loss": val_loss,
                "train_loss": loss / max(count, 1), "r_clipped": r / max(count, 1),
                "d_clipped": d / max(count, 1), "wall_seconds": round(wall_seconds, 2)}


def run_one(preset, arm, seed, dataset, results_dir, strategy=None, on_step=None):
    """Runs one (preset, arm, seed) to the end, resuming from its checkpoint.

    Returns the path of the finished CSV. A CSV that already exists is left
    alone. `on_step(step)` is called after every training step (progress bars).
    """
    path = result_path(results_dir, preset, arm, seed)
    if path.exists():
        return path
    tf.config.experimental.enable_op_determinism()
    run = Run(preset, arm, seed, dataset, strategy)
    checkpoint = Checkpoint(path.with_name(f".{path.stem}.checkpoint.npz"))
    step, rows, wall_before = checkpoint.restore(run.variables) or (0, [], 0.0)
    started = time.perf_counter()
    while step < preset.steps:
        run.train_step(step)
        step += 1
        if step % preset.eval_every == 0 or step == preset.steps:
            wall = wall_before + time.perf_counter() - started
            rows.append(run.row(step, wall))
            checkpoint.save([v.numpy() for v in run.variables], step, rows, wall)
        if on_step:
            on_step(step)
    write_atomic(path, rows_to_csv(rows))
    checkpoint.delete()
    return path


def reproduce(preset, arms=ARMS, seeds=None, results_dir="data/results", data_dir=None,
              strategy=None, verbose=True):
    """Runs every (arm, seed) of a preset that has no CSV yet; returns the CSV paths."""
    arms = check_arms(arms)
    seeds = preset.seeds if seeds is None else seeds
    if not isinstance(seeds, int) or seeds <= 0:
        raise ValueError(f"`seeds` must be a positive integer; got seeds={seeds!r}.")
    dataset = brlib.data.load(preset.dataset, data_dir=data_dir)  # fails before training
    jobs = [(arm, seed) for seed in range(seeds) for arm in arms]
    todo = [job for job in jobs if not result_path(results_dir, preset, *job).exists()]
    progress = Progress(len(todo) * preset.steps) if verbose else None
    paths = []
    for arm, seed in jobs:
        pending = (arm, seed) in todo
        if pending and progress:
            progress.label = f"{arm} seed {seed}"
        paths.append(run_one(preset, arm, seed, dataset, results_dir, strategy,
                             on_step=progress.step if pending and progress else None))
    return paths


class Progress:
    """Steps done, elapsed time and ETA on one line, at most every few seconds."""

    def __init__(self, total, every_seconds=5.0, stream=None):
        import sys

        self.total, self.every, self.stream = total, every_seconds, stream or sys.stderr
        self.done, self.label = 0, ""
        self.started = self.last = time.perf_counter()

    def step(self, _step=None):
        self.done += 1
        now = time.perf_counter()
        if now - self.last < self.every and self.done < self.total:
            return
        self.last = now
        elapsed = now - self.started
        eta = elapsed / self.done * (self.total - self.done)
        end = "\r" if self.stream.isatty() and self.done < self.total else "\n"
        self.stream.write(f"{self.done}/{self.total} steps ({100 * self.done / self.total:.0f}%) "
                          f"{self.label}, {elapsed:.0f}s elapsed, ETA {eta:.0f}s{end}")
        self.stream.flush()


def compare(dataset, microbatch_size=2, rmax=3.0, dmax=5.0, steps=150, minibatch_size=64,
            evaluations=5, seed=0, widths=(8, 16, 32)):
    """Batch norm against batch renorm with fixed rmax and dmax, on a small model, in memory.

    For the notebooks' Run button: no files, no schedule (renorm runs with
    the given clip bounds from the first step). Returns
    {arm: (steps, test accuracies)}.
    """
    preset = get_preset("quick", microbatch_size=microbatch_size,
                        minibatch_size=minibatch_size, steps=steps,
                        eval_every=max(steps // evaluations, 1), warmup_steps=0,
                        rmax_final=rmax, rmax_steps=0, dmax_final=dmax, dmax_steps=0,
                        widths=tuple(widths), dropout=0.0)
    curves = {}
    for arm in ("batchnorm", "batchrenorm"):
        run = Run(preset, arm, seed, dataset)
        points = []
        for step in range(preset.steps):
            run.train_step(step)
            if (step + 1) % preset.eval_every == 0:
                points.append((step + 1, run.evaluate()[0]))
        curves[arm] = tuple(np.array(column) for column in zip(*points))
    return curves
