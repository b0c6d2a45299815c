"""brlib.notebook: the notebooks' setup, against the paths and versions it must report."""

import sys
import types

import keras
import pytest

import brlib as br


def test_start_returns_the_repository_above_the_notebooks_folder(tmp_path):
    notebooks = tmp_path / "notebooks"
    assert br.notebook.start(br.__version__, cwd=notebooks) == tmp_path


def test_in_colab_the_working_folder_is_the_root(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))
    assert br.notebook.start(br.__version__, cwd=tmp_path) == tmp_path


def test_another_release_is_refused_with_both_versions_named():
    with pytest.raises(RuntimeError, match=rf"expects brlib 9\.9\.9, but {br.__version__}"):
        br.notebook.start("9.9.9")


def test_versions_names_brlib_and_keras():
    line = br.notebook.versions()
    assert line.startswith(f"brlib {br.__version__} | ") and line.endswith(
        f"Keras {keras.__version__}")
