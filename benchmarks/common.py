"""Shared benchmark plumbing: timing, contention measurement, the GEMM-peak probe, output.

Contention: on 2 cores with 2 threads, another busy process makes torch's threads spin
against each other, so every timed region also records the share of the machine's CPU
time that *other* processes used while it ran (from /proc/stat and our own CPU times).
"""

from __future__ import annotations

import json
import os
import statistics
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch

from vaekit.app.threads import cpu_jiffies, own_jiffies  # the same measure auto threads use

ROOT = Path(__file__).resolve().parents[1]
MNIST_DIR = ROOT.parent / "shared" / "data" / "mnist"
CONTENDED = 0.10  # regions where others took more than this share of the CPU are flagged


@dataclass
class Region:
    seconds: float = 0.0
    others: float = 0.0  # share of total CPU capacity used by other processes


@contextmanager
def timed():
    """Time a region and measure how much CPU other processes took meanwhile."""
    region = Region()
    before, own0 = cpu_jiffies(), own_jiffies()
    start = time.perf_counter()
    try:
        yield region
    finally:
        region.seconds = time.perf_counter() - start
        after, own = cpu_jiffies(), own_jiffies() - own0
        if before is not None and after is not None:  # /proc/stat exists (Linux)
            capacity = max(after[1] - before[1], 1)
            region.others = max(0.0, (after[0] - before[0] - own) / capacity)


@dataclass
class Measurement:
    name: str
    seconds: list[float] = field(default_factory=list)
    others: list[float] = field(default_factory=list)
    note: str = ""

    @property
    def median(self) -> float:
        return statistics.median(self.seconds) if self.seconds else float("nan")

    @property
    def contention(self) -> float:
        return max(self.others) if self.others else 0.0

    def as_dict(self) -> dict:
        return {"name": self.name, "median_seconds": self.median, "seconds": self.seconds,
                "max_other_cpu_share": self.contention, "note": self.note}


def repeat(name: str, run_once: Callable[[], None], repeats: int, warmup: int = 1,
           retries: int = 2) -> Measurement:
    """Median of ``repeats`` timed calls after ``warmup`` untimed ones; a call during which
    other processes took more than CONTENDED of the CPU is re-run (up to ``retries``)."""
    for _ in range(warmup):
        run_once()
    result = Measurement(name)
    for _ in range(repeats):
        for attempt in range(retries + 1):
            with timed() as region:
                run_once()
            if region.others <= CONTENDED or attempt == retries:
                break
        result.seconds.append(region.seconds)
        result.others.append(region.others)
    return result


def interleave(contenders: dict[str, Callable[[], None]], repeats: int, warmup: int = 1,
               retries: int = 2) -> dict[str, Measurement]:
    """Like :func:`repeat` for several contenders, timed in turns (A B C A B C ...): a slow
    spell of the machine then hits every contender alike instead of one of them. On the
    2-core development VM, back-to-back runs of the same loop differed by up to 25 %."""
    for run_once in contenders.values():
        for _ in range(warmup):
            run_once()
    results = {name: Measurement(name) for name in contenders}
    for _ in range(repeats):
        for name, run_once in contenders.items():
            for attempt in range(retries + 1):
                with timed() as region:
                    run_once()
                if region.others <= CONTENDED or attempt == retries:
                    break
            results[name].seconds.append(region.seconds)
            results[name].others.append(region.others)
    return results


def gemm_peak(seconds: float = 2.0, n: int = 2048, dtype: torch.dtype = torch.float32,
              shape: tuple[int, int, int] | None = None) -> float:
    """Sustained GEMM throughput (float32 unless ``dtype``) in GFLOP/s with the current thread
    count: n×n·n×n, or m×k·k×n for ``shape`` (m, k, n)."""
    m, k, n = shape or (n, n, n)
    a, b = torch.randn(m, k).to(dtype), torch.randn(k, n).to(dtype)
    for _ in range(2):
        torch.mm(a, b)
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        torch.mm(a, b)
        count += 1
    return 2 * m * k * n * count / (time.perf_counter() - start) / 1e9


def machine() -> dict:
    flags = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                flags = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    from vaekit.devices import cpu_bf16_features

    return {"cpu": flags, "cores": os.cpu_count(), "threads": torch.get_num_threads(),
            "torch": torch.__version__, "bf16_features": cpu_bf16_features()}


def write_json(path: str | Path, payload: dict) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"wrote {path}")


def table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = lambda r: "  ".join(str(c).rjust(w) if i else str(c).ljust(w)  # noqa: E731
                               for i, (c, w) in enumerate(zip(r, widths, strict=True)))
    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, rows)])
