"""brlib.convert against the models it converts: their outputs, their weights and their settings.

Each test builds a Keras model with batch norm, gives every batch-norm layer
random γ, β, µ and v (a freshly built layer has µ = 0, v = 1, under which
many mistakes would not show), converts it, and compares the new model with
the original: inference outputs, σ = sqrt(v + ε) computed here in NumPy, and
the settings read from the original layers.
"""

import inspect
import warnings

import keras
import numpy as np
import pytest

import brlib as br
from brlib.convert import to_batchnorm, to_renorm

RENORM = br.BatchRenormalization
BATCHNORM = keras.layers.BatchNormalization
RENORM_ARGUMENTS = set(inspect.signature(RENORM.__init__).parameters)
# Whether the layer divides by max(σ, √ε) (later versions) or by σ.
FLOORS_STDDEV = hasattr(br.layers, "floor_stddev")


def as_numpy(value):
    return np.asarray(keras.ops.convert_to_numpy(value), dtype=np.float64)


def all_layers(model):
    """Every layer of a Sequential or Functional model, nested models' layers included."""
    found = []
    for layer in model.layers:
        found.append(layer)
        if isinstance(layer, keras.Model):
            found.extend(all_layers(layer))
    return found


def of_class(model, cls):
    return [layer for layer in all_layers(model) if isinstance(layer, cls)]


def randomize_batchnorm(model, seed=0):
    """Random γ, β, µ and v in every built batch-norm layer of `model`."""
    rng = np.random.default_rng(seed)
    for layer in of_class(model, BATCHNORM):
        channels = layer.moving_mean.shape[0]
        if layer.scale:
            layer.gamma.assign(rng.uniform(0.5, 1.5, channels))
        if layer.center:
            layer.beta.assign(rng.normal(0.0, 0.3, channels))
        layer.moving_mean.assign(rng.normal(0.0, 0.3, channels))
        layer.moving_variance.assign(rng.uniform(0.3, 2.0, channels))


def assert_same_outputs(converted, original, x, training=False, tolerance=1e-5):
    """Outputs equal to `tolerance` times the size of the original's outputs (at least 1)."""
    expected = as_numpy(original(x, training=training))
    actual = as_numpy(converted(x, training=training))
    scale = max(1.0, float(np.max(np.abs(expected))))
    np.testing.assert_allclose(actual, expected, rtol=0, atol=tolerance * scale)
    return float(np.max(np.abs(actual - expected)))


def assert_renorm_matches(renorm, batchnorm):
    """Weights and settings of one converted layer against its batch-norm original."""
    assert renorm.name == batchnorm.name
    for name in ("axis", "momentum", "epsilon", "center", "scale", "trainable"):
        assert getattr(renorm, name) == getattr(batchnorm, name), name
    for name in ("gamma", "beta", "moving_mean"):
        if getattr(batchnorm, name) is None:
            assert getattr(renorm, name) is None
        else:
            np.testing.assert_array_equal(as_numpy(getattr(renorm, name)),
                                          as_numpy(getattr(batchnorm, name)))
    sigma = np.sqrt(as_numpy(batchnorm.moving_variance) + batchnorm.epsilon)
    np.testing.assert_allclose(as_numpy(renorm.moving_stddev), sigma, rtol=1e-7)


def images(shape, seed=1):
    return np.random.default_rng(seed).normal(size=shape).astype("float32")


# ----------------------------------------------------------------------------
# Sequential, Functional, nested
# ----------------------------------------------------------------------------
def sequential_model():
    model = keras.Sequential([
        keras.Input((8, 8, 3)),
        keras.layers.Conv2D(6, 3, name="conv"),
        keras.layers.BatchNormalization(name="bn_conv", momentum=0.9, epsilon=1e-2),
        keras.layers.ReLU(),
        keras.layers.Flatten(),
        keras.layers.Dense(5, name="dense"),
        keras.layers.BatchNormalization(name="bn_dense", center=False),
    ], name="seq")
    randomize_batchnorm(model)
    return model


def test_sequential_weights_settings_and_inference_outputs():
    model = sequential_model()
    converted = to_renorm(model, microbatch_size=2, rmax=2.0, dmax=1.0)
    assert isinstance(converted, keras.Sequential)
    assert not of_class(converted, BATCHNORM)
    assert [layer.name for layer in converted.layers] == [layer.name for layer in model.layers]
    for renorm, batchnorm in zip(of_class(converted, RENORM), of_class(model, BATCHNORM)):
        assert_renorm_matches(renorm, batchnorm)
        assert renorm.microbatch_size == 2
        assert float(as_numpy(renorm.rmax)) == 2.0 and float(as_numpy(renorm.dmax)) == 1.0
    # Other layers are copied, with their own variables.
    np.testing.assert_array_equal(as_numpy(converted.get_layer("conv").kernel),
                                  as_numpy(model.get_layer("conv").kernel))
    assert converted.get_layer("conv").kernel is not model.get_layer("conv").kernel
    assert_same_outputs(converted, model, images((4, 8, 8, 3)))


def test_training_the_converted_model_leaves_the_original_alone():
    model = sequential_model()
    model.compile(optimizer="sgd", loss="mse")
    before = [w.copy() for w in model.get_weights()]
    converted = to_renorm(model, microbatch_size=2)
    assert converted.compiled
    converted.fit(images((4, 8, 8, 3)), np.ones((4, 5), "float32"), batch_size=4, epochs=1,
                  verbose=0)
    for weight, saved in zip(model.get_weights(), before):
        np.testing.assert_array_equal(weight, saved)
    changed = as_numpy(converted.get_layer("bn_conv").moving_mean)
    assert not np.allclose(changed, as_numpy(model.get_layer("bn_conv").moving_mean))


def functional_model():
    inputs = keras.Input((4, 6))
    shared = keras.layers.BatchNormalization(axis=1, name="bn_shared")  # channels first
    left = keras.layers.Dense(6, name="left")(shared(inputs))
    right = shared(keras.layers.Dense(6, name="right")(inputs))
    merged = keras.layers.Add()([left, right])
    outputs = keras.layers.BatchNormalization(name="bn_out", scale=False)(merged)
    outputs = keras.ops.tanh(outputs)  # an operation of the graph that is not a layer
    model = keras.Model(inputs, outputs, name="functional")
    randomize_batchnorm(model)
    return model


def test_functional_with_a_shared_layer_axis_1_and_an_operation():
    model = functional_model()
    converted = to_renorm(model)
    renorms = of_class(converted, RENORM)
    assert [layer.name for layer in renorms] == ["bn_shared", "bn_out"]  # shared stays one layer
    for renorm, batchnorm in zip(renorms, of_class(model, BATCHNORM)):
        assert_renorm_matches(renorm, batchnorm)
    x = images((4, 4, 6))
    assert_same_outputs(converted, model, x)
    # With rmax = 1 and dmax = 0 a training step is batch norm's, so the settings
    # that training reads (axis, ε) carried over too.
    assert_same_outputs(converted, model, x, training=True)


def nested_model():
    inner = keras.Sequential([keras.Input((6,)), keras.layers.Dense(6, name="inner_dense"),
                              keras.layers.BatchNormalization(name="inner_bn")], name="inner")
    frozen_inputs = keras.Input((6,))
    frozen_outputs = keras.layers.BatchNormalization(name="frozen_bn")(
        keras.layers.Dense(6, name="frozen_dense")(frozen_inputs))
    frozen = keras.Model(frozen_inputs, frozen_outputs, name="frozen")
    frozen.trainable = False
    inputs = keras.Input((6,))
    x = inner(inputs)
    x = frozen(x)
    x = frozen(x)  # a nested model called twice
    lone = keras.layers.BatchNormalization(name="lone_frozen_bn")
    lone.trainable = False
    x = lone(x)
    outputs = keras.layers.BatchNormalization(name="outer_bn")(keras.layers.Dense(3)(x))
    model = keras.Model(inputs, outputs, name="outer")
    randomize_batchnorm(model)
    return model


def test_nested_models_are_converted_and_frozen_layers_stay_frozen():
    model = nested_model()
    converted = to_renorm(model)
    assert not of_class(converted, BATCHNORM)
    assert len(of_class(model, BATCHNORM)) == len(of_class(converted, RENORM)) == 4
    for layer in model.layers:
        if not isinstance(layer, keras.layers.InputLayer):
            assert converted.get_layer(layer.name).trainable == layer.trainable, layer.name
    frozen = converted.get_layer("frozen")
    assert isinstance(frozen, keras.Model) and not frozen.trainable
    assert not frozen.get_layer("frozen_bn").trainable
    assert not converted.get_layer("lone_frozen_bn").trainable
    assert converted.get_layer("inner").get_layer("inner_bn").trainable
    assert len(converted.trainable_weights) == len(model.trainable_weights)
    for renorm, batchnorm in zip(of_class(converted, RENORM), of_class(model, BATCHNORM)):
        assert_renorm_matches(renorm, batchnorm)
    x = images((4, 6))
    assert_same_outputs(converted, model, x)
    # Frozen layers run in inference mode in both models; the others on batch statistics.
    assert_same_outputs(converted, model, x, training=True)


def test_a_frozen_top_level_functional_model_stays_frozen():
    model = functional_model()
    model.trainable = False
    converted = to_renorm(model)
    assert not converted.trainable
    assert all(not layer.trainable for layer in all_layers(converted))
    assert not converted.trainable_weights


def test_saved_and_loaded_converted_model_gives_the_same_outputs(tmp_path):
    model = functional_model()
    converted = to_renorm(model, microbatch_size=2)
    path = tmp_path / "renorm.keras"
    converted.save(path)
    loaded = keras.models.load_model(path)
    assert_same_outputs(loaded, model, images((4, 4, 6)))


def test_mobilenet_v2():
    model = keras.applications.MobileNetV2(input_shape=(32, 32, 3), alpha=0.35, weights=None,
                                           classes=10, classifier_activation=None)
    randomize_batchnorm(model)
    converted = to_renorm(model)
    assert len(of_class(converted, RENORM)) == len(of_class(model, BATCHNORM)) > 0
    assert not of_class(converted, BATCHNORM)
    for renorm, batchnorm in zip(of_class(converted, RENORM), of_class(model, BATCHNORM)):
        assert_renorm_matches(renorm, batchnorm)
    assert_same_outputs(converted, model, images((2, 32, 32, 3)))


# ----------------------------------------------------------------------------
# What cannot be converted
# ----------------------------------------------------------------------------
class SubclassedBlock(keras.Model):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.dense = keras.layers.Dense(4)
        self.norm = keras.layers.BatchNormalization(name="hidden_bn")

    def call(self, inputs, training=None):
        return self.norm(self.dense(inputs), training=training)


def test_a_subclassed_model_is_refused_with_the_reason():
    model = SubclassedBlock(name="block")
    model(np.zeros((2, 3), "float32"))
    with pytest.raises(TypeError, match="subclassed model") as error:
        to_renorm(model)
    assert "Functional" in str(error.value) and "clone_model" in str(error.value)


def test_a_nested_subclassed_model_with_batchnorm_is_refused_with_the_reason():
    inputs = keras.Input((3,))
    outputs = keras.layers.Dense(2)(SubclassedBlock(name="block")(inputs))
    model = keras.Model(inputs, outputs)
    with pytest.raises(TypeError, match="'block'") as error:
        to_renorm(model)
    assert "'hidden_bn'" in str(error.value) and "Functional" in str(error.value)


@keras.saving.register_keras_serializable(package="brlib_tests")
class Offset(keras.layers.Layer):
    """A custom layer without batch norm inside: copied with its weight."""

    def build(self, input_shape):
        self.offset = self.add_weight(shape=(input_shape[-1],), initializer="ones")

    def call(self, inputs):
        return inputs + self.offset


def test_custom_layers_without_batchnorm_are_copied_with_their_weights():
    inputs = keras.Input((5,))
    custom = Offset(name="offset")
    outputs = keras.layers.BatchNormalization()(custom(inputs))
    model = keras.Model(inputs, outputs)
    custom.offset.assign(np.arange(5.0))
    randomize_batchnorm(model)
    converted = to_renorm(model)
    copy = converted.get_layer("offset")
    assert copy is not custom and copy.offset is not custom.offset
    np.testing.assert_array_equal(as_numpy(copy.offset), np.arange(5.0))
    assert_same_outputs(converted, model, images((4, 5)))


def test_a_lambda_layer_is_refused_with_what_to_do_then_converts_when_allowed():
    model = keras.Sequential([keras.Input((3,)), keras.layers.Lambda(lambda t: 2.0 * t),
                              keras.layers.BatchNormalization()])
    randomize_batchnorm(model)
    with pytest.raises(TypeError, match=r"enable_unsafe_deserialization\(\)") as caught:
        to_renorm(model)
    assert "get_config" not in str(caught.value)  # no advice that does not apply
    from keras.src.backend.common import global_state  # where Keras keeps safe mode

    before = global_state.get_global_attribute("safe_mode_saving")
    keras.config.enable_unsafe_deserialization()
    try:
        converted = to_renorm(model)
    finally:  # safe mode back on for the other tests
        global_state.set_global_attribute("safe_mode_saving", before)
    assert_same_outputs(converted, model, images((4, 3)))


def test_a_model_without_batchnorm_gives_a_warning_and_a_copy():
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    with pytest.warns(UserWarning, match="no keras.layers.BatchNormalization"):
        converted = to_renorm(model)
    assert converted is not model
    assert_same_outputs(converted, model, images((2, 3)))


def test_invalid_arguments_are_refused():
    model = sequential_model()
    with pytest.raises(ValueError, match="rmax"):
        to_renorm(model, rmax=0.5)
    with pytest.raises(ValueError, match="dmax"):
        to_renorm(model, dmax=-1.0)
    with pytest.raises(ValueError, match="microbatch_size"):
        to_renorm(model, microbatch_size=0)
    with pytest.raises(ValueError, match="'renorm_clipping'"):
        to_renorm(model, renorm_clipping={"rmax": 2.0})
    with pytest.raises(ValueError, match="'name'"):
        to_renorm(model, name="same_for_all")
    with pytest.raises(ValueError, match="'microbatch_size'"):
        to_batchnorm(to_renorm(model), microbatch_size=2)


def test_layer_kwargs_override_what_carries_over():
    model = sequential_model()
    converted = to_renorm(model, momentum=0.999)
    assert all(layer.momentum == 0.999 for layer in of_class(converted, RENORM))
    assert_same_outputs(converted, model, images((4, 8, 8, 3)))


# ----------------------------------------------------------------------------
# Regularizers and constraints
# ----------------------------------------------------------------------------
def test_regularizers_carry_over():
    inputs = keras.Input((4,))
    outputs = keras.layers.BatchNormalization(
        gamma_regularizer=keras.regularizers.L2(0.1),
        beta_regularizer=keras.regularizers.L1(0.2))(inputs)
    model = keras.Model(inputs, outputs)
    randomize_batchnorm(model)
    converted = to_renorm(model)
    layer = of_class(converted, RENORM)[0]
    assert layer.gamma_regularizer.get_config() == {"l2": pytest.approx(0.1)}
    assert layer.beta_regularizer.get_config() == {"l1": pytest.approx(0.2)}
    # The penalties themselves, from the copied weights, equal the original's.
    np.testing.assert_allclose(sorted(as_numpy(loss) for loss in converted.losses),
                               sorted(as_numpy(loss) for loss in model.losses), rtol=1e-6)


@pytest.mark.parametrize("name", ["beta_constraint", "gamma_constraint"])
def test_constraints_carry_over_or_are_refused_by_name(name):
    inputs = keras.Input((4,))
    outputs = keras.layers.BatchNormalization(**{name: keras.constraints.NonNeg()})(inputs)
    model = keras.Model(inputs, outputs)
    if name in RENORM_ARGUMENTS:
        converted = to_renorm(model)
        assert isinstance(getattr(of_class(converted, RENORM)[0], name),
                          keras.constraints.NonNeg)
    else:
        with pytest.raises(ValueError, match=name):
            to_renorm(model)


@pytest.mark.skipif(keras.backend.backend() != "tensorflow",
                    reason="Keras accepts synchronized=True on TensorFlow only")
def test_synchronized_carries_over_or_is_refused():
    inputs = keras.Input((4,))
    outputs = keras.layers.BatchNormalization(synchronized=True)(inputs)
    model = keras.Model(inputs, outputs)
    if "synchronized" in RENORM_ARGUMENTS:
        converted = to_renorm(model)
        assert of_class(converted, RENORM)[0].synchronized
        assert of_class(to_batchnorm(converted), BATCHNORM)[0].synchronized
    else:
        with pytest.raises(ValueError, match="synchronized"):
            to_renorm(model)


# ----------------------------------------------------------------------------
# Single layers, unbuilt models
# ----------------------------------------------------------------------------
def test_a_single_built_layer():
    layer = keras.layers.BatchNormalization(axis=1, epsilon=0.05)
    x = images((3, 4, 2))
    layer(x)
    rng = np.random.default_rng(2)
    layer.moving_variance.assign(rng.uniform(0.3, 2.0, 4))
    layer.moving_mean.assign(rng.normal(size=4))
    renorm = to_renorm(layer, microbatch_size=3)
    assert isinstance(renorm, RENORM) and renorm.built
    assert_renorm_matches(renorm, layer)
    assert_same_outputs(renorm, layer, x)


def test_an_unbuilt_model_starts_with_the_same_moving_statistics():
    model = keras.Sequential([keras.layers.Dense(3), keras.layers.BatchNormalization(
        epsilon=0.01, moving_variance_initializer=keras.initializers.Constant(4.0))])
    converted = to_renorm(model)
    converted(np.zeros((2, 2), "float32"))
    layer = of_class(converted, RENORM)[0]
    np.testing.assert_allclose(as_numpy(layer.moving_stddev), np.sqrt(4.01), rtol=1e-6)
    back = to_batchnorm(converted)  # built now: weights are copied
    np.testing.assert_allclose(as_numpy(of_class(back, BATCHNORM)[0].moving_variance), 4.0,
                               rtol=1e-5)


# ----------------------------------------------------------------------------
# The reverse conversion
# ----------------------------------------------------------------------------
def test_round_trip_gives_back_the_weights_and_outputs():
    model = nested_model()
    renorm = to_renorm(model, microbatch_size=2, rmax=3.0, dmax=5.0)
    back = to_batchnorm(renorm)
    assert not of_class(back, RENORM)
    originals, returned = of_class(model, BATCHNORM), of_class(back, BATCHNORM)
    assert [layer.name for layer in returned] == [layer.name for layer in originals]
    for layer, original in zip(returned, originals):
        for name in ("axis", "momentum", "epsilon", "center", "scale", "trainable"):
            assert getattr(layer, name) == getattr(original, name), name
        for name in ("gamma", "beta", "moving_mean"):
            np.testing.assert_array_equal(as_numpy(getattr(layer, name)),
                                          as_numpy(getattr(original, name)))
        np.testing.assert_allclose(as_numpy(layer.moving_variance),
                                   as_numpy(original.moving_variance), rtol=1e-5)
    assert not back.get_layer("frozen").trainable
    x = images((4, 6))
    assert_same_outputs(back, model, x)
    assert_same_outputs(back, renorm, x)


def test_reverse_of_a_trained_renorm_model_matches_its_inference():
    model = keras.Sequential([keras.Input((5,)), keras.layers.Dense(4),
                              RENORM(microbatch_size=2, momentum=0.5, name="renorm")])
    x = images((8, 5))
    for _ in range(3):
        model(x, training=True)  # moves µ and σ away from their initial values
    served = to_batchnorm(model)
    layer = served.get_layer("renorm")
    sigma = as_numpy(model.get_layer("renorm").moving_stddev)
    np.testing.assert_allclose(as_numpy(layer.moving_variance), sigma ** 2 - layer.epsilon,
                               rtol=1e-5)
    assert_same_outputs(served, model, x)


def renorm_with_stddev(stddev, epsilon):
    inputs = keras.Input((len(stddev),))
    # A whole-batch layer keeps a variance by default; these tests need a moving σ.
    kept = {"moving_statistic": "stddev"} if "moving_statistic" in RENORM_ARGUMENTS else {}
    outputs = RENORM(epsilon=epsilon, name="renorm", **kept)(inputs)
    model = keras.Model(inputs, outputs)
    model.get_layer("renorm").moving_stddev.assign(np.asarray(stddev))
    return model


def test_reverse_of_a_stddev_below_the_square_root_of_epsilon():
    model = renorm_with_stddev([0.05, 1.0, 2.0], epsilon=0.01)  # 0.05 < √0.01
    if FLOORS_STDDEV:  # the layer divides by max(σ, √ε) = √ε there, as batch norm with v = 0
        with warnings.catch_warnings():
            warnings.simplefilter("error", UserWarning)
            served = to_batchnorm(model)
        assert_same_outputs(served, model, images((4, 3)))
    else:  # the layer divides by σ < √ε, which batch norm cannot
        with pytest.warns(UserWarning, match="1 of 3 channels"):
            served = to_batchnorm(model)
    np.testing.assert_allclose(as_numpy(served.get_layer("renorm").moving_variance),
                               [0.0, 1.0 - 0.01, 4.0 - 0.01], rtol=1e-6, atol=1e-9)


def test_reverse_with_a_larger_epsilon_clips_the_variance_at_zero_and_warns():
    model = renorm_with_stddev([1.0, 0.5, 2.0], epsilon=0.01)
    with pytest.warns(UserWarning, match="1 of 3 channels"):
        served = to_batchnorm(model, epsilon=0.5)  # 0.5² − 0.5 < 0
    np.testing.assert_allclose(as_numpy(served.get_layer("renorm").moving_variance),
                               [0.5, 0.0, 3.5], rtol=1e-6)


@pytest.mark.skipif("moving_statistic" not in RENORM_ARGUMENTS,
                    reason="this version of the layer keeps only a moving σ")
def test_a_layer_keeping_a_moving_variance_gets_the_variance_itself():
    model = sequential_model()
    converted = to_renorm(model, moving_statistic="variance")
    for renorm, batchnorm in zip(of_class(converted, RENORM), of_class(model, BATCHNORM)):
        np.testing.assert_allclose(as_numpy(renorm.moving_variance),
                                   as_numpy(batchnorm.moving_variance), rtol=1e-6)
    x = images((4, 8, 8, 3))
    assert_same_outputs(converted, model, x)
    back = to_batchnorm(converted)
    for returned, batchnorm in zip(of_class(back, BATCHNORM), of_class(model, BATCHNORM)):
        np.testing.assert_allclose(as_numpy(returned.moving_variance),
                                   as_numpy(batchnorm.moving_variance), rtol=1e-6)
    assert_same_outputs(back, model, x)


def test_reverse_refuses_a_subclassed_model():
    class Block(keras.Model):
        def __init__(self):
            super().__init__()
            self.norm = RENORM()

        def call(self, inputs):
            return self.norm(inputs)

    block = Block()
    block(np.zeros((2, 3), "float32"))
    with pytest.raises(TypeError, match="subclassed model"):
        to_batchnorm(block)
