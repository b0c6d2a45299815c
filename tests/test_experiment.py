"""brlib.experiment: presets, arms, results files, a killed and resumed run, and MirroredStrategy."""

import csv
import json
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
from brlib import experiment, protocol, results

TESTS = Path(__file__).resolve().parent


@pytest.mark.parametrize("argv, named", [
    (["reproduce", "--preset", "nope"], "preset"),
    (["reproduce", "--preset", "quick", "--steps", "0"], "steps"),
    (["reproduce", "--preset", "quick", "--arms", "layernorm"], "arms"),
    (["reproduce", "--preset", "quick", "--seeds", "0"], "seeds"),
    (["reproduce", "--preset", "quick", "--jobs", "0"], "jobs"),
    (["figure", "--preset", "quick", "--arms", "layernorm"], "arms"),
])
def test_bad_settings_fail_before_training(argv, named, capsys, tmp_path):
    # A temporary results directory, so that an argument that turns out valid cannot
    # train into (or draw over) the committed results.
    flag = "--figures-dir" if argv[0] == "figure" else "--data-dir"
    argv = argv + ["--results-dir", str(tmp_path), flag, str(tmp_path / "none")]
    assert cli.main(argv) == 2
    assert named in capsys.readouterr().err


def test_missing_data_fails_before_training(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(experiment.brlib.data.SYSTEM_DIRS, "fashion_mnist", [])
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    monkeypatch.delenv("BRLIB_DATA_DIR", raising=False)
    monkeypatch.setattr(experiment.brlib.data, "FASHION_URL", "http://127.0.0.1:9/")
    code = cli.main(["reproduce", "--preset", "quick", "--results-dir", str(tmp_path / "r")])
    assert code == 2 and "BRLIB_DATA_DIR" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()  # nothing on disk: no settings.json, no directory


def test_a_preset_without_its_dataset_leaves_nothing_behind(tmp_path, monkeypatch, capsys):
    # The seed preset's CIFAR-100 cannot be found: the command stops before any run starts,
    # and the results directory stays as it was, so a later run with other settings works.
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    monkeypatch.delenv("BRLIB_DATA_DIR", raising=False)
    monkeypatch.setattr(experiment.brlib.data, "CIFAR_URL", "http://127.0.0.1:9/")
    code = cli.main(["reproduce", "--preset", "seed", "--results-dir", str(tmp_path / "r")])
    assert code == 2 and "cifar" in capsys.readouterr().err.lower()
    assert not (tmp_path / "r").exists()


def test_an_explicit_data_dir_must_hold_the_data(tmp_path, capsys):
    # Even where Debian's copy is installed, a wrong --data-dir is an error, not a fallback.
    code = cli.main(["reproduce", "--preset", "quick", "--results-dir", str(tmp_path / "r"),
                     "--data-dir", str(tmp_path / "typo")])
    err = capsys.readouterr().err
    assert code == 2 and "data_dir" in err and "does not exist" in err
    assert not list((tmp_path / "r").rglob("*.csv"))


def test_runner_writes_csv_and_skips_finished_seeds(tmp_path):
    preset = protocol.get_preset("quick", **TINY)
    path = experiment.run_one(preset, "batchrenorm", 0, tiny_data(), tmp_path)
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == results.COLUMNS
    assert [r["step"] for r in rows] == ["5", "10", "15", "20", "25", "30"]  # integers
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
    short = protocol.get_preset("quick", **dict(TINY, steps=10))
    path = experiment.run_one(short, "batchnorm", 0, tiny_data(), tmp_path)
    stamp = path.stat().st_mtime_ns
    longer = protocol.get_preset("quick", **TINY)
    with pytest.raises(ValueError, match=r"steps: 10 on disk, 30 now"):
        experiment.run_one(longer, "batchnorm", 0, tiny_data(), tmp_path)
    assert path.stat().st_mtime_ns == stamp
    # The command line stops too, naming the setting, before loading any data.
    code = cli.main(["reproduce", "--preset", "quick", "--results-dir", str(tmp_path)])
    assert code == 2 and "steps" in capsys.readouterr().err
    # More seeds of the same settings are not other settings.
    experiment.run_one(protocol.get_preset("quick", **dict(TINY, steps=10, seeds=3)),
                       "batchnorm", 1, tiny_data(), tmp_path)


@pytest.mark.parametrize("arm", list(protocol.ARMS))
def test_every_arm_builds_its_normalization(arm):
    # A re-mixed arm needs two groups of 32 to split its pairs between.
    remixed = protocol.ARMS[arm].sampling == "remixed"
    preset = protocol.get_preset("quick", **dict(TINY, minibatch_size=64 if remixed else 32))
    if remixed:
        with pytest.raises(ValueError, match="`minibatch_size`=32 must hold at least 2 groups"):
            experiment.Run(protocol.get_preset("quick", **TINY), arm, 0, tiny_data())
    run = experiment.Run(preset, arm, 0, tiny_data())
    spec = protocol.ARMS[arm]
    alpha = 0.99 if arm.endswith("_seedbug") else preset.alpha
    group = {"baseline": 32, "batchnorm_halves": 16}.get(arm, preset.microbatch_size)
    if spec.layer == "groupnorm":
        kinds = {type(layer).__name__ for layer in run.model.layers}
        assert not run.layers and "GroupNormalization" in kinds
    else:
        # Without norm4 the class scores pass through an identity layer.
        assert len(run.layers) == (4 if spec.logit_norm else 3)
        assert type(run.model.get_layer("norm4")).__name__ == (
            "BatchRenormalization" if spec.logit_norm else "Identity")
    for layer in run.layers:
        assert layer.momentum == pytest.approx(1 - alpha)
        assert layer.microbatch_size == group
    if not spec.renorm:
        assert run.schedule is None
    elif not spec.clipped:  # batch norm for the warm-up, then no bounds at all
        assert run.schedule(preset.warmup_steps - 1) == (1.0, 0.0)
        assert run.schedule(preset.warmup_steps) == (np.inf, np.inf)
    elif spec.warmup_factor != 1:  # batch norm for twice as long, the ramps shifted as much
        longer = spec.warmup_factor * preset.warmup_steps
        assert run.schedule(longer) == (1.0, 0.0) and run.schedule(longer + 1) != (1.0, 0.0)
        assert run.schedule(preset.rmax_steps + longer - preset.warmup_steps)[0] == (
            preset.rmax_final)
    elif spec.ramp:
        assert run.schedule(0) == (1.0, 0.0)
        assert run.schedule(preset.steps) == (preset.rmax_final, preset.dmax_final)
    else:
        assert run.schedule(0) == (preset.rmax_final, preset.dmax_final)


def test_checkpoints_are_keyed_by_variable_path(tmp_path):
    import keras

    preset = protocol.get_preset("quick", **TINY)
    run = experiment.Run(preset, "batchrenorm", 0, tiny_data())
    for step in range(6):
        run.train_step(step)
    saved = experiment.RunCheckpoint(tmp_path / "a.csv", run.checkpoint())
    saved.save(6, [run.row(6, 0.0)])
    # More models in the process shift Keras's automatic names; fixed names keep the paths.
    keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    fresh = experiment.Run(preset, "batchrenorm", 1, tiny_data())
    loaded = experiment.RunCheckpoint(tmp_path / "a.csv", fresh.checkpoint())
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


def without_wall_seconds(path):
    """The CSV's bytes with its wall_seconds column cut out: the one column a rerun changes."""
    lines = Path(path).read_text().splitlines()
    column = lines[0].split(",").index("wall_seconds")
    return "\n".join(",".join(v for i, v in enumerate(line.split(",")) if i != column)
                     for line in lines)


def test_killed_run_resumes_to_the_same_file(tmp_path):
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
    whole = tmp_path / "whole" / "quick" / "batchrenorm_seed0.csv"
    resumed = tmp_path / "killed" / "quick" / "batchrenorm_seed0.csv"
    assert len(curve(whole)) == steps // TINY["eval_every"]
    assert curve(resumed) == curve(whole)
    assert without_wall_seconds(resumed) == without_wall_seconds(whole)  # the files themselves


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
    preset = protocol.get_preset("noniid_quick", **PAIRS)
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


def test_remixed_steps_train_on_the_paired_examples_with_no_pair_in_one_group():
    from brlib import sampling

    data = tiny_data()
    preset = protocol.get_preset("noniid_quick", **dict(PAIRS, minibatch_size=96))
    paired = experiment.Run(preset, "batchnorm", 3, data)
    remixed = experiment.Run(preset, "batchnorm_remixed", 3, data)
    for step in (0, 5):  # the paired step, its pairs split by sampling.remix (tested there)
        np.testing.assert_array_equal(remixed.minibatch(step),
                                      sampling.remix(paired.minibatch(step)))
        assert not np.array_equal(remixed.minibatch(step), paired.minibatch(step))
    # Recalibration draws its minibatches as the arm trains: re-mixed too.
    groups = preset.recalibration_batches * 3
    calibration = sampling.paired_batches(sampling.indices_by_class(data[0][1]), 3, groups,
                                          purpose="calibration")
    np.testing.assert_array_equal(remixed.calibration_batches[0],
                                  data[0][0][sampling.remix(calibration[:3].ravel())])


def test_a_preset_chooses_the_head_of_every_arms_network():
    preset = protocol.get_preset("noniid_quick", **dict(PAIRS, head="dense", minibatch_size=64))
    for arm in ("batchnorm", "batchrenorm_remixed"):
        run = experiment.Run(preset, arm, 0, tiny_data())
        assert [layer.name for layer in run.layers] == ["norm1", "norm2", "norm3"]
        classes = int(tiny_data()[0][1].max()) + 1
        assert run.model.layers[-1].name == "dense" and run.model.output_shape == (None, classes)


def test_minibatch_statistics_evaluation_normalizes_each_test_group_alone():
    preset = protocol.get_preset("noniid_quick", **PAIRS)
    run = experiment.Run(preset, "batchrenorm", 0, tiny_data())
    for step in range(12):
        run.train_step(step)
    before = [v.numpy().copy() for v in run.model.variables]
    accuracy = run.evaluate_minibatch_statistics(groups_per_call=3)
    # Reference: each paired test group alone, in training mode, on a copy of the state.
    correct = 0
    for group in run.test_groups:
        logits = run.model(run.x_test[group], training=True).numpy()
        correct += int(np.sum(logits.argmax(axis=-1) == run.y_test[group]))
        for variable, value in zip(run.model.variables, before):
            variable.assign(value)
    assert accuracy == pytest.approx(correct / run.test_groups.size)
    assert run.test_groups.shape == (len(run.x_test) // 32, 32)
    for variable, value in zip(run.model.variables, before):  # the run's state is untouched
        np.testing.assert_array_equal(variable.numpy(), value, err_msg=variable.name)


@pytest.mark.parametrize("arm, group", [("batchnorm", 2), ("baseline", 32)])
def test_iid_minibatch_statistics_score_every_test_example_once_in_random_groups(arm, group):
    preset = protocol.get_preset("quick", **TINY)  # dropout 0.5: training mode must not drop
    run = experiment.Run(preset, arm, 0, tiny_data())
    for step in range(6):
        run.train_step(step)
    before = [v.numpy().copy() for v in run.model.variables]
    accuracy = run.evaluate_minibatch_statistics(groups_per_call=1)
    # Reference: a NumPy permutation of the 40 test examples, filled up to whole groups from
    # its start; each group through the network with Dropout off and normalization in
    # training mode; only the first 40 positions count.
    order = np.random.default_rng([0, 19]).permutation(40)
    order = np.concatenate([order, order[:(-40) % group]])
    np.testing.assert_array_equal(run.test_groups.ravel(), order)
    hits = []
    for start in range(0, len(order), group):
        picks = order[start:start + group]
        x = run.x_test[picks]
        for layer in run.model.layers[1:]:
            x = layer(x, training=isinstance(layer, experiment.BatchRenormalization))
        hits.extend(np.argmax(x.numpy(), axis=-1) == run.y_test[picks])
        for variable, value in zip(run.model.variables, before):
            variable.assign(value)
    assert accuracy == pytest.approx(np.mean(hits[:40]))
    for variable, value in zip(run.model.variables, before):  # the run's state is untouched
        np.testing.assert_array_equal(variable.numpy(), value, err_msg=variable.name)


def logits_of(run, images):
    return run.model(images, training=False).numpy()


def accuracy_and_loss(logits, labels):
    """Accuracy and mean cross-entropy from logits, in NumPy."""
    shifted = logits - logits.max(axis=-1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    return (np.mean(logits.argmax(axis=-1) == labels),
            -np.mean(log_probs[np.arange(len(labels)), labels]))


def test_early_rows_score_the_first_test_groups_and_late_rows_the_whole_split():
    preset = protocol.get_preset("quick", **dict(TINY, curve_test_examples=9))
    run = experiment.Run(preset, "batchnorm", 0, tiny_data())
    for step in range(5):
        run.train_step(step)
    assert run.curve_groups.shape == (5, 2)  # 9 examples round up to whole groups of 2
    picks = np.random.default_rng([0, 19]).permutation(40)[:10]  # the run's test order
    np.testing.assert_array_equal(run.curve_groups.ravel(), picks)
    early = run.row(5, 0.0)
    assert not preset.evaluates_in_full(5) and early["test_examples"] == 10
    accuracy, loss = accuracy_and_loss(logits_of(run, run.x_test[picks]), run.y_test[picks])
    assert early["val_accuracy"] == pytest.approx(accuracy)
    assert early["val_loss"] == pytest.approx(loss, rel=1e-5)
    assert early["val_accuracy_minibatch_stats"] == run.evaluate_minibatch_statistics(
        run.curve_groups)
    late = run.row(preset.steps, 0.0)
    assert late["test_examples"] == 40
    accuracy, loss = accuracy_and_loss(logits_of(run, run.x_test), run.y_test)
    assert late["val_accuracy"] == pytest.approx(accuracy)
    assert late["val_accuracy_minibatch_stats"] == run.evaluate_minibatch_statistics()


def test_inference_model_is_scored_on_fixed_training_examples():
    preset = protocol.get_preset("quick", **dict(TINY, curve_test_examples=50))
    run = experiment.Run(preset, "batchrenorm", 3, tiny_data())
    probe = np.random.default_rng([3, 11]).permutation(96)[:50]
    np.testing.assert_array_equal(run.train_probe, probe)
    for step in range(5):
        run.train_step(step)
    row = run.row(5, 0.0)
    accuracy, loss = accuracy_and_loss(logits_of(run, run.x_train[probe]), run.y_train[probe])
    assert row["train_accuracy_inference"] == pytest.approx(accuracy)
    assert row["train_loss_inference"] == pytest.approx(loss, rel=1e-5)
    assert experiment.Run(preset, "batchnorm", 4, tiny_data()).curve_groups is None  # 50 > 40


def test_minibatch_statistics_leave_dropout_off():
    # Dropout at 0.5 would make training-mode calls random; the evaluation repeats exactly.
    run = experiment.Run(protocol.get_preset("quick", **TINY), "batchnorm", 0, tiny_data())
    run.train_step(0)
    assert run.evaluate_minibatch_statistics() == run.evaluate_minibatch_statistics()


def test_pairs_results_record_training_and_minibatch_statistics_accuracy(tmp_path):
    preset = protocol.get_preset("noniid_quick", **dict(PAIRS, steps=10))
    for arm in ("batchnorm", "groupnorm"):
        experiment.run_one(preset, arm, 0, tiny_data(), tmp_path)
    loaded = results.load_results(tmp_path, "noniid_quick")
    for arm, curves in loaded.items():
        for column in ("train_accuracy", "val_accuracy_minibatch_stats"):
            values = curves[column]
            assert values.shape == (1, 2) and np.all((0 <= values) & (values <= 1)), (arm, column)
    # GroupNorm has no batch statistics: there is nothing to recalibrate.
    gn = loaded["groupnorm"]
    np.testing.assert_array_equal(gn["val_accuracy"], gn["val_accuracy_recalibrated"])
    table = results.format_noniid_table(loaded)
    assert "72.8 / 67.0 / 76.5" in table and "GroupNorm" in table


def test_pairs_run_restored_from_a_checkpoint_continues_as_if_uninterrupted(tmp_path):
    import tensorflow as tf

    tf.config.experimental.enable_op_determinism()
    preset = protocol.get_preset("noniid_quick", **dict(PAIRS, eval_every=4, steps=8))
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
    experiment.RunCheckpoint(tmp_path / "r.csv", first.checkpoint()).save(4, before)
    resumed = experiment.Run(preset, "batchrenorm", 0, data)
    step, _, _ = experiment.RunCheckpoint(tmp_path / "r.csv", resumed.checkpoint()).restore()
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
    preset = protocol.get_preset("quick", **dict(TINY, dropout=0.0, optimizer="sgd",
                                                   learning_rate=0.05))
    single = experiment.Run(preset, "batchrenorm", 0, tiny_data())
    for step in range(6):
        single.train_step(step)
    for layer in single.model.layers:
        for variable in layer.variables:
            key = f"{layer.name}/{variable.name}"
            np.testing.assert_allclose(saved[0][key], variable.numpy(), rtol=1e-4, atol=1e-5,
                                       err_msg=key)


# Another command training a run: holds its lock, writes its CSV after a while, exits.
HOLDER = """
import sys, time
from filelock import FileLock
lock, csv, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
with FileLock(lock):
    print("held", flush=True)
    time.sleep(seconds)
    open(csv, "wb").write(b"finished by the other command\\n")
"""


def hold_run(path, seconds):
    """Starts a process that holds `path`'s run lock for `seconds`, then writes its CSV."""
    path.parent.mkdir(parents=True, exist_ok=True)
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(experiment._lock_path(path)),
                               str(path), str(seconds)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline() == "held\n"
    return holder


def test_a_run_held_by_another_process_is_not_trained_twice(tmp_path):
    preset = protocol.get_preset("quick", **dict(TINY, steps=10))
    path = results.result_path(tmp_path, "quick", "batchnorm", 0)
    holder = hold_run(path, 3.0)
    with pytest.raises(experiment.RunBusy):
        experiment.run_one(preset, "batchnorm", 0, tiny_data(), tmp_path, wait=False)
    # A waiting caller returns the other command's CSV once it exists, without training.
    assert experiment.run_one(preset, "batchnorm", 0, tiny_data(), tmp_path) == path
    assert path.read_bytes() == b"finished by the other command\n"
    assert holder.wait(timeout=30) == 0


def test_reproduce_defers_a_run_that_another_command_trains(tmp_path):
    preset = protocol.get_preset("quick", **dict(TINY, steps=10))
    busy = results.result_path(tmp_path, "quick", "batchnorm", 0)
    holder = hold_run(busy, 20.0)  # the worker process has started and met the lock by then
    paths = experiment.reproduce(preset, ["batchnorm", "batchrenorm"], results_dir=tmp_path,
                                 dataset=tiny_data(), jobs=1, verbose=False)
    assert busy.read_bytes() == b"finished by the other command\n"
    assert len(results.read_csv(paths[1])) == 2  # the free run was trained meanwhile
    assert holder.wait(timeout=30) == 0


def test_results_do_not_depend_on_how_many_runs_train_at_once(tmp_path):
    # Two runs side by side in two processes (jobs=2) against the same runs one after the
    # other in this process: every CSV is the same, byte for byte, but for wall_seconds.
    preset = protocol.get_preset("quick", **TINY)
    arms = ["batchnorm", "batchrenorm"]
    parallel = experiment.reproduce(preset, arms, results_dir=tmp_path / "parallel",
                                    dataset=tiny_data(), jobs=2, verbose=False)
    for arm, path in zip(arms, parallel):
        alone = experiment.run_one(preset, arm, 0, tiny_data(), tmp_path / "alone")
        assert without_wall_seconds(path) == without_wall_seconds(alone), arm
    assert json.loads((tmp_path / "parallel" / "quick" / "settings.json").read_text())[
        "threads"] == preset.threads


def test_the_thread_count_cannot_change_under_a_running_tensorflow():
    import tensorflow as tf

    tf.constant(1.0)  # TensorFlow has started, with the tests' thread count
    experiment.fix_threads(protocol.DEFAULT_THREADS)  # same: fine
    with pytest.raises(ValueError, match="threads"):
        experiment.fix_threads(7)


def start_cluster(results_dir, steps, timeout=30):
    """Two workers on loopback training one run with `run_one` (tests/run_cluster_worker.py)."""
    ports = free_ports(2)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    return [subprocess.Popen([sys.executable, str(TESTS / "run_cluster_worker.py"), str(i),
                              *ports, str(results_dir), str(steps), str(timeout)],
                             cwd=TESTS, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True) for i in range(2)]


def finish(workers, timeout=240):
    try:
        return [worker.communicate(timeout=timeout) for worker in workers]
    finally:
        for worker in workers:
            worker.kill()


def test_a_lost_worker_stops_the_cluster_with_an_error_and_the_run_resumes(tmp_path):
    steps = 200
    whole = finish(start_cluster(tmp_path / "whole", steps))
    assert "finished" in whole[0][0], whole[0][1][-3000:]

    workers = start_cluster(tmp_path / "lost", steps)
    run = tmp_path / "lost" / "quick"
    partial = run / ".batchrenorm_seed0.partial.csv"
    deadline = time.time() + 180
    while not partial.exists() and time.time() < deadline:
        time.sleep(0.05)
    assert partial.exists(), "the cluster never wrote a checkpoint"
    workers[1].send_signal(signal.SIGKILL)  # worker 1 dies in the middle of the run
    killed = time.time()
    try:
        out, err = workers[0].communicate(timeout=120)  # the chief must not hang
    finally:
        for worker in workers:
            worker.kill()
    waited = time.time() - killed
    assert workers[0].returncode == 3, err[-3000:]
    assert "stopped answering" in err and "resumes from the chief's last checkpoint" in err
    assert waited < 60, f"the survivor took {waited:.0f} s to give up"
    assert not (run / "batchrenorm_seed0.csv").exists()  # nothing looks finished
    assert partial.exists()

    # Both workers started again: the run resumes from the chief's checkpoint, to the very
    # file an uninterrupted cluster run writes.
    resumed = finish(start_cluster(tmp_path / "lost", steps))
    assert "finished" in resumed[0][0], resumed[0][1][-3000:]
    assert not resumed[0][0].startswith("step 1\n")  # it did not start over
    assert (without_wall_seconds(run / "batchrenorm_seed0.csv")
            == without_wall_seconds(tmp_path / "whole" / "quick" / "batchrenorm_seed0.csv"))
    print(f"survivor gave up {waited:.1f} s after the kill")


def test_ctrl_c_stops_every_run_and_the_same_command_resumes_them(tmp_path):
    steps, arms = 400, ("batchnorm", "batchrenorm")
    command = [sys.executable, str(TESTS / "run_reproduce.py"), str(tmp_path / "r"), str(steps)]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    # Its own group, as a terminal's job, and Ctrl-C's default action: a pytest-xdist worker
    # ignores SIGINT, and a child would inherit that.
    parent = subprocess.Popen(command, cwd=TESTS, env=env, stdout=subprocess.PIPE, text=True,
                              start_new_session=True,
                              preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    run = tmp_path / "r" / "quick"
    partials = [run / f".{arm}_seed0.partial.csv" for arm in arms]
    deadline = time.time() + 180
    while not any(p.exists() for p in partials) and time.time() < deadline:
        time.sleep(0.05)
    # The training processes start with the command, before any checkpoint: list them now, so
    # that nothing slow (on a busy machine, `ps` takes seconds) stands between the moment both
    # runs are seen mid-way and the Ctrl-C, and tiny runs cannot finish in between.
    children = [int(pid) for pid in subprocess.run(
        ["ps", "-o", "pid=", "--ppid", str(parent.pid)], capture_output=True,
        text=True).stdout.split()]
    while not all(p.exists() for p in partials) and time.time() < deadline:
        time.sleep(0.05)
    assert all(p.exists() for p in partials), "the two runs never both wrote a checkpoint"
    os.killpg(parent.pid, signal.SIGINT)  # Ctrl-C reaches the whole group
    try:
        out, _ = parent.communicate(timeout=60)
    finally:
        parent.kill()
    assert parent.returncode == 130 and "stopped" in out
    def alive(pid):
        try:
            return "Z" not in Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
        except FileNotFoundError:
            return False

    deadline = time.time() + 10
    while any(alive(pid) for pid in children) and time.time() < deadline:
        time.sleep(0.1)
    left = {pid: Path(f"/proc/{pid}/cmdline").read_bytes() for pid in children if alive(pid)}
    assert not left, f"processes left running: {left}"  # every worker process is gone
    for arm in arms:  # nothing looks finished; the checkpoints are kept
        assert not (run / f"{arm}_seed0.csv").exists()
        assert (run / f".{arm}_seed0.partial.csv").exists()

    resumed = subprocess.run(command, cwd=TESTS, env=env, capture_output=True, text=True,
                             timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    preset = protocol.get_preset("quick", **dict(TINY, steps=steps, eval_every=10))
    for arm in arms:  # the same files as runs that were never interrupted
        whole = experiment.run_one(preset, arm, 0, tiny_data(), tmp_path / "whole")
        assert without_wall_seconds(run / f"{arm}_seed0.csv") == without_wall_seconds(whole), arm
    assert sorted(p.name for p in run.iterdir()) == sorted(
        [f"{arm}_seed0.csv" for arm in arms] + ["settings.json"])


def test_compare_warms_up_ramps_and_anneals_as_the_presets_do(monkeypatch):
    presets = []

    class Recording(experiment.Run):
        def __init__(self, preset, arm, *args, **kwargs):
            presets.append(preset)
            super().__init__(preset, arm, *args, **kwargs)

    monkeypatch.setattr(experiment, "Run", Recording)
    small = dict(minibatch_size=32, evaluations=3, widths=(4, 4, 4), recalibration_batches=2)
    curves = experiment.compare(tiny_data(), steps=12, warmup_steps=3, **small)
    preset = presets[-1]
    np.testing.assert_array_equal(curves["batchrenorm"][0], [4, 8, 12])
    schedule = preset.schedule()  # batch norm for the warm-up, bounds open at half the run
    assert schedule(3) == (1.0, 0.0) and schedule(6) == (3.0, 5.0)
    assert (preset.lr_decay_start, preset.lr_decay_end, preset.lr_floor) == (6, 9, 0.01)
    assert preset.alpha == 0.01 and preset.recalibration_batches == 2
    experiment.compare(tiny_data(), steps=12, **small)  # default warm-up: a quarter of the run
    assert presets[-1].warmup_steps == 3
    # A warm-up past half the run opens the bounds at its end; no anneal: a constant rate.
    experiment.compare(tiny_data(), steps=12, warmup_steps=9, anneal=False, **small)
    assert presets[-1].schedule()(9) == (3.0, 5.0) and presets[-1].schedule()(8) == (1.0, 0.0)
    assert presets[-1].learning_rate_schedule() == 1e-3
    with pytest.raises(ValueError, match="warmup_steps"):
        experiment.compare(tiny_data(), steps=12, warmup_steps=-1, **small)


@pytest.mark.parametrize("name, arms", [("quick", protocol.DEFAULT_ARMS),
                                        ("noniid_quick", protocol.NONIID_ARMS)])
def test_reproduce_runs_the_presets_own_arms_by_default(name, arms, tmp_path, monkeypatch):
    trained = []
    monkeypatch.setattr(experiment, "_train_in_processes",
                        lambda preset, todo, *args: trained.extend(todo))
    preset = protocol.get_preset(name, **TINY)
    paths = experiment.reproduce(preset, seeds=1, results_dir=tmp_path, dataset=tiny_data(),
                                 verbose=False)
    assert trained == [(arm, 0) for arm in arms]
    assert [path.name for path in paths] == [f"{arm}_seed0.csv" for arm in arms]
