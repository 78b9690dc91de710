"""Commands started by ``torchrun``: joining its process group, and which process speaks.

``torchrun --nproc-per-node N -m vaekit train ...`` starts N copies of the command with
``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT`` set. ``train``
and ``evaluate`` then join the process group (:func:`process_group`), and the library's
:func:`vaekit.fit` and :func:`vaekit.evaluate` work data parallel (:mod:`vaekit.distributed`).
Outside torchrun nothing changes. Rank 0 prints; the others stay quiet except for errors
of their own.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta

from vaekit.errors import VaekitError

BACKENDS = ("auto", "gloo", "nccl")
_TORCHRUN = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
# How long a collective may wait for the other ranks before it fails (torch's own default is
# 30 min for gloo, 10 for NCCL). A rank that dies closes its connections and is noticed at
# once; this bounds the wait for one that hangs. Rank 0's slowest lone work between
# collectives (writing a checkpoint, an epoch's validation on its share) must fit in it.
TIMEOUT = timedelta(minutes=10)


def launched() -> bool:
    """Whether this process was started by torchrun (or another launcher setting its variables)."""
    return all(name in os.environ for name in _TORCHRUN)


def rank() -> int:
    """This process's rank (0 outside torchrun)."""
    try:
        return int(os.environ.get("RANK", "0")) if launched() else 0
    except ValueError:
        return 0


@contextmanager
def process_group(backend: str | None = "auto") -> Iterator[None]:
    """Join torchrun's process group for the duration (nothing outside torchrun). ``auto``
    takes NCCL for CUDA tensors and gloo for CPU ones where there is a GPU, gloo elsewhere."""
    import torch

    backend = (backend or "auto").strip().lower()
    if backend not in BACKENDS:
        raise VaekitError(f"--dist-backend must be one of {', '.join(BACKENDS)}; got '{backend}'")
    if not launched():
        if backend != "auto":
            raise VaekitError("--dist-backend applies under torchrun (torchrun --nproc-per-node N -m vaekit ...)")
        yield
        return
    dist = torch.distributed
    if dist.is_initialized():  # a script that set up its own group and called the CLI
        yield
        return
    if not dist.is_available():
        raise VaekitError("this torch was built without torch.distributed: it cannot run under torchrun")
    cuda = torch.cuda.is_available()
    if backend == "nccl" and not cuda:
        raise VaekitError("--dist-backend nccl needs CUDA GPUs, and none is visible; use --dist-backend gloo")
    choice = backend if backend != "auto" else "cpu:gloo,cuda:nccl" if cuda else "gloo"
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())
    _stop_on_termination()
    # torch.distributed.nn binds group.WORLD as default arguments when first imported, and DDP
    # imports it (through torch._dynamo) after the group exists: that reference would keep the
    # group, and gloo's worker threads, alive past destroy_process_group into interpreter
    # shutdown, where a worker releasing a tensor takes the GIL and the process aborts
    # ("terminate called without an active exception"). Imported first, it binds None.
    import torch.distributed.nn  # noqa: F401

    try:
        dist.init_process_group(choice, timeout=TIMEOUT)
    except (RuntimeError, ValueError) as err:
        from vaekit.distributed import reason

        raise VaekitError(f"could not join the torchrun job's process group ({reason(err)})") from None
    try:
        yield
    except BaseException:
        dist.destroy_process_group()  # no barrier: another rank may be gone
        raise
    # every rank done with every collective before any closes its connections
    dist.barrier()
    dist.destroy_process_group()


class Terminated(KeyboardInterrupt):
    """A termination request outside training, under torchrun."""

    def __init__(self, signum: int):
        import signal

        super().__init__(
            f"stopped by {signal.Signals(signum).name} (torchrun stops every process of a job when one "
            "of them fails, or when it is stopped itself)"
        )
        self.exit_code = 128 + signum


def _stop_on_termination() -> None:
    """torchrun stops the other workers with SIGTERM when one fails (and forwards its own
    SIGTERM and SIGINT). Outside training (which checkpoints first) that interrupts the
    command like Ctrl-C, so a worker that was already failing still gets to say why
    (:func:`vaekit.app.cli.main` reports the error the interruption cut short)."""
    import signal

    def interrupt(signum, frame):
        raise Terminated(signum)

    for s in (signal.SIGTERM, signal.SIGINT):
        signal.signal(s, interrupt)


def settle() -> None:
    """While the outcome is being reported: termination requests are ignored (the process
    is ending anyway, and the report is what the user needs)."""
    import signal

    if launched():
        for s in (signal.SIGTERM, signal.SIGINT):
            signal.signal(s, signal.SIG_IGN)
