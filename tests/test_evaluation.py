"""brlib.evaluation, the runner's three evaluation modes, against a NumPy forward pass.

The model is Dense → BatchRenormalization (batch norm over microbatches of 2) → Dropout →
Dense; the reference recomputes its logits, the microbatch statistics, the recalibrated
averages and the cross-entropy in float64 NumPy from the model's weights.
"""

import keras
import numpy as np
import pytest

import brlib as br
from brlib import evaluation
from brlib.protocol import GROUP

EPS = 1e-3
M = 2  # examples per microbatch


def tiny_model(sequential=False, seed=0):
    keras.utils.set_random_seed(seed)
    layers = [keras.layers.Dense(5, name="dense1"),
              br.BatchRenormalization(rmax=1.0, dmax=0.0, microbatch_size=M, momentum=0.9,
                                      epsilon=EPS, moving_statistic="stddev",
                                      warmup_steps=None, name="norm"),
              keras.layers.Dropout(0.5, name="dropout"),
              keras.layers.Dense(3, name="dense2")]
    if sequential:
        model = keras.Sequential([keras.Input((6,))] + layers)
    else:
        inputs = keras.Input((6,))
        x = inputs
        for layer in layers:
            x = layer(x)
        model = keras.Model(inputs, x)
    norm = model.get_layer("norm")
    rng = np.random.default_rng(seed)
    norm.gamma.assign(rng.uniform(0.5, 2, 5))
    norm.beta.assign(rng.normal(size=5))
    norm.moving_mean.assign(rng.normal(size=5))
    norm.moving_stddev.assign(rng.uniform(0.5, 2, 5))
    return model


def numpy_logits(model, x, mean=None, sigma=None, batch_statistics=False):
    """The model's logits in float64: the norm layer by µ and σ (inference), or, with
    `batch_statistics`, each microbatch of M by its own µ_B and σ_B; Dropout off."""
    d1, norm, d2 = (model.get_layer(n) for n in ("dense1", "norm", "dense2"))
    h = np.asarray(x, np.float64) @ np.asarray(d1.kernel, np.float64) + np.asarray(d1.bias)
    gamma, beta = np.asarray(norm.gamma, np.float64), np.asarray(norm.beta, np.float64)
    if batch_statistics:
        groups = h.reshape(-1, M, h.shape[1])
        mean_b = groups.mean(axis=1, keepdims=True)
        sigma_b = np.sqrt(groups.var(axis=1, keepdims=True) + EPS)
        h = ((groups - mean_b) / sigma_b).reshape(h.shape)
    else:
        mean = np.asarray(norm.moving_mean, np.float64) if mean is None else mean
        sigma = np.asarray(norm.moving_stddev, np.float64) if sigma is None else sigma
        h = (h - mean) / sigma
    h = h * gamma + beta
    return h @ np.asarray(d2.kernel, np.float64) + np.asarray(d2.bias, np.float64)


def accuracy_and_loss(logits, labels):
    shifted = logits - logits.max(axis=-1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    return (np.mean(logits.argmax(axis=-1) == labels),
            -np.mean(log_probs[np.arange(len(labels)), labels]))


def data(n, seed=1):
    rng = np.random.default_rng(seed)
    x = (rng.normal(size=(n, 6)) * rng.uniform(0.5, 3, 6) + rng.normal(size=6)).astype(np.float32)
    return x, rng.integers(0, 3, n).astype(np.int32)


LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction="sum")


def state(model):
    """The norm layer's state: µ, σ, the bounds and the diagnostics. (Dropout's seed generator
    moves in training mode, as it does in the runner, and is not the evaluations' concern.)"""
    return [np.array(v) for v in model.get_layer("norm").non_trainable_variables]


def assert_state(model, before):
    for variable, value in zip(model.get_layer("norm").non_trainable_variables, before):
        np.testing.assert_array_equal(np.asarray(variable), value, err_msg=variable.path)


@pytest.mark.parametrize("batch_size", [7, 1000])
def test_score_is_the_accuracy_and_mean_cross_entropy_of_the_inference_model(batch_size):
    model = tiny_model()
    x, y = data(20)
    accuracy, loss = evaluation.score(lambda b: model(b, training=False), LOSS, x, y, batch_size)
    expected_accuracy, expected_loss = accuracy_and_loss(numpy_logits(model, x), y)
    assert accuracy == expected_accuracy
    assert loss == pytest.approx(expected_loss, rel=1e-5)


def test_score_recalibrated_uses_the_average_microbatch_statistics_and_puts_them_back():
    model = tiny_model()
    x, y = data(20)
    batches = [data(8, seed)[0] for seed in (2, 3, 4)]
    before = state(model)
    accuracy, loss = evaluation.score_recalibrated(
        model, batches, lambda b: model(b, training=True),
        lambda: evaluation.score(lambda b: model(b, training=False), LOSS, x, y))
    # Reference: batch norm, so one pass is exact: µ and σ are the plain averages over the
    # batches of the mean over their microbatches of µ_B and σ_B = sqrt(var_B + ε).
    d1 = model.get_layer("dense1")
    hidden = [(b.astype(np.float64) @ np.asarray(d1.kernel, np.float64)
               + np.asarray(d1.bias)).reshape(-1, M, 5) for b in batches]
    mean = np.mean([h.mean(axis=1).mean(axis=0) for h in hidden], axis=0)
    sigma = np.mean([np.sqrt(h.var(axis=1) + EPS).mean(axis=0) for h in hidden], axis=0)
    expected_accuracy, expected_loss = accuracy_and_loss(numpy_logits(model, x, mean, sigma), y)
    assert accuracy == expected_accuracy
    assert loss == pytest.approx(expected_loss, rel=1e-4)
    moving = accuracy_and_loss(numpy_logits(model, x), y)
    assert loss != pytest.approx(moving[1], rel=1e-3)  # recalibration changed the score
    assert_state(model, before)  # and nothing of the model's state


def test_score_recalibrated_scores_a_model_without_renorm_layers_as_it_is():
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(3)])
    calls = []
    result = evaluation.score_recalibrated(model, [data(4)[0]], None,
                                           lambda: calls.append(1) or (0.5, 1.0))
    assert result == (0.5, 1.0) and calls == [1]


@pytest.mark.parametrize("sequential", [False, True])
def test_normalize_by_batch_normalizes_each_microbatch_with_dropout_off(sequential):
    model = tiny_model(sequential)
    x, _ = data(12)
    before = state(model)
    outputs = np.asarray(evaluation.normalize_by_batch(model, x))
    np.testing.assert_allclose(outputs, numpy_logits(model, x, batch_statistics=True),
                               rtol=1e-4, atol=1e-4)
    with pytest.raises(AssertionError):
        assert_state(model, before)  # training mode moved µ and σ: callers put them back


@pytest.mark.parametrize("groups_per_call", [None, 1, 2])
def test_minibatch_statistics_accuracy_scores_each_test_example_once(groups_per_call):
    model = tiny_model()
    x, y = data(11)
    groups = evaluation.test_groups(y, seed=5, paired=False, group=4)  # 3 groups, 1 filler
    before = state(model)
    norm = [model.get_layer("norm")]
    accuracy = evaluation.minibatch_statistics_accuracy(
        lambda b: evaluation.normalize_by_batch(model, b), norm, x, y, groups, groups_per_call)
    # Reference: each group of 4 through the network alone, microbatches of 2 normalized by
    # their own statistics; the 12th position repeats an example and is not counted.
    hits = []
    for group in groups:
        logits = numpy_logits(model, x[group], batch_statistics=True)
        hits.extend(logits.argmax(axis=-1) == y[group])
    assert accuracy == pytest.approx(np.mean(hits[:11]))
    assert_state(model, before)


def test_iid_test_groups_hold_every_example_and_fill_the_last_group_from_the_start():
    labels = np.arange(11) % 3
    groups = evaluation.test_groups(labels, seed=5, paired=False, group=4)
    assert groups.shape == (3, 4)
    flat = groups.ravel()
    assert sorted(flat[:11]) == list(range(11))  # a permutation of the split
    assert flat[11] == flat[0]  # the filler
    again = evaluation.test_groups(labels, seed=5, paired=False, group=4)
    np.testing.assert_array_equal(groups, again)  # a function of the seed
    assert not np.array_equal(groups, evaluation.test_groups(labels, 6, False, 4))


def test_paired_test_groups_are_pairs_of_one_label_with_halves():
    labels = np.random.default_rng(0).integers(0, 5, 200)
    groups = evaluation.test_groups(labels, seed=1, paired=True, group=2)  # group is ignored
    assert groups.shape == (200 // GROUP, GROUP)
    half = GROUP // 2
    first, second = groups[:, :half], groups[:, half:]
    np.testing.assert_array_equal(labels[first], labels[second])  # the i-th pair: one label
    assert np.all(first != second)  # two different examples
