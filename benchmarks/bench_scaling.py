"""Scaling with the dataset size: one training epoch of the 784-400-20 recipe on the first
n MNIST images and on MNIST repeated up to 10× (600k images), timed in one run.

    python benchmarks/bench_scaling.py            # n = 15k, 30k, 60k, 120k, 300k, 600k
    python benchmarks/bench_scaling.py --quick    # n = 15k, 30k, 60k (< 1 minute)

Prints seconds per epoch, microseconds per example (flat = linear in n) and the process's
peak resident memory after each size (the data are held in memory as float32: 3.1 kB per
image). Writes benchmarks/results/scaling.json.
"""

from __future__ import annotations

import argparse
import resource
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
from bench_train import vaekit_setup  # noqa: E402

from vaekit.app.config import Config  # noqa: E402
from vaekit.app.data import load_data  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--data-dir", default=str(common.MNIST_DIR))
    parser.add_argument("--out", default=str(common.ROOT / "benchmarks" / "results" / "scaling.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    mnist = load_data("mnist", args.data_dir).train.x
    sizes = [15_000, 30_000, 60_000] + ([] if args.quick else [120_000, 300_000, 600_000])
    config = Config(hidden=[400], latent_dim=20, likelihood="bernoulli", binarize="none",
                    batch_size=128, lr=1e-3, seed=0)
    rows, results = [], []
    for n in sizes:
        repeats = -(-n // len(mnist))
        x = mnist.repeat(repeats, 1, 1, 1)[:n] if repeats > 1 else mnist[:n]
        _, epoch = vaekit_setup(config, x)
        m = common.repeat(f"n={n}", epoch, 1 if n > 100_000 else 3)
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        results.append({"n": n, **m.as_dict(), "peak_rss_mib": rss})
        rows.append([f"{n:,}", f"{m.median:.2f}", f"{1e6 * m.median / n:.1f}", f"{rss:.0f}",
                     f"{100 * m.contention:.0f} %"])
        del x, epoch
    print(common.table(rows, ["images", "s/epoch", "µs/image", "peak RSS MiB", "others' CPU"]))
    common.write_json(args.out, {"machine": common.machine(), "results": results})


if __name__ == "__main__":
    main()
