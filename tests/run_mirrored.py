"""Program for the MirroredStrategy test: two logical CPUs against one device."""

import numpy as np
import tensorflow as tf

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

from toy import TINY, tiny_data  # noqa: E402

from brlib import experiment, protocol  # noqa: E402

preset = protocol.get_preset("quick", **dict(TINY, dropout=0.0, learning_rate=1e-2,
                                                lr_decay_start=None, lr_decay_end=None))


def losses(run, steps):
    per_step = []
    for step in steps:
        run.sums.assign(np.zeros_like(run.sums.numpy()))
        run.train_step(step)
        per_step.append(run.sums.numpy()[0])
    return np.array(per_step)


def moving_means(run):
    return np.concatenate([layer.moving_mean.numpy() for layer in run.layers])


mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
assert mirrored.num_replicas_in_sync == 2
two = experiment.Run(preset, "batchrenorm", 0, tiny_data(), mirrored)
# One device sees the same contiguous microbatches, so it must train the same.
one = experiment.Run(preset, "batchrenorm", 0, tiny_data())
early = range(5)
two_early, one_early = losses(two, early), losses(one, early)
np.testing.assert_allclose(two_early, one_early, rtol=1e-5)
np.testing.assert_allclose(moving_means(two), moving_means(one), rtol=1e-3, atol=1e-4)

# Later the all-reduce's summation order, amplified by Adam at lr 1e-2, makes
# the two runs drift apart by rounding; the replicas must still agree exactly.
later = range(5, 40)
two_losses = np.concatenate([two_early, losses(two, later)])
np.testing.assert_allclose(two_losses, np.concatenate([one_early, losses(one, later)]),
                           rtol=3e-2)
for layer in two.layers:
    for weight, start in ((layer.moving_mean, 0.0), (layer.moving_stddev, 1.0)):
        copies = [v.numpy() for v in mirrored.experimental_local_results(weight.value)]
        assert len(copies) == 2, copies
        np.testing.assert_array_equal(copies[0], copies[1])
        assert not np.allclose(copies[0], start)
# Recalibrated evaluation runs under the strategy too, and leaves the run as it was.
before = moving_means(two)
accuracy, _ = two.evaluate_recalibrated()
np.testing.assert_array_equal(moving_means(two), before)
assert 0 <= accuracy <= 1
print("train loss", two_losses[:5].mean(), two_losses[-5:].mean())
assert two_losses[-5:].mean() < 0.8 * two_losses[:5].mean()
