"""brlib.report: the results page against the committed results and against statistics done here."""

import json
from pathlib import Path

import numpy as np
import pytest
from scipy import stats
from test_results import write_runs

from brlib import __main__ as cli
from brlib import report, results
from brlib.files import write_atomic

ROOT = Path(__file__).resolve().parents[1]


def write_near(directory, preset, levels, rng, seeds=3):
    """`seeds` runs of each arm of {arm: accuracy}, 4 evaluations drawn near that accuracy,
    the last 2 of them final."""
    for arm, level in levels.items():
        write_runs(directory, arm, np.clip(level + rng.normal(0, 0.02, (seeds, 4)), 0, 1),
                   preset=preset, last=2)


def recalibrated_finals(directory, preset, arm):
    """Per seed, the mean of the last 2 recalibrated accuracies, in %, computed here."""
    curves = results.load_results(directory, preset)[arm]["val_accuracy_recalibrated"]
    return 100 * curves[:, -2:].mean(axis=1)


def test_the_committed_results_page_is_what_the_results_generate():
    committed = (ROOT / "docs" / "results.md").read_text()
    assert committed == report.generate(ROOT / "data" / "results", ROOT / "figures"), (
        "docs/results.md is stale: run `python -m brlib report`")


def write_settings(directory, preset="quick", last=1):
    settings = {"dataset": "fashion_mnist", "steps": 80, "minibatch_size": 128,
                "microbatch_size": 2, "widths": [8, 16, 32], "sampling": "iid", "threads": 1,
                "final_evaluations": last}
    path = Path(directory) / preset / results.SETTINGS_FILE
    write_atomic(path, json.dumps(settings).encode())


def test_ablations_are_compared_with_their_twins(tmp_path):
    base = np.array([[0.5, 0.70, 0.71], [0.5, 0.72, 0.73], [0.5, 0.69, 0.70]])
    bug = base - np.array([[0.0, 0.02, 0.03], [0.0, 0.01, 0.01], [0.0, 0.02, 0.02]])
    write_runs(tmp_path, "batchrenorm", base)
    write_runs(tmp_path, "batchrenorm_seedbug", bug)
    write_settings(tmp_path, last=2)
    page = report.generate(tmp_path)
    deltas = 100 * (bug[:, -2:].mean(1) - base[:, -2:].mean(1))
    low, high = stats.t.interval(0.95, 2, loc=deltas.mean(), scale=stats.sem(deltas))
    row = next(line for line in page.splitlines() if line.startswith("| Batch Renorm, α = 0.99 − "))
    assert f"{deltas.mean():+.2f} [{low:+.2f}, {high:+.2f}]" in row
    assert "## `quick`" in page and "mean of the last 2 evaluations" in page
    # The main table leaves the ablation out; the mismatch table lists every arm.
    main_table = page.split("Final accuracies")[1].split("Within each arm")[0]
    assert "α = 0.99" not in main_table


def test_report_command_writes_the_page(tmp_path, capsys):
    write_runs(tmp_path / "results", "batchnorm", [[0.5, 0.6], [0.55, 0.62]])
    write_settings(tmp_path / "results")
    out = tmp_path / "docs" / "results.md"
    assert cli.main(["report", "--results-dir", str(tmp_path / "results"), "--out", str(out),
                     "--figures-dir", str(tmp_path / "figures"), "--readme", ""]) == 0
    assert out.read_text() == report.generate(tmp_path / "results", tmp_path / "figures")
    assert str(out) in capsys.readouterr().out


def test_report_command_regenerates_the_readme_findings(tmp_path):
    from test_results import SWEEP, write_sweep

    write_sweep(tmp_path / "results", {rate: SWEEP[rate] for rate in (1e-3, 1e-2)})
    # The command's findings are cpu's and quick's; here cpu's sweep is a copy of quick's.
    import shutil

    for directory in list((tmp_path / "results").iterdir()):
        shutil.copytree(directory, tmp_path / "results" / directory.name.replace("quick", "cpu"))
    readme = tmp_path / "README.md"
    readme.write_text(f"# Title\n\n{report.FINDINGS_BEGIN}\nold\n{report.FINDINGS_END}\n\nEnd.\n")
    assert cli.main(["report", "--results-dir", str(tmp_path / "results"),
                     "--out", str(tmp_path / "results.md"), "--figures-dir", str(tmp_path / "figures"),
                     "--readme", str(readme)]) == 0
    text = readme.read_text()
    assert text.startswith("# Title\n\n") and text.endswith("\n\nEnd.\n") and "old" not in text
    assert report.findings(tmp_path / "results") in text


def test_a_preset_whose_first_run_has_not_finished_has_no_section(tmp_path):
    write_runs(tmp_path, "batchnorm", [[0.5, 0.6], [0.52, 0.62]])
    write_settings(tmp_path)
    write_settings(tmp_path, preset="cpu")  # settings recorded, no CSV yet
    page = report.generate(tmp_path)
    assert "## `quick`" in page and "## `cpu`" not in page


def test_the_page_ends_with_every_reported_number():
    page = report.generate(ROOT / "data" / "results")
    section = page[page.index("## Reported numbers"):]
    from brlib import protocol

    rows = [line for line in section.splitlines() if line.startswith("| Figure")]
    assert len(rows) == len(protocol.REPORTED)
    for row, number in zip(rows, protocol.REPORTED):
        assert f"| {number.percent:.1f} |" in row and protocol.ARMS[number.arm].label in row



def test_the_learning_rate_sweep_has_one_section_and_its_figure(tmp_path):
    from test_results import SWEEP, write_sweep

    write_sweep(tmp_path / "results", SWEEP)
    page = report.generate(tmp_path / "results")
    # The sweep's presets are shown together, not each in a section of its own.
    assert "## `quick`" in page and "## `quick_lr0.01`" not in page
    section = page[page.index("## Figure 2 against the learning rate"):]
    assert "(../figures/figure2_quick_learning_rates.png)" in section
    assert results.format_sweep_table(results.load_learning_rate_sweep(
        tmp_path / "results", "quick")) in section
    paths = report.draw_sweep_figures(tmp_path / "results", tmp_path / "figures")
    assert sorted(p.name for p in paths) == ["figure2_quick_learning_rates.png",
                                             "figure2_quick_learning_rates.svg"]


def test_the_committed_readme_findings_are_what_the_results_generate():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert readme == report.with_findings(readme, ROOT / "data" / "results"), (
        "README.md's findings are stale: run `python -m brlib report`")


def test_findings_give_renorm_against_batch_norm_at_the_own_and_the_best_rates(tmp_path):
    from test_results import SWEEP, write_sweep

    write_sweep(tmp_path, SWEEP)
    lines = report.findings(tmp_path, swept=("quick",)).splitlines()
    assert len(lines) == 3  # no Figure 3 presets here
    # 1e-3 is the preset's own rate; 1e-2 has the highest mean of the two arms; renorm's own
    # best is 3e-2, batch norm's 1e-2.
    for line, (renorm_rate, batchnorm_rate) in zip(lines, ((1e-3, 1e-3), (1e-2, 1e-2), (3e-2, 1e-2))):
        deltas = 100 * (np.array(SWEEP[renorm_rate]["batchrenorm"])
                        - np.array(SWEEP[batchnorm_rate]["batchnorm"]))
        low, high = stats.t.interval(0.95, len(deltas) - 1, loc=deltas.mean(),
                                     scale=stats.sem(deltas))
        assert f"batch renorm − batch norm {deltas.mean():+.2f} [{low:+.2f}, {high:+.2f}]" in line
    assert "Adam at 0.001, the presets' learning rate" in lines[0]
    assert "Adam at 0.01, the best learning rate for batch norm and renorm together" in lines[1]
    assert "each arm at its own best" in lines[2] and "0.03 (Batch Renorm)" in lines[2]


def test_a_readme_without_the_findings_markers_is_refused(tmp_path):
    with pytest.raises(ValueError, match="findings block"):
        report.with_findings("# A README\n", tmp_path)
    readme = tmp_path / "README.md"
    readme.write_text(f"before\n{report.FINDINGS_BEGIN}\nold\n{report.FINDINGS_END}\nafter\n")
    from test_results import SWEEP, write_sweep

    write_sweep(tmp_path / "results", SWEEP)
    (tmp_path / "results" / "cpu").mkdir()  # no sweep of cpu: refused by name
    with pytest.raises(FileNotFoundError, match="cpu"):
        report.write_findings(tmp_path / "results", readme)
    assert "old" in readme.read_text()  # left as it was


def test_a_section_shows_its_figure_only_where_it_is_drawn(tmp_path):
    write_runs(tmp_path / "results", "batchnorm", [[0.5, 0.6], [0.55, 0.62]])
    write_settings(tmp_path / "results")
    (tmp_path / "figures").mkdir()
    assert "figure2_quick.png" not in report.generate(tmp_path / "results", tmp_path / "figures")
    (tmp_path / "figures" / "figure2_quick.png").write_bytes(b"png")
    page = report.generate(tmp_path / "results", tmp_path / "figures")
    assert "![Figure 2 of `quick`](../figures/figure2_quick.png)" in page


def test_warmup_exit_table_reads_renorm_where_its_warmup_ends(tmp_path):
    from brlib.protocol import get_preset

    preset = get_preset("glyphs_workers")  # warm-up 300 steps, an evaluation every 100
    steps = np.arange(100, 1100, 100)
    rng = np.random.default_rng(0)

    def curves(seeds):
        columns = {name: rng.uniform(0.0, 1.0, (len(seeds), len(steps))) for name in
                   ("train_loss", "r_clipped", "val_accuracy", "val_accuracy_recalibrated")}
        return results.Curves(steps, list(seeds), columns)

    loaded = results.Results(preset, {"batchrenorm": curves([0, 1, 2]),
                                      "batchnorm": curves([0, 1, 2, 3]),
                                      "batchrenorm_longwarmup": curves([1, 2])})
    table = report.warmup_exit_table(loaded)
    rows = [line for line in table.splitlines()[2:]]
    assert len(rows) == 2  # batchrenorm and the long warm-up; the others have no results
    renorm, twin = loaded["batchrenorm"], loaded["batchnorm"]
    at, after = 2, 3  # steps 300 and 400
    expected = [renorm["train_loss"][:, at], renorm["train_loss"][:, after],
                100 * renorm["r_clipped"][:, after], 100 * twin["val_accuracy"][:3, at],
                100 * twin["val_accuracy_recalibrated"][:3, at]]
    assert rows[0] == "| Batch Renorm (3 seeds) | 300 | " + " | ".join(
        f"{np.mean(c):.2f} ± {np.std(c, ddof=1):.2f}" for c in expected) + " |"
    # The long warm-up ends at 600, read beside batch norm's seeds 1 and 2 only.
    long = loaded["batchrenorm_longwarmup"]
    assert rows[1].startswith("| Batch Renorm, warm-up × 2 (2 seeds) | 600 | ")
    assert f"{np.mean(100 * twin['val_accuracy'][[1, 2], 5]):.2f}" in rows[1]
    assert f"{np.mean(long['train_loss'][:, 6]):.2f}" in rows[1]


def test_findings_read_the_paper_structure_as_one_bonferroni_family():
    page = report.findings(ROOT / "data" / "results")
    line = next(line for line in page.splitlines() if "paper's structure" in line)
    loaded = results.load_results(ROOT / "data" / "results", "glyphs_workers")
    family = len(results.gaps(loaded, results.WORKERS_GAPS, "val_accuracy_recalibrated"))
    level = 1 - 0.05 / family
    final = lambda arm: 100 * loaded[arm]["val_accuracy_recalibrated"][:, -loaded.last:].mean(axis=1)
    deltas = final("batchnorm_remixed") - final("batchnorm_iid")  # the same seeds, in order
    low, high = stats.t.interval(level, len(deltas) - 1, loc=deltas.mean(), scale=stats.sem(deltas))
    assert f"family of {family} at {100 * level:.2f} % each" in line
    assert f"re-mixed − i.i.d. (the paired sampling) {deltas.mean():+.2f} [{low:+.2f}, {high:+.2f}]" in line


def test_change_table_sets_each_cost_in_both_presets_beside_its_welch_change(tmp_path):
    rng = np.random.default_rng(1)
    for preset in ("glyphs_workers", "glyphs_workers_long"):
        write_near(tmp_path, preset, {"batchnorm": 0.90, "batchnorm_iid": 0.97, "batchrenorm": 0.80},
                   rng, seeds=5)
    short = results.load_results(tmp_path, "glyphs_workers")
    long = results.load_results(tmp_path, "glyphs_workers_long")
    table = report.results.format_change_table(short, long).splitlines()
    assert len(table) == 2 + len(results.LONG_GAPS)
    final = lambda loaded, arm: 100 * loaded[arm]["val_accuracy_recalibrated"][:, -2:].mean(axis=1)
    cost = lambda loaded: final(loaded, "batchnorm") - final(loaded, "batchnorm_iid")
    reference = stats.ttest_ind(cost(long), cost(short), equal_var=False).confidence_interval()
    change = cost(long).mean() - cost(short).mean()
    ratio = (100 - final(long, "batchnorm").mean()) / (100 - final(long, "batchnorm_iid").mean())
    row = table[2]
    assert row.startswith("| batch norm: pairs − i.i.d. | ")
    assert f"| {ratio:.2f} |" in row
    assert row.endswith(f"| {change:+.2f} [{reference.low:+.2f}, {reference.high:+.2f}] |")
    assert table[0].endswith("| `glyphs_workers_long` − `glyphs_workers` (Welch, 95 %) |")


def test_findings_read_the_long_preset_as_its_own_family(tmp_path):
    write_near(tmp_path, "glyphs_workers_long",
               {"batchnorm": 0.90, "batchnorm_iid": 0.97, "batchrenorm": 0.80},
               np.random.default_rng(2))
    line = next(line for line in report.findings(tmp_path, swept=()).splitlines()
                if "glyphs_workers_long" in line)
    final = lambda arm: recalibrated_finals(tmp_path, "glyphs_workers_long", arm)
    deltas = final("batchrenorm") - final("batchnorm_iid")
    low, high = stats.t.interval(1 - 0.05 / 3, 2, loc=deltas.mean(), scale=stats.sem(deltas))
    assert "family of 3 at 98.33 % each" in line
    assert f"batch renorm on pairs − batch norm i.i.d. {deltas.mean():+.2f} [{low:+.2f}, {high:+.2f}]" in line


def test_class_sweep_section_reads_each_number_of_classes_as_its_own_family(tmp_path):
    rng = np.random.default_rng(3)
    levels = {"batchnorm": 0.90, "batchnorm_iid": 0.97, "batchrenorm": 0.80,
              "batchrenorm_longwarmup": 0.88}
    write_near(tmp_path, "glyphs_workers", levels, rng)
    # A sweep point without batchrenorm: a family of three.
    write_near(tmp_path, "glyphs_workers_classes30",
               {arm: level for arm, level in levels.items() if arm != "batchrenorm"}, rng)
    section = report.workers_classes_section(
        tmp_path, ["glyphs_workers", "glyphs_workers_classes30"])
    assert section.startswith("## Figure 3 in the paper's structure, against the number of classes")
    assert "99.00 % in a family of 5" in section and "98.75 % in a family of 4" not in section
    final = lambda preset, arm: recalibrated_finals(tmp_path, preset, arm)
    # 30 classes has batch norm, i.i.d. and the long warm-up: three of the five differences.
    assert "98.33 % in a family of 3" in section
    deltas = final("glyphs_workers_classes30", "batchrenorm_longwarmup") - final(
        "glyphs_workers_classes30", "batchnorm_iid")
    low, high = stats.t.interval(1 - 0.05 / 3, 2, loc=deltas.mean(), scale=stats.sem(deltas))
    row = next(line for line in section.splitlines()[::-1]  # the recalibrated table comes last
               if line.startswith("| batch renorm, warm-up × 2, on pairs − batch norm i.i.d. | "
                                  "`glyphs_workers_classes30` | 30 | 3 |"))
    assert f"{deltas.mean():+.2f} [{low:+.2f}, {high:+.2f}]" in row
    values = final("glyphs_workers_classes30", "batchnorm")
    finals = next(line for line in section.splitlines() if line.startswith("| `glyphs_workers_classes30`"))
    assert finals.startswith("| `glyphs_workers_classes30` | 30 | 1000 | "
                             f"{values.mean():.2f} ± {values.std(ddof=1):.2f} (3) |")
    cells = [cell.strip() for cell in finals.strip("|").split("|")]
    assert cells[5] == "—" and cells[6] != "—"  # no batchrenorm at 30 classes; the long warm-up


def test_class_sweep_section_needs_a_sweep_point_beside_the_preset(tmp_path):
    write_runs(tmp_path, "batchnorm", np.full((2, 4), 0.9), preset="glyphs_workers", last=2)
    assert report.workers_classes_section(tmp_path, ["glyphs_workers"]) is None


def test_findings_read_the_1000_class_point_as_its_own_family(tmp_path):
    write_near(tmp_path, "glyphs_workers_classes1000",
               {"batchnorm": 0.3, "batchnorm_remixed": 0.4, "batchnorm_iid": 0.6,
                "batchrenorm_longwarmup": 0.3}, np.random.default_rng(5))
    line = next(line for line in report.findings(tmp_path, swept=()).splitlines()
                if "glyphs_workers_classes1000" in line)
    final = lambda arm: recalibrated_finals(tmp_path, "glyphs_workers_classes1000", arm)
    deltas = final("batchnorm") - final("batchnorm_remixed")
    # Five of the seven differences have both arms (none of batchrenorm's): a family of five.
    low, high = stats.t.interval(1 - 0.05 / 5, 2, loc=deltas.mean(), scale=stats.sem(deltas))
    assert line.startswith("- Figure 3 in the paper's structure at 1000 classes")
    assert "family of 5 at 99.00 % each" in line
    assert f"pairs − re-mixed (a partner in the group) {deltas.mean():+.2f} [{low:+.2f}, {high:+.2f}]" in line
    assert "batch renorm on pairs − batch norm i.i.d." not in line  # in the family, not shown
