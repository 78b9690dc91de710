"""The explorer's decode round trip: a click's request to `vaekit explore` and its PNG back.

Starts the real server (`vaekit explore RUN --port 0 --no-browser`, a child process with its
default settings) and times, over one kept-alive HTTP connection as a browser uses:
fresh latent points (nothing cached), the same point again (cached), and the decoded grid
at 15 × 15; then, where Playwright and chromium are installed, clicks on the page itself
(the page's fetch and the PNG's conversion for display, as the page reports it).

    python benchmarks/bench_explore.py                  # trains a 784-400-2 MNIST model first (1 epoch)
    python benchmarks/bench_explore.py runs/mnist-2d    # a run of your own
"""

from __future__ import annotations

import argparse
import http.client
import os
import queue
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
MNIST_DIR = ROOT.parent / "shared" / "data" / "mnist"


def train_mnist(folder: Path) -> Path:
    run = folder / "mnist-2d"
    subprocess.run([sys.executable, "-m", "vaekit", "train", "--data", "mnist", "--data-dir", str(MNIST_DIR),
                    "--binarize", "dynamic", "--hidden", "400", "--latent-dim", "2", "--epochs", "1",
                    "--no-figures", "--quiet", "--out", str(run)], check=True, env=_env())
    return run


def _env() -> dict[str, str]:
    # this checkout's vaekit, whatever is installed
    return dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(SRC), os.environ.get("PYTHONPATH")])))


def start(run: Path) -> tuple[subprocess.Popen, str]:
    process = subprocess.Popen([sys.executable, "-m", "vaekit", "explore", str(run), "--port", "0", "--no-browser"],
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=_env())
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(x) for x in process.stdout], daemon=True).start()
    first = lines.get(timeout=300)
    print(first.strip())
    return process, re.search(r"http://\S+/", first).group(0)


def timed_gets(connection: http.client.HTTPConnection, paths: list[str]) -> list[float]:
    times = []
    for path in paths:
        started = time.perf_counter()
        connection.request("GET", path)
        response = connection.getresponse()
        body = response.read()
        times.append(time.perf_counter() - started)
        assert response.status == 200 and body.startswith(b"\x89PNG"), (path, response.status, body[:200])
    return times


def show(name: str, seconds: list[float]) -> None:
    ms = np.array(seconds) * 1000
    print(f"{name:<36} n={len(ms):4d}  median {np.median(ms):6.2f} ms  p90 {np.percentile(ms, 90):6.2f}  "
          f"p99 {np.percentile(ms, 99):6.2f}  max {ms.max():6.2f}")


def browser_clicks(url: str, clicks: int) -> dict[str, list[float]] | None:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        return None
    executable = next((p for p in map(shutil.which, ("chromium", "chromium-browser")) if p), None)
    if executable is None:
        return None
    rng = np.random.default_rng(1)
    seen: dict[str, list[float]] = {"network": [], "fetch": [], "shown": []}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable)
        page = browser.new_page(viewport={"width": 1280, "height": 860})
        page.goto(url)
        page.wait_for_selector("body[data-ready=true]", timeout=60_000)
        box = page.locator("#plane .nsewdrag").bounding_box()
        for _ in range(clicks):
            before = page.locator("#decoded").get_attribute("data-z")
            fx, fy = rng.uniform(0.05, 0.95, 2)
            started = time.perf_counter()
            page.mouse.click(box["x"] + fx * box["width"], box["y"] + fy * box["height"])
            page.wait_for_function("b => document.getElementById('decoded').dataset.z !== b", arg=before,
                                   timeout=10_000, polling=1)
            seen["shown"].append(time.perf_counter() - started)
            network, fetch = page.evaluate("() => [window.vaekitExplorer.lastNetworkMs, window.vaekitExplorer.lastMs]")
            seen["network"].append(network / 1000)
            seen["fetch"].append(fetch / 1000)
        browser.close()
    return seen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", nargs="?", type=Path, help="run directory (default: train a 1-epoch MNIST model)")
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--clicks", type=int, default=50)
    args = parser.parse_args()
    scratch = None
    if args.run is None:
        scratch = Path(tempfile.mkdtemp(prefix="bench-explore-"))
        args.run = train_mnist(scratch)
    process, url = start(args.run)
    print(f"load average before: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs (other processes slow every figure)")
    try:
        host, port = re.match(r"http://([^:/]+):(\d+)/", url).groups()
        connection = http.client.HTTPConnection(host, int(port), timeout=30)
        info_d = len(open_info(connection)["center"])
        rng = np.random.default_rng(0)

        def z_path(z: np.ndarray) -> str:
            return "/api/decode?z=" + ",".join(f"{v:.6g}" for v in z)

        timed_gets(connection, [z_path(rng.normal(0, 1.5, info_d)) for _ in range(20)])  # warm-up
        fresh = [z_path(rng.normal(0, 1.5, info_d)) for _ in range(args.requests)]
        show("HTTP: decode, a fresh z each time", timed_gets(connection, fresh))
        show("HTTP: decode, the same z (cached)", timed_gets(connection, [fresh[0]] * args.requests))
        grid = [f"/api/grid?x0={-3 + i * 0.01}&x1=3&y0=-3&y1=3&cols=15&rows=15" for i in range(20)]
        show("HTTP: decoded grid, 15 x 15 points", timed_gets(connection, grid))
        connection.close()
        clicks = browser_clicks(url, args.clicks) if args.clicks > 0 else None
        if clicks is None:
            print("browser clicks: skipped (none asked for, or no Playwright or chromium)")
        else:
            show("chromium: the request's round trip", clicks["network"])
            show("chromium: fetch to PNG data URL", clicks["fetch"])
            show("chromium: click to image shown", clicks["shown"])
    finally:
        process.terminate()
        process.wait(timeout=30)
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)


def open_info(connection: http.client.HTTPConnection) -> dict:
    import json

    connection.request("GET", "/api/info")
    return json.loads(connection.getresponse().read())


if __name__ == "__main__":
    main()
