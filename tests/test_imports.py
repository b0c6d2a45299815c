"""brlib's modules import each other without a cycle, and the readers of results never load
TensorFlow.

The graph is read from the source with `ast`, not by importing: an edge A → B for every
`import brlib.B`, `from brlib.B import ...` or `from brlib import B` that runs when A is
imported (at module level, including inside module-level `if`, `try` and class bodies).
Imports inside functions are ignored by that graph: they run on first use, after every
module involved has finished importing, so they cannot leave a module half-initialized.
A second check adds them (`functions=True`), so that no module reaches back to one that
needs it even lazily (glyphs once imported results for its atomic write, and results →
protocol → glyphs closed a circle). The implicit import of the package `brlib` (its
__init__) before any of its submodules is not an edge; an explicit `import brlib` or
`from brlib import name` of a non-module is an edge to "brlib".
"""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "brlib"


def module_names(package=PACKAGE):
    """"brlib" and "brlib.<name>" for every module of the package directory."""
    return {"brlib" if path.stem == "__init__" else f"brlib.{path.stem}"
            for path in package.glob("*.py")}


def top_level_imports(source, functions=False):
    """What `source` imports at module level (with `functions`, anywhere): (module, names).

    `import a.b` gives ("a.b", None); `from a import b, c` gives ("a", ["b", "c"]).
    Relative imports (brlib has none) are left out.
    """
    found = []

    def visit(node):
        for child in ast.iter_child_nodes(node):
            if not functions and isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef,
                                                    ast.Lambda)):
                continue  # runs on call, not on import
            if isinstance(child, ast.Import):
                found.extend((alias.name, None) for alias in child.names)
            elif isinstance(child, ast.ImportFrom) and child.module and not child.level:
                found.append((child.module, [alias.name for alias in child.names]))
            visit(child)

    visit(ast.parse(source))
    return found


def brlib_edges(imports, modules):
    """The brlib modules that the (module, names) imports load, among `modules`."""

    def known(name):  # the longest prefix of `name` that is a module
        while name not in modules:
            name = name.rpartition(".")[0]
        return name

    edges = set()
    for module, names in imports:
        if module != "brlib" and not module.startswith("brlib."):
            continue
        if names is None:
            edges.add(known(module))
            continue
        for name in names:  # `from brlib import results` loads brlib.results
            edges.add(f"{module}.{name}" if f"{module}.{name}" in modules else known(module))
    return edges


def import_graph(package=PACKAGE, functions=False):
    """{module: the brlib modules it imports at module level} for the package directory.

    With `functions`, the imports inside functions count too.
    """
    modules = module_names(package)
    graph = {}
    for path in package.glob("*.py"):
        name = "brlib" if path.stem == "__init__" else f"brlib.{path.stem}"
        imports = top_level_imports(path.read_text(encoding="utf-8"), functions)
        graph[name] = brlib_edges(imports, modules) - {name}
    return graph


def find_cycle(graph):
    """A cycle of `graph` (dict: node → successors) as a list [a, b, ..., a], or None."""
    state = {}  # node → "open" while on the DFS stack, "done" after

    def search(node, stack):
        state[node] = "open"
        stack.append(node)
        for successor in sorted(graph.get(node, ())):
            if state.get(successor) == "open":
                return stack[stack.index(successor):] + [successor]
            if successor not in state:
                found = search(successor, stack)
                if found:
                    return found
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state:
            found = search(node, [])
            if found:
                return found
    return None


def reachable(graph, start):
    seen, todo = set(), [start]
    while todo:
        node = todo.pop()
        if node not in seen:
            seen.add(node)
            todo.extend(graph.get(node, ()))
    return seen


# ----------------------------------------------------------------------------
# The tools, on graphs and sources with known answers
# ----------------------------------------------------------------------------
def test_cycle_finder_on_known_graphs():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert find_cycle({"a": {"b", "c"}, "b": {"d"}, "c": {"d"}, "d": set()}) is None  # a diamond
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"x": {"y"}, "y": {"y"}}) == ["y", "y"]


def test_only_module_level_brlib_imports_are_edges(tmp_path):
    package = tmp_path / "brlib"
    package.mkdir()
    (package / "__init__.py").write_text("from brlib.a import f\n")
    (package / "a.py").write_text(
        "import os\nfrom brlib import b\ntry:\n    import brlib.c as c\nexcept ImportError:\n"
        "    pass\n\ndef f():\n    from brlib import d\n\nclass K:\n    from brlib.e import g\n")
    for name in "bcde":
        (package / f"{name}.py").write_text("")
    (package / "d.py").write_text("from brlib import CONSTANT\nfrom brlib.a import f\n")
    graph = import_graph(package)
    assert graph["brlib"] == {"brlib.a"}
    assert graph["brlib.a"] == {"brlib.b", "brlib.c", "brlib.e"}  # not d: inside a function
    assert graph["brlib.d"] == {"brlib", "brlib.a"}
    assert find_cycle(graph) is None  # d → brlib → a, but a imports d only in a function
    assert "brlib.d" in import_graph(package, functions=True)["brlib.a"]
    assert find_cycle(import_graph(package, functions=True)) == [
        "brlib", "brlib.a", "brlib.d", "brlib"]
    (package / "b.py").write_text("import brlib.a\n")
    assert find_cycle(import_graph(package)) == ["brlib.a", "brlib.b", "brlib.a"]


# ----------------------------------------------------------------------------
# brlib itself
# ----------------------------------------------------------------------------
@pytest.mark.parametrize("functions", [False, True], ids=["module_level", "with_functions"])
def test_brlib_modules_import_each_other_without_a_cycle(functions):
    graph = import_graph(functions=functions)
    assert {"brlib", "brlib.files", "brlib.results", "brlib.glyphs"} <= set(graph)
    cycle = find_cycle(graph)
    assert cycle is None, " → ".join(cycle)


def test_files_and_datasets_depend_on_no_result_or_protocol_module():
    graph = import_graph(functions=True)
    assert graph["brlib.files"] == set()
    for dataset in ("brlib.data", "brlib.glyphs"):
        assert not {"brlib.results", "brlib.protocol", "brlib.report"} & reachable(graph, dataset)


@pytest.mark.parametrize("reader", ["brlib.results", "brlib.report", "brlib.plots"])
def test_modules_that_read_results_never_import_tensorflow_themselves(reader):
    # Through every brlib module they load at import (the package's __init__, which loads
    # TensorFlow for the layer on that backend, is not among them).
    graph = import_graph()
    for module in reachable(graph, reader):
        assert module != "brlib", f"{reader} imports the package's __init__"
        path = PACKAGE / f"{module.rpartition('.')[2]}.py"
        imported = {name for name, _ in top_level_imports(path.read_text(encoding="utf-8"))}
        assert not {"tensorflow", "keras"} & {name.split(".")[0] for name in imported}, (
            reader, module, imported)
