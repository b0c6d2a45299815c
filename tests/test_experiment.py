"""brlib.experiment: settings, results files, a killed and resumed run, and MirroredStrategy."""

import csv
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from brlib import __main__ as cli
from brlib import experiment

ROOT = Path(__file__).resolve().parents[1]
TINY = dict(minibatch_size=32, microbatch_size=2, steps=30, eval_every=5, widths=(4, 8, 8),
            warmup_steps=4, rmax_steps=20, dmax_steps=12, seeds=1, dropout=0.5)


def tiny_data(train=96, test=40, seed=0):
    """A learnable toy problem in Fashion-MNIST's shapes: the class sets the brightness."""
    rng = np.random.default_rng(seed)

    def split(n):
        labels = rng.integers(0, 3, n).astype(np.int32)
        images = rng.uniform(size=(n, 28, 28, 1)) * 0.3 + labels[:, None, None, None] * 0.3
        return images.astype(np.float32), labels

    return split(train), split(test)


def test_presets_are_valid_and_follow_the_protocols():
    seed = experiment.get_preset("seed")
    assert (seed.minibatch_size, seed.microbatch_size, seed.steps, seed.seeds) == (1600, 2, 9300, 5)
    assert (seed.rmax_final, seed.dmax_final, seed.warmup_steps) == (1.5, 0.5, 20 * 31)
    paper = experiment.get_preset("paper")
    # The paper's 5k/160k, 40k/160k and 25k/160k, scaled to the run's length.
    assert paper.microbatch_size == 4 and (paper.rmax_final, paper.dmax_final) == (3.0, 5.0)
    np.testing.assert_allclose([paper.warmup_steps, paper.rmax_steps, paper.dmax_steps],
                               np.array([5, 40, 25]) / 160 * paper.steps, atol=1)
    quick = experiment.get_preset("quick")
    np.testing.assert_allclose([quick.warmup_steps, quick.rmax_steps, quick.dmax_steps],
                               np.array([5, 40, 25]) / 160 * quick.steps, atol=1)
    assert quick.microbatch_size == 2 and quick.minibatch_size % 32 == 0


@pytest.mark.parametrize("argv, named", [
    (["reproduce", "--preset", "nope"], "preset"),
    (["reproduce", "--preset", "quick", "--steps", "0"], "steps"),
    (["reproduce", "--preset", "quick", "--arms", "groupnorm"], "arms"),
    (["reproduce", "--preset", "quick", "--seeds", "0"], "seeds"),
])
def test_bad_settings_fail_before_training(argv, named, capsys):
    assert cli.main(argv) == 2
    assert named in capsys.readouterr().err


def test_microbatch_must_divide_the_minibatch():
    with pytest.raises(ValueError, match="minibatch_size.*microbatch"):
        experiment.get_preset("quick", minibatch_size=250)


def test_missing_data_fails_before_training(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(experiment.brlib.data.SYSTEM_DIRS, "fashion_mnist", [])
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    monkeypatch.delenv("BRLIB_DATA_DIR", raising=False)
    monkeypatch.setattr(experiment.brlib.data, "FASHION_URL", "http://127.0.0.1:9/")
    code = cli.main(["reproduce", "--preset", "quick", "--results-dir", str(tmp_path / "r")])
    assert code == 2 and "BRLIB_DATA_DIR" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_runner_writes_csv_and_skips_finished_seeds(tmp_path):
    preset = experiment.get_preset("quick", **TINY)
    dataset = tiny_data()
    path = experiment.run_one(preset, "batchrenorm", 0, dataset, tmp_path)
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == experiment.COLUMNS
    assert [int(float(r["step"])) for r in rows] == [5, 10, 15, 20, 25, 30]
    clipped_d = [float(r["d_clipped"]) for r in rows]
    assert clipped_d[0] == 1.0 and clipped_d[-1] < 1.0  # dmax is 0 only during warm-up
    assert not list(tmp_path.rglob("*.npz"))  # the checkpoint is gone once the CSV exists
    stamp = path.stat().st_mtime_ns
    experiment.run_one(preset, "batchrenorm", 0, dataset, tmp_path)
    assert path.stat().st_mtime_ns == stamp


SCRIPT = """
from brlib import experiment
exec({tiny_data!r})
preset = experiment.get_preset("quick", **dict({tiny!r}, steps={steps}))
experiment.run_one(preset, "batchrenorm", 0, tiny_data(), {results!r})
"""


def run_script(results, steps, **popen):
    import inspect

    code = SCRIPT.format(tiny_data=textwrap.dedent(inspect.getsource(tiny_data)),
                         tiny=TINY, steps=steps, results=str(results))
    code = "import numpy as np\n" + code
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=env, **popen)


def curve(path):
    return [{k: v for k, v in row.items() if k != "wall_seconds"}
            for row in experiment.read_csv(path)]


def test_killed_run_resumes_to_the_same_curve(tmp_path):
    steps = 300
    assert run_script(tmp_path / "whole", steps).wait(timeout=300) == 0

    process = run_script(tmp_path / "killed", steps)
    checkpoint = tmp_path / "killed" / "quick" / ".batchrenorm_seed0.checkpoint.npz"
    deadline = time.time() + 240
    while not checkpoint.exists() and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)  # let it train past the first checkpoint
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert checkpoint.exists(), "the run never wrote a checkpoint"
    assert not (tmp_path / "killed" / "quick" / "batchrenorm_seed0.csv").exists(), \
        "the run finished before it was killed; the test proves nothing"

    assert run_script(tmp_path / "killed", steps).wait(timeout=300) == 0
    whole = curve(tmp_path / "whole" / "quick" / "batchrenorm_seed0.csv")
    resumed = curve(tmp_path / "killed" / "quick" / "batchrenorm_seed0.csv")
    assert len(whole) == steps // TINY["eval_every"]
    assert resumed == whole


MIRRORED = """
import numpy as np
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from brlib import experiment
exec({tiny_data!r})
preset = experiment.get_preset("quick", **dict({tiny!r}, dropout=0.0, learning_rate=1e-2))

def losses(run, steps):
    per_step = []
    for step in steps:
        run.sums.assign(np.zeros(4, np.float32))
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
print("train loss", two_losses[:5].mean(), two_losses[-5:].mean())
assert two_losses[-5:].mean() < 0.8 * two_losses[:5].mean()
"""


def test_mirrored_strategy_matches_one_device_and_keeps_replicas_identical():
    import inspect

    code = "import numpy as np\n" + MIRRORED.format(
        tiny_data=textwrap.dedent(inspect.getsource(tiny_data)), tiny=TINY)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    assert "train loss" in done.stdout


def test_compare_trains_both_arms_on_the_same_data():
    curves = experiment.compare(tiny_data(), microbatch_size=2, rmax=2.0, dmax=1.0, steps=10,
                                minibatch_size=32, evaluations=2, widths=(4, 4, 4))
    assert set(curves) == {"batchnorm", "batchrenorm"}
    for steps, accuracy in curves.values():
        np.testing.assert_array_equal(steps, [5, 10])
        assert np.all((0 <= accuracy) & (accuracy <= 1))
