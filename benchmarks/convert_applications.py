"""brlib.convert on three keras.applications networks: conversion time and inference-output difference.

    python benchmarks/convert_applications.py [--batch 4] [--size 224] [--models ResNet50 ...]

Each network is built with `weights=None` (random kernels) and logits out;
every batch-norm layer then gets random γ, β, µ and v, so that the
conversion of the statistics is exercised (a fresh layer has µ = 0, v = 1).
The script converts the network with `to_renorm` and back with
`to_batchnorm`, and prints, for each, the wall time of the conversion and the
largest absolute difference of the logits from the original network's on a
batch of random images (after the network's own `preprocess_input`), also
relative to the largest absolute logit.
"""

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import brlib as br  # noqa: E402  first: on TensorFlow it imports it without the C++ start-up lines
import brlib.convert  # noqa: E402,F401
import keras  # noqa: E402
import numpy as np  # noqa: E402

NETWORKS = {
    "ResNet50": (keras.applications.ResNet50, keras.applications.resnet50.preprocess_input),
    "MobileNetV2": (keras.applications.MobileNetV2,
                    keras.applications.mobilenet_v2.preprocess_input),
    "EfficientNetB0": (keras.applications.EfficientNetB0,
                       keras.applications.efficientnet.preprocess_input),
}


def parse():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--size", type=int, default=224, help="image height and width")
    parser.add_argument("--models", nargs="+", default=list(NETWORKS), choices=list(NETWORKS))
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


def batchnorm_layers(model):
    found = []
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            found.append(layer)
        if isinstance(layer, keras.Model):
            found.extend(batchnorm_layers(layer))
    return found


def randomize_batchnorm(model, rng):
    for layer in batchnorm_layers(model):
        channels = layer.moving_mean.shape[0]
        if layer.scale:
            layer.gamma.assign(rng.uniform(0.5, 1.5, channels))
        if layer.center:
            layer.beta.assign(rng.normal(0.0, 0.3, channels))
        layer.moving_mean.assign(rng.normal(0.0, 0.3, channels))
        layer.moving_variance.assign(rng.uniform(0.3, 2.0, channels))


def logits(model, x):
    return np.asarray(keras.ops.convert_to_numpy(model(x, training=False)), dtype=np.float64)


def timed(function, *args, **kwargs):
    start = time.perf_counter()
    result = function(*args, **kwargs)
    return result, time.perf_counter() - start


def main():
    args = parse()
    rng = np.random.default_rng(args.seed)
    print(f"keras {keras.__version__}, backend {keras.backend.backend()}, "
          f"batch {args.batch}, {args.size}x{args.size} images")
    header = (f"{'network':<15}{'BN layers':>10}{'build s':>9}{'to_renorm s':>13}"
              f"{'max |diff|':>12}{'relative':>10}{'to_batchnorm s':>16}{'max |diff|':>12}"
              f"{'relative':>10}")
    print(header)
    for name in args.models:
        build, preprocess = NETWORKS[name]
        model, build_time = timed(build, input_shape=(args.size, args.size, 3), weights=None,
                                  classifier_activation=None)
        randomize_batchnorm(model, rng)
        pixels = rng.uniform(0, 255, (args.batch, args.size, args.size, 3)).astype("float32")
        x = np.asarray(preprocess(pixels), dtype="float32")
        reference = logits(model, x)
        scale = float(np.max(np.abs(reference)))
        renorm, renorm_time = timed(br.convert.to_renorm, model)
        served, served_time = timed(br.convert.to_batchnorm, renorm)
        renorm_diff = float(np.max(np.abs(logits(renorm, x) - reference)))
        served_diff = float(np.max(np.abs(logits(served, x) - reference)))
        print(f"{name:<15}{len(batchnorm_layers(model)):>10}{build_time:>9.1f}"
              f"{renorm_time:>13.1f}{renorm_diff:>12.2e}{renorm_diff / scale:>10.1e}"
              f"{served_time:>16.1f}{served_diff:>12.2e}{served_diff / scale:>10.1e}",
              flush=True)


if __name__ == "__main__":
    main()
