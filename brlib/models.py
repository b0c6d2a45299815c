"""The plain convnet of the student reproduction, with the normalization as a parameter."""

import keras


HEADS = ("norm4", "dense")


def seed_convnet(input_shape, classes, normalization, dropout=0.5, widths=(64, 128, 256),
                 name="seed_convnet", head="norm4"):
    """conv3×3-64 → conv3×3-128/2 → conv3×3-256/2 → the head, which gives the class scores.

    Every 3×3 convolution is followed by `normalization()`, a ReLU and,
    after the second and third, Dropout, as in the student reproduction.
    The student's head ("norm4") is conv1×1-classes → `normalization()` →
    global average pool: the class scores are normalized over the batch,
    and get no ReLU (the student code's defect). The "dense" head is global
    average pool → dense-classes, as Inception's is: no class score is
    normalized, so no example's score depends on the others in its batch.

    Args:
        input_shape: Shape of one example, channels last, e.g. (32, 32, 3).
        classes: Number of output logits.
        normalization: A callable taking a layer `name` and returning a new
            normalization layer, e.g. `lambda name: br.BatchRenormalization(name=name)`.
        dropout: Dropout rate after the second and third blocks; 0 for none.
        widths: Filters of the three 3×3 convolutions; smaller widths make
            the same network cheap enough for a CPU.
        name: Name of the returned model.
        head: "norm4" (the student's) or "dense".

    Returns:
        A `keras.Model` mapping images to logits.

    Reference:
        eigenfoo/batch-renorm (2018), the network of its CIFAR-100 runs.
    """
    if head not in HEADS:
        raise ValueError(f"`head` must be one of {list(HEADS)}; got head={head!r}.")
    inputs = keras.Input(input_shape)
    x = inputs
    # Fixed layer names give fixed variable paths ("conv1/kernel", "norm1/moving_mean"),
    # which checkpoints are keyed by, however many models the process built before.
    for index, (filters, stride) in enumerate(zip(widths, (1, 2, 2)), start=1):
        x = keras.layers.Conv2D(filters, 3, strides=stride, padding="same",
                                name=f"conv{index}")(x)
        x = normalization(name=f"norm{index}")(x)
        x = keras.layers.ReLU(name=f"relu{index}")(x)
        if dropout and index > 1:
            x = keras.layers.Dropout(dropout, name=f"dropout{index}")(x)
    if head == "dense":
        x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
        logits = keras.layers.Dense(classes, name="dense")(x)
        return keras.Model(inputs, logits, name=name)
    x = keras.layers.Conv2D(classes, 1, name="conv4")(x)
    x = normalization(name="norm4")(x)
    logits = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    return keras.Model(inputs, logits, name=name)
