"""Evaluation speed and memory, side by side in one run: vaekit's importance-sampled
log-likelihood (K draws per test image, chunked) against the decoder-GEMM floor from the
measured GEMM peak, and against Pythae's ``get_nll`` on the same model when installed.

    python benchmarks/bench_eval.py            # full: K = 5000 on the 10k MNIST test images
    python benchmarks/bench_eval.py --quick    # < 1 minute: K = 1000 on 500 images

The model is the 784-400-20 MLP of the training benchmark, freshly initialised (or a
trained run with --run DIR): timing does not depend on the weights. Pythae is timed on a
few images and extrapolated linearly (its cost is per image). Peak memory is the peak
resident set (VmHWM, reset after start-up) of a fresh process scoring 500 random binary
images with each K: flat in K means the chunking works. Writes benchmarks/results/eval.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import resource
import subprocess
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

from vaekit.app.config import Config  # noqa: E402
from vaekit.app.data import load_data  # noqa: E402
from vaekit.app.runs import build_model, load_run  # noqa: E402
from vaekit.evaluation import per_example  # noqa: E402


def make_model(run: str | None):
    if run:
        return load_run(run)[0]
    torch.manual_seed(0)
    config = Config(hidden=[400], latent_dim=20, likelihood="bernoulli", binarize="none", seed=0)
    return build_model(config, (1, 28, 28))


def decoder_flops(model, n: int, k: int) -> float:
    """Multiply-adds ×2 of the decoder's linear layers for n·k latent draws."""
    per_row = sum(m.in_features * m.out_features for m in model.decoder.modules()
                  if isinstance(m, torch.nn.Linear))
    return 2.0 * n * k * per_row


def child_memory(args) -> None:
    """In a fresh process: score the images with K draws, print the peak RSS in MiB."""
    torch.set_num_threads(args.threads)
    # random binary images of MNIST's shape: loading MNIST itself would set the peak
    x = (torch.rand(args.n, 1, 28, 28, generator=torch.Generator().manual_seed(0)) < 0.2).float()
    model = make_model(args.run)
    base = _status_mib("VmRSS")
    with contextlib.suppress(OSError):  # reset the peak: importing torch peaks higher than scoring
        Path("/proc/self/clear_refs").write_text("5")
    per_example(model, x, importance_samples=args.memory_child)
    peak = _status_mib("VmHWM")
    print(json.dumps({"k": args.memory_child, "peak_mib": peak, "before_mib": base}))


def _status_mib(field: str) -> float:
    """A memory figure of this process from /proc/self/status (Linux), in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def memory_in_k(args, ks: list[int], n: int) -> list[dict]:
    out = []
    for k in ks:
        cmd = [sys.executable, __file__, "--memory-child", str(k), "--n", str(n),
               "--threads", str(args.threads), "--data-dir", args.data_dir]
        if args.run:
            cmd += ["--run", args.run]
        done = subprocess.run(cmd, capture_output=True, text=True, check=True)
        out.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(f"  K = {k:5d}: peak resident memory {out[-1]['peak_mib']:.0f} MiB "
              f"({out[-1]['before_mib']:.0f} MiB before scoring)")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="K = 1000 on 500 images (< 1 min)")
    parser.add_argument("--k", type=int, default=None, help="importance samples (default 5000)")
    parser.add_argument("--n", type=int, default=None, help="test images (default all 10000)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--run", default=None, help="a trained run directory to evaluate instead")
    parser.add_argument("--data-dir", default=str(common.MNIST_DIR))
    parser.add_argument("--pythae-examples", type=int, default=None)
    parser.add_argument("--memory-child", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--out", default=str(common.ROOT / "benchmarks" / "results" / "eval.json"))
    args = parser.parse_args()
    if args.memory_child:
        args.n = args.n or 500
        return child_memory(args)
    torch.set_num_threads(args.threads)
    k = args.k or (1000 if args.quick else 5000)
    n = args.n or (500 if args.quick else 10_000)
    x = load_data("mnist", args.data_dir).test.x[:n]
    model = make_model(args.run)
    print(f"data: {len(x)} MNIST test images, K = {k}; {args.threads} threads")

    peak = common.gemm_peak()
    floor = decoder_flops(model, len(x), k) / 1e9 / peak
    torch.manual_seed(0)
    with common.timed() as region:
        scores = per_example(model, x, importance_samples=k)
    ours, ours_others = region.seconds, region.others
    print(f"\nGEMM peak {peak:.0f} GFLOP/s; decoder GEMMs {decoder_flops(model, len(x), k) / 1e12:.1f} TFLOP "
          f"(floor {floor:.1f} s)")
    print(f"vaekit: {ours:.1f} s = {ours / floor:.2f}× the floor; others' CPU "
          f"{100 * region.others:.0f} %{' (contended)' if region.others > common.CONTENDED else ''}; "
          f"mean log p(x) {scores['log_likelihood'].mean():.2f} nats")

    pythae_result = None
    try:
        import pythae  # noqa: F401
    except ImportError:
        print("pythae is not installed: skipping get_nll (pip install 'vaekit[bench]' to include it)")
    else:
        from pythae_runner import pythae_nll_seconds

        m = args.pythae_examples or (5 if args.quick else 20)
        with common.timed() as region:
            seconds = pythae_nll_seconds(x, k, m)
        total = seconds * len(x) / m
        pythae_result = {"examples": m, "seconds": seconds, "extrapolated_seconds": total,
                         "others": region.others}
        print(f"pythae get_nll: {seconds:.1f} s for {m} images -> {total:.0f} s for {len(x)} "
              f"({total / ours:.1f}× vaekit); others' CPU {100 * region.others:.0f} %")

    print("\nmemory in K (a fresh process per K, 500 random binary images):")
    memory = memory_in_k(args, [100, 1000] if args.quick else [100, 1000, 5000, 10000], 500)
    common.write_json(args.out, {
        "machine": common.machine(), "gemm_peak_gflops": peak, "n": len(x), "k": k,
        "floor_seconds": floor, "vaekit_seconds": ours, "vaekit_others": ours_others,
        "pythae": pythae_result, "memory": memory,
    })


if __name__ == "__main__":
    main()
