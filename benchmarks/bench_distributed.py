"""Data parallelism on this machine: `torchrun --nproc-per-node 2` (gloo, one thread per
process) against one process with one and with two threads, timed side by side in turns.

    python benchmarks/bench_distributed.py            # MNIST, 784-400-20, batch 128, 1 epoch
    python benchmarks/bench_distributed.py --quick    # digits (seconds, for a smoke test)

Training: the epoch's own seconds from metrics.jsonl (no start-up, no final evaluation) and
the command's wall time. Evaluation: `vaekit evaluate` of the trained run on the test split,
K = 200, wall time. Every timed command also records the share of the machine's CPU that
other processes used meanwhile (children's CPU time counted as ours). Writes
benchmarks/results/distributed.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

from vaekit.app.threads import cpu_jiffies  # noqa: E402

SRC = common.ROOT / "src"


def run(command: list[str]) -> tuple[float, float]:
    """(wall seconds, other processes' share of the CPU) of a command, its children included."""
    before, t0 = cpu_jiffies(), os.times()
    start = time.perf_counter()
    done = subprocess.run(command, env=dict(os.environ, PYTHONPATH=str(SRC)), capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    after, t1 = cpu_jiffies(), os.times()
    ours = (t1.children_user + t1.children_system - t0.children_user - t0.children_system) * os.sysconf("SC_CLK_TCK")
    others = max(0.0, (after[0] - before[0] - ours) / max(after[1] - before[1], 1))
    return seconds, others


def launcher(kind: str) -> list[str]:
    if kind == "torchrun 2 x 1 thread":
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m", "vaekit"]
    return [sys.executable, "-m", "vaekit"]


def threads(kind: str) -> str:
    return "2" if kind == "1 process, 2 threads" else "1"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--data-dir", default=str(common.MNIST_DIR))
    parser.add_argument("--out", default=str(common.ROOT / "benchmarks" / "results" / "distributed.json"))
    args = parser.parse_args()
    data = ["--data", "digits"] if args.quick else ["--data", "mnist", "--data-dir", args.data_dir]
    recipe = [*data, "--hidden", "400", "--latent-dim", "20", "--batch-size", "128", "--epochs", "1",
              "--binarize", "none", "--likelihood", "bernoulli", "--no-figures", "-q", "--overwrite"]
    split = "validation" if args.quick else "test"
    kinds = ["1 process, 1 thread", "1 process, 2 threads", "torchrun 2 x 1 thread"]
    folder = Path(tempfile.mkdtemp(prefix="vaekit-bench-ddp-"))
    results = {kind: {"train_epoch_s": [], "train_wall_s": [], "evaluate_wall_s": [], "others": []} for kind in kinds}
    try:
        for _ in range(args.repeats):
            for kind in kinds:  # in turns: a slow spell of the shared machine hits all alike
                out = folder / kind.replace(" ", "_").replace(",", "")
                wall, others = run([*launcher(kind), "train", *recipe, "--threads", threads(kind), "--out", str(out)])
                epoch = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])["seconds"]
                ev_wall, ev_others = run([*launcher(kind), "evaluate", str(out), "--split", split,
                                          "--importance-samples", "200", "--threads", threads(kind), "--no-save",
                                          "--json", "-q"])
                r = results[kind]
                r["train_epoch_s"].append(epoch)
                r["train_wall_s"].append(wall)
                r["evaluate_wall_s"].append(ev_wall)
                r["others"].append(max(others, ev_others))
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    base = statistics.median(results[kinds[0]]["train_epoch_s"])
    base_eval = statistics.median(results[kinds[0]]["evaluate_wall_s"])
    rows = []
    for kind in kinds:
        r = results[kind]
        epoch, wall, ev = (statistics.median(r[k]) for k in ("train_epoch_s", "train_wall_s", "evaluate_wall_s"))
        rows.append([kind, f"{epoch:.2f}", f"{base / epoch:.2f}×", f"{wall:.1f}", f"{ev:.1f}", f"{base_eval / ev:.2f}×",
                     f"{100 * max(r['others']):.0f} %"])
    print(common.table(rows, ["", "train s/epoch", "speed", "train wall s", "evaluate wall s", "speed",
                              "others' CPU (max)"]))
    common.write_json(args.out, {"machine": common.machine(), "recipe": recipe, "results": results})


if __name__ == "__main__":
    main()
