"""Where a training step runs: one process (:class:`SingleProcess`) or data parallel over an
initialised ``torch.distributed`` process group (:class:`DataParallel`), behind one interface
that :func:`vaekit.fit`'s loop calls at the same places whatever the world size.

Data parallelism (docs/distributed.md): every rank computes the same permutation of the data
and takes every ``world``-th example of each global minibatch; gradients are averaged by
``DistributedDataParallel`` with each rank's loss weighted by its share, so a step is the one
a single process takes on the whole minibatch. Random draws that vaekit makes (dynamic
binarisation, the reparameterisation noise: :mod:`vaekit.noise`) are made for the whole
minibatch on every rank and each rank keeps its rows, so an example's draw does not depend
on the rank that holds it. Metrics, the skip decision for non-finite steps, signals and
checkpoint timing are agreed by one small all-reduce per step. Rank 0 alone touches the run
directory (:meth:`SingleProcess.together` with ``main_only``).
"""

from __future__ import annotations

import inspect
import math
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch

from vaekit import distributed
from vaekit.devices import forked_rng
from vaekit.errors import Interrupted, VaekitError
from vaekit.model import num_classes
from vaekit.objectives import Batch
from vaekit.sources import Source, binarize

T = TypeVar("T")
# per-example terms summed over an epoch: the ELBO and its parts, and what the objective
# maximises when it says (``objective``: an IWAE bound, a β-weighted ELBO), train_objective
TERMS = ("elbo", "reconstruction", "kl", "objective")


@dataclass
class Flags:
    """What every rank must agree on after a step or an epoch: a signal received (its
    number), a checkpoint due by the clock, a stop asked for, and rank 0's training seconds."""

    signum: int = 0
    due: bool = False
    stop: bool = False
    seconds: float = 0.0


@dataclass
class StepResult:
    """A step as every rank agrees it: whether its loss and gradients were finite, the
    minibatch's mean loss, its summed per-example terms (None when not finite), its examples
    and clamped log-variances, and the agreed :class:`Flags`."""

    finite: bool
    loss: float
    sums: torch.Tensor | None
    examples: int
    clamped: int
    flags: Flags


class SingleProcess:
    """One process: the step as written, nothing to agree on."""

    rank, world, main = 0, 1, True
    group: distributed.Group | None = None

    def check(self, source: Source, batch_size: int) -> None:
        """Refuse data the strategy cannot split (nothing to refuse here)."""

    def check_same_data(self, fingerprint: str) -> None:
        """Refuse ranks that read other data (one process always reads its own)."""

    def prepare(self, model: torch.nn.Module, step: Callable, source: Source, batch_size: int,
                device: torch.device) -> None:
        """Before the first step: ``step(model, batch) -> (loss, terms)`` is the objective."""
        self.model, self.step, self.loader = model, step, source.kind == "loader"

    def start_epoch(self, source: Source, epoch: int) -> None:
        """Before an epoch's first batch (a DistributedSampler learns the epoch)."""

    def share(self, local: int, total: int) -> tuple[int, slice]:
        """(the global minibatch's size, this process's rows of it) for keyed draws."""
        return local, slice(None)

    def binarize(self, x: torch.Tensor | None, total: int, draws: torch.Generator) -> torch.Tensor | None:
        """x ~ Bernoulli(x) for this process's rows, drawn for the whole minibatch."""
        return binarize(x, draws)

    def forward_backward(self, batch: Batch | None, total: int, amp) -> tuple[torch.Tensor, dict]:
        with amp:
            loss, terms = self.step(self.model, batch)
        loss.backward()
        return loss, terms

    def reduce(self, loss: torch.Tensor, terms: dict, x: torch.Tensor | None, norm: torch.Tensor,
               flags: Flags) -> StepResult:
        finite = bool(torch.isfinite(loss + norm))
        sums = _sums(terms, x).cpu() if finite else None
        return StepResult(finite, loss.item(), sums, len(x), int(getattr(self.model, "clamped", 0)), flags)

    def agree(self, flags: Flags) -> Flags:
        return flags

    def together(self, fn: Callable[[], T], main_only: bool = False) -> T | None:
        """``fn()`` (on rank 0 alone with ``main_only``); an error on one rank stops all."""
        return distributed.together(fn, self.group, main_only)

    def broadcast(self, payload: bytes | None) -> bytes | None:
        return payload

    def rank_states(self, model: torch.nn.Module) -> dict[str, torch.Tensor] | None:
        """The other ranks' generator states, for a checkpoint (None: one process)."""
        return None

    def record(self, device: torch.device) -> dict[str, Any]:
        """The world size and backend, as run.json and checkpoints record them."""
        return {"world_size": 1, "backend": None}

    def lost(self, err: BaseException) -> bool:
        """Whether ``err`` is a collective failing because another rank is gone."""
        return False

    def close(self) -> None:
        """Let go of communication threads (before the process group is destroyed)."""


class DataParallel(SingleProcess):
    """Data parallel over ``group``: every minibatch split across the ranks (module docstring)."""

    def __init__(self, group: distributed.Group):
        self.group, self.rank, self.world, self.main = group, group.rank, group.world, group.main
        self.ddp = None
        self.example: tuple | None = None  # shape and dtype of one example, for draws of a rank with none

    def check(self, source: Source, batch_size: int) -> None:
        if source.kind == "loader":
            from torch.utils.data import DistributedSampler

            sampler = getattr(source.loader.batch_sampler, "sampler", None) or source.loader.sampler
            if not isinstance(sampler, DistributedSampler):
                raise VaekitError(
                    "under torch.distributed a DataLoader must shard its data: give it "
                    "sampler=DistributedSampler(dataset, seed=...) (its batch size is then per rank), "
                    "or pass the tensors or the Dataset and let fit split each minibatch")
        elif batch_size < self.world:
            raise VaekitError(
                f"batch_size {batch_size} is smaller than the {self.world} processes: the global "
                "minibatch is split across them, and each needs at least one example")

    def check_same_data(self, fingerprint: str) -> None:
        prints = distributed.exchange(fingerprint.encode(), self.group)
        other = next((r for r, f in enumerate(prints) if f != prints[0]), None)
        if other is not None:
            raise VaekitError(
                f"rank {other} reads other data than rank 0 (their fingerprints differ): every "
                "process must read the same training and validation data")

    def prepare(self, model, step, source, batch_size, device) -> None:
        super().prepare(model, step, source, batch_size, device)
        if not self.loader:
            x0, _ = source.first_batch(1)
            self.example = (tuple(x0.shape[1:]), x0.dtype)
        self.ddp = _data_parallel(model, step, source, batch_size, device)

    def start_epoch(self, source: Source, epoch: int) -> None:
        if self.loader:
            sampler = getattr(source.loader.batch_sampler, "sampler", None) or source.loader.sampler
            if hasattr(sampler, "set_epoch"):
                sampler.set_epoch(epoch - 1)  # the sampler's shuffle: a function of its seed and the epoch

    def share(self, local: int, total: int) -> tuple[int, slice]:
        # a DataLoader's batches have no global positions: each rank takes its own block
        if self.loader:
            return self.world * local, slice(self.rank * local, (self.rank + 1) * local)
        return total, slice(self.rank, None, self.world)

    def binarize(self, x, total, draws):
        if self.loader:
            size, rows = self.share(len(x), total)
            return binarize(x, draws, (size, *x.shape[1:]), rows)
        return binarize(x, draws, (total, *self.example[0]), slice(self.rank, None, self.world), self.example[1])

    def forward_backward(self, batch, total, amp):
        share = 0 if batch is None else len(batch.x)
        with amp:
            loss, terms = self.ddp(batch)
        # DDP averages the ranks' gradients: weighting each rank's mean loss by its share of
        # the minibatch makes that the gradient of the minibatch's mean
        weight = 1.0 if self.loader else share * self.world / total
        (loss * weight).backward()
        return loss, terms

    def reduce(self, loss, terms, x, norm, flags):
        """One all-reduce per step: the loss, term sums, examples, clamped log-variances, the
        ranks' signals and rank 0's checkpoint clock and training seconds."""
        share = 0 if x is None else len(x)
        device = loss.device
        sums = (_sums(terms, x).double() if share
                else torch.zeros(len(TERMS), dtype=torch.float64, device=device))
        extra = torch.tensor([share, int(getattr(self.model, "clamped", 0)) if share else 0,
                              *_signal_flags(flags.signum), flags.due, flags.seconds if self.main else 0.0],
                             dtype=torch.float64, device=device)
        local = torch.cat([(loss.detach().double() * share).reshape(1), sums.to(device), extra])
        r = distributed.all_sum(local, self.group).cpu()
        n = len(TERMS)
        examples = int(r[1 + n])
        loss_value = float(r[0]) / max(1, examples)
        finite = math.isfinite(loss_value) and bool(torch.isfinite(norm))
        agreed = Flags(_signal_of(*r[3 + n : 5 + n].tolist()), bool(r[5 + n]), False, float(r[6 + n]))
        return StepResult(finite, loss_value, r[1 : 1 + n].float() if finite else None, examples,
                          int(r[2 + n]), agreed)

    def agree(self, flags: Flags) -> Flags:
        values = torch.tensor([*_signal_flags(flags.signum), flags.stop, flags.due,
                               flags.seconds if self.main else 0.0], dtype=torch.float64)
        sigint, sigterm, stop, due, seconds = distributed.all_max(values, self.group).tolist()
        return Flags(_signal_of(sigint, sigterm), bool(due), bool(stop), seconds)

    def broadcast(self, payload):
        return distributed.broadcast(payload, self.group)

    def rank_states(self, model):
        """Every rank's reparameterisation generator (rank 0's is the checkpoint's own
        ``rng.torch``), sent as safetensors bytes."""
        from vaekit.rundir import decode_tensors, encode_tensors

        device = next((p.device for p in model.parameters()), torch.device("cpu"))
        mine = {"torch": torch.get_rng_state()}
        if device.type == "cuda":
            mine["cuda"] = torch.cuda.get_rng_state(device)
        states = {}
        for rank, data in enumerate(distributed.exchange(encode_tensors(mine), self.group)):
            if rank:
                tensors, _ = decode_tensors(data, Path(f"rank {rank}"), "a generator state")
                states.update({f"rng.rank{rank}.{k}": v for k, v in tensors.items()})
        return states

    def record(self, device):
        return {"world_size": self.world, "backend": self.group.backend_for(device)}

    def lost(self, err):
        return distributed.lost_peer(err)

    def close(self) -> None:
        self.ddp = None  # DDP's threads go now, not after the process group is destroyed


def strategy() -> SingleProcess:
    """The strategy for this process: data parallel under an initialised process group."""
    group = distributed.current()
    return SingleProcess() if group is None else DataParallel(group)


class StopOnSignal:
    """With a run directory, SIGINT and SIGTERM ask the loop to finish its step, checkpoint
    and stop; a second signal stops at once (the last complete checkpoint is still there).
    The previous handlers are restored on the way out. Under torch.distributed the ranks
    agree on the signal after each step (any rank's counts), so they stop together."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, enabled: bool):
        self.enabled = enabled

    def __enter__(self) -> StopOnSignal:
        self.signum: int | None = None
        self.previous = {}
        if self.enabled and threading.current_thread() is threading.main_thread():
            for s in self.SIGNALS:
                self.previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc) -> bool:
        for s, handler in self.previous.items():
            signal.signal(s, handler)
        return False

    def _handle(self, signum: int, frame) -> None:
        if self.signum is not None:
            raise KeyboardInterrupt
        self.signum = signum

    @staticmethod
    def check(signum: int, run: Path | None, holds: str) -> None:
        """Stop (raise :class:`Interrupted`) when ``signum``, the agreed signal, is set."""
        if signum:
            raise Interrupted(signum, run, holds)


def _signal_flags(signum: int) -> tuple[bool, bool]:
    return signum == signal.SIGINT, signum == signal.SIGTERM


def _signal_of(sigint: float, sigterm: float) -> int:
    return int(signal.SIGTERM) if sigterm else int(signal.SIGINT) if sigint else 0


def _sums(terms: dict, x: torch.Tensor) -> torch.Tensor:
    """The minibatch's sum of each of :data:`TERMS` (NaN for a term the objective does not
    report): one stack and one sum when all are per-example vectors (two kernels, not five)."""
    values = [terms.get(k) for k in TERMS]
    if all(v is not None and v.dim() == 1 for v in values):
        return torch.stack([v.detach() for v in values]).float().sum(1)
    return torch.stack([torch.tensor(float("nan"), device=x.device) if v is None else v.detach().float().sum()
                        for v in values])


class _ObjectiveStep(torch.nn.Module):
    """The objective as a module's forward, for DistributedDataParallel (which prepares its
    gradient all-reduce in forward, while objectives call ``encode``/``decode``). A rank
    whose share of a minibatch is empty still takes part, with a zero loss over every
    parameter."""

    def __init__(self, model: torch.nn.Module, step: Callable):
        super().__init__()
        self.model, self.step = model, step

    def forward(self, batch: Batch | None):
        if batch is None:
            return sum(p.sum() for p in self.model.parameters() if p.requires_grad) * 0.0, {}
        return self.step(self.model, batch)


def _data_parallel(model, step, source: Source, batch_size: int, device: torch.device):
    """The model and objective under DistributedDataParallel (which also makes every rank
    start from rank 0's weights). Buffers are not broadcast at every step: vaekit's are
    constants, and a user's BatchNorm statistics stay each rank's own (rank 0's are saved)."""
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    # torch 2.13 renamed the switch (and syncs buffers once at the start, which is wanted)
    newer = "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
    buffers = {"forward_sync_buffers" if newer else "broadcast_buffers": False}
    unused = _leaves_parameters_out(model, step, source, batch_size, device)
    return DistributedDataParallel(_ObjectiveStep(model, step), device_ids=ids, **buffers,
                                   find_unused_parameters=unused)


def _leaves_parameters_out(model, step, source: Source, batch_size: int, device: torch.device) -> bool:
    """Whether the objective leaves some trainable parameter without a gradient, tried on a
    few examples (no draws leak out, buffers are put back). DDP then has to search the graph
    for them at every step; otherwise it is told not to, which costs nothing."""
    x, y = source.first_batch(min(batch_size, 8))
    params = [p for p in model.parameters() if p.requires_grad]
    buffers = [b.detach().clone() for b in model.buffers()]
    labels = None if not num_classes(model) or y is None else torch.as_tensor(y).long()[:8].to(device)
    with forked_rng(device):
        loss, _ = step(model, Batch(x[:8].to(device), labels, 0.0))
        grads = torch.autograd.grad(loss, params, allow_unused=True)
    with torch.no_grad():
        for b, saved in zip(model.buffers(), buffers, strict=True):
            b.copy_(saved)
    return any(g is None for g in grads)


def gradient_check(params: list[torch.Tensor], grad_clip: float) -> torch.Tensor:
    """A number that is finite exactly when every gradient is: the clipped norm when clipping,
    else the sum of the per-tensor sums (a sum, not a norm: one pass without squares, it runs
    at every step; docs/performance.md). A sum can overflow only for gradients near 1e38, and
    those are no more usable than infinite ones."""
    if grad_clip:
        return torch.nn.utils.clip_grad_norm_(params, grad_clip)
    sums = [p.grad.sum() for p in params if p.grad is not None]
    return torch.stack(sums).sum() if sums else torch.zeros(())


def bad_steps_message(count: int, model, optimizer) -> str:
    lr = optimizer.param_groups[0].get("lr") if optimizer.param_groups else None
    floor = getattr(getattr(model, "likelihood", None), "sigma_min", None)
    return (
        f"training stopped: {count} steps in a row had a non-finite loss or gradient (each was "
        "skipped, so the weights are not poisoned). Usual causes: a learning rate too high"
        + ("" if lr is None else f" (lr = {float(lr):g})")
        + "; with a Gaussian likelihood, a σ_G floor too small"
        + ("" if floor is None else f" (sigma_min = {floor:g})")
        + " or data on a huge scale; with the Bernoulli likelihood, data outside [0, 1]."
    )
