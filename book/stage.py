"""Lays out the book's sources in a scratch folder: python book/stage.py STAGE_DIR.

book/build.sh runs this, then sphinx-build on STAGE_DIR. The folder mirrors the
repository (README.md and the other top-level pages that index.md lists,
docs/, notebooks/, figures/), so that every relative link and image path written for
GitHub works unchanged in the book; links to other files of the repository are
turned into links to GitHub by conf.py. Nothing in the repository is changed.

In the notebooks' copies four things change: a code cell hidden in Jupyter
(metadata jupyter.source_hidden, as the exercise solutions' code is) gets
myst-nb's `hide-input` tag, so that the book shows it inside a closed
<details> too (and jupyter.outputs_hidden gets `hide-output`); a figure's
alt text is the first sentence of the Markdown cell above it, which
introduces it; the Colab badge's image comes from the site, not from
Colab; and a widget that redraws only in a running kernel gives way to a
note that says so (its static twin is beside it), while a progress bar,
whose saved text is its first frame, is dropped. Widgets whose controls are
linked to their pictures in the browser (`brlib.widgets.gallery`) stay and
move. Outputs, widget state and the rest of the Markdown stay as committed.

_static/ gets book/_static/ and the vendored JavaScript (book/vendor.sh):
MathJax's tex-chtml component with the files it loads on demand, and
ipywidgets' HTML manager. Without them the staging stops and says how to
fetch them.
"""

import fnmatch
import json
import re
import shutil
import sys
from pathlib import Path

BOOK = Path(__file__).resolve().parent
ROOT = BOOK.parent
VENDOR = BOOK / "_vendor"
BRANCH = "main"  # the branch that the book's links to repository files point at

# MathJax: the one component the pages load, and the folders it reads from at run
# time (TeX extensions that autoload, CHTML fonts, the menu, accessibility, speech).
MATHJAX_FILES = ["tex-chtml.js", "input/tex/extensions", "output/chtml/fonts/woff-v2",
                 "ui", "a11y", "sre", "adaptors"]


def repository_url():
    """The Repository URL of pyproject.toml, the project's one place for it."""
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    match = re.search(r'^Repository\s*=\s*"([^"]+)"', text, re.MULTILINE)
    if not match:
        sys.exit("pyproject.toml has no [project.urls] Repository")
    return match.group(1).rstrip("/")


def copy_vendor(static):
    mathjax = VENDOR / "mathjax" / "es5"
    widgets = VENDOR / "html-manager" / "dist"
    missing = [str(path) for path in (mathjax / "tex-chtml.js", widgets / "embed.js")
               if not path.is_file()]
    if missing:
        sys.exit(f"missing {', '.join(missing)}: run `bash book/vendor.sh` once (it fetches "
                 "MathJax and ipywidgets' HTML manager from npm); the build itself is offline")
    shutil.copytree(VENDOR / "mathjax", static / "mathjax",  # its LICENSE and package.json
                    ignore=lambda folder, names: [n for n in names if n not in
                                                  ("LICENSE", "package.json")])
    for name in MATHJAX_FILES:
        source, target = mathjax / name, static / "mathjax" / name
        if source.is_dir():
            shutil.copytree(source, target)
        elif source.is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    # embed.js holds the base widgets and needs no module loader; its fonts and the
    # licenses of what it bundles sit beside it.
    shutil.copytree(widgets, static / "widgets", ignore=shutil.ignore_patterns("*.map", "*amd.js"))
    shutil.copy2(VENDOR / "html-manager" / "package.json", static / "widgets" / "package.json")


COLAB_BADGE = "https://colab.research.google.com/assets/colab-badge.svg"
LOCAL_BADGE = "../_static/colab-badge.svg"  # the same badge, served by the site


def first_sentence(markdown, limit=200):
    """The first sentence of a Markdown cell's first paragraph that is not a heading, as
    plain text, for the alt text of the figure that the cell introduces."""
    for paragraph in re.split(r"\n\s*\n", markdown):
        if paragraph.lstrip().startswith(("#", "<", "|", "```")):
            continue  # a heading, HTML (a solution), a table or code
        text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", paragraph)  # links: their text
        text = re.sub(r"[*_`$\\]", "", text)
        text = " ".join(text.split())
        if text:
            sentence = re.split(r"(?<=[.?!])\s", text, maxsplit=1)[0]
            return sentence if len(sentence) <= limit else sentence[:limit - 1].rstrip() + "…"
    return ""


WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"
PROGRESS_MODELS = {"FloatProgressModel", "IntProgressModel"}
# What the book shows in place of a panel that redraws only in a running kernel.
KERNEL_PANEL_NOTE = ('<p class="kernel-panel"><em>A live panel: it redraws in a running kernel. '
                     'Open this notebook in Colab (link at the top of the page) to move it; '
                     'here, its static twin shows the same figure.</em></p>')


def _models_under(state, model_id):
    """The ids of a widget model and of every model its state refers to, recursively."""
    found, pending = set(), [model_id]
    while pending:
        current = pending.pop()
        if current in found:
            continue
        found.add(current)
        text = json.dumps(state.get(current, {}).get("state", {}))
        pending += re.findall(r"IPY_MODEL_([0-9a-f]+)", text)
    return found


def widget_kind(state, model_id):
    """"progress" (a progress bar), "browser" (moves without a kernel: a browser-side link
    joins its controls to what they show) or "kernel" (redraws only in a kernel)."""
    models = _models_under(state, model_id)
    if any(state.get(m, {}).get("model_name") in PROGRESS_MODELS for m in models):
        return "progress"
    for link in state.values():
        if link.get("model_name") not in ("LinkModel", "DirectionalLinkModel"):
            continue
        ends = re.findall(r"IPY_MODEL_([0-9a-f]+)", json.dumps(link.get("state", {})))
        if ends and all(end in models for end in ends):
            return "browser"
    return "kernel"


def stage_widget_outputs(cell, state):
    """Keeps the widgets that move without a kernel; drops progress bars (their saved text
    is the bar's first frame); puts a note in place of a panel that needs a kernel."""
    outputs = []
    for output in cell.get("outputs", []):
        view = output.get("data", {}).get(WIDGET_VIEW)
        kind = widget_kind(state, view["model_id"]) if view else None
        if kind == "kernel":
            output = {"output_type": "display_data", "metadata": {},
                      "data": {"text/html": KERNEL_PANEL_NOTE}}
        if kind != "progress":
            outputs.append(output)
    cell["outputs"] = outputs


def has_image(cell):
    return any(key.startswith("image/") for output in cell.get("outputs", [])
               for key in output.get("data", {}))


def stage_notebook(source, target):
    notebook = json.loads(source.read_text(encoding="utf-8"))
    state = notebook.get("metadata", {}).get("widgets", {}).get(WIDGET_STATE, {}).get("state", {})
    introduction = ""  # the Markdown cell above, whose first sentence introduces a figure
    for cell in notebook.get("cells", []):
        if cell.get("cell_type") == "markdown":
            text = "".join(cell.get("source", []))
            if COLAB_BADGE in text:
                cell["source"] = text.replace(COLAB_BADGE, LOCAL_BADGE)
            introduction = first_sentence(text) or introduction
            continue
        if cell.get("cell_type") != "code":
            continue
        metadata = cell.setdefault("metadata", {})
        hidden = metadata.get("jupyter", {})
        tags = metadata.setdefault("tags", [])
        for flag, tag in (("source_hidden", "hide-input"), ("outputs_hidden", "hide-output")):
            if hidden.get(flag) and tag not in tags:
                tags.append(tag)
        stage_widget_outputs(cell, state)
        if has_image(cell) and introduction:
            image = metadata.setdefault("mystnb", {}).setdefault("image", {})
            image.setdefault("alt", f"Figure: {introduction}")
    target.write_text(json.dumps(notebook, ensure_ascii=False, indent=1), encoding="utf-8")


def stage_page(source, target, badge):
    """A Markdown page, with the Colab badge's image served by the site (at `badge`)."""
    target.write_text(source.read_text(encoding="utf-8").replace(COLAB_BADGE, badge),
                      encoding="utf-8")


def toctree_entries(index):
    entries, in_toctree = [], False
    for line in index.read_text(encoding="utf-8").splitlines():
        stripped = line.strip()
        if stripped.startswith("```{toctree}"):
            in_toctree = True
        elif stripped.startswith("```"):
            in_toctree = False
        elif in_toctree and stripped and not stripped.startswith(":"):
            entries.append(toctree_target(stripped))
    return entries


def toctree_target(entry):
    """The page of a toctree entry: `README`, or `README` in `The README <README>`."""
    match = re.fullmatch(r".*<([^<>]+)>", entry)
    return match.group(1).strip() if match else entry


def stage_index(source, target, docnames):
    """book/index.md without the toctree entries that match no page (an optional page)."""
    lines, in_toctree = [], False
    for line in source.read_text(encoding="utf-8").splitlines():
        stripped = line.strip()
        if stripped.startswith("```{toctree}"):
            in_toctree = True
        elif stripped.startswith("```"):
            in_toctree = False
        elif (in_toctree and stripped and not stripped.startswith(":")
              and not fnmatch.filter(docnames, toctree_target(stripped))):
            continue
        lines.append(line)
    target.write_text("\n".join(lines) + "\n", encoding="utf-8")


def main(stage):
    stage = Path(stage).resolve()
    stage.mkdir(parents=True, exist_ok=True)
    if any(stage.iterdir()):
        sys.exit(f"{stage} is not empty")
    docnames = []
    # The top-level pages that index.md names (README, CONTRIBUTING, ...); links to other
    # top-level files go to GitHub.
    entries = toctree_entries(BOOK / "index.md")
    for page in sorted(ROOT.glob("*.md")):
        if any(fnmatch.fnmatch(page.stem, entry) for entry in entries):
            stage_page(page, stage / page.name, "_static/colab-badge.svg")
            docnames.append(page.stem)
    if (ROOT / "docs").is_dir():
        (stage / "docs").mkdir()
        for page in sorted((ROOT / "docs").glob("*.md")):
            stage_page(page, stage / "docs" / page.name, LOCAL_BADGE)
            docnames.append(f"docs/{page.stem}")
    if (ROOT / "figures").is_dir():
        shutil.copytree(ROOT / "figures", stage / "figures")
    (stage / "notebooks").mkdir()
    for notebook in sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")):
        stage_notebook(notebook, stage / "notebooks" / notebook.name)
        docnames.append(f"notebooks/{notebook.stem}")
    shutil.copy2(BOOK / "conf.py", stage / "conf.py")
    stage_index(BOOK / "index.md", stage / "index.md", docnames)
    shutil.copytree(BOOK / "_static", stage / "_static")  # the book's own static files
    copy_vendor(stage / "_static")
    settings = {"repository_root": str(ROOT), "repository_url": repository_url(),
                "branch": BRANCH}
    (stage / "_book.json").write_text(json.dumps(settings, indent=1), encoding="utf-8")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(sys.argv[1])
