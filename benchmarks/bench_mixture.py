"""A VampPrior's density, forward and backward: torch's MixtureSameFamily (broadcast [B, K, D])
against vaekit.priors.DiagonalMixture (two matrix products in float64), side by side, one thread.
Run: PYTHONPATH=src python benchmarks/bench_mixture.py"""
import time

import torch

torch.set_num_threads(1)
from torch.distributions import Categorical, Independent, MixtureSameFamily, Normal

from vaekit.priors import DiagonalMixture

loc = torch.randn(500, 50, requires_grad=True); ls = torch.zeros(500, 50, requires_grad=True)
z = torch.randn(250, 50, requires_grad=True); logits = torch.zeros(500)
def run(cls):
    d = cls(Categorical(logits=logits), Independent(Normal(loc, ls.exp()), 1))
    d.log_prob(z).sum().backward()
for r in range(3):
    for cls in (MixtureSameFamily, DiagonalMixture):
        run(cls); t = time.perf_counter()
        for _ in range(10): run(cls)
        print(r, cls.__name__, f"{(time.perf_counter()-t)/10*1000:.1f} ms")
