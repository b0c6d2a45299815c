"""How the runner scores a model: the three evaluation modes of the result CSVs.

- `score`: the inference model, every BatchRenormalization layer normalizing
  by its moving averages µ and σ (`val_accuracy`, `val_loss`, and on fixed
  training examples `train_accuracy_inference`, `train_loss_inference`);
- `score_recalibrated`: the same model with µ and σ recalibrated on fixed
  training minibatches (`brlib.recalibrated`), put back afterwards
  (`val_accuracy_recalibrated`, `val_loss_recalibrated`);
- `minibatch_statistics_accuracy`: the model in training mode, every test
  group normalized by its own statistics and Dropout off, the layers' state
  put back afterwards (`val_accuracy_minibatch_stats`), in the groups that
  `test_groups` draws.

`brlib.experiment.Run` calls them with its compiled forward passes; they need
only Keras and NumPy and take any callables that return logits.
"""

import keras
import numpy as np

from brlib.layers import BatchRenormalization
from brlib.protocol import GROUP
from brlib.recalibration import recalibrated, untouched
from brlib.sampling import indices_by_class, paired_batches, test_order
from brlib.schedule import renorm_layers


def score(predict, loss_fn, images, labels, batch_size=1000):
    """Accuracy and mean loss of the logits `predict(images)`, `batch_size` examples at a time.

    Args:
        predict: Callable from a batch of images to logits, e.g. the model in
            inference mode.
        loss_fn: A Keras loss that sums over the batch (reduction="sum").
        images, labels: The examples to score.
        batch_size: Examples per call of `predict`.

    Returns:
        (fraction of argmax predictions equal to the label, summed loss / examples).
    """
    correct, total_loss = 0, 0.0
    for start in range(0, len(images), batch_size):
        logits = predict(images[start:start + batch_size])
        batch_labels = labels[start:start + batch_size]
        correct += int(np.sum(np.argmax(logits, axis=-1) == batch_labels))
        total_loss += float(loss_fn(batch_labels, logits))
    return correct / len(images), total_loss / len(images)


def score_recalibrated(model, calibration_batches, forward, evaluate):
    """`evaluate()` with µ and σ recalibrated on `calibration_batches`; the model is untouched.

    Args:
        model: The model whose BatchRenormalization layers are recalibrated;
            one without any (GroupNorm) is scored as it is.
        calibration_batches: Input batches, see `brlib.recalibrate`.
        forward: The model in training mode, see `brlib.recalibrate`.
        evaluate: Callable of no argument that scores the model, e.g. a
            `score` of its inference mode.
    """
    if not renorm_layers(model):  # nothing to recalibrate
        return evaluate()
    with recalibrated(model, calibration_batches, forward):
        return evaluate()


def normalize_by_batch(model, images):
    """The model with its normalization layers in training mode and nothing else.

    Each group is normalized by its own statistics (and the moving
    statistics move; callers put them back), while Dropout stays off, so the
    accuracy measures normalization alone. The model must be a chain (a
    Sequential or a functional model whose layers follow one another), as the
    runner's is: its layers are called one after the other.
    """
    x = images
    for layer in model.layers:
        if isinstance(layer, keras.layers.InputLayer):
            continue
        normalizes = isinstance(layer, (BatchRenormalization, keras.layers.GroupNormalization))
        x = layer(x, training=normalizes)
    return x


def test_groups(labels, seed, paired, group):
    """Test indices in groups drawn as the training groups are, a function of the seed alone.

    Paired (the paper's Figure 3 control): groups of GROUP made of pairs of
    one label, for every arm, so that all arms are scored on the same groups.
    I.i.d.: the test split shuffled once per seed and cut into groups of
    `group` (the arm's own size), the last one filled from the start.

    Args:
        labels: The test labels.
        seed: The run's seed.
        paired: Whether the preset draws paired groups.
        group: The arm's group size (i.i.d. only).

    Returns:
        An integer array of shape (groups, group size).
    """
    if paired:
        return paired_batches(indices_by_class(labels), seed, len(labels) // GROUP)
    return test_order(seed, len(labels), group).reshape(-1, group)


def minibatch_statistics_accuracy(forward, layers, images, labels, groups,
                                  groups_per_call=None):
    """Accuracy in training mode, every group of `groups` normalized by its own statistics.

    Set beside the inference accuracy, the direct measure of the
    train/inference mismatch. Each example is scored once, except those that
    fill the last group (rows of `groups` beyond len(images) examples are not
    counted). The layers' state (moving statistics, diagnostics) is put back.

    Args:
        forward: Callable from images to logits in training mode, e.g.
            `normalize_by_batch` of the model, compiled.
        layers: The normalization layers whose state to put back.
        images, labels: The test split.
        groups: Integer array (groups, group size) of indices into it.
        groups_per_call: Groups per call of `forward`; default as many as
            make about 1024 examples.
    """
    groups_per_call = groups_per_call or max(1024 // groups.shape[1], 1)
    scored = min(groups.size, len(images))  # the filler of the last group is not scored
    correct = 0
    with untouched(layers):  # the run continues from the state it had
        for start in range(0, len(groups), groups_per_call):
            picks = groups[start:start + groups_per_call].ravel()
            logits = forward(images[picks])
            hits = np.argmax(logits, axis=-1) == labels[picks]
            position = start * groups.shape[1] + np.arange(len(picks))
            correct += int(np.sum(hits[position < scored]))
    return correct / scored
