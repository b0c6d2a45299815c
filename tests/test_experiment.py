"""brlib.experiment: presets, arms, results files, a killed and resumed run, and MirroredStrategy."""

import csv
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from toy import TINY, tiny_data

from brlib import __main__ as cli
from brlib import experiment, results

TESTS = Path(__file__).resolve().parent


def test_presets_follow_the_protocols():
    seed = experiment.get_preset("seed")
    assert (seed.minibatch_size, seed.microbatch_size, seed.steps, seed.seeds) == (1600, 2, 9300, 5)
    assert (seed.rmax_final, seed.dmax_final, seed.warmup_steps) == (1.5, 0.5, 20 * 31)
    assert (seed.alpha, seed.lr_decay_start) == (0.01, None)  # constant Adam 1e-4
    paper = experiment.get_preset("paper")
    # The paper's 5k/160k, 40k/160k and 25k/160k, scaled to the run's length.
    assert paper.microbatch_size == 4 and (paper.rmax_final, paper.dmax_final) == (3.0, 5.0)
    np.testing.assert_allclose([paper.warmup_steps, paper.rmax_steps, paper.dmax_steps],
                               np.array([5, 40, 25]) / 160 * paper.steps, atol=1)
    seed_fmnist = experiment.get_preset("seed_fmnist")
    assert seed_fmnist.dataset == "fashion_mnist"
    assert seed_fmnist.settings() | {"name": "", "dataset": ""} == seed.settings() | {
        "name": "", "dataset": ""}


@pytest.mark.parametrize("name, min_seeds, microbatch", [
    ("quick", 5, 2), ("cpu", 10, 2), ("noniid_quick", 5, 32), ("noniid", 10, 32)])
def test_cpu_presets_are_built_to_reach_a_steady_state(name, min_seeds, microbatch):
    preset = experiment.get_preset(name)
    tau = round(1 / preset.alpha)  # the moving averages' time constant, in steps
    assert preset.microbatch_size == microbatch and preset.minibatch_size % 32 == 0
    assert preset.sampling == ("pairs" if name.startswith("noniid") else "iid")
    assert preset.seeds >= min_seeds
    assert preset.warmup_steps >= 3 * tau  # the averages hold e^-3 of their start or less
    # The learning rate is down to its floor for the last quarter, at least 3 time constants.
    assert preset.lr_decay_end <= 0.75 * preset.steps and preset.steps / 4 >= 3 * tau
    assert max(preset.rmax_steps, preset.dmax_steps) <= preset.lr_decay_end
    # The final accuracy averages evaluations inside the last quarter only.
    evaluations = np.arange(preset.eval_every, preset.steps + 1, preset.eval_every)
    assert evaluations[-preset.final_evaluations] >= 0.75 * preset.steps


def test_learning_rate_is_held_then_cosine_annealed_to_its_floor():
    preset = experiment.get_preset("quick")
    schedule = preset.learning_rate_schedule()
    start, end, peak = preset.lr_decay_start, preset.lr_decay_end, preset.learning_rate

    def expected(step):  # the cosine anneal written from its formula
        progress = min(max(step - start, 0) / (end - start), 1.0)
        cosine = 0.5 * (1 + math.cos(math.pi * progress))
        return peak * (preset.lr_floor + (1 - preset.lr_floor) * cosine)

    for step in (0, start // 2, start, (start + end) // 2, end, preset.steps):
        assert float(schedule(step)) == pytest.approx(expected(step), rel=1e-5)


@pytest.mark.parametrize("argv, named", [
    (["reproduce", "--preset", "nope"], "preset"),
    (["reproduce", "--preset", "quick", "--steps", "0"], "steps"),
    (["reproduce", "--preset", "quick", "--arms", "layernorm"], "arms"),
    (["reproduce", "--preset", "quick", "--seeds", "0"], "seeds"),
    (["figure", "--preset", "quick", "--arms", "layernorm"], "arms"),
])
def test_bad_settings_fail_before_training(argv, named, capsys, tmp_path):
    # A temporary results directory, so that an argument that turns out valid cannot
    # train into (or draw over) the committed results.
    flag = "--figures-dir" if argv[0] == "figure" else "--data-dir"
    argv = argv + ["--results-dir", str(tmp_path), flag, str(tmp_path / "none")]
    assert cli.main(argv) == 2
    assert named in capsys.readouterr().err


@pytest.mark.parametrize("setting", ["steps", "seeds", "microbatch_size", "recalibration_batches"])
def test_booleans_are_not_numbers(setting):
    with pytest.raises(ValueError, match=setting):
        experiment.get_preset("quick", **{setting: True})
    with pytest.raises(ValueError, match="learning_rate"):
        experiment.get_preset("quick", learning_rate=False)


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
    assert not list((tmp_path / "r").rglob("*.csv"))


def test_an_explicit_data_dir_must_hold_the_data(tmp_path, capsys):
    # Even where Debian's copy is installed, a wrong --data-dir is an error, not a fallback.
    code = cli.main(["reproduce", "--preset", "quick", "--results-dir", str(tmp_path / "r"),
                     "--data-dir", str(tmp_path / "typo")])
    err = capsys.readouterr().err
    assert code == 2 and "data_dir" in err and "does not exist" in err
    assert not list((tmp_path / "r").rglob("*.csv"))


def test_runner_writes_csv_and_skips_finished_seeds(tmp_path):
    preset = experiment.get_preset("quick", **TINY)
    path = experiment.run_one(preset, "batchrenorm", 0, tiny_data(), tmp_path)
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == results.COLUMNS
    assert [int(float(r["step"])) for r in rows] == [5, 10, 15, 20, 25, 30]
    for column in ("val_accuracy", "val_accuracy_recalibrated"):
        assert all(0 <= float(r[column]) <= 1 for r in rows)
    clipped_d = [float(r["d_clipped"]) for r in rows]
    assert clipped_d[0] == 1.0 and clipped_d[-1] < 1.0  # dmax is 0 only during warm-up
    leftovers = [p.name for p in path.parent.iterdir() if p.name.startswith(".")]
    assert leftovers == []  # the checkpoint and the partial CSV are gone once the CSV exists
    assert results.load_settings(tmp_path, "quick") == json.loads(json.dumps(preset.settings()))
    stamp = path.stat().st_mtime_ns
    experiment.run_one(preset, "batchrenorm", 0, tiny_data(), tmp_path)
    assert path.stat().st_mtime_ns == stamp


def test_other_settings_never_return_stale_results(tmp_path, capsys):
    short = experiment.get_preset("quick", **dict(TINY, steps=10))
    path = experiment.run_one(short, "batchnorm", 0, tiny_data(), tmp_path)
    stamp = path.stat().st_mtime_ns
    longer = experiment.get_preset("quick", **TINY)
    with pytest.raises(ValueError, match=r"steps: 10 on disk, 30 now"):
        experiment.run_one(longer, "batchnorm", 0, tiny_data(), tmp_path)
    assert path.stat().st_mtime_ns == stamp
    # The command line stops too, naming the setting, before loading any data.
    code = cli.main(["reproduce", "--preset", "quick", "--results-dir", str(tmp_path)])
    assert code == 2 and "steps" in capsys.readouterr().err
    # More seeds of the same settings are not other settings.
    experiment.run_one(experiment.get_preset("quick", **dict(TINY, steps=10, seeds=3)),
                       "batchnorm", 1, tiny_data(), tmp_path)


@pytest.mark.parametrize("arm", list(results.ARMS))
def test_every_arm_builds_its_normalization(arm):
    preset = experiment.get_preset("quick", **TINY)
    run = experiment.Run(preset, arm, 0, tiny_data())
    spec = results.ARMS[arm]
    alpha = 0.99 if arm.endswith("_seedbug") else preset.alpha
    group = {"baseline": 32, "batchnorm_halves": 16}.get(arm, preset.microbatch_size)
    if spec.layer == "groupnorm":
        kinds = {type(layer).__name__ for layer in run.model.layers}
        assert not run.layers and "GroupNormalization" in kinds
    else:
        assert len(run.layers) == 4
    for layer in run.layers:
        assert layer.momentum == pytest.approx(1 - alpha)
        assert layer.microbatch_size == group
    if not spec.renorm:
        assert run.schedule is None
    elif spec.ramp:
        assert run.schedule(0) == (1.0, 0.0)
        assert run.schedule(preset.steps) == (preset.rmax_final, preset.dmax_final)
    else:
        assert run.schedule(0) == (preset.rmax_final, preset.dmax_final)


def test_checkpoints_are_keyed_by_variable_path(tmp_path):
    import keras

    preset = experiment.get_preset("quick", **TINY)
    run = experiment.Run(preset, "batchrenorm", 0, tiny_data())
    for step in range(6):
        run.train_step(step)
    saved = experiment.Checkpoint(tmp_path / "a.csv", run.checkpoint())
    saved.save(6, [run.row(6, 0.0)])
    # More models in the process shift Keras's automatic names; fixed names keep the paths.
    keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    fresh = experiment.Run(preset, "batchrenorm", 1, tiny_data())
    loaded = experiment.Checkpoint(tmp_path / "a.csv", fresh.checkpoint())
    step, rows, _ = loaded.restore()
    assert step == 6 and len(rows) == 1
    for a, b in zip(run.variables, fresh.variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.name)


def run_program(results_dir, steps, **popen):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.Popen([sys.executable, str(TESTS / "run_resumable.py"), str(results_dir),
                             str(steps)], cwd=TESTS, env=env, **popen)


def curve(path):
    return [{k: v for k, v in row.items() if k != "wall_seconds"}
            for row in results.read_csv(path)]


def test_killed_run_resumes_to_the_same_curve(tmp_path):
    steps = 300
    assert run_program(tmp_path / "whole", steps).wait(timeout=300) == 0

    process = run_program(tmp_path / "killed", steps)
    partial = tmp_path / "killed" / "quick" / ".batchrenorm_seed0.partial.csv"
    deadline = time.time() + 240
    while not partial.exists() and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)  # let it train past the first checkpoint
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert partial.exists(), "the run never wrote a checkpoint"
    assert not (tmp_path / "killed" / "quick" / "batchrenorm_seed0.csv").exists(), \
        "the run finished before it was killed; the test proves nothing"

    assert run_program(tmp_path / "killed", steps).wait(timeout=300) == 0
    whole = curve(tmp_path / "whole" / "quick" / "batchrenorm_seed0.csv")
    resumed = curve(tmp_path / "killed" / "quick" / "batchrenorm_seed0.csv")
    assert len(whole) == steps // TINY["eval_every"]
    assert resumed == whole


def test_mirrored_strategy_matches_one_device_and_keeps_replicas_identical():
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    done = subprocess.run([sys.executable, str(TESTS / "run_mirrored.py")], cwd=TESTS, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    assert "train loss" in done.stdout


def test_compare_trains_both_arms_on_the_same_data():
    curves = experiment.compare(tiny_data(), microbatch_size=2, rmax=2.0, dmax=1.0, steps=10,
                                minibatch_size=32, evaluations=2, widths=(4, 4, 4),
                                recalibration_batches=2)
    assert set(curves) == {"batchnorm", "batchrenorm"}
    for steps, accuracy, recalibrated in curves.values():
        np.testing.assert_array_equal(steps, [5, 10])
        assert np.all((0 <= accuracy) & (accuracy <= 1))
        assert np.all((0 <= recalibrated) & (recalibrated <= 1))


PAIRS = dict(TINY, microbatch_size=32, sampling="pairs", dropout=0.0)


def test_pairs_preset_trains_on_paired_groups_drawn_from_seed_and_step():
    from brlib import sampling

    data = tiny_data()
    preset = experiment.get_preset("noniid_quick", **PAIRS)
    run = experiment.Run(preset, "batchnorm", 3, data)
    for step in range(4):
        run.train_step(step)
    by_class = sampling.indices_by_class(data[0][1])
    fresh = experiment.Run(preset, "batchnorm", 3, data)  # as after a resume: no steps taken
    for step in (0, 3, 7):
        expected = sampling.paired_minibatch(by_class, 3, step, 32)
        np.testing.assert_array_equal(run.minibatch(step), expected)
        np.testing.assert_array_equal(fresh.minibatch(step), expected)
        labels = data[0][1][expected]
        np.testing.assert_array_equal(labels[:16], labels[16:])  # one of every pair per half
    # The i.i.d. reference arm ignores the preset's pairs and shuffles epochs.
    iid = experiment.Run(preset, "batchnorm_iid", 3, data)
    np.testing.assert_array_equal(iid.minibatch(0), sampling.epoch_order(3, 0, 96)[:32])
    halves = experiment.Run(preset, "batchnorm_halves", 3, data)
    assert {layer.microbatch_size for layer in halves.layers} == {16}


def test_minibatch_statistics_evaluation_normalizes_each_test_group_alone():
    preset = experiment.get_preset("noniid_quick", **PAIRS)
    run = experiment.Run(preset, "batchrenorm", 0, tiny_data())
    for step in range(12):
        run.train_step(step)
    before = [v.numpy().copy() for v in run.model.variables]
    accuracy = run.evaluate_minibatch_statistics(groups_per_call=3)
    # Reference: each paired test group alone, in training mode, on a copy of the state.
    correct = 0
    for group in run.test_pairs:
        logits = run.model(run.x_test[group], training=True).numpy()
        correct += int(np.sum(logits.argmax(axis=-1) == run.y_test[group]))
        for variable, value in zip(run.model.variables, before):
            variable.assign(value)
    assert accuracy == pytest.approx(correct / run.test_pairs.size)
    assert run.test_pairs.shape == (len(run.x_test) // 32, 32)
    for variable, value in zip(run.model.variables, before):  # the run's state is untouched
        np.testing.assert_array_equal(variable.numpy(), value, err_msg=variable.name)


def test_pairs_results_record_training_and_minibatch_statistics_accuracy(tmp_path):
    preset = experiment.get_preset("noniid_quick", **dict(PAIRS, steps=10))
    for arm in ("batchnorm", "groupnorm"):
        experiment.run_one(preset, arm, 0, tiny_data(), tmp_path)
    loaded = results.load_results(tmp_path, "noniid_quick")
    for arm, curves in loaded.items():
        for column in results.PAIR_COLUMNS:
            values = curves[column]
            assert values.shape == (1, 2) and np.all((0 <= values) & (values <= 1)), (arm, column)
    # GroupNorm has no batch statistics: there is nothing to recalibrate.
    gn = loaded["groupnorm"]
    np.testing.assert_array_equal(gn["val_accuracy"], gn["val_accuracy_recalibrated"])
    table = results.format_noniid_table(loaded, last=1)
    assert "72.8 / 67.0 / 76.5" in table and "GroupNorm" in table


def test_pairs_run_restored_from_a_checkpoint_continues_as_if_uninterrupted(tmp_path):
    import tensorflow as tf

    tf.config.experimental.enable_op_determinism()
    preset = experiment.get_preset("noniid_quick", **dict(PAIRS, eval_every=4, steps=8))
    data = tiny_data()

    def rows(run, steps):
        out = []
        for step in steps:
            run.train_step(step)
            if (step + 1) % 4 == 0:
                out.append({k: v for k, v in run.row(step + 1, 0.0).items()})
        return out

    whole = rows(experiment.Run(preset, "batchrenorm", 0, data), range(8))
    first = experiment.Run(preset, "batchrenorm", 0, data)
    before = rows(first, range(4))
    experiment.Checkpoint(tmp_path / "r.csv", first.checkpoint()).save(4, before)
    resumed = experiment.Run(preset, "batchrenorm", 0, data)
    step, _, _ = experiment.Checkpoint(tmp_path / "r.csv", resumed.checkpoint()).restore()
    assert step == 4
    assert before + rows(resumed, range(4, 8)) == whole


def free_ports(count):
    """Loopback ports that are free now (bound, read, released)."""
    import socket

    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [str(s.getsockname()[1]) for s in sockets]
    for s in sockets:
        s.close()
    return ports


def test_multi_worker_training_matches_one_process(tmp_path):
    ports = free_ports(2)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    shared = tmp_path / "results"
    workers = [subprocess.Popen([sys.executable, str(TESTS / "run_multiworker.py"), str(i),
                                 *ports, str(tmp_path / f"worker{i}.npz"), str(shared)],
                                cwd=TESTS, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True) for i in range(2)]
    try:
        logs = [worker.communicate(timeout=240)[0] for worker in workers]
    finally:
        for worker in workers:
            worker.kill()
    for worker, log in zip(workers, logs):
        assert worker.returncode == 0, log[-3000:]
    saved = [np.load(tmp_path / f"worker{i}.npz") for i in range(2)]
    variables = [key for key in saved[0].files if key not in ("slice", "minibatch")]
    assert any(key.endswith("moving_mean") for key in variables)
    for key in variables:  # every worker holds the same weights and moving statistics
        np.testing.assert_array_equal(saved[0][key], saved[1][key], err_msg=key)
    half = len(saved[0]["minibatch"]) // 2  # and each replica received its own contiguous half
    np.testing.assert_array_equal(saved[0]["slice"], saved[0]["minibatch"][:half])
    np.testing.assert_array_equal(saved[1]["slice"], saved[1]["minibatch"][half:])

    # The chief alone wrote the finished run, and no checkpoint or partial CSV is left.
    written = sorted(p.name for p in (shared / "quick").iterdir())
    assert written == ["batchrenorm_seed1.csv", "settings.json"]
    assert len(results.read_csv(shared / "quick" / "batchrenorm_seed1.csv")) == 6

    # One process over the same minibatches, with every microbatch normalized on its own.
    # (SGD: Adam would turn the rounding noise of the all-reduce on gradients that are
    # zero in exact arithmetic, such as a bias before normalization, into full steps.)
    preset = experiment.get_preset("quick", **dict(TINY, dropout=0.0, optimizer="sgd",
                                                   learning_rate=0.05))
    single = experiment.Run(preset, "batchrenorm", 0, tiny_data())
    for step in range(6):
        single.train_step(step)
    for layer in single.model.layers:
        for variable in layer.variables:
            key = f"{layer.name}/{variable.name}"
            np.testing.assert_allclose(saved[0][key], variable.numpy(), rtol=1e-4, atol=1e-5,
                                       err_msg=key)
