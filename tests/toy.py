"""A learnable toy problem in Fashion-MNIST's shapes, and tiny run settings, shared by the
tests of the runner and the programs they start in subprocesses."""

import numpy as np

TINY = dict(minibatch_size=32, microbatch_size=2, steps=30, eval_every=5, widths=(4, 8, 8),
            warmup_steps=4, rmax_steps=20, dmax_steps=12, seeds=1, dropout=0.5,
            lr_decay_start=10, lr_decay_end=25, recalibration_batches=2, final_evaluations=2)


def tiny_data(train=96, test=40, seed=0):
    """The class sets the brightness, so a small convnet learns it in a few steps."""
    rng = np.random.default_rng(seed)

    def split(n):
        labels = rng.integers(0, 3, n).astype(np.int32)
        images = rng.uniform(size=(n, 28, 28, 1)) * 0.3 + labels[:, None, None, None] * 0.3
        return images.astype(np.float32), labels

    return split(train), split(test)
