"""The screenshots in docs/: `vaekit report` and `vaekit explore` in chromium (Playwright).

    python benchmarks/screenshots.py runs/mnist-2d runs/mnist-10d --out docs

The first run (a 2-D latent space) is explored with the decoded grid under its points and
two examples interpolated; the second (d > 2) is explored in its principal plane with the
sliders; the report compares both. Screenshots are saved as small palette PNGs.
"""

from __future__ import annotations

import argparse
import os
import queue
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"


def env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(SRC), os.environ.get("PYTHONPATH")])))


def save_small(png: bytes, path: Path, colours: int = 256) -> None:
    """A screenshot quantised to a palette: a fifth of the bytes, the same to the eye."""
    import io

    image = Image.open(io.BytesIO(png)).convert("RGB")
    # octree keeps the few saturated colours (the classes) that median cut merges into greys
    image.quantize(colors=colours, method=Image.Quantize.FASTOCTREE).save(path, optimize=True)
    print(f"wrote {path} ({path.stat().st_size // 1024} KB)")


def explorer(run: Path) -> tuple[subprocess.Popen, str]:
    process = subprocess.Popen([sys.executable, "-m", "vaekit", "explore", str(run), "--port", "0", "--no-browser"],
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env())
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(x) for x in process.stdout], daemon=True).start()
    return process, re.search(r"http://\S+/", lines.get(timeout=300)).group(0)


def shoot_explorer(browser, run: Path, path: Path, grid: bool) -> None:
    process, url = explorer(run)
    try:
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.set_default_timeout(30_000)
        page.goto(url)
        page.wait_for_selector("body[data-ready=true]")
        box = page.locator("#plane .nsewdrag").bounding_box()
        points = page.locator("#plane .scatterlayer .point")
        if points.count():  # SVG points: pick two far apart
            for k in (0, points.count() // 2):
                b = points.nth(k).bounding_box()
                page.mouse.click(b["x"] + b["width"] / 2, b["y"] + b["height"] / 2)
                page.wait_for_timeout(400)
        else:  # WebGL points are not elements: pick through the page's own code
            page.evaluate("() => { pick(11); pick(4242); }")
        page.mouse.click(box["x"] + 0.62 * box["width"], box["y"] + 0.35 * box["height"])
        if grid:
            page.check("#grid-toggle")
            page.wait_for_selector("#plane .imagelayer image")
        page.wait_for_timeout(800)
        page.evaluate("() => showExample(7)")
        page.wait_for_timeout(500)
        save_small(page.screenshot(), path)
        page.close()
    finally:
        process.terminate()
        process.wait(timeout=30)


def shoot_report(browser, runs: list[Path], folder: Path) -> None:
    from vaekit.app.report import write_report

    scratch = Path(tempfile.mkdtemp())
    try:
        html = write_report(runs, scratch / "report.html")
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        page.goto(html.as_uri())
        page.wait_for_selector("#training-curves .main-svg")
        save_small(page.screenshot(), folder / "report.png")
        page.locator("#curves").scroll_into_view_if_needed()
        page.evaluate("() => document.getElementById('curves').scrollIntoView()")
        save_small(page.screenshot(), folder / "report-curves.png")
        page.close()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("flat", type=Path, help="a run with a 2-D latent space")
    parser.add_argument("deep", type=Path, help="a run with d > 2")
    parser.add_argument("--out", type=Path, default=ROOT / "docs")
    args = parser.parse_args()
    sys.path.insert(0, str(SRC))
    from playwright.sync_api import sync_playwright

    executable = next(p for p in map(shutil.which, ("chromium", "chromium-browser")) if p)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable)
        shoot_report(browser, [args.flat, args.deep], args.out)
        shoot_explorer(browser, args.flat, args.out / "explore.png", grid=True)
        shoot_explorer(browser, args.deep, args.out / "explore-pca.png", grid=False)
        browser.close()


if __name__ == "__main__":
    main()
