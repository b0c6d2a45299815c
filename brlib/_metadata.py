"""What the installed distribution says about itself: its name and its repository.

The repository is set in one place, `[project.urls] Repository` of
pyproject.toml; the Colab badges and links are built from it.
"""

from importlib import metadata

DISTRIBUTION = "batch-renorm-taught"  # on PyPI; the import name stays `brlib`


def repository():
    """GitHub owner/name from the installed metadata's Repository URL, or None if not installed."""
    try:
        urls = metadata.metadata(DISTRIBUTION).get_all("Project-URL") or []
    except metadata.PackageNotFoundError:
        return None
    for entry in urls:
        label, _, url = entry.partition(",")
        if label.strip().lower() == "repository":
            return url.strip().removeprefix("https://github.com/").strip("/")
    return None
