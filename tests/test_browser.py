"""The notebooks with widgets in a real browser: JupyterLab, headless Chromium, run all, use a widget.

JupyterLab serves a temporary copy of the notebooks, so its autosave never
rewrites a committed one. A cell that raises fails the test at once, with
the cell's error. Skipped when JupyterLab, Playwright or Chromium is
missing, unless BRLIB_REQUIRE_BROWSER=1 (CI sets it), which turns the skip
into a failure. Screenshots go to artifacts/browser/ (git-ignored).
"""

import os
import secrets
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import chromium
import pytest

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "artifacts" / "browser"


def require(condition, reason):
    chromium.require(condition, reason, "BRLIB_REQUIRE_BROWSER")


@pytest.fixture
def jupyter_lab(tmp_path):
    require(shutil.which("jupyter") is not None or _has_module("jupyterlab"),
            "jupyterlab is not installed")
    served = tmp_path / "served"  # <copy>/notebooks, as the notebooks expect their repository
    shutil.copytree(ROOT / "notebooks", served / "notebooks")
    port, token = chromium.free_port(), secrets.token_hex(16)
    settings = tmp_path / "lab-settings"
    # Render every cell (JupyterLab 4 otherwise virtualizes cells out of view) and
    # keep the news prompt from covering the page.
    for plugin, value in (("notebook-extension/tracker", '{"windowingMode": "none"}'),
                          ("apputils-extension/notification", '{"fetchNews": "false"}')):
        path = settings / "@jupyterlab" / f"{plugin}.jupyterlab-settings"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(value)
    env = dict(os.environ, BRLIB_QUICK="1", TF_CPP_MIN_LOG_LEVEL="3",
               JUPYTER_CONFIG_DIR=str(tmp_path / "config"), JUPYTER_RUNTIME_DIR=str(tmp_path),
               JUPYTERLAB_SETTINGS_DIR=str(settings))
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", f"--ServerApp.port={port}",
         "--ServerApp.ip=127.0.0.1", f"--IdentityProvider.token={token}",
         # window.jupyterapp, so that the test runs JupyterLab's commands by their ids
         # instead of clicking menu labels that change between releases.
         "--LabApp.expose_app_in_browser=True",
         f"--ServerApp.root_dir={served}", "--ServerApp.port_retries=0"]
        + (["--allow-root"] if os.geteuid() == 0 else []),
        env=env, stdout=subprocess.DEVNULL, stderr=open(tmp_path / "lab.log", "w"))
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 90
    while time.time() < deadline and server.poll() is None:
        try:
            urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=2)
            break
        except OSError:
            time.sleep(0.5)
    else:
        server.kill()
        pytest.fail("JupyterLab did not start: " + (tmp_path / "lab.log").read_text()[-2000:])
    yield base, token
    server.terminate()
    server.wait(timeout=30)


def _has_module(name):
    import importlib.util

    return importlib.util.find_spec(name) is not None


def cell_error(page):
    """The text of the first error output on the page, or None."""
    errors = page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']",
                          has_text="Error")
    return errors.first.inner_text() if errors.count() else None


def kernel_status(page):
    """The notebook's execution indicator: 'idle', 'busy', or another kernel state."""
    indicator = page.locator(".jp-Notebook-ExecutionIndicator").first
    return indicator.get_attribute("data-status") if indicator.count() else None


def wait_until(page, condition, seconds=60, ceiling=1200):
    """Polls `condition`; fails at once if a cell has raised.

    Otherwise it fails after `seconds` in which the kernel was not busy, or after
    `ceiling` seconds in all: a kernel still running cells on a loaded machine is
    given time, a stuck page is not.
    """
    start = last_busy = time.time()
    while not condition():
        error = cell_error(page)
        if error:
            raise AssertionError(f"a notebook cell raised:\n{error[-3000:]}")
        now = time.time()
        status = kernel_status(page)
        if status == "busy":
            last_busy = now
        if now - last_busy > seconds or now - start > ceiling:
            raise AssertionError(f"the page did not change in time (after {now - start:.0f} s; "
                                 f"kernel {status!r}; {executed_cells(page)} cells executed)")
        time.sleep(0.25)


KERNEL_READY = """() => {
    const panel = window.jupyterapp.shell.currentWidget;
    const kernel = panel && panel.sessionContext && panel.sessionContext.session
        && panel.sessionContext.session.kernel;
    return Boolean(kernel) && kernel.connectionStatus === "connected" && kernel.status === "idle";
}"""


# Whether any code cell has been queued or run since the outputs were cleared: its prompt
# reads [*] or [n] instead of [ ].
RUN_STARTED = """() => [...document.querySelectorAll('.jp-Notebook .jp-InputPrompt')]
    .some(prompt => /\\[(\\*|\\d+)\\]/.test(prompt.textContent))"""


def retry_until(page, name, condition, attempts=3, seconds=60):
    """Runs JupyterLab command `name` until `condition` (JavaScript) holds. On a loaded
    machine JupyterLab can take a command before the notebook is its current widget and
    then do nothing (run-all runs no cell, the kernel stays idle, no output appears); a
    command whose effect did not show is sent again, which is safe for clearing outputs
    and for a run that never started."""
    for _ in range(attempts):
        page.evaluate("""() => {
            const panel = window.jupyterapp.shell.currentWidget;
            if (panel) { window.jupyterapp.shell.activateById(panel.id); }
        }""")
        command(page, name)
        try:
            page.wait_for_function(condition, timeout=seconds * 1000, polling=250)
            return
        except Exception:  # Playwright's TimeoutError
            continue
    raise AssertionError(f"{name} had no effect after {attempts} tries "
                         f"(kernel {kernel_status(page)!r})")


def executed_cells(page):
    """How many code cells show an execution count, for failure messages."""
    return page.evaluate("""() => [...document.querySelectorAll('.jp-Notebook .jp-InputPrompt')]
        .filter(prompt => /\\[\\d+\\]/.test(prompt.textContent)).length""")


def command(page, name):
    """Starts JupyterLab command `name` (such as "notebook:run-all-cells") without waiting
    for it to finish."""
    page.evaluate("name => { window.jupyterapp.commands.execute(name); }", name)


def run_notebook(jupyter_lab, name, exercise):
    """Opens notebook `name`, clears its outputs, runs every cell, then calls exercise(page)."""
    chromium.require_chromium("BRLIB_REQUIRE_BROWSER")
    from playwright.sync_api import sync_playwright

    base, token = jupyter_lab
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = chromium.launch(playwright)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(f"{base}/lab/tree/notebooks/{name}?token={token}")
        page.wait_for_selector(".jp-Notebook", timeout=60_000)
        page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']",
                               timeout=120_000)
        page.wait_for_function("() => window.jupyterapp !== undefined", timeout=60_000)
        # The indicator can read idle before the kernel's connection is up, and a command
        # sent then runs nothing or asks for a kernel: wait for the connected, idle kernel.
        page.wait_for_function(KERNEL_READY, timeout=120_000, polling=250)
        # Drop the saved outputs so that everything checked below comes from the live kernel.
        retry_until(page, "notebook:clear-all-cell-outputs", f"() => !({RUN_STARTED})()")
        retry_until(page, "notebook:run-all-cells", RUN_STARTED)
        try:
            return exercise(page)
        except Exception:
            page.screenshot(path=str(ARTIFACTS / f"failure_{name}.png"), full_page=True)
            raise
        finally:
            browser.close()


def test_rmax_slider_changes_clip_fraction_and_plot(jupyter_lab):
    text_before, text_after = run_notebook(jupyter_lab, "02_renorm_derivation.ipynb",
                                           exercise_slider)
    assert text_before != text_after
    fraction_before = float(text_before.split("r ")[1].split(" %")[0])
    fraction_after = float(text_after.split("r ")[1].split(" %")[0])
    assert fraction_after < fraction_before  # a wider rmax clips fewer r


def exercise_slider(page):
    """Moves the clip explorer's rmax to 3; returns its label text before and after."""
    label = page.locator(".widget-html", has_text="clipped:").first
    wait_until(page, lambda: label.count() > 0, seconds=240)
    # The last cell (the check of the hidden solutions) has run.
    last_output = page.locator(".jp-OutputArea-output", has_text="hidden solutions run:")
    wait_until(page, lambda: last_output.count() > 0, seconds=240)
    panel = page.locator(".widget-vbox").filter(has=label).first
    image = panel.locator(".widget-output img").first
    image.wait_for(timeout=60_000)
    panel.scroll_into_view_if_needed()
    panel.screenshot(path=str(ARTIFACTS / "clip_explorer_before.png"))
    text_before, plot_before = label.inner_text(), image.get_attribute("src")

    readout = panel.locator(".widget-readout").first  # the rmax slider's value box
    readout.click()
    page.keyboard.press("Control+A")
    page.keyboard.type("3.00")
    page.keyboard.press("Enter")
    # The label and the plot are redrawn by the kernel; poll fresh locators for both.
    wait_until(page, lambda: label.inner_text() != text_before)
    wait_until(page, lambda: image.get_attribute("src") not in (None, plot_before))
    panel.screenshot(path=str(ARTIFACTS / "clip_explorer_after.png"))
    return text_before, label.inner_text()


def test_run_button_trains_again_with_the_chosen_microbatch(jupyter_lab):
    legends = run_notebook(jupyter_lab, "03_microbatch_experiments.ipynb", exercise_form)
    assert legends[0] != legends[1]


def exercise_form(page):
    """Presses Run with microbatches of 2, then of 32; returns the two plots."""
    button = page.locator(".widget-button", has_text="Run").last
    wait_until(page, lambda: button.count() > 0, seconds=300)
    form = page.locator(".widget-vbox").filter(has=button).first
    image = form.locator(".widget-output img").first
    legend = page.locator(".jp-OutputArea-output", has_text="two arms of")  # the static twin
    wait_until(page, lambda: legend.count() > 0, seconds=300)  # the cells after the form have run
    legends = []
    for microbatch in ("2", "32"):
        form.locator("select").first.select_option(label=microbatch)
        before = image.get_attribute("src") if image.count() else None
        button.click()
        wait_until(page, lambda: image.count() > 0 and image.get_attribute("src") not in (None, before),
                   seconds=300)
        legends.append(image.get_attribute("src"))
    form.screenshot(path=str(ARTIFACTS / "run_form_after.png"))
    return legends
