"""A VampPrior's density, forward and backward: torch's MixtureSameFamily (broadcast [B, K, D])
against vaekit.priors.DiagonalMixture (two matrix products in float64), side by side, one thread.
Run: PYTHONPATH=src python benchmarks/bench_mixture.py"""

import time

import torch
from torch.distributions import Categorical, Independent, MixtureSameFamily, Normal

from vaekit.priors import DiagonalMixture


def main(rounds: int = 3, repeats: int = 10) -> None:
    torch.set_num_threads(1)
    loc = torch.randn(500, 50, requires_grad=True)
    log_scale = torch.zeros(500, 50, requires_grad=True)
    z = torch.randn(250, 50, requires_grad=True)
    logits = torch.zeros(500)

    def run(cls) -> None:
        mixture = cls(Categorical(logits=logits), Independent(Normal(loc, log_scale.exp()), 1))
        mixture.log_prob(z).sum().backward()

    for r in range(rounds):
        for cls in (MixtureSameFamily, DiagonalMixture):
            run(cls)
            start = time.perf_counter()
            for _ in range(repeats):
                run(cls)
            print(r, cls.__name__, f"{(time.perf_counter() - start) / repeats * 1000:.1f} ms")


if __name__ == "__main__":
    main()
