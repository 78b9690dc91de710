"""The optimisers :data:`vaekit.registry.OPTIMIZERS` names, as functions of the parameters.

Each takes the common settings and uses what its torch optimiser knows; ``fused`` kernels
where torch has them (one kernel per update instead of a loop over parameters: the largest
single cost of a small CPU step).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch


def adam(params: Iterable, lr: float, weight_decay: float = 0.0, betas: tuple[float, float] = (0.9, 0.999),
         eps: float = 1e-8, fused: bool = False) -> torch.optim.Optimizer:
    return torch.optim.Adam(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, fused=fused)


def adamw(params: Iterable, lr: float, weight_decay: float = 0.0, betas: tuple[float, float] = (0.9, 0.999),
          eps: float = 1e-8, fused: bool = False) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, fused=fused)


def adagrad(params: Iterable, lr: float, weight_decay: float = 0.0, fused: bool = False,
            **_: object) -> torch.optim.Optimizer:
    return torch.optim.Adagrad(params, lr=lr, weight_decay=weight_decay, fused=fused)


def sgd(params: Iterable, lr: float, weight_decay: float = 0.0, fused: bool = False,
        **_: object) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=lr, weight_decay=weight_decay, fused=fused)
