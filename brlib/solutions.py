"""Exercise solutions hidden in the notebooks, and the check that keeps them right.

A solution is a Markdown cell that opens a `<details>` block whose summary
starts with "Solution". GitHub, Colab and JupyterLab all render such a block
collapsed, so its explanation, its code and what the code prints stay hidden
until the reader opens it. The code is the block's fenced ```python parts, in
order; what it prints is the fenced ```text parts after them, in order, if any.
An HTML comment in the block, `<!-- same output in quick mode -->`, which no
renderer shows, marks a solution whose output is compared in quick mode too.

A notebook's last cell calls `check`, which runs every solution's code in the
notebook's own namespace and compares what it prints with the recorded text,
so that running the notebook (as CI does with nbval) also runs its solutions.
"""

import contextlib
import dataclasses
import io
import json
import re
import sys
from pathlib import Path

_DETAILS = re.compile(r"<details>\s*<summary>\s*(Solution[^<]*?)\s*</summary>(.*?)</details>",
                      re.S)
_FENCE = re.compile(r"^```(python|text)[ \t]*\n(.*?)^```[ \t]*$", re.S | re.M)
# A solution whose block holds this comment prints the same in quick and full mode, so its
# output is compared in both; the others only in full mode. A comment, not a line of code,
# so that the reader's copy of the code holds no test machinery.
SAME_IN_QUICK_MODE = "<!-- same output in quick mode -->"


@dataclasses.dataclass(frozen=True)
class Solution:
    """One hidden solution: its summary, its code, and the output recorded under it (or None)."""

    name: str
    code: str
    output: str | None
    same_in_quick_mode: bool = False


def extract(notebook):
    """The hidden solutions of a notebook file, in the order they appear."""
    cells = json.loads(Path(notebook).read_text(encoding="utf-8"))["cells"]
    solutions = []
    for cell in cells:
        if cell["cell_type"] != "markdown":
            continue
        for name, body in _DETAILS.findall("".join(cell["source"])):
            blocks = _FENCE.findall(body)
            code = "".join(text for kind, text in blocks if kind == "python")
            outputs = [text for kind, text in blocks if kind == "text"]  # one after each part
            solutions.append(Solution(name, code, "".join(outputs) if outputs else None,
                                      SAME_IN_QUICK_MODE in body))
    return solutions


def _normalize(text):
    return "\n".join(line.rstrip() for line in text.strip().splitlines())


def run(solution, namespace):
    """Runs one solution's code in `namespace`; returns what it printed.

    Figures it draws are closed instead of shown: the check must not reveal
    what the hidden block holds.
    """
    printed = io.StringIO()
    pyplot = sys.modules.get("matplotlib.pyplot")  # only if the notebook uses it
    show = pyplot.show if pyplot else None
    try:
        if pyplot:
            pyplot.show = lambda *args, **kwargs: None
        with contextlib.redirect_stdout(printed):
            exec(compile(solution.code, f"<{solution.name}>", "exec"), namespace)
    finally:
        if pyplot:
            pyplot.show = show
            pyplot.close("all")
    return printed.getvalue()


def check(notebook, namespace, quick=False):
    """Runs every hidden solution of `notebook` in `namespace` and checks what each prints.

    Args:
        notebook: Path of the notebook file. Where it does not exist (Colab
            opens a notebook without its file), nothing is checked.
        namespace: The notebook's globals, so that solutions see its state.
        quick: Quick mode: compare only the outputs of solutions marked as
            the same in both modes (their block holds `SAME_IN_QUICK_MODE`);
            the others must still run.

    Returns:
        The names of the solutions that ran.

    Raises:
        AssertionError: when a solution prints something other than its
            recorded output.
    """
    path = Path(notebook)
    if not path.is_file():
        print(f"{path.name} is not on this machine: its hidden solutions are not checked here.")
        return []
    ran, compared = [], 0
    for solution in extract(path):
        if not solution.code.strip():
            continue
        printed = run(solution, namespace)
        if solution.output is not None and (
                not quick or solution.same_in_quick_mode):
            if _normalize(printed) != _normalize(solution.output):
                raise AssertionError(f"{solution.name} of {path.name} printed\n{printed}\nbut "
                                     f"its hidden block records\n{solution.output}")
            compared += 1
        ran.append(solution.name)
    print(f"hidden solutions run: {', '.join(ran) or 'none'}; {compared} of them printed exactly "
          "what their block records, the others ran without error.")
    return ran
