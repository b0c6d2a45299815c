"""What every notebook does first: check the installed release and find the repository.

The notebooks' setup cell stays a few lines long: it installs the pinned
release in Colab, then calls `start`, which raises if another brlib version
is installed and returns the folder that holds `figures/` and `data/`.
"""

import sys
from pathlib import Path


def start(release, cwd=None):
    """Checks that brlib `release` is installed and returns the project's root folder.

    Args:
        release: The brlib version the notebook was written for, e.g. "0.1.0".
        cwd: The notebook's working folder; default the current one.

    Returns:
        In Colab, `cwd` (no clone is needed there: the committed results ship in
        the package); elsewhere its parent, since notebooks live in
        <repository>/notebooks.

    Raises:
        RuntimeError: Another brlib version is installed.
    """
    import brlib

    if brlib.__version__ != release:
        raise RuntimeError(
            f"This notebook expects brlib {release}, but {brlib.__version__} is installed. "
            f"Install batch-renorm-taught {release}, or open the notebook of your version.")
    cwd = Path.cwd() if cwd is None else Path(cwd)
    return cwd if "google.colab" in sys.modules else cwd.parent


def versions():
    """"brlib x | TensorFlow y | Keras z": the versions a notebook ran with, for its output."""
    import brlib
    import keras

    parts = [f"brlib {brlib.__version__}"]
    if "tensorflow" in sys.modules:
        parts.append(f"TensorFlow {sys.modules['tensorflow'].__version__}")
    parts.append(f"Keras {keras.__version__}")
    return " | ".join(parts)
