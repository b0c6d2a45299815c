"""What the two browser tests share: Debian's Chromium, its flags, and a required-or-skipped check.

Not a test module: tests/test_book.py and tests/test_browser.py import it.
"""

import importlib.util
import os
import shutil
import socket
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# Headless in a container, and nothing fetched beyond the pages under test.
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update",
                  "--disable-sync"]


def require(condition, reason, required_by):
    """Skips the test when `condition` is false, or fails it when the environment variable
    `required_by` is "1" (CI sets it: the test must run there, not skip)."""
    if condition:
        return
    if os.environ.get(required_by) == "1":
        pytest.fail(f"required by {required_by}=1, but {reason}")
    pytest.skip(reason)


def require_chromium(required_by):
    """Playwright and Debian's Chromium, or a skip (a failure under `required_by`)."""
    require(importlib.util.find_spec("playwright") is not None, "playwright is not installed",
            required_by)
    require(Path(CHROMIUM).exists(), "Debian's chromium is not installed", required_by)


def launch(playwright):
    """Debian's Chromium, headless, through Playwright."""
    return playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
