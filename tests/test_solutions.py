"""brlib.solutions: hidden solutions found in notebook JSON, run, and checked against their text."""

import json
from pathlib import Path

import nbformat
import pytest

from brlib import solutions

EXERCISE = """## Exercises

1. Add.

<details><summary>Solution 1</summary>
<!-- same output in quick mode -->

Add them.

```python
total = a + b
print("total", total)
```

```text
total 5
```

</details>
"""
SECOND = """<details><summary>Solution 2</summary>

Double it, then draw it.

```python
doubled = 2 * total
import matplotlib.pyplot as plt
plt.plot([0, doubled])
plt.show()
print(doubled)
```

```text
10
```

</details>

<details><summary>Solution 3</summary>

Words only: no code.

</details>

## References
"""


def write_notebook(path, *markdown):
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("a, b = 2, 3")] + [
        nbformat.v4.new_markdown_cell(text) for text in markdown])
    path.write_text(nbformat.writes(notebook))
    return path


def test_solutions_are_read_from_details_blocks_in_markdown(tmp_path):
    path = write_notebook(tmp_path / "n.ipynb", EXERCISE, SECOND)
    found = solutions.extract(path)
    # Reference: the blocks as written above.
    assert [s.name for s in found] == ["Solution 1", "Solution 2", "Solution 3"]
    assert found[0].code == 'total = a + b\nprint("total", total)\n'
    assert found[0].same_in_quick_mode and not found[1].same_in_quick_mode
    assert found[0].output == "total 5\n" and found[1].output == "10\n"
    assert found[2].code == "" and found[2].output is None
    # GitHub, Colab and Jupyter collapse <details>: the cell JSON holds no code cell for them.
    cells = json.loads(path.read_text())["cells"]
    assert [c["cell_type"] for c in cells] == ["code", "markdown", "markdown"]


def test_check_runs_solutions_in_the_notebook_namespace_and_compares_output(tmp_path, capsys):
    import matplotlib

    matplotlib.use("Agg")
    path = write_notebook(tmp_path / "n.ipynb", EXERCISE, SECOND)
    namespace = {"a": 2, "b": 3}
    assert solutions.check(path, namespace) == ["Solution 1", "Solution 2"]
    assert namespace["doubled"] == 10  # later solutions see earlier ones, as cells would
    import matplotlib.pyplot as plt

    assert plt.get_fignums() == []  # drawn figures are closed, not shown
    assert "2 of them printed exactly" in capsys.readouterr().out


def test_a_solution_that_prints_something_else_fails(tmp_path):
    path = write_notebook(tmp_path / "n.ipynb", EXERCISE.replace("total 5", "total 6"))
    with pytest.raises(AssertionError, match="Solution 1 of n.ipynb printed"):
        solutions.check(path, {"a": 2, "b": 3})


def test_quick_mode_compares_only_outputs_marked_the_same_in_both_modes(tmp_path, capsys):
    path = write_notebook(tmp_path / "n.ipynb", EXERCISE, SECOND.replace("```text\n10", "```text\n11"))
    assert solutions.check(path, {"a": 2, "b": 3}, quick=True) == ["Solution 1", "Solution 2"]
    assert "1 of them printed exactly" in capsys.readouterr().out
    with pytest.raises(AssertionError, match="Solution 2"):
        solutions.check(path, {"a": 2, "b": 3}, quick=False)


def test_a_broken_solution_raises_its_own_error(tmp_path):
    path = write_notebook(tmp_path / "n.ipynb", EXERCISE.replace("a + b", "a + missing"))
    with pytest.raises(NameError, match="missing"):
        solutions.check(path, {"a": 2, "b": 3})


def test_a_missing_notebook_file_is_skipped_with_a_message(tmp_path, capsys):
    assert solutions.check(tmp_path / "absent.ipynb", {}) == []
    assert "not on this machine" in capsys.readouterr().out


def test_a_solution_in_two_parts_records_both_outputs_in_order(tmp_path):
    two_parts = EXERCISE.replace("</details>", "```python\nprint('again')\n```\n\n```text\nagain\n```\n\n</details>")
    path = write_notebook(tmp_path / "n.ipynb", two_parts)
    (found,) = solutions.extract(path)
    assert found.output == "total 5\nagain\n" and found.code.endswith("print('again')\n")
    assert solutions.check(path, {"a": 2, "b": 3}) == ["Solution 1"]


NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("[0-9][0-9]_*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.name)
def test_the_readers_view_hides_the_machinery_by_cell_metadata(path):
    cells = json.loads(path.read_text())["cells"]
    setup = cells[1]["metadata"]
    # The setup cell is collapsed in Colab (a form) and in the book (myst-nb's hide-input);
    # source_hidden stays for the hidden solutions' code, whose outputs must not show.
    assert setup["cellView"] == "form" and "hide-input" in setup["tags"]
    assert not setup.get("jupyter", {}).get("source_hidden")
    assert "".join(cells[1]["source"]).startswith("#@title Setup")
    # The cell that checks the hidden solutions is removed from the book (myst-nb's tag).
    checks = [cell for cell in cells if cell["cell_type"] == "code"
              and "br.solutions.check(" in "".join(cell["source"])]
    assert len(checks) <= 1 and all("remove-cell" in cell["metadata"].get("tags", [])
                                    for cell in checks)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.name)
def test_solution_code_holds_no_test_machinery(path):
    """What a reader copies from a solution is the solution: no markers for the tests."""
    assert [s.name for s in solutions.extract(path) if "NBVAL" in s.code] == []
