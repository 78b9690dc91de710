"""CPU run-time settings for training and evaluation, decided in one place: how many
threads torch uses, and how the C allocator returns memory to the system.

With 2 threads on 2 cores, a step is a chain of parallel regions whose threads meet at a
barrier after each one. When another process holds a core, one of our threads waits for
the scheduler at every barrier, and a step becomes many times slower rather than twice.
Passive OpenMP waiting does not cure it: 2 passive threads were never faster than 1 thread,
busy or idle (both measured: docs/performance.md, "What made the difference").

So ``threads = 0`` ("auto") uses every core while the machine is otherwise idle and steps
down to the cores left free when other processes are busy, re-checking every few seconds
from /proc/stat (other processes' CPU time, our own excluded) and stepping back up when
they finish. An explicit thread count is kept as given, with a one-line warning if the
machine is busy. For MLP bodies the thread count does not change the numbers (1 and 2
threads gave bit-identical weights, tested); conv bodies differed by up to 3e-8 after an
epoch, so a run that must be reproduced bit for bit should fix ``--threads``.

The allocator: glibc hands large blocks back to the kernel as soon as they are freed and
the next step faults the same pages in again. Importance-sampled evaluation frees and
re-allocates tens of MB per chunk, and that page traffic made it far slower than its
decoder-GEMM floor (docs/performance.md, "What made the difference"). :func:`tune_allocator`
keeps freed memory in the process (blocks under 32 MiB come from the heap, which is not
trimmed), so peak memory is unchanged and the pages are reused.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
import time

import torch

from vaekit.training import Callback

CHECK_SECONDS = 2.0  # how often auto mode looks at the machine again
FIRST_CHECK_SECONDS = 0.5  # the first look, measured while we train
BUSY_CORES = 0.5  # other processes using more than this many cores' worth count as busy
# Below this many FLOPs a step, auto mode uses one thread: splitting tiny GEMMs costs more in
# synchronisation than it gains. Measured on the 2-core VM: Burda's model at batch 20
# (51 MFLOP) ran 486 steps/s on 1 thread and 301–523 on 2 (bimodal); 784-400-20 at batch
# 32 (125 MFLOP) 430 against 271–533; at batch 64 (250 MFLOP) 2 threads won, 409 to 288.
SMALL_STEP_FLOPS = 150e6


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters
_tuned: bool | None = None  # the outcome of the first call


def tune_allocator() -> bool:
    """Keep freed memory for reuse instead of returning it to the kernel (glibc only; once
    per process). Returns whether the allocator was tuned."""
    global _tuned
    if _tuned is None:
        _tuned = _mallopt()
    return _tuned


def _mallopt() -> bool:
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and others: nothing to tune
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, 32 << 20)) and bool(mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))


def available_cores() -> int:
    """Cores this process may run on, capped by OMP_NUM_THREADS when the user has set it."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on every platform
        cores = os.cpu_count() or 1
    cap = os.environ.get("OMP_NUM_THREADS", "")
    return max(1, min(cores, int(cap))) if cap.isdigit() and int(cap) > 0 else cores


def cpu_jiffies() -> tuple[int, int] | None:
    """(busy, total) CPU jiffies of the whole machine, or None where /proc/stat is missing."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return sum(fields) - idle, sum(fields)


def own_jiffies() -> float:
    """CPU time this process (all its threads) has used, in jiffies."""
    t = os.times()
    return (t.user + t.system) * _ticks()


def _ticks() -> int:
    """Jiffies per second (/proc/stat's unit); 100 where sysconf is missing (Windows)."""
    try:
        return os.sysconf("SC_CLK_TCK")
    except (AttributeError, ValueError, OSError):
        return 100


def _others_load() -> float:
    """The 1-minute load average, read as other processes' load when this process is fresh
    (a CLI run: under a few CPU-seconds so far). A long-lived process (a notebook, a test
    session) may have put that load there itself, so it is not read; the first measured
    check, half a second into training, decides instead."""
    if own_jiffies() / _ticks() > 5.0:
        return 0.0
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):  # no load average on this platform
        return 0.0


def threads_for(others: float, cores: int) -> int:
    """Threads to use when other processes keep ``others`` cores busy: the cores they leave."""
    if others <= BUSY_CORES:
        return cores
    return max(1, min(cores, round(cores - others)))


class ThreadPolicy:
    """Sets torch's thread count for a run and, in auto mode, keeps it matched to the machine;
    as a context manager it restores the previous count on the way out.

    ``requested`` is the config's ``threads`` (0: auto). ``step_flops``, the estimated work of
    one training step, lets auto mode keep tiny steps on one thread (:data:`SMALL_STEP_FLOPS`).
    ``check()`` is cheap enough to call between steps: it does real work only every
    :data:`CHECK_SECONDS`.
    """

    def __init__(self, requested: int = 0, quiet: bool = False, step_flops: float | None = None):
        self.saved = torch.get_num_threads()
        self.requested = requested
        self.tune(step_flops, quiet)

    def __enter__(self) -> ThreadPolicy:
        return self

    def __exit__(self, *exc) -> bool:
        """Give torch back the thread count it had before: the policy is scoped to a run."""
        torch.set_num_threads(self.saved)
        return False

    def tune(self, step_flops: float | None = None, quiet: bool = False) -> None:
        """(Re)decide the thread count, for steps of ``step_flops`` when known."""
        requested, self.quiet = self.requested, quiet
        small = step_flops is not None and step_flops < SMALL_STEP_FLOPS
        self.cores = 1 if small else available_cores()
        self.said = False
        self._last = time.monotonic() - (CHECK_SECONDS - FIRST_CHECK_SECONDS)
        self._jiffies = cpu_jiffies()
        self._own = own_jiffies()
        if requested:
            self.threads = requested
        else:
            load = _others_load()
            self.threads = threads_for(load, self.cores)
        torch.set_num_threads(self.threads)
        if self.threads < self.cores and not requested:
            self._say(f"the machine is busy (load average {load:.1f} on {self.cores} cores)")
        elif requested and requested > 1 and not quiet:
            try:
                load = os.getloadavg()[0]
            except (AttributeError, OSError):
                return
            if load + requested > self.cores + 0.5:
                self._warn_busy(load)

    def others(self) -> float | None:
        """Cores' worth of CPU other processes used since the last call (None: unknown)."""
        now, jiffies, own = time.monotonic(), cpu_jiffies(), own_jiffies()
        before, before_own = self._jiffies, self._own
        self._last, self._jiffies, self._own = now, jiffies, own
        if jiffies is None or before is None or jiffies[1] <= before[1]:
            return None
        share = (jiffies[0] - before[0] - (own - before_own)) / (jiffies[1] - before[1])
        return max(0.0, share) * self.cores

    def check(self) -> int:
        """In auto mode, every few seconds: follow the other processes' load. Returns the
        thread count in use."""
        if self.requested or time.monotonic() - self._last < CHECK_SECONDS:
            return self.threads
        others = self.others()
        if others is None:
            return self.threads
        wanted = threads_for(others, self.cores)
        if wanted != self.threads:
            self.threads = wanted
            torch.set_num_threads(wanted)
            if wanted < self.cores:
                self._say(f"other processes are using {others:.1f} of {self.cores} cores")
        return self.threads

    def _say(self, why: str) -> None:
        if self.quiet or self.said:
            return
        self.said = True
        print(f"note: {why}: using {self.threads} thread(s) so as not to fight them for the "
              f"cores (auto mode; --threads N fixes the count)", file=sys.stderr)

    def _warn_busy(self, load: float) -> None:
        self.said = True
        print(f"warning: the machine is busy (load average {load:.1f} on {self.cores} cores) and torch "
              f"uses {self.requested} threads; if training is slow, try --threads 1 or --threads 0 (auto)",
              file=sys.stderr)


class ThreadCheck(Callback):
    """The training loop's hook for auto mode: a look at the machine between steps."""

    def __init__(self, policy: ThreadPolicy):
        self.policy = policy

    def on_step_end(self, loop, loss: float) -> None:
        self.policy.check()
