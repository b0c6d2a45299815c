"""The experiments of the paper's Figures 2 and 3: presets, arms, and a resumable runner.

Every training step draws a minibatch, from a shuffle that changes every
epoch (Figure 2) or as groups of pairs of one label each (Figure 3, see
`brlib.sampling`); the gradient is taken over the whole minibatch, while
normalization runs over contiguous microbatches of it. Every `eval_every` steps the
inference model is scored twice on the test split: with its moving averages,
and recalibrated (µ and σ recomputed with the weights frozen, see
`brlib.recalibrate`). Each (preset, arm, seed) writes one CSV, atomically,
into a directory that records the preset's settings; an interrupted run
resumes from its checkpoint, and finished runs of the same settings are
skipped.
"""

import dataclasses
import shutil
import tempfile
import time
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

import brlib.data  # noqa: E402
from brlib.layers import BatchRenormalization  # noqa: E402
from brlib import recalibration  # noqa: E402
from brlib.models import seed_convnet  # noqa: E402
from brlib.recalibration import recalibrated  # noqa: E402
from brlib.results import (ARMS, BASELINE_GROUP, COLUMNS, DEFAULT_ARMS, check_arms,  # noqa: E402,F401
                           check_settings, default_arms, read_csv, result_path, rows_to_csv,
                           write_atomic)
from brlib.sampling import (WORKER, epoch_order, indices_by_class, paired_batches,  # noqa: E402
                            paired_minibatch)
from brlib.schedule import RenormSchedule, renorm_layers  # noqa: E402
from brlib.validation import check_integer, check_number  # noqa: E402


@dataclasses.dataclass(frozen=True)
class Preset:
    """Settings of one experiment. Schedule steps are absolute training steps.

    The learning rate is constant, or, when `lr_decay_start` is set, constant
    until then and cosine-decayed to `lr_floor` × `learning_rate` at
    `lr_decay_end`, staying there. At every evaluation the recalibrated model
    uses `recalibration_batches` fixed training minibatches; the final
    accuracy of a run is the mean of its last `final_evaluations` evaluations.
    `sampling` is "iid" (shuffled epochs) or "pairs" (the paper's Figure 3:
    groups of 32 made of 16 pairs of one label each, see `brlib.sampling`).
    """

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
    alpha: float = 0.01
    lr_decay_start: int | None = None
    lr_decay_end: int | None = None
    lr_floor: float = 0.01
    recalibration_batches: int = 10
    final_evaluations: int = 1
    sampling: str = "iid"

    def schedule(self, ramp=True):
        """The rmax/dmax schedule; without `ramp`, the final values from step 0."""
        if not ramp:
            return RenormSchedule(0, self.rmax_final, 0, self.dmax_final, 0)
        return RenormSchedule(self.warmup_steps, self.rmax_final, self.rmax_steps,
                              self.dmax_final, self.dmax_steps)

    def learning_rate_schedule(self):
        """The learning rate as a Keras schedule of the optimizer's step, or a float."""
        if self.lr_decay_start is None:
            return self.learning_rate
        return keras.optimizers.schedules.CosineDecay(
            initial_learning_rate=self.learning_rate, warmup_target=self.learning_rate,
            warmup_steps=self.lr_decay_start, alpha=self.lr_floor,
            decay_steps=self.lr_decay_end - self.lr_decay_start)

    def settings(self):
        """Every setting, as a JSON-ready dict: what identifies a results directory."""
        return dataclasses.asdict(self)

    def validate(self):
        positive = ("minibatch_size", "microbatch_size", "steps", "eval_every", "seeds",
                    "recalibration_batches", "final_evaluations")
        for name in positive:
            check_integer(name, getattr(self, name), "a positive integer", lambda v: v > 0)
        for name in ("learning_rate", "alpha"):
            check_number(name, getattr(self, name), "a number in (0, 1]", lambda v: 0 < v <= 1)
        check_number("lr_floor", self.lr_floor, "a number in [0, 1]", lambda v: 0 <= v <= 1)
        check_number("dropout", self.dropout, "a number in [0, 1)", lambda v: 0 <= v < 1)
        if (self.lr_decay_start is None) != (self.lr_decay_end is None):
            raise ValueError("`lr_decay_start` and `lr_decay_end` must be both set or both "
                             f"None; got {self.lr_decay_start!r} and {self.lr_decay_end!r}.")
        if self.lr_decay_start is not None:
            check_integer("lr_decay_start", self.lr_decay_start, "an integer >= 0",
                          lambda v: v >= 0)
            check_integer("lr_decay_end", self.lr_decay_end, "an integer > lr_decay_start",
                          lambda v: v > self.lr_decay_start)
        if len(self.widths) != 3:
            raise ValueError(f"`widths` must be three positive integers; got {self.widths!r}.")
        for width in self.widths:
            check_integer("widths", width, "three positive integers", lambda v: v > 0)
        for group in (self.microbatch_size, BASELINE_GROUP):
            if self.minibatch_size % group:
                raise ValueError(
                    f"`minibatch_size`={self.minibatch_size} must be a multiple of the "
                    f"microbatch size {group} (`microbatch_size`, or the baseline's 32).")
        if self.final_evaluations > self.steps // self.eval_every:
            raise ValueError(f"`final_evaluations`={self.final_evaluations} must not exceed "
                             f"the run's {self.steps // self.eval_every} evaluations.")
        if self.dataset not in brlib.data.LOADERS:
            raise ValueError(f"`dataset` must be one of {sorted(brlib.data.LOADERS)}; "
                             f"got dataset={self.dataset!r}.")
        if self.sampling not in SAMPLINGS:
            raise ValueError(f"`sampling` must be one of {list(SAMPLINGS)}; "
                             f"got sampling={self.sampling!r}.")
        if self.sampling == "pairs" and self.minibatch_size % WORKER:
            raise ValueError(f"`minibatch_size`={self.minibatch_size} must be a multiple of "
                             f"{WORKER}, the size of a group of pairs.")
        if self.sampling == "pairs" and self.dropout:
            raise ValueError(
                f"`dropout` must be 0 when `sampling`='pairs'; got dropout={self.dropout}. The "
                "accuracy with minibatch statistics runs the model in training mode, which "
                "would apply dropout too.")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"`optimizer` must be one of {sorted(OPTIMIZERS)}; "
                             f"got optimizer={self.optimizer!r}.")
        self.schedule()  # checks the schedule's own arguments
        return self


SAMPLINGS = ("iid", "pairs")
OPTIMIZERS = {"adam": keras.optimizers.Adam, "rmsprop": keras.optimizers.RMSprop,
              "sgd": keras.optimizers.SGD}

# The student reproduction: 1600 = 800 × 2, 300 epochs of 31 steps, Adam 1e-4,
# rmax/dmax 1/0 until epoch 20, then linear to 1.5/0.5 at epoch 300.
SEED = Preset(name="seed", dataset="cifar100", minibatch_size=1600, microbatch_size=2,
              steps=9300, learning_rate=1e-4, warmup_steps=620, rmax_final=1.5,
              rmax_steps=9300, dmax_final=0.5, dmax_steps=9300, eval_every=31, seeds=5,
              final_evaluations=10)
# The paper's schedule shape on the seed's data: 5k/160k warm-up, rmax 3 at
# 40k/160k, dmax 5 at 25k/160k, microbatches of 4.
PAPER = dataclasses.replace(SEED, name="paper", microbatch_size=4, warmup_steps=291,
                            rmax_final=3.0, rmax_steps=2325, dmax_final=5.0, dmax_steps=1453)
# The student protocol with Fashion-MNIST in place of CIFAR-100: for a GPU.
SEED_FMNIST = dataclasses.replace(SEED, name="seed_fmnist", dataset="fashion_mnist")

# The CPU presets count in units of the moving averages' time constant 1/α =
# 100 steps (TAU). The paper's warm-up lasts 50 of them; here the warm-up
# lasts 3 (the averages then hold e^-3 = 5 % of their start), the ramps end
# after 5-10, and the learning rate is held, then cosine-annealed to 1 %,
# which it keeps for the last quarter of the run (3-5 TAU), so the moving
# averages catch up with weights that have almost stopped: the comparison is
# read at a steady state, where lag is gone and what remains is the
# microbatch mismatch.
TAU = 100
QUICK = Preset(name="quick", dataset="fashion_mnist", minibatch_size=128, microbatch_size=2,
               steps=12 * TAU, learning_rate=1e-3, warmup_steps=3 * TAU, rmax_final=3.0,
               rmax_steps=7 * TAU, dmax_final=5.0, dmax_steps=5 * TAU, eval_every=TAU,
               seeds=5, widths=(8, 16, 32), dropout=0.0, lr_decay_start=5 * TAU,
               lr_decay_end=9 * TAU, recalibration_batches=10, final_evaluations=3)
CPU = dataclasses.replace(QUICK, name="cpu", steps=20 * TAU, widths=(16, 32, 64),
                          rmax_steps=10 * TAU, dmax_steps=6 * TAU, lr_decay_start=8 * TAU,
                          lr_decay_end=15 * TAU, seeds=10, final_evaluations=5)
# Figure 3: every group of 32 (one of the paper's workers) holds 16 pairs of one label
# each, and batch norm normalizes the whole group, so the microbatch is 32. Three
# groups per step keep the quick preset within 10 minutes for four arms × 5 seeds.
# Its seeds agree more closely than Figure 2's, so the learning rate reaches its floor
# earlier (at 7/12 and 12/20 of the run), to leave the moving averages a few time
# constants at the floor before the last quarter is read.
NONIID_QUICK = dataclasses.replace(QUICK, name="noniid_quick", minibatch_size=3 * WORKER,
                                   microbatch_size=WORKER, sampling="pairs",
                                   lr_decay_start=4 * TAU, lr_decay_end=7 * TAU)
NONIID = dataclasses.replace(NONIID_QUICK, name="noniid", steps=20 * TAU, rmax_steps=10 * TAU,
                             dmax_steps=6 * TAU, lr_decay_start=6 * TAU, lr_decay_end=12 * TAU,
                             seeds=10, final_evaluations=5)
PRESETS = {preset.name: preset for preset in (SEED, PAPER, SEED_FMNIST, QUICK, CPU,
                                              NONIID_QUICK, NONIID)}


def get_preset(name, **overrides):
    """A preset by name, with any field overridden, validated."""
    if name not in PRESETS:
        raise ValueError(f"`preset` must be one of {sorted(PRESETS)}; got preset={name!r}.")
    unknown = set(overrides) - {f.name for f in dataclasses.fields(Preset)}
    if unknown:
        raise ValueError(f"unknown preset settings: {sorted(unknown)}")
    overrides = {k: v for k, v in overrides.items() if v is not None}
    return dataclasses.replace(PRESETS[name], **overrides).validate()


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
    return lambda name=None: BatchRenormalization(rmax=1.0, dmax=0.0, microbatch_size=group,
                                                  momentum=momentum, name=name)


def build_model(arm, preset, input_shape, classes):
    channels = dict(zip(("norm1", "norm2", "norm3", "norm4"), (*preset.widths, classes)))
    return seed_convnet(input_shape, classes, normalization_for(arm, preset, channels),
                        dropout=preset.dropout, widths=preset.widths)


def sampling_for(arm, preset):
    """How `arm` draws its minibatches in `preset`: "iid" or "pairs"."""
    return ARMS[arm].sampling or preset.sampling


# ---------------------------------------------------------------------------
# One run
# ---------------------------------------------------------------------------
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
            self.optimizer = OPTIMIZERS[preset.optimizer](preset.learning_rate_schedule(),
                                                          name="optimizer")
            self.optimizer.build(self.model.trainable_variables)
            # Since the last evaluation: loss, r clipped, d clipped, steps, correct predictions.
            self.sums = tf.Variable(tf.zeros(5), trainable=False)
        self.layers = renorm_layers(self.model)
        self.pairs = sampling_for(arm, preset) == "pairs"
        self._by_class = indices_by_class(self.y_train) if self.pairs else None
        self.loss_fn = keras.losses.SparseCategoricalCrossentropy(
            from_logits=True, reduction="sum")
        self.schedule = preset.schedule(ARMS[arm].ramp) if ARMS[arm].renorm else None
        self.calibration_batches = self._calibration_batches()
        self._epoch, self._bounds = (None, None), None
        self._train = tf.function(self._distributed_step)
        self._predict = tf.function(lambda x: self.model(x, training=False))
        # Training mode on test groups; the layers' state is put back after each evaluation.
        self._forward_batch_statistics = tf.function(lambda x: self.model(x, training=True))
        self.test_pairs = self._test_pairs() if preset.sampling == "pairs" else None
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
            groups = paired_batches(self._by_class, self.seed, count * size // WORKER,
                                    purpose="calibration")
            return [self.x_train[g.ravel()] for g in np.split(groups, count)]
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
            return paired_minibatch(self._by_class, self.seed, step, size)
        per_epoch = len(self.x_train) // size
        epoch, index = divmod(step, per_epoch)
        if self._epoch[0] != epoch:  # one shuffle per epoch, not per step
            self._epoch = (epoch, epoch_order(self.seed, epoch, len(self.x_train)))
        return self._epoch[1][index * size:(index + 1) * size]

    def train_step(self, step):
        order = self.minibatch(step)
        if self.schedule is not None and self.schedule(step) != self._bounds:
            self._bounds = self.schedule.apply(self.model, step)  # assigned only when they change
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

    def evaluate_recalibrated(self):
        """`evaluate` with µ and σ recalibrated on the fixed minibatches; the run is untouched."""
        if not self.layers:  # nothing to recalibrate (GroupNorm)
            return self.evaluate()
        with recalibrated(self.model, self.calibration_batches, self._forward):
            return self.evaluate()

    def _test_pairs(self):
        """Test groups built as the training groups are (16 pairs of one label), fixed per run."""
        return paired_batches(indices_by_class(self.y_test), self.seed, len(self.x_test) // WORKER)

    def evaluate_minibatch_statistics(self, groups_per_call=32):
        """Accuracy with each paired test group normalized by its own statistics.

        The paper's first batch-norm control for Figure 3: the trained model in
        training mode, on test batches built like the training groups. The
        layers' state (moving statistics, diagnostics) is put back afterwards.
        """
        before = recalibration.snapshot(self.layers)
        correct = 0
        groups = self.test_pairs
        try:
            for start in range(0, len(groups), groups_per_call):
                picks = groups[start:start + groups_per_call].ravel()
                logits = self._forward_batch_statistics(self.x_test[picks])
                correct += int(np.sum(np.argmax(logits, axis=-1) == self.y_test[picks]))
        finally:  # as `recalibrated` does: the run continues from the state it had
            recalibration.restore_layers(self.layers, before)
        return correct / groups.size

    def row(self, step, wall_seconds):
        loss, r, d, count, correct = (float(v) for v in self.sums.numpy())
        self.sums.assign(tf.zeros_like(self.sums))
        accuracy, val_loss = self.evaluate()
        recalibrated_accuracy, recalibrated_loss = self.evaluate_recalibrated()
        row = {"step": step, "val_accuracy": accuracy, "val_loss": val_loss,
               "val_accuracy_recalibrated": recalibrated_accuracy,
               "val_loss_recalibrated": recalibrated_loss,
               "train_loss": loss / max(count, 1), "r_clipped": r / max(count, 1),
               "d_clipped": d / max(count, 1), "wall_seconds": round(wall_seconds, 2)}
        if self.test_pairs is not None:
            row["train_accuracy"] = correct / max(count * self.preset.minibatch_size, 1)
            row["val_accuracy_minibatch_stats"] = self.evaluate_minibatch_statistics()
        return row


class Checkpoint:
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


def run_one(preset, arm, seed, dataset, results_dir, strategy=None, on_step=None):
    """Runs one (preset, arm, seed) to the end, resuming from its checkpoint.

    Returns the path of the finished CSV. The preset's settings are recorded
    in (or checked against) the results directory first, so a finished CSV
    is skipped only when it was made with the same settings.
    `on_step(step)` is called after every training step (progress bars).
    """
    check_arms([arm])
    check_settings(Path(results_dir) / preset.name, preset.settings())
    path = result_path(results_dir, preset.name, arm, seed)
    if path.exists():
        return path
    tf.config.experimental.enable_op_determinism()
    run = Run(preset, arm, seed, dataset, strategy)
    writer = is_chief(run.strategy)
    checkpoint = Checkpoint(path, run.checkpoint(), writer)
    step, rows, wall_before = checkpoint.restore() or (0, [], 0.0)
    started = time.perf_counter()
    while step < preset.steps:
        run.train_step(step)
        step += 1
        if step % preset.eval_every == 0 or step == preset.steps:
            wall = wall_before + time.perf_counter() - started
            rows.append(run.row(step, wall))
            checkpoint.save(step, rows)
        if on_step:
            on_step(step)
    if writer:
        write_atomic(path, rows_to_csv(rows))
    checkpoint.delete()
    return path


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


def reproduce(preset, arms=DEFAULT_ARMS, seeds=None, results_dir="data/results", data_dir=None,
              strategy=None, verbose=True):
    """Runs every (arm, seed) of a preset that has no CSV yet; returns the CSV paths."""
    arms = check_arms(arms)
    seeds = preset.seeds if seeds is None else seeds
    check_integer("seeds", seeds, "a positive integer", lambda v: v > 0)
    check_settings(Path(results_dir) / preset.name, preset.settings())  # before any work
    dataset = brlib.data.load(preset.dataset, data_dir=data_dir)  # fails before training
    jobs = [(arm, seed) for seed in range(seeds) for arm in arms]
    todo = [job for job in jobs if not result_path(results_dir, preset.name, *job).exists()]
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
            evaluations=5, seed=0, widths=(8, 16, 32), recalibration_batches=5):
    """Batch norm against batch renorm with fixed rmax and dmax, on a small model, in memory.

    For the notebooks' Run button: no files, no schedule (renorm runs with
    the given clip bounds from the first step), a constant learning rate.
    Returns {arm: (steps, test accuracies with moving averages, test
    accuracies recalibrated)}: where the two accuracies differ, the moving
    averages have not caught up with the weights.
    """
    preset = dataclasses.replace(
        get_preset("quick"), microbatch_size=microbatch_size, minibatch_size=minibatch_size,
        steps=steps, eval_every=max(steps // evaluations, 1), warmup_steps=0, rmax_final=rmax,
        rmax_steps=0, dmax_final=dmax, dmax_steps=0, widths=tuple(widths), dropout=0.0,
        lr_decay_start=None, lr_decay_end=None, final_evaluations=1,
        recalibration_batches=recalibration_batches).validate()
    curves = {}
    for arm in ("batchnorm", "batchrenorm"):
        run = Run(preset, arm, seed, dataset)
        points = []
        for step in range(preset.steps):
            run.train_step(step)
            if (step + 1) % preset.eval_every == 0:
                points.append((step + 1, run.evaluate()[0], run.evaluate_recalibrated()[0]))
        curves[arm] = tuple(np.array(column) for column in zip(*points))
    return curves
