"""brlib.RenormSchedule against the paper's numbers and a hand-written ramp, alone and in fit."""

import keras
import numpy as np
import pytest

import brlib as br


def hand_ramp(step, start, end, low, high):
    if step <= start:
        return low
    if step >= end:
        return high
    return low + (high - low) * (step - start) / (end - start)


def test_paper_schedule_values():
    schedule = br.RenormSchedule()  # the paper: 5k warm-up, rmax 3 at 40k, dmax 5 at 25k
    assert schedule(0) == (1.0, 0.0)
    assert schedule(5000) == (1.0, 0.0)
    assert schedule(15000) == pytest.approx((1 + 2 * 10 / 35, 5 * 10 / 20))
    assert schedule(25000) == pytest.approx((1 + 2 * 20 / 35, 5.0))
    assert schedule(40000) == (3.0, 5.0)
    assert schedule(10**6) == (3.0, 5.0)


def test_array_of_steps_matches_scalar_calls():
    schedule = br.RenormSchedule(warmup_steps=10, rmax_final=2, rmax_steps=50, dmax_final=1,
                                 dmax_steps=30)
    steps = np.arange(0, 70, 3)
    rmax, dmax = schedule(steps)
    np.testing.assert_allclose(rmax, [hand_ramp(s, 10, 50, 1, 2) for s in steps])
    np.testing.assert_allclose(dmax, [hand_ramp(s, 10, 30, 0, 1) for s in steps])


def test_ramp_ending_at_warmup_jumps():
    schedule = br.RenormSchedule(warmup_steps=4, rmax_final=2, rmax_steps=4, dmax_final=1,
                                 dmax_steps=4)
    assert [schedule(s) for s in (3, 4, 5)] == [(1.0, 0.0), (2.0, 1.0), (2.0, 1.0)]


def test_infinite_bounds_stay_one_and_zero_until_the_warmup_ends():
    # 0 × ∞ is NaN: the ramp must not multiply before the bounds move.
    schedule = br.RenormSchedule(warmup_steps=4, rmax_final=np.inf, rmax_steps=4,
                                 dmax_final=np.inf, dmax_steps=4)
    assert [schedule(s) for s in (0, 3, 4, 9)] == [(1.0, 0.0), (1.0, 0.0), (np.inf, np.inf),
                                                  (np.inf, np.inf)]
    rmax, dmax = schedule(np.arange(6))
    np.testing.assert_array_equal(rmax, [1, 1, 1, 1, np.inf, np.inf])
    np.testing.assert_array_equal(dmax, [0, 0, 0, 0, np.inf, np.inf])


@pytest.mark.parametrize("kwargs, name", [
    ({"warmup_steps": -1}, "warmup_steps"),
    ({"warmup_steps": 1.5}, "warmup_steps"),
    ({"rmax_steps": 10, "warmup_steps": 20, "dmax_steps": 30}, "rmax_steps"),
    ({"dmax_steps": 10, "warmup_steps": 20}, "dmax_steps"),
    ({"rmax_final": 0.9}, "rmax"),
    ({"dmax_final": -1}, "dmax"),
])
def test_bad_arguments_are_named(kwargs, name):
    with pytest.raises(ValueError, match=name):
        br.RenormSchedule(**kwargs)


def nested_model():
    inner = keras.Sequential([keras.Input((4,)), keras.layers.Dense(6),
                              # warmup_steps=None: the schedule, not the layer, sets the bounds.
                              br.BatchRenormalization(microbatch_size=2, warmup_steps=None)],
                             name="inner")
    inputs = keras.Input((4,))
    # A dense layer between the two normalizations: batch norm's outputs over pairs sum to
    # zero in every pair, so without its bias the outer layer's µ_B (and d) would be exactly 0.
    hidden = keras.layers.Dense(5, bias_initializer="random_normal")(inner(inputs))
    hidden = br.BatchRenormalization(microbatch_size=4, warmup_steps=None)(hidden)
    return keras.Model(inputs, keras.layers.Dense(2)(hidden))


class Record(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.seen = []

    def on_train_batch_end(self, batch, logs=None):
        br.schedule.sync_state(self.model)  # on JAX the variables are outside the model during fit
        layers = br.renorm_layers(self.model)
        self.seen.append([(float(layer.rmax), float(layer.dmax),
                           float(layer.fraction_d_clipped)) for layer in layers])


def test_callback_drives_nested_layers_at_the_right_steps():
    keras.utils.set_random_seed(0)
    model = nested_model()
    assert len(br.renorm_layers(model)) == 2
    model.compile("sgd", "mse")
    schedule = br.RenormSchedule(warmup_steps=2, rmax_final=3, rmax_steps=6, dmax_final=1,
                                 dmax_steps=4)
    recorder = Record()
    x = np.random.default_rng(0).normal(size=(32, 4)).astype(np.float32)
    # The optimizer already has 1 step behind it: the schedule follows its count.
    model.optimizer.build(model.trainable_variables)
    model.optimizer.iterations.assign(1)
    model.fit(x, np.zeros((32, 2)), batch_size=4, epochs=1, callbacks=[schedule, recorder],
              verbose=0)
    seen = np.array(recorder.seen)  # (steps, layers, 3)
    steps = np.arange(1, 9)
    for layer in range(2):
        np.testing.assert_allclose(seen[:, layer, 0], [hand_ramp(s, 2, 6, 1, 3) for s in steps])
        np.testing.assert_allclose(seen[:, layer, 1], [hand_ramp(s, 2, 4, 0, 1) for s in steps])
    # Inside the compiled step: while dmax = 0 every d is clipped, later not all are.
    assert np.all(seen[:2, :, 2] == 1.0) and np.all(seen[-1, :, 2] < 1.0)


class Holder(keras.layers.Layer):
    """A custom layer that keeps its normalization as an attribute, not in `.layers`."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.dense = keras.layers.Dense(3)
        self.norm = br.BatchRenormalization(name="held")

    def call(self, x, training=None):
        return self.norm(self.dense(x), training=training)


def test_renorm_layers_finds_every_layer_at_any_depth_once():
    inner = keras.Sequential([keras.Input((3,)), br.BatchRenormalization(name="inner")])
    inputs = keras.Input((4,))
    x = Holder()(inputs)
    x = inner(x)
    x = br.BatchRenormalization(name="outer")(x)
    x = inner(x)  # a shared model is called twice, but holds one layer
    model = keras.Model(inputs, x)
    assert sorted(layer.name for layer in br.renorm_layers(model)) == ["held", "inner", "outer"]
    assert br.renorm_layers(br.BatchRenormalization()) != []  # a layer alone is found too
