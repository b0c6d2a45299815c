"""Sphinx configuration of the brlib book. Build it with book/build.sh, not sphinx-build here.

Why Sphinx with myst-nb: myst-nb renders each notebook's committed outputs as
they are, with execution off, so the build needs no kernel and no TensorFlow;
one Markdown parser (MyST) reads the notebooks' cells, README.md and docs/*.md,
passes raw HTML such as the solutions' <details> through, and resolves the
links between all of them at build time, where a broken one is an error. It
draws ipywidgets from the state saved in the notebook through a script whose
path is a setting, as is MathJax's, so both come from the site itself.
Jupyter Book 1 is the same stack on an older Sphinx with more layers;
mkdocs-jupyter renders through nbconvert templates that load require.js and
MathJax from CDNs. The theme, Furo, ships all its files in its wheel.

book/stage.py copies the sources into a scratch folder laid out like the
repository, with this file and a _book.json beside them; see its docstring.
"""

import json
import posixpath
import re
from pathlib import Path

from docutils import nodes
from sphinx import addnodes
from sphinx.transforms.post_transforms import SphinxPostTransform

_SETTINGS = json.loads((Path(__file__).parent / "_book.json").read_text(encoding="utf-8"))
REPOSITORY_ROOT = Path(_SETTINGS["repository_root"])
REPOSITORY_URL = _SETTINGS["repository_url"]
BRANCH = _SETTINGS["branch"]

project = "brlib"
author = "the brlib authors"
copyright = "2026, the brlib authors (MIT License)"
html_title = "brlib"  # the site name in the sidebar and after each page title in the tab
root_doc = "index"
extensions = ["myst_nb"]
exclude_patterns = ["_build", "_static", "**.ipynb_checkpoints"]

# Notebooks: shown with their committed outputs, never executed here.
nb_execution_mode = "off"
nb_merge_streams = True
nb_render_markdown_format = "myst"  # text/markdown outputs (tables) parsed like cells
# Widgets drawn from the notebook's saved state by ipywidgets' own HTML manager,
# served from this site (book/vendor.sh fetches it) instead of a CDN; before it, the
# one MathJax 2 call it makes, given to MathJax 3 (_static/widgets_mathjax.js).
nb_ipywidgets_js = {"widgets_mathjax.js": {}, "widgets/embed.js": {}}

# Markdown: $…$ and $$…$$ math as in Jupyter; heading anchors as on GitHub, which
# docs/*.md link to (links with Jupyter's anchors are mapped to them below).
myst_enable_extensions = ["dollarmath", "amsmath"]
myst_dmath_double_inline = True
myst_heading_anchors = 4
# Heading levels that skip one (H1 to H3) render well, on GitHub too: not a warning here.
suppress_warnings = ["myst.header"]

# Math: MathJax 3 from this site (book/vendor.sh); no CDN.
mathjax_path = "mathjax/tex-chtml.js"

html_theme = "furo"
html_static_path = ["_static"]
html_favicon = "_static/favicon.svg"
html_css_files = ["brlib.css"]
html_js_files = ["brlib.js"]
html_copy_source = False
html_show_sourcelink = False
html_last_updated_fmt = None


def _slug(text):
    """GitHub's heading anchor, which MyST gives every heading."""
    return re.sub(r"[^\w\u4e00-\u9fff\- ]", "", text.lower().replace(" ", "-"))


class RepositoryLinks(SphinxPostTransform):
    """Makes links written for GitHub work in the book, before MyST resolves them.

    - `notebook.ipynb#Some-Heading` (Jupyter's anchor) becomes the heading's GitHub
      anchor, `some-heading`, when that is the one the page has.
    - A relative link to a file or folder of the repository that is not a page of
      the book (LICENSE, a module, data/results/) becomes a link to it on GitHub.
    Links that are neither stay as they are, and MyST reports them as broken.
    """

    default_priority = 8  # before MyST's resolver (9)

    def run(self, **kwargs):
        for node in list(self.document.findall(addnodes.pending_xref)):
            if node.get("reftype") != "myst":
                continue
            if node.get("refdomain") == "doc":
                self._fix_anchor(node)
            elif node.get("refdomain") is None:
                self._link_to_repository(node)
        for node in list(self.document.findall(nodes.reference)):
            if node.get("id_link") and node.get("refuri", "").startswith("#"):
                anchor = self._anchor(self.env.docname, node["refuri"][1:])
                node["refuri"] = "#" + anchor

    def _anchor(self, docname, anchor):
        slugs = self.env.metadata.get(docname, {}).get("myst_slugs", {})
        if anchor in slugs or _slug(anchor) not in slugs:
            return anchor
        return _slug(anchor)

    def _fix_anchor(self, node):
        if node.get("reftargetid"):
            node["reftargetid"] = self._anchor(node["reftarget"], node["reftargetid"])

    def _link_to_repository(self, node):
        path, _, fragment = node["reftarget"].partition("#")
        if not path or re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", path):
            return
        here = posixpath.dirname(node.get("refdoc", self.env.docname))
        relative = posixpath.normpath(posixpath.join(here, path))
        target = REPOSITORY_ROOT / relative
        if relative.startswith("..") or not target.exists():
            return
        kind = "tree" if target.is_dir() else "blob"
        uri = f"{REPOSITORY_URL}/{kind}/{BRANCH}/{relative.rstrip('/')}"
        link = nodes.reference("", "", refuri=uri + (f"#{fragment}" if fragment else ""),
                               internal=False, classes=["external"])
        content = node.children[0].deepcopy() if node.children else None
        if content is None or not content.astext():
            content = nodes.literal(path, path)
        link += content
        node.replace_self(link)


def notebook_links(docname):
    """HTML of a notebook page's links: open it in Colab, download it, read its source."""
    name = posixpath.basename(docname) + ".ipynb"
    path = f"{docname}.ipynb"
    colab = REPOSITORY_URL.replace("https://github.com/", "https://colab.research.google.com/github/")
    links = [(f"{colab}/blob/{BRANCH}/{path}", "Open in Colab", ""),
             (name, "Download .ipynb", f' download="{name}"'),
             (f"{REPOSITORY_URL}/blob/{BRANCH}/{path}", "View source", "")]
    anchors = "".join(f'<a class="reference{" external" if href.startswith("http") else ""}" '
                      f'href="{href}"{extra}>{text}</a>' for href, text, extra in links)
    return f'<p class="notebook-links">{anchors}</p>'


class NotebookLinks(SphinxPostTransform):
    """Puts the notebook's links (Colab, download, source) under each notebook page's title."""

    default_priority = 900

    def run(self, **kwargs):
        docname = self.env.docname
        if not docname.startswith("notebooks/"):
            return
        section = next(iter(self.document.findall(nodes.section)), None)
        if section is None:
            return
        title = next(iter(section.findall(nodes.title)), None)
        position = section.index(title) + 1 if title is not None else 0
        section.insert(position, nodes.raw("", notebook_links(docname), format="html"))


def copy_notebooks(app, exception):
    """Puts each notebook, as committed, beside its page, for the page's download link."""
    if exception is not None or app.builder.format != "html":
        return
    source, target = Path(app.srcdir) / "notebooks", Path(app.outdir) / "notebooks"
    target.mkdir(parents=True, exist_ok=True)
    for notebook in sorted((REPOSITORY_ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")):
        if (source / notebook.name).exists():
            (target / notebook.name).write_bytes(notebook.read_bytes())


def setup(app):
    app.add_post_transform(RepositoryLinks)
    app.add_post_transform(NotebookLinks)
    app.connect("build-finished", copy_notebooks)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
