"""The report and the explorer in a real browser: Debian's chromium driven by Playwright.

Skipped (not failed) where Playwright or a chromium executable is missing; `make test`
installs both where it can. Every wait is bounded, every explorer gets a free port
(``--port 0``) and is stopped by its test.
"""

from __future__ import annotations

import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from conftest import SRC

pytest.importorskip("playwright.sync_api")

FIXTURES = Path(__file__).resolve().parent / "fixtures"
WAIT_MS = 15_000  # the longest any one step may take before the test fails
CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def chromium_executable() -> str | None:
    """$VAEKIT_CHROMIUM, else the first chromium-like executable on PATH."""
    given = os.environ.get("VAEKIT_CHROMIUM")
    if given:
        return given if Path(given).is_file() else None
    return next((p for p in map(shutil.which, CANDIDATES) if p), None)


pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(chromium_executable() is None, reason="no chromium executable (apt-get install chromium)"),
]


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        # Playwright's own browser download is not used: the system's chromium is enough
        launched = p.chromium.launch(executable_path=chromium_executable(), timeout=WAIT_MS * 2)
        yield launched
        launched.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1280, "height": 860})
    page = context.new_page()
    page.set_default_timeout(WAIT_MS)
    page.errors = []  # console errors and uncaught exceptions, checked by the tests
    page.on("console", lambda m: page.errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: page.errors.append(str(e)))
    yield page
    context.close()


def save_screenshot(page, name: str) -> None:
    """Screenshots go to $VAEKIT_SCREENSHOTS when set (benchmarks/screenshots.py makes the docs' ones)."""
    folder = os.environ.get("VAEKIT_SCREENSHOTS")
    if folder:
        page.screenshot(path=str(Path(folder) / name))


# ---------------------------------------------------------------------- the report
def test_report_opens_offline_without_errors(page, tiny_run, tmp_path):
    from vaekit.app.report import write_report

    other = tmp_path / "fixture"
    shutil.copytree(FIXTURES / "vae-v0.1", other)
    out = write_report([tiny_run, other], tmp_path / "report.html")
    requested = []

    def offline(route):  # anything but the file itself would need a network
        requested.append(route.request.url)
        route.abort()

    page.route(re.compile(r"^(?!file:).*"), offline)
    page.goto(out.as_uri())
    page.wait_for_selector("#training-curves .main-svg")
    assert requested == []
    assert page.errors == []
    # the training curves are drawn: one line per run and split in the first panel at least
    assert page.locator("#training-curves .scatterlayer .trace").count() >= 4
    # every inlined figure decodes to a real image
    sizes = page.eval_on_selector_all("img", "imgs => imgs.map(i => [i.complete, i.naturalWidth])")
    assert len(sizes) == 6 and all(done and width > 100 for done, width in sizes)
    assert page.locator("#config-diff").is_visible()
    save_screenshot(page, "report.png")


# ---------------------------------------------------------------------- the explorer
class Explorer:
    """`vaekit explore RUN --port 0 --no-browser` in a child process, and its URL."""

    def __init__(self, run_dir: Path):
        env = dict(os.environ, PYTHONPATH=str(SRC), OMP_NUM_THREADS="1")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "vaekit", "explore", str(run_dir), "--port", "0", "--no-browser"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        )
        lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=lambda: [lines.put(x) for x in self.process.stdout], daemon=True).start()
        try:
            first = lines.get(timeout=120)  # torch's import and the data, on a slow machine
        except queue.Empty:
            self.stop()
            pytest.fail("vaekit explore printed no URL within 120 s")
        match = re.search(r"http://\S+/", first)
        if not match:
            self.stop()
            pytest.fail(f"no URL in {first!r}: {self.process.stderr.read()}")
        self.url = match.group(0)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=20)


@pytest.fixture
def explorer(tiny_run):
    running = Explorer(tiny_run)
    yield running
    running.stop()
    assert running.process.returncode is not None


def decoded(page) -> tuple[str, str]:
    image = page.locator("#decoded")
    return image.get_attribute("data-z"), image.get_attribute("src")


def wait_for_new_image(page, before: str | None) -> tuple[str, str]:
    page.wait_for_function(
        "before => { const i = document.getElementById('decoded');"
        " return i.dataset.z && i.dataset.z !== before && i.complete && i.naturalWidth > 0; }",
        arg=before)
    return decoded(page)


def click_plane(page, fx: float, fy: float) -> None:
    box = page.locator("#plane .nsewdrag").bounding_box()
    page.mouse.click(box["x"] + fx * box["width"], box["y"] + fy * box["height"])


def test_explorer_in_the_browser(page, explorer):
    page.goto(explorer.url)
    page.wait_for_selector("body[data-ready=true]")
    # the scatter: every encoded example is a point
    n = page.evaluate("() => window.vaekitExplorer.info.n")
    assert n == 180  # digits' validation split
    assert page.locator("#plane .scatterlayer .point").count() == n
    start_z, _ = wait_for_new_image(page, None)  # the centre is decoded on load
    # before the first hover the example panel shows no image (not a broken-image icon)
    assert page.locator("#hovered").is_hidden() and page.locator("#decoded").is_visible()

    # two clicks at different places decode two different images
    click_plane(page, 0.2, 0.25)
    z1, image1 = wait_for_new_image(page, start_z)
    click_plane(page, 0.8, 0.75)
    z2, image2 = wait_for_new_image(page, z1)
    assert z1 != z2 and image1 != image2

    # a slider moves one coordinate and changes the image
    slider = page.locator("#slider-0")
    slider.fill(str(round(float(slider.input_value()) * -1 + 1.5, 2)))
    z3, image3 = wait_for_new_image(page, z2)
    assert z3.split(",")[1] == z2.split(",")[1] and z3.split(",")[0] != z2.split(",")[0]
    assert image3 != image2

    # hovering a point shows its example
    page.locator("#plane .scatterlayer .point").nth(5).hover(force=True)
    page.wait_for_function("() => document.getElementById('hovered').naturalWidth > 0")

    # a malformed request gets a 4xx, and the page keeps working
    assert page.errors == []
    for bad in ("api/decode?z=nan,1", "api/decode?z=1", "api/grid?x0=0", "api/example?i=99999"):
        response = page.request.get(explorer.url + bad)
        assert 400 <= response.status < 500, (bad, response.status)
        assert "error" in response.json()
    status = page.evaluate("async () => (await fetch('/api/decode?z=1,2,3')).status")
    assert status == 400
    click_plane(page, 0.5, 0.4)
    z4, _ = wait_for_new_image(page, z3)
    assert page.locator("#status").text_content() == ""

    # the decoded grid lies under the points
    page.check("#grid-toggle")
    grid = page.wait_for_selector("#plane .imagelayer image")
    assert grid.get_attribute("href").startswith("data:image/png;base64,")
    # drawn pixel-exact and at full contrast
    style = grid.evaluate("g => [getComputedStyle(g).imageRendering, g.getAttribute('opacity')]")
    assert style[0] == "pixelated" and style[1] in (None, "1")
    assert page.locator("#decoded").evaluate("i => getComputedStyle(i).imageRendering") == "pixelated"
    save_screenshot(page, "explore.png")
    # the one console error is the browser's note on the deliberately malformed fetch
    assert page.errors == ["Failed to load resource: the server responded with a status of 400 (Bad Request)"]

    # the page says which split it shows and switches to the others (loaded on first use)
    assert "validation split: 180 examples" in page.locator("#subtitle").text_content()
    assert page.locator("#split option").all_text_contents() == ["validation", "train", "all"]
    page.select_option("#split", "train")
    page.wait_for_function("() => window.vaekitExplorer.info.split === 'train'")
    page.wait_for_function("() => document.querySelectorAll('#plane .scatterlayer .point').length === 1617")
    assert "train split: 1617 examples" in page.locator("#subtitle").text_content()
    page.locator("#plane .scatterlayer .point").nth(1500).hover(force=True)
    page.wait_for_function("() => document.getElementById('hovered-caption').textContent.startsWith('#')")
    index, name = re.fullmatch(r"#(\d+), class (\w+)", page.locator("#hovered-caption").text_content()).groups()
    assert page.evaluate(f"() => window.vaekitExplorer.info.labels[{index}]") == int(name)  # train's own #index
    assert len(page.errors) == 1 and page.locator("#status").text_content() == ""
    assert explorer.process.poll() is None  # still serving


# ---------------------------------------------------------------------- names as text
HOSTILE = '<a href="https:evil.example">click me'


@pytest.fixture(scope="module")
def hostile_run(tmp_path_factory) -> Path:
    """A run whose folder and one class are named like a link (a table with a label column)."""
    import numpy as np

    from vaekit.app.config import Config
    from vaekit.app.runs import train

    folder = tmp_path_factory.mktemp("hostile")
    rows = np.random.default_rng(0).random((60, 4))
    lines = ["a,b,c,d,kind"] + [",".join(f"{v:.4f}" for v in row) + f",{[HOSTILE, 'plain'][i % 2]}"
                                for i, row in enumerate(rows)]
    (folder / "t.csv").write_text("\n".join(lines) + "\n")
    config = Config(data=str(folder / "t.csv"), label_column="kind", hidden=[8], latent_dim=2, epochs=2,
                    likelihood="bernoulli", validation_fraction=0.25)
    return train(config, folder / HOSTILE, quiet=True, figures=False)


def test_names_are_text_not_links_in_the_report_and_the_explorer(page, hostile_run, tmp_path):
    from vaekit.app.report import write_report

    page.goto(write_report([hostile_run], tmp_path / "report.html").as_uri())
    page.wait_for_selector("#training-curves .legend")
    assert page.locator("#training-curves a").count() == 0
    assert HOSTILE in page.locator("#training-curves .legend").text_content()

    running = Explorer(hostile_run)
    try:
        page.goto(running.url)
        page.wait_for_selector("body[data-ready=true]")
        assert page.locator("#plane a").count() == 0
        assert HOSTILE in page.locator("#plane .legend").text_content()
    finally:
        running.stop()
    assert page.errors == []
