"""brlib.protocol: the presets against the protocols they follow, the arms, the reported numbers."""

import ast
import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest

from brlib import protocol


def test_presets_follow_the_protocols():
    seed = protocol.get_preset("seed")
    assert (seed.minibatch_size, seed.microbatch_size, seed.steps, seed.seeds) == (1600, 2, 9300, 5)
    assert (seed.rmax_final, seed.dmax_final, seed.warmup_steps) == (1.5, 0.5, 20 * 31)
    assert (seed.alpha, seed.lr_decay_start) == (0.01, None)  # constant Adam 1e-4
    paper = protocol.get_preset("paper")
    # The paper's 5k/160k, 40k/160k and 25k/160k, scaled to the run's length.
    assert paper.microbatch_size == 4 and (paper.rmax_final, paper.dmax_final) == (3.0, 5.0)
    np.testing.assert_allclose([paper.warmup_steps, paper.rmax_steps, paper.dmax_steps],
                               np.array([5, 40, 25]) / 160 * paper.steps, atol=1)
    seed_fmnist = protocol.get_preset("seed_fmnist")
    assert seed_fmnist.dataset == "fashion_mnist"
    assert seed_fmnist.settings() | {"name": "", "dataset": ""} == seed.settings() | {
        "name": "", "dataset": ""}


@pytest.mark.parametrize("name, min_seeds, microbatch", [
    ("quick", 5, 2), ("cpu", 10, 2), ("noniid_quick", 5, 32), ("noniid", 10, 32),
    ("glyphs_quick", 3, 32), ("glyphs", 10, 32), ("glyphs_classes10", 3, 32),
    ("glyphs_classes1000", 3, 32), ("glyphs_long", 5, 32)])
def test_cpu_presets_are_built_to_reach_a_steady_state(name, min_seeds, microbatch):
    preset = protocol.get_preset(name)
    tau = round(1 / preset.alpha)  # the moving averages' time constant, in steps
    assert preset.microbatch_size == microbatch and preset.minibatch_size % 32 == 0
    assert preset.sampling == ("iid" if name in ("quick", "cpu") else "pairs")
    assert preset.seeds >= min_seeds
    assert preset.warmup_steps >= 3 * tau  # the averages hold e^-3 of their start or less
    # The learning rate is down to its floor for the last quarter, at least 3 time constants.
    assert preset.lr_decay_end <= 0.75 * preset.steps and preset.steps / 4 >= 3 * tau
    assert max(preset.rmax_steps, preset.dmax_steps) <= preset.lr_decay_end
    # The final accuracy averages evaluations inside the last quarter only.
    evaluations = np.arange(preset.eval_every, preset.steps + 1, preset.eval_every)
    assert evaluations[-preset.final_evaluations] >= 0.75 * preset.steps


def test_learning_rate_is_held_then_cosine_annealed_to_its_floor():
    preset = protocol.get_preset("quick")
    schedule = preset.learning_rate_schedule()
    start, end, peak = preset.lr_decay_start, preset.lr_decay_end, preset.learning_rate

    def expected(step):  # the cosine anneal written from its formula
        progress = min(max(step - start, 0) / (end - start), 1.0)
        cosine = 0.5 * (1 + math.cos(math.pi * progress))
        return peak * (preset.lr_floor + (1 - preset.lr_floor) * cosine)

    for step in (0, start // 2, start, (start + end) // 2, end, preset.steps):
        assert float(schedule(step)) == pytest.approx(expected(step), rel=1e-5)


@pytest.mark.parametrize("setting", ["steps", "seeds", "microbatch_size", "recalibration_batches"])
def test_booleans_are_not_numbers(setting):
    with pytest.raises(ValueError, match=setting):
        protocol.get_preset("quick", **{setting: True})
    with pytest.raises(ValueError, match="learning_rate"):
        protocol.get_preset("quick", learning_rate=False)


def test_microbatch_must_divide_the_minibatch():
    with pytest.raises(ValueError, match="minibatch_size.*microbatch"):
        protocol.get_preset("quick", minibatch_size=250)


@pytest.mark.parametrize("name", ["quick", "cpu", "noniid_quick", "noniid"])
def test_the_last_quarter_and_the_final_evaluations_score_the_whole_test_split(name):
    preset = protocol.get_preset(name)
    steps = np.arange(preset.eval_every, preset.steps + 1, preset.eval_every)
    full = [step for step in steps if preset.evaluates_in_full(step)]
    assert full == [step for step in steps if step >= 0.75 * preset.steps]
    assert set(steps[-preset.final_evaluations:]) <= set(full)
    # Forced into the final window even when it reaches back before the last quarter.
    longer = protocol.get_preset(name, final_evaluations=len(steps))
    assert all(longer.evaluates_in_full(step) for step in steps)


def test_arms_are_checked_by_name():
    assert protocol.check_arms(("batchnorm", "batchrenorm_noramp")) == [
        "batchnorm", "batchrenorm_noramp"]
    assert protocol.check_arms("batchnorm") == ["batchnorm"]  # one name, not its letters
    with pytest.raises(ValueError, match="arms"):
        protocol.check_arms(["layernorm"])
    with pytest.raises(ValueError, match="arms"):
        protocol.check_arms([])
    named = (set(protocol.DEFAULT_ARMS) | set(protocol.ABLATIONS) | set(protocol.NONIID_ARMS)
             | set(protocol.NONIID_ABLATIONS) | set(protocol.WORKERS_ARMS)
             | set(protocol.WORKERS_ABLATIONS))
    assert named | {"groupnorm"} == set(protocol.ARMS)
    assert protocol.PRESETS["noniid"].arms == protocol.NONIID_ARMS
    assert protocol.PRESETS["quick"].arms == protocol.DEFAULT_ARMS
    assert protocol.PRESETS["glyphs_workers"].arms == protocol.WORKERS_ARMS
    assert set(protocol.NONIID_ARMS) <= set(protocol.PRESETS["glyphs"].figure_arms)


def test_the_group_of_32_is_the_baselines_and_the_pairs_groups():
    assert protocol.GROUP == 32
    assert protocol.ARMS["baseline"].group == protocol.GROUP
    assert protocol.ARMS["batchnorm_halves"].group == protocol.GROUP // 2
    assert protocol.PRESETS["noniid"].microbatch_size == protocol.GROUP
    with pytest.raises(ValueError, match="multiple of the microbatch size 32"):
        protocol.get_preset("quick", minibatch_size=48, microbatch_size=16)  # the baseline's 32


def test_a_preset_comes_back_from_its_recorded_settings():
    for preset in protocol.PRESETS.values():
        if not preset.dataset.startswith("glyphs"):  # their settings hash the installed fonts
            assert protocol.Preset.from_settings(preset.settings()) == preset
    recorded = {"name": "noniid", "final_evaluations": 2, "widths": [4, 8, 16]}
    older = protocol.Preset.from_settings(recorded, base=protocol.PRESETS["noniid"])
    assert (older.final_evaluations, older.widths, older.steps) == (
        2, (4, 8, 16), protocol.PRESETS["noniid"].steps)
    assert older.threads is None  # recorded before the thread count was fixed: unknown


def test_figures_are_named_by_the_preset():
    assert protocol.PRESETS["cpu"].figure == "figure2_cpu"
    assert protocol.PRESETS["glyphs"].figure == "figure3_glyphs"
    assert (protocol.PRESETS["glyphs"].classes, protocol.PRESETS["noniid"].classes) == (300, 10)
    assert protocol.classes_of("glyphs1000") == 1000 and protocol.classes_of("cifar100") == 100
    with pytest.raises(ValueError, match="`dataset` must be glyphs<N>"):
        protocol.classes_of("imagenet")


def test_the_runner_evaluates_every_eval_every_steps_and_after_the_last():
    preset = dataclasses.replace(protocol.PRESETS["quick"], steps=250, eval_every=100)
    assert [s for s in range(1, 251) if preset.evaluates_after(s)] == [100, 200, 250]


def test_the_reported_numbers_are_those_of_the_paper_and_the_student_code():
    # Ioffe (2017), Figures 1-3, and the student reproduction's CIFAR-100 numbers.
    by_key = {(n.figure, n.source, n.arm, n.quantity): n.percent for n in protocol.REPORTED}
    assert len(by_key) == len(protocol.REPORTED)  # one number per (figure, source, arm, quantity)
    assert by_key[("figure2", "paper", "batchnorm", "test")] == 74.2
    assert by_key[("figure2", "paper", "batchrenorm", "test")] == 76.5
    assert by_key[("figure3", "paper", "batchnorm", "minibatch")] == 76.5
    assert by_key[("figure3", "paper", "batchrenorm", "test")] == 78.6
    assert all(n.arm in protocol.ARMS for n in protocol.REPORTED)
    assert [n.percent for n in protocol.reported("figure3", arm="batchnorm")] == [72.8, 67.0, 76.5]
    with pytest.raises(ValueError, match="figure"):
        protocol.reported("figure1")


def test_modules_that_read_results_import_neither_tensorflow_nor_the_runner():
    # Anywhere in the module, functions included: those import Keras at most.
    root = Path(protocol.__file__).parent
    for module in ("protocol", "results", "plots", "report"):
        tree = ast.parse((root / f"{module}.py").read_text())
        imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
        imported |= {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import)
                     for alias in node.names}
        assert not {"brlib.experiment", "tensorflow"} & imported, (module, imported)
    top = ast.parse((root / "protocol.py").read_text()).body  # module level: not even Keras
    names = {alias.name for node in top if isinstance(node, (ast.Import, ast.ImportFrom))
             for alias in node.names} | {node.module for node in top
                                         if isinstance(node, ast.ImportFrom)}
    assert not {"keras", "brlib.schedule", "brlib.layers"} & names, names
