"""Swaps Keras's BatchNormalization for brlib's BatchRenormalization in a model, and back.

    import brlib as br
    renorm_model = br.convert.to_renorm(model, microbatch_size=4)   # to train with renorm
    served_model = br.convert.to_batchnorm(renorm_model)            # to export and serve

Both functions rebuild a Sequential or Functional model, nested models
included, with `keras.models.clone_model`; every other layer is copied with
its weights, so the original model is left as it was. Batch norm keeps a
moving variance v, batch renormalization a moving standard deviation
σ = sqrt(v + ε): the conversion maps one onto the other, so that the converted
model computes the same inference outputs.
"""

import inspect
import warnings

import keras
import numpy as np
# The class that keras.models.clone_model rebuilds from its recorded graph;
# Keras exports no public name for it.
from keras.src.models.functional import Functional

from brlib import layers as _layers
from brlib.validation import check_integer

__all__ = ["to_renorm", "to_batchnorm"]

# Base-layer keyword arguments that `**layer_kwargs` may set on every new layer.
_BASE_ARGUMENTS = ("dtype",)
# Settings of both layers whose value carries over unless `layer_kwargs` overrides it.
_CARRIED = ("axis", "momentum", "epsilon", "center", "scale")
# Settings carried over when the new layer's constructor accepts them; when it
# does not, a source layer that sets one cannot be converted faithfully.
_OPTIONAL = ("beta_regularizer", "gamma_regularizer", "beta_constraint", "gamma_constraint")
_INITIALIZERS = ("beta_initializer", "gamma_initializer", "moving_mean_initializer")
# Keras's spelling of renorm's settings; to_renorm takes rmax and dmax instead.
_KERAS_RENORM = ("renorm", "renorm_clipping", "renorm_momentum")


def to_renorm(model, microbatch_size=None, rmax=1.0, dmax=0.0, **layer_kwargs):
    """Returns a copy of `model` whose `keras.layers.BatchNormalization` layers are renorm layers.

    Every `keras.layers.BatchNormalization` (subclasses included) becomes a
    `brlib.BatchRenormalization` with the same name, `axis`, `momentum`,
    `epsilon`, `center`, `scale`, initializers, regularizers, constraints,
    `synchronized`, dtype policy and `trainable` flag, and with the weights
    γ, β and µ of the original and σ = sqrt(moving_variance + ε). At
    inference the copy therefore computes what the original computes, up to
    float rounding. Every other layer is copied with its weights; nested
    Sequential and Functional models are converted too, and each keeps its
    own `trainable` flag, so frozen parts stay frozen. A compiled model is
    returned compiled with the same settings (a new optimizer, without the
    old one's state). The original model is not changed.

    With the defaults `rmax=1, dmax=0` the new layers train as batch norm over
    each microbatch; raise the bounds afterwards with
    `brlib.RenormSchedule`, or pass the final ones here.

    Keras's `BatchNormalization(renorm=True)` settings (`renorm`,
    `renorm_clipping`, `renorm_momentum`) have no counterpart and are dropped:
    inference uses the moving mean and variance in both layers, and the new
    layers take `rmax` and `dmax` from the arguments. The moving-variance
    initializer matters only for a source layer that was never built: a
    constant c becomes the constant moving-σ initializer sqrt(c + ε); any
    other initializer gives way to the new layer's default.

    Where the layer offers `moving_statistic="variance"` (a moving variance
    kept as Keras keeps it), passing it in `layer_kwargs` copies the moving
    variance instead of computing σ.

    Args:
        model: A built or unbuilt `keras.Sequential` or Functional
            `keras.Model` (for example a `keras.applications` network), or a
            single `keras.layers.BatchNormalization` layer.
        microbatch_size: `microbatch_size` of every new layer: None to
            normalize the whole batch, or the number of consecutive examples
            normalized together.
        rmax: Initial clip bound for r of every new layer, >= 1.
        dmax: Initial clip bound for d of every new layer, >= 0.
        **layer_kwargs: Further arguments of `brlib.BatchRenormalization`
            (and `dtype`) for every new layer; they override what carries over
            from the original layer (e.g. `momentum=0.999`).

    Returns:
        A new model of the same kind (a new layer when `model` is a layer).

    Raises:
        TypeError: `model` is a subclassed model, or holds a subclassed model
            or custom layer that creates `BatchNormalization` layers itself;
            Keras cannot rebuild either with other layers. Also raised when a
            layer cannot be copied from its config.
        ValueError: An argument is invalid or not accepted by
            `brlib.BatchRenormalization`, or a source layer sets a regularizer,
            constraint or `synchronized=True` that this version of
            `brlib.BatchRenormalization` does not accept.

    Example:

    >>> import keras, numpy as np
    >>> import brlib as br
    >>> model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4),
    ...                           keras.layers.BatchNormalization()])
    >>> renorm_model = br.convert.to_renorm(model, microbatch_size=2)
    >>> type(renorm_model.layers[-1]).__name__
    'BatchRenormalization'
    >>> x = np.arange(6, dtype="float32").reshape(2, 3)
    >>> bool(np.allclose(renorm_model(x), model(x), atol=1e-5))
    True
    """
    _layers.check_rmax(rmax)
    _layers.check_dmax(dmax)
    if microbatch_size is not None:
        check_integer("microbatch_size", microbatch_size,
                      "None (normalize the whole batch) or a positive integer", lambda v: v > 0)
    target = _layers.BatchRenormalization
    accepted = _init_arguments(target)
    _check_layer_kwargs("to_renorm", layer_kwargs, accepted, "brlib.BatchRenormalization",
                        excluded=("rmax", "dmax", "microbatch_size") + _KERAS_RENORM)
    # The moving statistic of spread that the new layers keep: σ unless a
    # version of the layer that can keep a variance is asked to.
    kind = layer_kwargs.get("moving_statistic") or "stddev"
    # Spelled out, so that the layer's defaults cannot change what a conversion gives:
    # the bounds are rmax and dmax until a RenormSchedule moves them (no warm-up in the
    # layer, unless `layer_kwargs` asks for one).
    settings = {"rmax": float(rmax), "dmax": float(dmax), "microbatch_size": microbatch_size,
                "moving_statistic": kind}
    if "warmup_steps" in accepted:
        settings["warmup_steps"] = None

    def make(layer):
        config = _shared_settings(layer, accepted, "brlib.BatchRenormalization")
        initializer = _spread_initializer(_initial_squared_spread(layer), kind,
                                          layer_kwargs.get("epsilon", layer.epsilon))
        if initializer is not None:
            config[f"moving_{kind}_initializer"] = initializer
        config.update(settings)
        config.update(layer_kwargs)
        return target(**config)

    conversion = _Conversion("to_renorm", keras.layers.BatchNormalization,
                             "keras.layers.BatchNormalization", make, _copy_weights)
    return conversion.run(model)


def to_batchnorm(model, **layer_kwargs):
    """Returns a copy of `model` whose `brlib.BatchRenormalization` layers are Keras batch norm.

    The reverse of `to_renorm`, for export and serving: a model that needs
    only Keras, with the inference outputs of the renorm model. Every
    `brlib.BatchRenormalization` becomes a `keras.layers.BatchNormalization`
    with the same name, `axis`, `momentum`, `epsilon`, `center`, `scale`,
    initializers, regularizers, constraints, dtype policy and `trainable`
    flag, γ, β and µ, and moving_variance = σ² − ε (copied as it is from a
    layer that keeps a moving variance). Renorm's `microbatch_size`,
    `rmax` and `dmax` have no counterpart and are dropped, so the new model
    trains as plain batch norm over the whole batch; `synchronized` carries
    over on the TensorFlow backend, the only one where Keras accepts it.
    Everything else is as in `to_renorm`.

    σ here is what the renorm layer divides by at inference: max(σ, √ε) in
    versions of the layer that floor σ at √ε, so that σ² − ε >= 0. Where
    σ² − ε is still negative (a layer without the floor, or an `epsilon`
    in `layer_kwargs` larger than the layer's), the variance is set to 0
    and a warning names the layer and the number of channels, because there
    batch norm divides by sqrt(ε) > σ and the outputs differ from the renorm
    model's.

    Args:
        model: A built or unbuilt `keras.Sequential` or Functional
            `keras.Model`, or a single `brlib.BatchRenormalization` layer.
        **layer_kwargs: Further arguments of `keras.layers.BatchNormalization`
            (and `dtype`) for every new layer; they override what carries over.

    Returns:
        A new model of the same kind (a new layer when `model` is a layer).

    Raises:
        TypeError: As in `to_renorm`, for subclassed models and layers that
            create `brlib.BatchRenormalization` layers themselves.
        ValueError: An argument is not accepted by
            `keras.layers.BatchNormalization`.

    Example:

    >>> import keras, numpy as np
    >>> import brlib as br
    >>> model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4),
    ...                           br.BatchRenormalization(microbatch_size=2)])
    >>> served = br.convert.to_batchnorm(model)
    >>> type(served.layers[-1]).__name__
    'BatchNormalization'
    >>> x = np.arange(6, dtype="float32").reshape(2, 3)
    >>> bool(np.allclose(served(x), model(x), atol=1e-5))
    True
    """
    target = keras.layers.BatchNormalization
    accepted = _init_arguments(target)
    _check_layer_kwargs("to_batchnorm", layer_kwargs, accepted, "keras.layers.BatchNormalization")

    def make(layer):
        config = _shared_settings(layer, accepted, "keras.layers.BatchNormalization",
                                  synchronized_allowed=keras.backend.backend() == "tensorflow")
        initializer = _spread_initializer(_initial_squared_spread(layer), "variance",
                                          layer_kwargs.get("epsilon", layer.epsilon))
        if initializer is not None:
            config["moving_variance_initializer"] = initializer
        config.update(layer_kwargs)
        return target(**config)

    conversion = _Conversion("to_batchnorm", _layers.BatchRenormalization,
                             "brlib.BatchRenormalization", make, _copy_weights)
    return conversion.run(model)


# ----------------------------------------------------------------------------
# Settings
# ----------------------------------------------------------------------------
def _init_arguments(cls):
    """The names of the keyword arguments that `cls.__init__` lists, read at call time."""
    parameters = inspect.signature(cls.__init__).parameters.values()
    return {p.name for p in parameters
            if p.name != "self" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


def _check_layer_kwargs(function, layer_kwargs, accepted, target_name, excluded=()):
    allowed = (accepted | set(_BASE_ARGUMENTS)) - {"name", "trainable", *excluded}
    unknown = sorted(set(layer_kwargs) - allowed)
    if unknown:
        raise ValueError(
            f"{function} passes `**layer_kwargs` to every new {target_name}; it does not "
            f"take {', '.join(map(repr, unknown))} there. Accepted: "
            f"{', '.join(sorted(allowed))}. (`name` and `trainable` come from each "
            "original layer; to_renorm takes the clip bounds as its `rmax` and `dmax`.)"
        )


def _shared_settings(layer, accepted, target_name, synchronized_allowed=True):
    """The constructor arguments that carry over from `layer` to a layer of the other class."""
    config = {name: getattr(layer, name) for name in _CARRIED}
    config.update({name: getattr(layer, name) for name in _INITIALIZERS if name in accepted})
    for name in _OPTIONAL:
        value = getattr(layer, name, None)
        if value is None:
            continue
        if name not in accepted:
            raise ValueError(
                f"Layer '{layer.name}' has {name}={value!r}, but {target_name} in this "
                f"version of the library has no `{name}` argument, so the converted layer "
                f"would silently lose it. Convert a model built without it, or use a "
                f"version of {target_name} that accepts `{name}`."
            )
        config[name] = value
    if getattr(layer, "synchronized", False):
        if "synchronized" not in accepted:
            raise ValueError(
                f"Layer '{layer.name}' has synchronized=True, but {target_name} in this "
                "version of the library has no `synchronized` argument, so the converted "
                "layer would take its statistics per replica instead of across replicas."
            )
        if synchronized_allowed:
            config["synchronized"] = True
    config["name"] = layer.name
    config["trainable"] = layer.trainable
    config["dtype"] = layer.dtype_policy
    return config


def _constant_value(initializer):
    """The number that a constant initializer fills with; None for any other initializer."""
    if isinstance(initializer, keras.initializers.Zeros):
        return 0.0
    if isinstance(initializer, keras.initializers.Ones):
        return 1.0
    if isinstance(initializer, keras.initializers.Constant) and np.ndim(initializer.value) == 0:
        return float(initializer.value)
    return None


def _keeps_stddev(layer):
    """Whether `layer` keeps a moving σ (a renorm layer's default) rather than a moving variance."""
    if isinstance(layer, keras.layers.BatchNormalization):
        return False  # with renorm=True it keeps a σ too, but infers with the variance
    return getattr(layer, "moving_statistic", "stddev") == "stddev"


def _floors_stddev():
    """Whether brlib's layer divides by max(σ, √ε) rather than by σ."""
    return hasattr(_layers, "floor_stddev")


def _initial_squared_spread(layer):
    """The square of what a fresh `layer` divides by at inference, if its initializer is constant.

    sqrt(v + ε) for a moving variance v, max(σ, √ε) or σ for a moving σ; None
    when the initializer is not a constant.
    """
    if not _keeps_stddev(layer):
        value = _constant_value(layer.moving_variance_initializer)
        return None if value is None else value + layer.epsilon
    value = _constant_value(layer.moving_stddev_initializer)
    if value is None:
        return None
    if _floors_stddev():
        value = max(value, float(np.sqrt(layer.epsilon)))
    return value * value


def _spread_initializer(squared, kind, epsilon):
    """The constant initializer of the new layer's statistic (`kind`) that divides by sqrt(squared).

    None, for the new layer's default, when `squared` is None.
    """
    if squared is None:
        return None
    if kind == "stddev":
        return keras.initializers.Constant(float(np.sqrt(squared)))  # σ = sqrt(v + ε)
    return keras.initializers.Constant(max(squared - epsilon, 0.0))  # v = σ² − ε


# ----------------------------------------------------------------------------
# Weights
# ----------------------------------------------------------------------------
def _numpy(variable):
    return np.asarray(keras.ops.convert_to_numpy(variable), dtype=np.float64)


def _assign(variable, value):
    variable.assign(np.asarray(value).astype(variable.dtype))


def _copy_affine_and_mean(source, target):
    for name in ("gamma", "beta", "moving_mean"):
        if getattr(source, name, None) is not None:
            _assign(getattr(target, name), _numpy(getattr(source, name)))


def _squared_spread(layer):
    """The square of what `layer` divides by at inference, per channel, in float64."""
    if not _keeps_stddev(layer):
        return _numpy(layer.moving_variance) + layer.epsilon  # (sqrt(v + ε))²
    sigma = _numpy(layer.moving_stddev)
    if _floors_stddev():
        sigma = np.maximum(sigma, np.sqrt(layer.epsilon))
    return np.square(sigma)


def _copy_weights(source, target):
    """Copies γ, β, µ, and the moving σ or variance so that `target` divides like `source`."""
    for name in ("gamma", "beta", "moving_mean"):
        if getattr(source, name, None) is not None:
            _assign(getattr(target, name), _numpy(getattr(source, name)))
    squared = _squared_spread(source)
    if _keeps_stddev(target):
        _assign(target.moving_stddev, np.sqrt(squared))  # σ = sqrt(v + ε)
        return
    variance = squared - target.epsilon  # v = σ² − ε
    negative = int(np.sum(variance < 0))
    if negative:
        warnings.warn(
            f"Layer '{source.name}': in {negative} of {variance.size} channels the square of "
            f"what the layer divides by is below the new layer's ε = {target.epsilon:g}; their "
            f"moving variance is set to 0, so the new layer divides them by sqrt(ε) = "
            f"{np.sqrt(target.epsilon):.3g} instead and its outputs differ there. A smaller "
            "`epsilon` avoids it.",
            stacklevel=4,
        )
    _assign(target.moving_variance, np.maximum(variance, 0.0))


# ----------------------------------------------------------------------------
# Rebuilding
# ----------------------------------------------------------------------------
def _is_graph_model(layer):
    """Whether keras.models.clone_model can rebuild `layer` from its recorded layers."""
    return isinstance(layer, (keras.Sequential, Functional))


def _built_input_shape(layer):
    """An input shape that builds a layer of the other class like `layer` was built."""
    spec = layer.input_spec[0] if isinstance(layer.input_spec, (list, tuple)) else layer.input_spec
    if spec is None or spec.ndim is None:
        raise ValueError(f"Layer '{layer.name}' is built but records no input rank.")
    shape = [None] * spec.ndim
    shape[layer.axis] = int(layer.moving_mean.shape[0])
    return tuple(shape)


def _call_with_its_arguments(layer, *args, **kwargs):
    """Calls a new layer as the original was called, less a `mask` that its `call` cannot take.

    A Functional graph records the mask that Keras passed to a layer whose
    `call` takes one (Keras's batch norm does); a version of the renorm layer
    without masking would refuse it.
    """
    if "mask" in kwargs:
        parameters = inspect.signature(layer.call).parameters.values()
        if not any(p.name == "mask" or p.kind == p.VAR_KEYWORD for p in parameters):
            del kwargs["mask"]
    return layer(*args, **kwargs)


class _Conversion:
    """One call of to_renorm or to_batchnorm: the layers it made and copied, in creation order."""

    def __init__(self, function, source, source_name, make, copy_weights):
        self.function = function  # the public function's name, for messages
        self.source = source  # the class converted
        self.source_name = source_name
        self.make = make  # source layer -> new, unbuilt layer of the other class
        self.copy_weights = copy_weights  # (source layer, built new layer) -> None
        self.clones = {}  # id(original layer) -> its copy, so shared layers stay shared
        self.converted = []  # (source layer, new layer)
        self.copied = []  # (other layer, its copy)

    def run(self, model):
        if isinstance(model, self.source):
            return self._convert_layer(model)
        if not _is_graph_model(model):
            raise TypeError(self._not_rebuildable(model, top_level=True))
        new_model = self._rebuild(model)
        for source, new in self.converted:
            if source.built:
                self._require_built(source, new)
                self.copy_weights(source, new)
        for layer, copy in self.copied:
            weights = layer.get_weights()
            if weights:
                self._require_built(layer, copy)
                copy.set_weights(weights)
        self._restore_trainable(model, new_model)
        if not self.converted:
            warnings.warn(f"{self.function}: model '{model.name}' holds no {self.source_name} "
                          "layer; the result is a plain copy.", stacklevel=3)
        return new_model

    def _convert_layer(self, layer):
        new = self.make(layer)
        if layer.built:
            new.build(_built_input_shape(layer))
            self.copy_weights(layer, new)
        new.trainable = layer.trainable
        return new

    def _rebuild(self, model):
        # recursive=False: nested models reach `_clone` and are rebuilt there,
        # the same way in Keras 3.13 (whose recursive cloning stops one level
        # down) and later versions.
        if isinstance(model, keras.Sequential):  # calls each layer itself, as its call allows
            return keras.models.clone_model(model, clone_function=self._clone)
        return keras.models.clone_model(model, clone_function=self._clone,
                                        call_function=_call_with_its_arguments)

    def _clone(self, layer):
        """clone_model's clone_function: the copy of one layer of a model being rebuilt."""
        if id(layer) in self.clones:
            return self.clones[id(layer)]
        if isinstance(layer, self.source):
            new = self.make(layer)
            self.converted.append((layer, new))
        elif _is_graph_model(layer):
            new = self._rebuild(layer)
        elif not isinstance(layer, keras.layers.Layer):
            new = layer  # a keras.ops operation of a Functional graph: no state, so reused
        else:
            new = self._copy(layer)
            self.copied.append((layer, new))
        self.clones[id(layer)] = new
        return new

    def _copy(self, layer):
        inner = [sub.name for sub in layer._flatten_layers(include_self=False)
                 if isinstance(sub, self.source)]
        if inner:
            raise TypeError(self._not_rebuildable(layer, top_level=False, inner=inner))
        try:
            return layer.__class__.from_config(layer.get_config())
        except Exception as error:
            if isinstance(layer, keras.layers.Lambda):
                # Its config holds the function as Python bytecode, which Keras's safe mode
                # refuses to load: advice about get_config would not help.
                raise TypeError(
                    f"{self.function} copies layer '{layer.name}', a keras.layers.Lambda, "
                    "from its config, which holds the function as Python bytecode; Keras "
                    "loads that only outside safe mode. If you trust the model, call "
                    "`keras.config.enable_unsafe_deserialization()` first, or replace the "
                    f"Lambda with a Layer subclass. Keras said: {error}"
                ) from error
            raise TypeError(
                f"{self.function} copies every layer it does not convert with "
                "`layer.__class__.from_config(layer.get_config())`, and that failed for "
                f"layer '{layer.name}' of class {type(layer).__name__}: {error} Give the "
                "class a `get_config` that returns its constructor arguments."
            ) from error

    def _require_built(self, layer, copy):
        if not copy.built:
            raise RuntimeError(
                f"{self.function}: the copy of layer '{layer.name}' was not built while "
                "rebuilding the model, so its weights cannot be copied. Build the model "
                "(call it once, or start it with keras.Input) before converting it."
            )

    def _restore_trainable(self, layer, copy):
        # Setting `trainable` on a model sets it on every layer inside, so the
        # flags are restored from the outside in: each layer ends with its own.
        copy.trainable = layer.trainable
        if _is_graph_model(layer):
            for child in layer.layers:
                if id(child) in self.clones:
                    self._restore_trainable(child, self.clones[id(child)])

    def _not_rebuildable(self, layer, top_level, inner=()):
        kind = "a subclassed model" if isinstance(layer, keras.Model) else "a custom layer"
        if not isinstance(layer, keras.layers.Layer):
            return (f"{self.function} converts a keras.Sequential or Functional keras.Model, "
                    f"or a single {self.source_name} layer; got {type(layer).__name__}.")
        why = (f"{self.function} rebuilds models with keras.models.clone_model, which can "
               "rebuild only Sequential and Functional models, whose layers and connections "
               f"Keras records. '{layer.name}' (class {type(layer).__name__}) is {kind}: its "
               "layers are created in its own Python code and connected in its `call`, so "
               "Keras cannot rebuild it with other layers.")
        if top_level:
            what = ("Build the model as a Functional or Sequential model (nested ones are "
                    "converted too), or construct it with the other normalization layer "
                    "in its code and load the weights into it.")
        else:
            what = (f"It holds {self.source_name} layer(s) {', '.join(map(repr, inner))}. "
                    "Write it with the other normalization layer in its code (for example, "
                    "take the normalization layer as a constructor argument), or build it as "
                    "a Functional or Sequential model, which is converted with the rest.")
        return f"{why} {what}"
