"""The runner of the paper's Figures 2 and 3: one training loop, resumable runs, many at once.

What is trained (the presets and the arms) is `brlib.protocol`'s.

Every training step draws a minibatch, from a shuffle that changes every
epoch (Figure 2) or as groups of pairs of one label each (Figure 3, see
`brlib.sampling`); the gradient is taken over the whole minibatch, while
normalization runs over contiguous microbatches of it. Every `eval_every`
steps the test split is scored three times: by the inference model with its
moving averages, by the same model recalibrated (µ and σ recomputed with the
weights frozen, see `brlib.recalibrate`), and in training mode with every
test group normalized by its own statistics, which measures the
train/inference mismatch. Each (preset, arm, seed) writes one CSV,
atomically, into a directory that records the preset's settings; an
interrupted run resumes from its checkpoint, finished runs of the same
settings are skipped, and a lock per run keeps two commands from training
the same run. `reproduce` trains each run in a process of its own, several
at a time, each with a fixed number of threads, so a run's results do not
depend on how many ran beside it.
"""

import dataclasses
import multiprocessing
import os
import queue
import shutil
import signal
import tempfile
import time
import traceback
from pathlib import Path

import keras

if keras.backend.backend() != "tensorflow":
    raise ImportError(
        "brlib.experiment (the experiment runner) needs Keras's TensorFlow backend; Keras is "
        f"running on {keras.backend.backend()!r}. Set KERAS_BACKEND=tensorflow and install "
        "TensorFlow (pip install 'batch-renorm-taught[tensorflow]'). The layer, the schedule "
        "and recalibration work on every backend.")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from filelock import FileLock, Timeout  # noqa: E402

import brlib.data  # noqa: E402
from brlib import evaluation  # noqa: E402
from brlib.files import write_atomic  # noqa: E402
from brlib.layers import BatchRenormalization  # noqa: E402
from brlib.models import seed_convnet  # noqa: E402
from brlib.protocol import ARMS, GROUP, PRESETS, check_arms  # noqa: E402
from brlib.protocol import OPTIMIZERS as OPTIMIZER_CLASS_NAMES  # noqa: E402
from brlib.results import (SETTINGS_FILE, check_settings, read_csv, record_settings,  # noqa: E402
                           result_path, rows_to_csv)
from brlib.sampling import (epoch_order, indices_by_class, paired_batches,  # noqa: E402
                            paired_minibatch, remix)
from brlib.schedule import renorm_layers  # noqa: E402
from brlib.validation import check_integer, check_number  # noqa: E402


# The optimizer classes of the names a preset may give (`brlib.protocol.OPTIMIZERS`).
OPTIMIZERS = {name: getattr(keras.optimizers, cls) for name, cls in OPTIMIZER_CLASS_NAMES.items()}


def group_size(arm, preset):
    """Examples normalized together in `arm`: its own group (the baseline's 32), else the microbatch."""
    return ARMS[arm].group or preset.microbatch_size


def group_norm_groups(channels, most=8):
    """Groups of GroupNormalization over `channels`: the largest divisor of it up to `most`."""
    return max(g for g in range(1, most + 1) if channels % g == 0)


def normalization_for(arm, preset, channels=None):
    """A factory of the arm's normalization layer, called with the layer's name.

    Every brlib arm starts as batch norm (rmax = 1, dmax = 0); only the
    renorm arms' bounds are then opened by their RenormSchedule. The
    GroupNorm arm needs `channels`, {layer name: channels}, to pick its groups.
    """
    if ARMS[arm].layer == "groupnorm":
        return lambda name=None: keras.layers.GroupNormalization(
            groups=group_norm_groups(channels[name]), name=name)
    group = group_size(arm, preset)
    momentum = 1.0 - (ARMS[arm].alpha or preset.alpha)  # α = 1 − momentum
    # Every setting the results depend on is spelled out, so that no default of the layer
    # can change a committed result: the schedule alone moves rmax and dmax (no warm-up in
    # the layer), and µ and σ are the paper's moving averages.
    return lambda name=None: BatchRenormalization(
        rmax=1.0, dmax=0.0, microbatch_size=group, momentum=momentum, epsilon=1e-3,
        moving_statistic="stddev", warmup_steps=None, name=name)


def build_model(arm, preset, input_shape, classes):
    channels = dict(zip(("norm1", "norm2", "norm3", "norm4"), (*preset.widths, classes)))
    normalization = normalization_for(arm, preset, channels)
    if not ARMS[arm].logit_norm:  # the class scores are left as the last convolution gives them
        normalization = _without_norm4(normalization)
    return seed_convnet(input_shape, classes, normalization, dropout=preset.dropout,
                        widths=preset.widths, head=preset.head)


def _without_norm4(normalization):
    """`normalization`, except that the layer named norm4 is the identity."""
    return lambda name=None: (keras.layers.Identity(name=name) if name == "norm4"
                              else normalization(name=name))


def sampling_for(arm, preset):
    """How `arm` draws its minibatches in `preset`: "iid", "pairs" or "remixed"."""
    return ARMS[arm].sampling or preset.sampling


# ---------------------------------------------------------------------------
# One run
# ---------------------------------------------------------------------------
class Run:
    """One (preset, arm, seed): the model, its optimizer, its minibatches and its evaluations.

    `train` is the one training loop (the runner's, `compare`'s and notebook
    03's); `row` is one evaluation as the result CSVs record it.

    Args:
        preset: A validated `brlib.protocol.Preset`.
        arm: A name from `brlib.protocol.ARMS`.
        seed: Initial weights, minibatches and test groups.
        dataset: ((x_train, y_train), (x_test, y_test)).
        strategy: A tf.distribute strategy; None for this process's default.
    """

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
        if sampling_for(arm, preset) == "remixed" and preset.minibatch_size < 2 * GROUP:
            raise ValueError(f"`minibatch_size`={preset.minibatch_size} must hold at least 2 "
                             f"groups of {GROUP} for arm {arm!r}, which re-mixes pairs across "
                             "the groups of a step.")
        keras.utils.set_random_seed(seed)
        classes = int(max(self.y_train.max(), self.y_test.max())) + 1
        with self.strategy.scope():
            self.model = build_model(arm, preset, self.x_train.shape[1:], classes)
            self.optimizer = OPTIMIZERS[preset.optimizer](preset.learning_rate_schedule(),
                                                          name="optimizer")
            self.optimizer.build(self.model.trainable_variables)
            # Since the last evaluation: loss, r clipped, d clipped, steps, correct predictions.
            self.sums = tf.Variable(tf.zeros(5), trainable=False)
        self.layers = renorm_layers(self.model)
        self.remixed = sampling_for(arm, preset) == "remixed"
        self.pairs = self.remixed or sampling_for(arm, preset) == "pairs"
        self._by_class = indices_by_class(self.y_train) if self.pairs else None
        self.loss_fn = keras.losses.SparseCategoricalCrossentropy(
            from_logits=True, reduction="sum")
        self.schedule = (preset.schedule(ARMS[arm].ramp, ARMS[arm].clipped,
                                         ARMS[arm].warmup_factor)
                         if ARMS[arm].renorm else None)
        self.calibration_batches = self._calibration_batches()
        self._epoch, self._bounds = (None, None), None
        self._train = tf.function(self._distributed_step)
        self._predict = tf.function(lambda x: self.model(x, training=False))
        # Training mode on test groups; the layers' state is put back after each evaluation.
        self._forward_batch_statistics = tf.function(
            lambda x: evaluation.normalize_by_batch(self.model, x))
        # Paired presets score every arm on the same paired groups; i.i.d. ones on groups of
        # the arm's own size (`evaluation.test_groups`).
        self.test_groups = evaluation.test_groups(self.y_test, seed, preset.sampling == "pairs",
                                                  group)
        # The first test groups (and the examples they hold) score the early evaluations.
        # None when the sample would cover the whole split.
        count = -(-preset.curve_test_examples // self.test_groups.shape[1])
        self.curve_groups = self.test_groups[:count] if count < len(self.test_groups) else None
        # Fixed training examples, scored by the inference model: what training fitted.
        self.train_probe = np.random.default_rng([seed, 11]).permutation(
            len(self.x_train))[:preset.curve_test_examples]
        # Traced inside `recalibrate` only, where the layers' update rate is 1.
        self._forward = tf.function(lambda x: self.model(x, training=True))

    @property
    def variables(self):
        return list(self.model.variables) + list(self.optimizer.variables) + [self.sums]

    def checkpoint(self):
        """A tf.train.Checkpoint of everything that changes, keyed by variable path.

        Model variables are keyed by their layer's name and their own name
        ("norm1/moving_mean"); the model's layers have fixed names, so the
        keys do not depend on what the process built before (Keras numbers
        unnamed objects, such as Dropout's seed generators, process-wide).
        """
        model = {f"{layer.name}/{v.name}": v for layer in self.model.layers
                 for v in layer.variables}
        optimizer = {v.path: v for v in self.optimizer.variables}
        if len(model) != len(self.model.variables) or len(optimizer) != len(
                self.optimizer.variables):
            raise ValueError("checkpoint keys must be unique: give every layer its own name")
        return tf.train.Checkpoint(model=model, optimizer=optimizer, sums=self.sums)

    def _calibration_batches(self):
        """K training minibatches, fixed for the whole run, drawn as the arm trains."""
        size, count = self.preset.minibatch_size, self.preset.recalibration_batches
        if self.pairs:
            groups = paired_batches(self._by_class, self.seed, count * size // GROUP,
                                    purpose="calibration")
            batches = [g.ravel() for g in np.split(groups, count)]
            if self.remixed:
                batches = [remix(batch) for batch in batches]
            return [self.x_train[batch] for batch in batches]
        order = np.random.default_rng([self.seed, 7]).permutation(len(self.x_train))
        count = min(count, len(order) // size)
        return [self.x_train[order[i * size:(i + 1) * size]] for i in range(count)]

    def _replica_step(self, images, labels):
        with tf.GradientTape() as tape:
            logits = self.model(images, training=True)
            # The gradient is the mean over the whole minibatch, on every replica.
            loss = self.loss_fn(labels, logits) / self.preset.minibatch_size
        gradients = tape.gradient(loss, self.model.trainable_variables)
        self.optimizer.apply_gradients(zip(gradients, self.model.trainable_variables))
        r, d = (tf.reduce_mean([tf.convert_to_tensor(getattr(l, name)) for l in self.layers])
                if self.layers else tf.constant(0.0)
                for name in ("fraction_r_clipped", "fraction_d_clipped"))
        predicted = tf.argmax(logits, axis=-1, output_type=tf.int64)
        correct = tf.reduce_sum(tf.cast(tf.equal(predicted, tf.cast(labels, tf.int64)), tf.float32))
        return loss, r, d, correct

    def _distributed_step(self, images, labels):
        loss, r, d, correct = self.strategy.run(self._replica_step, args=(images, labels))
        reduce = self.strategy.reduce
        replicas = self.strategy.num_replicas_in_sync
        loss = reduce(tf.distribute.ReduceOp.SUM, loss, axis=None)
        r = reduce(tf.distribute.ReduceOp.SUM, r, axis=None) / replicas
        d = reduce(tf.distribute.ReduceOp.SUM, d, axis=None) / replicas
        correct = reduce(tf.distribute.ReduceOp.SUM, correct, axis=None)
        self.sums.assign_add(tf.stack([loss, r, d, 1.0, correct]))

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

    def minibatch(self, step):
        """Indices of the training examples of `step`, a function of (seed, step) alone."""
        size = self.preset.minibatch_size
        if self.pairs:
            minibatch = paired_minibatch(self._by_class, self.seed, step, size)
            return remix(minibatch) if self.remixed else minibatch
        per_epoch = len(self.x_train) // size
        epoch, index = divmod(step, per_epoch)
        if self._epoch[0] != epoch:  # one shuffle per epoch, not per step
            self._epoch = (epoch, epoch_order(self.seed, epoch, len(self.x_train)))
        return self._epoch[1][index * size:(index + 1) * size]

    def train(self, start=0, on_evaluation=None, on_step=None):
        """Trains from step `start` to the preset's last step: the one training loop.

        Args:
            start: Training steps already done (a resumed run's checkpoint).
            on_evaluation: Called with the step count after every `eval_every`
                steps and after the last one (`Preset.evaluates_after`), for
                example to record `row(step, ...)`.
            on_step: Called with the step count after every training step.
        """
        for step in range(start + 1, self.preset.steps + 1):
            self.train_step(step - 1)
            if on_evaluation is not None and self.preset.evaluates_after(step):
                on_evaluation(step)
            if on_step is not None:
                on_step(step)

    def train_step(self, step):
        """One training step on the minibatch of `step` (counted from 0)."""
        order = self.minibatch(step)
        if self.schedule is not None and self.schedule(step) != self._bounds:
            self._bounds = self.schedule.apply(self.model, step)  # assigned only when they change
        self._train(*self._distribute(self.x_train[order], self.y_train[order]))

    # The three evaluation modes (`brlib.evaluation`), on this run's data and compiled passes.
    def evaluate(self, indices=None, batch_size=1000):
        """Accuracy and mean loss of the inference model on the test split.

        Args:
            indices: Test examples to score; None scores the whole split.
            batch_size: Examples per forward pass.
        """
        images, labels = self.x_test, self.y_test
        if indices is not None:
            images, labels = images[indices], labels[indices]
        return evaluation.score(self._predict, self.loss_fn, images, labels, batch_size)

    def evaluate_training_examples(self, batch_size=1000):
        """Accuracy and mean loss of the inference model on the fixed training sample.

        Unlike the training loss, which is measured in training mode on each
        step's minibatch (for batch norm over microbatches, a noisy forward
        pass), this is the network that inference runs, on examples fixed
        for the whole run: a measure of how well training fitted the data.
        """
        probe = self.train_probe
        return evaluation.score(self._predict, self.loss_fn, self.x_train[probe],
                                self.y_train[probe], batch_size)

    def evaluate_recalibrated(self, indices=None):
        """`evaluate` with µ and σ recalibrated on the fixed minibatches; the run is untouched."""
        return evaluation.score_recalibrated(self.model, self.calibration_batches, self._forward,
                                             lambda: self.evaluate(indices))

    def evaluate_minibatch_statistics(self, groups=None, groups_per_call=None):
        """Test accuracy in training mode, every test group normalized on its own.

        `evaluation.minibatch_statistics_accuracy` over `groups`, rows of
        `test_groups` (None: them all), `groups_per_call` groups per forward
        pass; the layers' state is put back afterwards.
        """
        groups = self.test_groups if groups is None else groups
        return evaluation.minibatch_statistics_accuracy(
            self._forward_batch_statistics, self.layers, self.x_test, self.y_test, groups,
            groups_per_call)

    def row(self, step, wall_seconds):
        loss, r, d, count, correct = (float(v) for v in self.sums.numpy())
        self.sums.assign(tf.zeros_like(self.sums))
        if self.preset.evaluates_in_full(step) or self.curve_groups is None:
            groups, indices = None, None
        else:  # the same examples for the three test accuracies: their differences pair
            groups = self.curve_groups
            indices = groups.ravel()
        accuracy, val_loss = self.evaluate(indices)
        recalibrated_accuracy, recalibrated_loss = self.evaluate_recalibrated(indices)
        train_accuracy_inference, train_loss_inference = self.evaluate_training_examples()
        row = {"step": step, "val_accuracy": accuracy, "val_loss": val_loss,
               "val_accuracy_recalibrated": recalibrated_accuracy,
               "val_loss_recalibrated": recalibrated_loss,
               "train_loss": loss / max(count, 1), "r_clipped": r / max(count, 1),
               "d_clipped": d / max(count, 1), "wall_seconds": round(wall_seconds, 2),
               "train_accuracy": correct / max(count * self.preset.minibatch_size, 1),
               "val_accuracy_minibatch_stats": self.evaluate_minibatch_statistics(groups),
               "train_loss_inference": train_loss_inference,
               "train_accuracy_inference": train_accuracy_inference,
               "test_examples": len(self.x_test) if indices is None else len(indices)}
        return row


class RunCheckpoint:
    """An unfinished run: variables by path (tf.train.CheckpointManager) and its finished rows.

    The rows go to a partial CSV after the variables are saved, and a restore
    takes the checkpoint of the partial CSV's last step, so a kill between the
    two writes loses nothing: the older checkpoint is still kept.
    """

    def __init__(self, result_csv, checkpoint, writer=True):
        path = Path(result_csv)
        self.directory = path.with_name(f".{path.stem}.checkpoint")
        self.partial = path.with_name(f".{path.stem}.partial.csv")
        self.writer = writer
        # Under MultiWorkerMirroredStrategy every worker must take part in a save; the
        # workers other than the chief save into a scratch directory that is thrown away.
        self.saves_to = self.directory if writer else Path(tempfile.mkdtemp(prefix="brlib-"))
        self.manager = tf.train.CheckpointManager(checkpoint, self.saves_to, max_to_keep=2)
        self.checkpoint = checkpoint

    def save(self, step, rows):
        self.manager.save(checkpoint_number=step)
        if self.writer:
            write_atomic(self.partial, rows_to_csv(rows))

    def restore(self):
        """Restores the variables; returns (step, rows, wall_seconds), or None."""
        if not self.partial.exists():
            return None
        rows = read_csv(self.partial)
        step = int(rows[-1]["step"])
        saved = self.directory / f"ckpt-{step}"
        self.checkpoint.restore(str(saved)).assert_existing_objects_matched()
        return step, rows, rows[-1]["wall_seconds"]

    def delete(self):
        shutil.rmtree(self.saves_to, ignore_errors=True)
        if self.writer:
            self.partial.unlink(missing_ok=True)


class RunBusy(RuntimeError):
    """Another process holds the run's lock: it is training that run now."""


class RunFailed(RuntimeError):
    """A run failed in its training process; the message holds that process's traceback."""


class WorkerLost(RuntimeError):
    """A worker of a multi-worker cluster stopped answering in the middle of a run."""


# What TensorFlow's collectives raise when a peer is gone: the health check aborts them
# (UnavailableError), or the collective timeout runs out (DeadlineExceededError).
CLUSTER_ERRORS = (tf.errors.UnavailableError, tf.errors.DeadlineExceededError,
                  tf.errors.CancelledError, tf.errors.AbortedError)


def fix_threads(threads):
    """Gives this process's TensorFlow `threads` CPU threads (intra- and inter-op).

    TensorFlow's CPU kernels split their sums between threads, so a result
    depends, in its last bits, on the thread count. A count can only be set
    before TensorFlow starts; a process already running with another count
    gets a ValueError that says so.
    """
    check_integer("threads", threads, "a positive integer", lambda v: v > 0)
    now = (tf.config.threading.get_intra_op_parallelism_threads(),
           tf.config.threading.get_inter_op_parallelism_threads())
    if now == (threads, threads):
        return
    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    except RuntimeError as error:
        raise ValueError(
            f"`threads`={threads}: this process's TensorFlow already runs with "
            f"{now[0] or 'its default number of'} threads, and the count can only be set before "
            "TensorFlow starts. Use reproduce() (python -m brlib reproduce), which trains each "
            f"run in a process of its own, or call brlib.experiment.fix_threads({threads}) "
            "first in a fresh process.") from error


def _lock_path(result_csv):
    path = Path(result_csv)
    return path.with_name(f".{path.stem}.lock")


def run_one(preset, arm, seed, dataset, results_dir, strategy=None, on_step=None, wait=True):
    """Runs one (preset, arm, seed) to the end, resuming from its checkpoint.

    Returns the path of the finished CSV. A finished CSV is skipped only when
    the results directory records the same settings; the settings are
    recorded when the run starts, so a run that fails before its first step
    leaves nothing behind. While it trains, the run holds a lock beside its
    CSV: another process that reaches the same run waits for it and then
    returns its CSV (`wait=True`), or raises `RunBusy` (`wait=False`).

    Args:
        preset: A validated `Preset`.
        arm: A name from `brlib.protocol.ARMS`.
        seed: The run's seed: initial weights, minibatches, test groups.
        dataset: ((x_train, y_train), (x_test, y_test)).
        results_dir: The results root; the CSV goes to `<root>/<preset>/`.
        strategy: A tf.distribute strategy, e.g. MultiWorkerMirroredStrategy, whose
            chief alone writes files; None for this process's default.
        on_step: Called with the step number after every training step.
        wait: Whether to wait for a run that another process is training.

    Raises:
        WorkerLost: under multi-worker training, when a worker stops answering.
    """
    check_arms([arm])
    directory = Path(results_dir) / preset.name
    check_settings(directory, preset.settings())
    path = result_path(results_dir, preset.name, arm, seed)
    if path.exists():
        return path
    fix_threads(preset.threads)
    tf.config.experimental.enable_op_determinism()
    run = Run(preset, arm, seed, dataset, strategy)
    writer = is_chief(run.strategy)
    if not writer:  # the chief holds the lock; the other workers train beside it
        return _train(run, path, writer, on_step)
    created = not directory.exists()
    directory.mkdir(parents=True, exist_ok=True)
    lock = FileLock(_lock_path(path))
    try:
        lock.acquire(timeout=-1 if wait else 0)
    except Timeout:
        raise RunBusy(f"{path.name} is being trained by another process") from None
    try:
        if path.exists():  # the other process finished it while this one waited
            return path
        record_settings(directory, preset.settings())  # the run starts now
        return _train(run, path, writer, on_step)
    except BaseException:
        if created:  # a run that stopped before its first checkpoint leaves nothing behind
            leftovers = {p.name for p in directory.iterdir()} - {_lock_path(path).name,
                                                                  SETTINGS_FILE}
            if not leftovers:
                shutil.rmtree(directory, ignore_errors=True)
        raise
    finally:
        if path.exists():  # finished: the lock file goes too (waiters find the CSV)
            _lock_path(path).unlink(missing_ok=True)
        lock.release()


def _train(run, path, writer, on_step):
    """Trains `run` from its last checkpoint to the end and writes its CSV (from the chief)."""
    checkpoint = RunCheckpoint(path, run.checkpoint(), writer)
    start, rows, wall_before = checkpoint.restore() or (0, [], 0.0)
    started = time.perf_counter()
    reached = [start]  # the last step trained, for the error message

    def record(step):
        rows.append(run.row(step, wall_before + time.perf_counter() - started))
        checkpoint.save(step, rows)

    def count(step):
        reached[0] = step
        if on_step:
            on_step(step)

    try:
        run.train(start, on_evaluation=record, on_step=count)
    except CLUSTER_ERRORS as error:
        step, saved = reached[0], rows[-1]["step"] if rows else 0
        raise WorkerLost(
            f"a worker of the cluster stopped answering after step {step} of {path.name} "
            f"({type(error).__name__}: {_first_cause(error)}). Nothing was "
            f"written as finished; the last checkpoint is at step {saved}. Start every worker "
            "again with the same command: the run resumes from the chief's last "
            "checkpoint.") from error
    if writer:
        write_atomic(path, rows_to_csv(rows))
    checkpoint.delete()
    return path


def multi_worker_strategy(collective_timeout=300.0):
    """A MultiWorkerMirroredStrategy over the cluster in TF_CONFIG that cannot hang forever.

    When a worker dies, the others would wait in their next all-reduce.
    TensorFlow's health check probes the peers every 30 s and aborts the
    collectives when one does not answer; `collective_timeout` (seconds) also
    bounds every collective operation, so a survivor raises within that
    time at most, and `run_one` turns it into a `WorkerLost` error. Keep it
    well above a step's duration.
    """
    check_number("collective_timeout", collective_timeout, "a number of seconds > 0",
                 lambda v: v > 0)
    options = tf.distribute.experimental.CommunicationOptions(timeout_seconds=collective_timeout)
    return tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)


def _first_cause(error, longest=300):
    """The informative line of a TensorFlow error: its message, not the traceback before it."""
    lines = [line.strip() for line in str(error.message if hasattr(error, "message") else error)
             .splitlines() if line.strip()]
    return (lines[-1] if lines else type(error).__name__)[:longest]


def is_chief(strategy):
    """Whether this process writes results: always, except on the workers of a cluster
    other than its chief (task "chief", or worker 0 when the cluster names no chief)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return True
    if resolver.task_type == "chief":
        return True
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return resolver.task_type == "worker" and resolver.task_id == 0 and not has_chief


def reproduce(preset, arms=None, seeds=None, results_dir="data/results", data_dir=None,
              strategy=None, jobs=None, verbose=True, dataset=None):
    """Runs every (arm, seed) of a preset that has no CSV yet; returns the CSV paths.

    Each run trains in a process of its own with `preset.threads` threads,
    `jobs` runs at a time, so its results are the same bit for bit whatever
    ran beside it. One progress bar counts the steps of all runs. Ctrl-C
    stops every run: finished runs are kept, unfinished ones resume from their
    last checkpoint next time. With a `strategy` (multi-worker training), the
    runs train here, one after another, on the cluster. The training
    processes are started with "spawn", which imports the calling script
    again: call `reproduce` from a script under `if __name__ == "__main__":`.

    Args:
        preset: A validated `Preset`.
        arms: Arm names; default the preset's (`Preset.arms`): Figure 2's
            three, or Figure 3's four for paired sampling.
        seeds: How many seeds, 0 … seeds − 1; default the preset's.
        results_dir: The results root.
        data_dir: Where the dataset's files are; see `brlib.data.load`.
        strategy: A tf.distribute strategy to train every run with, in this process.
        jobs: Runs trained at once; default the machine's cores, at most the runs left.
        verbose: Whether to show the progress bar.
        dataset: ((x_train, y_train), (x_test, y_test)) to train on instead of
            loading `preset.dataset`, for data of your own (each training process
            gets a copy). The results directory still records the preset's settings.
    """
    arms = check_arms(preset.arms if arms is None else arms)
    seeds = preset.seeds if seeds is None else seeds
    check_integer("seeds", seeds, "a positive integer", lambda v: v > 0)
    if jobs is not None:
        check_integer("jobs", jobs, "a positive integer", lambda v: v > 0)
    if strategy is not None and jobs not in (None, 1):
        raise ValueError(f"`jobs` must be 1 with a `strategy`; got jobs={jobs}. Under "
                         "multi-worker training the workers are the processes.")
    check_settings(Path(results_dir) / preset.name, preset.settings())  # before any work
    given = dataset is not None
    if not given:
        dataset = brlib.data.load(preset.dataset, data_dir=data_dir)  # fails before training
    runs = [(arm, seed) for seed in range(seeds) for arm in arms]
    todo = [run for run in runs if not result_path(results_dir, preset.name, *run).exists()]
    from tqdm.auto import tqdm

    with tqdm(total=len(todo) * preset.steps, unit="step", desc=f"{preset.name}, {len(todo)} runs",
              disable=not verbose or not todo, smoothing=0.05) as bar:
        if strategy is not None:
            for arm, seed in todo:
                run_one(preset, arm, seed, dataset, results_dir, strategy,
                        on_step=lambda _: bar.update())
        elif todo:
            jobs = jobs or min(os.cpu_count() or 1, len(todo))
            # Each process loads the named dataset itself rather than receive a copy.
            source = dataset if given else data_dir
            _train_in_processes(preset, todo, results_dir, source, min(jobs, len(todo)), bar)
    return [result_path(results_dir, preset.name, *run) for run in runs]


def _train_in_processes(preset, todo, results_dir, data, jobs, bar):
    """Trains the (arm, seed) runs of `todo` in `jobs` fresh processes, updating `bar`.

    `data` is the dataset's arrays, or the `data_dir` (None included) from
    which each process loads `preset.dataset`.
    """
    context = multiprocessing.get_context("spawn")  # a fresh TensorFlow, threads not yet set
    tasks, events = context.Queue(), context.Queue()
    workers = [context.Process(target=_worker, args=(preset, results_dir, data, tasks, events),
                               daemon=True) for _ in range(jobs)]
    pending = [(arm, seed, False) for arm, seed in todo]
    running = 0
    try:
        for worker in workers:
            worker.start()
        while pending or running:
            while pending and running < jobs:
                tasks.put(pending.pop(0))
                running += 1
            try:
                kind, *data = events.get(timeout=1.0)
            except queue.Empty:
                dead = [w.exitcode for w in workers if not w.is_alive()]
                if dead:
                    raise RunFailed(f"a training process died (exit code {dead[0]}); "
                                    "finished runs are kept, unfinished ones resume") from None
                continue
            if kind == "steps":
                bar.update(data[0])
            elif kind == "resumed":  # steps done before an interruption are not redone
                bar.total -= data[0]
                bar.refresh()
            elif kind == "busy":  # another command trains it: wait for that one, last
                pending.append((*data, True))
                running -= 1
            elif kind == "done":
                running -= 1
            else:
                arm, seed, trace = data
                raise RunFailed(f"run {arm} seed {seed} failed; its process said:\n{trace}")
        for _ in workers:
            tasks.put(None)
        for worker in workers:
            worker.join()
    finally:  # Ctrl-C or a failure: stop every worker; their checkpoints stay
        for worker in workers:
            if worker.is_alive():
                worker.terminate()
        for worker in workers:
            if worker.pid is not None:
                worker.join()


def _worker(preset, results_dir, data, tasks, events):
    """One training process: takes (arm, seed, wait) tasks until None; reports to `events`."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the parent, which stops us
    task = None
    try:
        fix_threads(preset.threads)
        dataset = data if isinstance(data, tuple) else brlib.data.load(preset.dataset,
                                                                        data_dir=data)
        while (task := tasks.get()) is not None:
            arm, seed, wait = task
            report = _StepReport(events)
            try:
                run_one(preset, arm, seed, dataset, results_dir, on_step=report, wait=wait)
            except RunBusy:
                events.put(("busy", arm, seed))
                continue
            report.flush()
            events.put(("done", arm, seed))
    except Exception:
        arm, seed, _ = task or ("(start-up)", "-", None)
        events.put(("error", arm, seed, traceback.format_exc()))


class _StepReport:
    """Tells the parent, every few steps, how many steps a worker trained."""

    def __init__(self, events, every=20):
        self.events, self.every, self.count, self.first = events, every, 0, True

    def __call__(self, step):
        if self.first and step > 1:
            self.events.put(("resumed", step - 1))
        self.first = False
        self.count += 1
        if self.count >= self.every:
            self.flush()

    def flush(self):
        if self.count:
            self.events.put(("steps", self.count))
        self.count = 0


def compare(dataset, microbatch_size=2, rmax=3.0, dmax=5.0, steps=1200, minibatch_size=64,
            evaluations=8, seed=0, widths=(8, 16, 32), recalibration_batches=10,
            warmup_steps=None, anneal=True):
    """Batch norm against batch renorm on a small model, in memory: the presets' protocol in small.

    For the notebooks' Run button; no files. The renorm arm is batch norm
    (rmax = 1, dmax = 0) for `warmup_steps`; its bounds then open linearly and
    reach `rmax` and `dmax` at half the run (at once when the warm-up ends
    later). With `anneal`, the learning rate (Adam, 1e-3) is held for the
    first half of the run, cosine-annealed to 1 % of itself by three quarters
    and held there, so the moving averages (α = 0.01) catch up with weights
    that have almost stopped; without it, it stays constant. One seed: the
    curves carry no interval.

    Args:
        dataset: ((x_train, y_train), (x_test, y_test)).
        microbatch_size: Examples normalized together, in both arms.
        rmax: Final rmax of the renorm arm, >= 1.
        dmax: Final dmax of the renorm arm, >= 0.
        steps: Training steps of each arm.
        minibatch_size: Examples per step (the gradient's average).
        evaluations: How many evaluations: every ceil(steps / evaluations) steps, and
            after the last step.
        seed: Initial weights and minibatches, the same for both arms.
        widths: Filters of the convnet's three 3×3 convolutions.
        recalibration_batches: Training minibatches of the recalibrated model.
        warmup_steps: Steps with rmax = 1 and dmax = 0; None for a quarter of
            the run; 0 opens the bounds from the first step.
        anneal: Whether to anneal the learning rate as described above.

    Returns:
        {arm: (steps, test accuracies with moving averages, test accuracies
        recalibrated)}: where the two accuracies differ, the moving averages
        have not caught up with the weights.
    """
    check_integer("steps", steps, "an integer >= 2", lambda v: v >= 2)
    warmup_steps = steps // 4 if warmup_steps is None else warmup_steps
    check_integer("warmup_steps", warmup_steps, "an integer >= 0", lambda v: v >= 0)
    ramp_end = max(warmup_steps, steps // 2)
    decay = (dict(lr_decay_start=steps // 2, lr_decay_end=max(3 * steps // 4, steps // 2 + 1))
             if anneal else dict(lr_decay_start=None, lr_decay_end=None))
    preset = dataclasses.replace(
        PRESETS["quick"], microbatch_size=microbatch_size, minibatch_size=minibatch_size,
        steps=steps, eval_every=max(-(-steps // evaluations), 1), warmup_steps=warmup_steps,
        rmax_final=rmax, rmax_steps=ramp_end, dmax_final=dmax, dmax_steps=ramp_end,
        widths=tuple(widths), dropout=0.0, final_evaluations=1,
        recalibration_batches=recalibration_batches, **decay).validate()
    curves = {}
    for arm in ("batchnorm", "batchrenorm"):
        run = Run(preset, arm, seed, dataset)
        points = []
        run.train(on_evaluation=lambda step: points.append(
            (step, run.evaluate()[0], run.evaluate_recalibrated()[0])))
        curves[arm] = tuple(np.array(column) for column in zip(*points))
    return curves
