"""Data parallelism over ``torch.distributed``: what :func:`vaekit.fit` and
:func:`vaekit.evaluate` do when a process group is initialised (``torchrun``).

Nothing here starts processes or initialises a group: ``torchrun`` starts one process per
rank and ``vaekit train`` under it (or your own script) calls
``torch.distributed.init_process_group``. The library only detects the group
(:func:`current`) and then

- splits every global minibatch across the ranks (``batch[rank::world]``: the
  ``DistributedSampler`` rule, so each rank reads only its rows);
- exchanges small tensors and bytes between ranks with plain collectives: no pickle is
  ever sent (:func:`exchange` carries bytes, JSON or safetensors);
- raises an error on every rank when a setup step fails on one (:func:`together`), so no
  rank waits for a partner that has already given up;
- recognises the errors a collective raises when another rank has died
  (:func:`lost_peer`).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import torch

from vaekit.devices import mixed_seed
from vaekit.errors import VaekitError

T = TypeVar("T")


@dataclass(frozen=True)
class Group:
    """The initialised default process group as vaekit uses it."""

    rank: int
    world: int
    backend: str  # as torch reports it: "gloo", "nccl", or "cpu:gloo,cuda:nccl"

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def device(self) -> torch.device:
        """Where vaekit's own small collectives run: the CPU when gloo is available (it
        carries CPU tensors), else this rank's GPU (NCCL carries CUDA tensors only)."""
        if "gloo" in self.backend or not torch.cuda.is_available():
            return torch.device("cpu")
        return torch.device("cuda", torch.cuda.current_device())

    def backend_for(self, device: torch.device) -> str:
        """The backend that carries tensors on ``device`` (for the run record)."""
        if ":" not in self.backend:
            return self.backend
        kinds = dict(part.split(":", 1) for part in self.backend.split(","))
        return kinds.get(device.type, self.backend)


def current() -> Group | None:
    """The initialised default process group, or None (one process)."""
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized()):
        return None
    return Group(dist.get_rank(), dist.get_world_size(), str(dist.get_backend()))


def local_device(device: torch.device) -> torch.device:
    """A rank's GPU: ``cuda`` without an index becomes ``cuda:LOCAL_RANK`` (torchrun's
    variable; else the rank modulo the GPUs visible), so ranks on one node do not share a
    GPU. Other devices, and ``cuda:N`` asked for explicitly, are kept."""
    group = current()
    if group is None or device.type != "cuda" or device.index is not None:
        return device
    local = int(os.environ.get("LOCAL_RANK", group.rank % max(1, torch.cuda.device_count())))
    return torch.device("cuda", local)


def part(rows, group: Group | None):
    """This rank's share of a global minibatch's ``rows``: every ``world``-th from ``rank``
    (sizes differ by at most one when the batch does not divide)."""
    return rows if group is None else rows[group.rank :: group.world]


def rank_seed(seed: int, rank: int, *position: int) -> int:
    """The seed of rank ``rank``'s reparameterisation stream: ``seed`` itself on rank 0 (so
    one rank draws what one process draws), a mixed, non-overlapping seed elsewhere."""
    if rank == 0 and not position:
        return seed
    return mixed_seed(seed, rank, *position)


# ---------------------------------------------------------------------- collectives
def all_sum(values: torch.Tensor, group: Group | None) -> torch.Tensor:
    """``values`` summed over the ranks (returned on the values' device)."""
    if group is None:
        return values
    moved = values.to(group.device)
    torch.distributed.all_reduce(moved)
    return moved.to(values.device)


def all_max(values: torch.Tensor, group: Group | None) -> torch.Tensor:
    if group is None:
        return values
    moved = values.to(group.device)
    torch.distributed.all_reduce(moved, op=torch.distributed.ReduceOp.MAX)
    return moved.to(values.device)


def exchange(payload: bytes, group: Group) -> list[bytes]:
    """Every rank's ``payload`` (any length), in rank order, on every rank."""
    device = group.device
    size = torch.tensor([len(payload)], dtype=torch.int64, device=device)
    sizes = [torch.zeros_like(size) for _ in range(group.world)]
    torch.distributed.all_gather(sizes, size)
    longest = max(int(s) for s in sizes)
    mine = torch.zeros(max(1, longest), dtype=torch.uint8)
    if payload:
        mine[: len(payload)] = torch.frombuffer(bytearray(payload), dtype=torch.uint8)
    gathered = [torch.empty_like(mine, device=device) for _ in range(group.world)]
    torch.distributed.all_gather(gathered, mine.to(device))
    return [g[: int(s)].cpu().numpy().tobytes() for g, s in zip(gathered, sizes, strict=True)]


def broadcast(payload: bytes | None, group: Group) -> bytes:
    """Rank 0's ``payload`` on every rank."""
    device = group.device
    size = torch.tensor([len(payload) if group.main else 0], dtype=torch.int64, device=device)
    torch.distributed.broadcast(size, 0)
    data = torch.empty(int(size), dtype=torch.uint8)
    if group.main and payload:
        data[:] = torch.frombuffer(bytearray(payload), dtype=torch.uint8)
    data = data.to(device)
    torch.distributed.broadcast(data, 0)
    return data.cpu().numpy().tobytes()


def broadcast_weights(model: torch.nn.Module, group: Group | None) -> None:
    """Rank 0's parameters and buffers copied into every rank's ``model``, in place."""
    if group is None:
        return
    with torch.no_grad():
        for tensor in model.state_dict().values():
            moved = tensor.to(group.device)
            torch.distributed.broadcast(moved, 0)
            if moved is not tensor:
                tensor.copy_(moved)


def broadcast_json(value: Any, group: Group | None) -> Any:
    """Rank 0's JSON-able ``value`` on every rank."""
    if group is None:
        return value
    return json.loads(broadcast(json.dumps(value).encode() if group.main else None, group))


class SharedError(VaekitError):
    """An error raised on every rank because one rank failed (``rank``: where it happened).
    The CLI prints it on rank 0 only."""

    shared = True

    def __init__(self, message: str, rank: int, exit_code: int = 2):
        super().__init__(message)
        self.rank, self.exit_code = rank, exit_code


def together(fn: Callable[[], T], group: Group | None, main_only: bool = False) -> T | None:
    """``fn()`` on every rank (on rank 0 alone with ``main_only``; the others get None);
    when it raises a :class:`VaekitError` on any rank, every rank raises it (the failing
    rank its own error, the others a :class:`SharedError` naming that rank's message), so
    no rank goes on to wait in a collective for a rank that has stopped."""
    if group is None:
        return fn()
    result, error = None, None
    if group.main or not main_only:
        try:
            result = fn()
        except VaekitError as err:
            error = err
    mine = b"" if error is None else json.dumps([str(error), error.exit_code]).encode()
    outcomes = exchange(mine, group)
    failed = [(rank, json.loads(text)) for rank, text in enumerate(outcomes) if text]
    if not failed:
        return result
    if error is not None:
        error.shared = True  # the CLI prints it on rank 0 only
        raise error
    rank, (message, code) = failed[0]
    raise SharedError(message if rank == 0 else f"on rank {rank}: {message}", rank, code)


# ---------------------------------------------------------------------- failures
# What gloo and NCCL say when a partner process has gone (killed, crashed, or exited).
_LOST = re.compile(
    r"Connection closed by peer|Connection reset by peer|Broken pipe|Socket Timeout|timed out|"
    r"NCCL communicator was aborted|NCCL error|ProcessGroupGloo|ProcessGroupNCCL|DistNetworkError",
    re.IGNORECASE,
)


def lost_peer(err: BaseException) -> bool:
    """Whether ``err`` is a collective failing because another rank is gone."""
    if isinstance(err, getattr(torch.distributed, "DistError", ())):
        return True
    return isinstance(err, RuntimeError) and bool(_LOST.search(str(err)))


def reason(err: BaseException) -> str:
    """The first sentence of a collective's error, without gloo's source position."""
    text = re.sub(r"^\[[^\]]*\]\s*", "", str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__)
    return text.split(". ")[0].rstrip(".")
