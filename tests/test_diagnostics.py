"""brlib.diagnostics against direct calls of the layer and NumPy loops over microbatches."""

import keras
import numpy as np
import pytest

import brlib as br
from brlib import diagnostics


def features(seed=0):
    """Conv-like features: 300 examples, 3×3 positions, 2 channels of different scale."""
    rng = np.random.default_rng(seed)
    return rng.normal([1.0, -2.0], [0.5, 3.0], size=(300, 3, 3, 2))


def renorm_reference(x, m, rmax, dmax, mu, sigma, epsilon=1e-3):
    """Algorithm 1 in NumPy over contiguous microbatches (γ = 1, β = 0), and inference."""
    groups = x.astype(np.float64).reshape(-1, m, x.shape[-1])
    mean_b = groups.mean(axis=1, keepdims=True)
    sigma_b = np.sqrt(groups.var(axis=1, keepdims=True) + epsilon)
    r, d = sigma_b / sigma, (mean_b - mu) / sigma
    fractions = (np.mean((r < 1 / rmax) | (r > rmax)), np.mean(np.abs(d) > dmax))
    train = (groups - mean_b) / sigma_b * np.clip(r, 1 / rmax, rmax) + np.clip(d, -dmax, dmax)
    return train.reshape(x.shape), (x - mu) / sigma, fractions


def one_layer_model(**kwargs):
    inputs = keras.Input((5,))
    kwargs.setdefault("warmup_steps", None)  # the bounds given hold from the first step
    layer = br.BatchRenormalization(**kwargs)
    return keras.Model(inputs, layer(inputs)), layer


def test_gap_matches_a_direct_computation_and_leaves_state_alone():
    x = (np.random.default_rng(0).normal(size=(16, 5)) * 2 + 1).astype(np.float32)
    model, layer = one_layer_model(rmax=1.0, dmax=0.0, microbatch_size=2)
    layer.moving_mean.assign(np.full(5, 0.5))
    before = [v.numpy() for v in layer.non_trainable_variables]
    (gap,) = diagnostics.train_inference_gap(model, x)
    for variable, value in zip(layer.non_trainable_variables, before):
        np.testing.assert_array_equal(variable.numpy(), value)

    groups = x.reshape(8, 2, 5).astype(np.float64)
    train = (groups - groups.mean(1, keepdims=True)) / np.sqrt(groups.var(1, keepdims=True) + 1e-3)
    infer = (x - 0.5) / 1.0
    np.testing.assert_allclose(gap, np.sqrt(np.mean((train.reshape(16, 5) - infer) ** 2)),
                               rtol=1e-4)


def test_gap_vanishes_when_nothing_is_clipped():
    x = np.random.default_rng(1).normal(size=(16, 5)).astype(np.float32)
    model, _ = one_layer_model(rmax=1e6, dmax=1e6, microbatch_size=4)
    assert diagnostics.train_inference_gap(model, x)[0] < 1e-4


def test_clip_fractions_by_layer_reads_each_layer():
    model, layer = one_layer_model(rmax=1.0, dmax=0.0, microbatch_size=4)
    layer(np.random.default_rng(2).normal(size=(8, 5)).astype(np.float32), training=True)
    assert diagnostics.clip_fractions_by_layer(model) == [(1.0, 1.0)]


def test_layer_inputs_are_what_each_layer_normalizes():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((5,))
    hidden = keras.layers.Dense(4, name="dense")(inputs)
    first = br.BatchRenormalization(rmax=1.0, dmax=0.0, microbatch_size=2, name="first")
    second = br.BatchRenormalization(rmax=1.0, dmax=0.0, microbatch_size=2, name="second")
    model = keras.Model(inputs, second(keras.layers.ReLU()(first(hidden))))
    x = np.random.default_rng(3).normal(size=(8, 5)).astype(np.float32)
    before = [v.numpy() for v in model.non_trainable_variables]
    found = diagnostics.layer_inputs(model, x)
    for variable, value in zip(model.non_trainable_variables, before):
        np.testing.assert_array_equal(variable.numpy(), value)
    kernel, bias = (w.numpy() for w in model.get_layer("dense").weights)
    h = x @ kernel + bias
    groups = h.reshape(4, 2, 4)  # batch norm over pairs, then ReLU: the second layer's input
    normalized = (groups - groups.mean(1, keepdims=True)) / np.sqrt(groups.var(1, keepdims=True)
                                                                    + 1e-3)
    assert list(found) == ["first", "second"]
    np.testing.assert_allclose(found["first"], h, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(found["second"], np.maximum(normalized.reshape(8, 4), 0),
                               rtol=1e-4, atol=1e-5)


def test_corrections_match_a_loop_over_microbatches():
    values = features()
    r, d = diagnostics.corrections_from_features(values, 4, microbatches=50, seed=1)
    picks = np.random.default_rng(1).integers(0, len(values), (50, 4))
    sigma_b = np.array([[np.sqrt(values[rows][..., c].var() + 1e-3) for c in range(2)]
                        for rows in picks])
    mean_b = np.array([[values[rows][..., c].mean() for c in range(2)] for rows in picks])
    sigma = sigma_b.mean(axis=0)  # σ = E[σ_B], what the moving averages converge to
    np.testing.assert_allclose(r, sigma_b / sigma)
    np.testing.assert_allclose(d, (mean_b - values.mean(axis=(0, 1, 2))) / sigma)
    np.testing.assert_allclose(r.mean(axis=0), 1.0)  # E[r] = 1 by construction


def test_smaller_microbatches_spread_r_and_d_wider():
    spreads = [np.std(diagnostics.corrections_from_features(features(), m)[0]) for m in (32, 8, 2)]
    assert spreads[0] < spreads[1] < spreads[2]
    with pytest.raises(ValueError, match="microbatch_size"):
        diagnostics.corrections_from_features(features(), 1)


def test_clip_fractions_count_values_outside_the_bounds():
    r = np.array([0.4, 0.6, 1.0, 1.4, 1.6, 2.5])
    d = np.array([-0.9, -0.2, 0.0, 0.3, 0.6, 2.0])
    expected_r = sum(1 for v in r if v < 1 / 1.5 or v > 1.5) / len(r)
    expected_d = sum(1 for v in d if abs(v) > 0.5) / len(d)
    assert diagnostics.clip_fractions(r, d, 1.5, 0.5) == (expected_r, expected_d)
    assert diagnostics.clip_text(r, d, 1.5, 0.5) == "clipped: r 66.7 %, d 50.0 %"


def test_wider_bounds_clip_less():
    r, d = diagnostics.corrections_from_features(features(), 2)
    fractions = [diagnostics.clip_fractions(r, d, rmax, rmax - 1) for rmax in (1.0, 1.05, 1.2, 1.5)]
    assert fractions[0] == (1.0, 1.0)
    shares_of_r = [fraction_r for fraction_r, _ in fractions]
    assert all(wide < narrow for narrow, wide in zip(shares_of_r, shares_of_r[1:]))


def test_train_and_inference_agree_only_without_clipping():
    x = np.random.default_rng(0).normal(size=(32, 3)).astype(np.float32)
    train, infer = diagnostics.train_vs_inference(x, 4, rmax=1e6, dmax=1e6)
    np.testing.assert_allclose(train, infer, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(infer, x, rtol=1e-5, atol=1e-5)  # µ = 0, σ = 1
    train, infer = diagnostics.train_vs_inference(x, 4, rmax=1.0, dmax=0.0)
    assert np.sqrt(np.mean((train - infer) ** 2)) > 0.1


def test_corrections_can_be_taken_against_given_moving_averages():
    values = features()
    r, d = diagnostics.corrections_from_features(values, 4, microbatches=20, mu=[0.0, 0.0],
                                             sigma=[2.0, 4.0])
    picks = np.random.default_rng(0).integers(0, len(values), (20, 4))
    sigma_b = np.array([[np.sqrt(values[rows][..., c].var() + 1e-3) for c in range(2)]
                        for rows in picks])
    mean_b = np.array([[values[rows][..., c].mean() for c in range(2)] for rows in picks])
    np.testing.assert_allclose(r, sigma_b / [2.0, 4.0])
    np.testing.assert_allclose(d, mean_b / [2.0, 4.0])


def test_partner_outputs_normalize_the_example_with_each_microbatch():
    values = features()
    train, inference = diagnostics.partner_outputs(values, 4, example=5, channel=1, partners=30,
                                               seed=2)
    rng = np.random.default_rng(2)
    others = np.delete(np.arange(len(values)), 5)
    expected = []
    for _ in range(30):  # the same draws, written as a loop
        group = np.concatenate([values[[5]], values[rng.choice(others, 3, replace=False)]])
        channel = group[..., 1]
        expected.append((values[5, 1, 1, 1] - channel.mean()) / np.sqrt(channel.var() + 1e-3))
    np.testing.assert_allclose(train, expected)
    random_groups = values[rng.integers(0, len(values), (30, 4))][..., 1]
    sigma = np.sqrt(random_groups.var(axis=(1, 2, 3)) + 1e-3).mean()
    assert inference == pytest.approx((values[5, 1, 1, 1] - values[..., 1].mean()) / sigma)


def test_partner_statistics_are_those_of_each_draw():
    values = features()
    train, inference, stats = diagnostics.partner_outputs(values, 4, example=5, channel=1, partners=30,
                                                      seed=2, statistics=True)
    rng = np.random.default_rng(2)
    others = np.delete(np.arange(len(values)), 5)
    means, sigmas = [], []
    for _ in range(30):  # the same draws, written as a loop
        channel = np.concatenate([values[[5]], values[rng.choice(others, 3, replace=False)]])[..., 1]
        means.append(channel.mean())
        sigmas.append(np.sqrt(channel.var() + 1e-3))
    np.testing.assert_allclose(stats["mean_b"], means)
    np.testing.assert_allclose(stats["sigma_b"], sigmas)
    random_groups = values[rng.integers(0, len(values), (30, 4))][..., 1]
    assert stats["sigma"] == pytest.approx(np.sqrt(random_groups.var(axis=(1, 2, 3)) + 1e-3).mean())
    assert stats["mu"] == pytest.approx(values[..., 1].mean())
    assert stats["value"] == values[5, 1, 1, 1]
    assert stats["example_mean"] == pytest.approx(values[5, ..., 1].mean())
    np.testing.assert_allclose(train, (stats["value"] - np.array(means)) / np.array(sigmas))
    assert inference == pytest.approx((stats["value"] - stats["mu"]) / stats["sigma"])


def test_train_vs_inference_with_given_moving_statistics_matches_numpy():
    x = np.random.default_rng(0).normal(size=(32, 3)).astype(np.float32)
    gaps = {}
    for rmax, dmax in ((1.0, 0.0), (1.5, 0.5), (1e6, 1e6)):
        train, infer, fractions = diagnostics.train_vs_inference(x, 4, rmax, dmax, mu=0.5, sigma=1.5,
                                                             fractions=True)
        expected_train, expected_infer, expected_fractions = renorm_reference(x, 4, rmax, dmax, 0.5, 1.5)
        np.testing.assert_allclose(train, expected_train, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(infer, expected_infer, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(fractions, expected_fractions, atol=1e-6)
        gaps[rmax] = np.sqrt(np.mean((train - infer) ** 2))
    assert gaps[1e6] < 1e-4 < gaps[1.5] < gaps[1.0]  # partial clipping: between renorm and batch norm
    sigma = np.array([1.0, 2.0, 0.5])  # one σ per channel
    train, infer = diagnostics.train_vs_inference(x, 4, 1.2, 0.3, mu=[0.0, 1.0, -1.0], sigma=sigma)
    expected_train, expected_infer, _ = renorm_reference(x, 4, 1.2, 0.3, np.array([0.0, 1.0, -1.0]), sigma)
    np.testing.assert_allclose(train, expected_train, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(infer, expected_infer, rtol=1e-5, atol=1e-5)


def test_partners_spread_less_in_larger_microbatches():
    spreads = [np.std(diagnostics.partner_outputs(features(), m)[0]) for m in (2, 8, 32)]
    assert spreads[0] > spreads[1] > spreads[2]
