"""A training step of the vandenberg2018-sylvester-vae-1l-cpu60 network (784-300-300-[64],
4 orthogonal Sylvester steps, M = 8, batch 250), with Björck's iteration written as the
reference code runs it (Q ← Q(I + ½(I − QᵀQ)) on [L, M], then QᵀQ formed again for the test)
against vaekit's (the same iterates on the transposes, each round's QᵀQ tested before it is
used), timed in turns, one thread.
Run: PYTHONPATH=src python benchmarks/bench_bjorck.py [--rounds 10]"""

import argparse
import statistics

import torch
from common import interleave, machine
from torch import nn

import vaekit.posteriors as posteriors


def reference_layout(a: torch.Tensor, rounds: int = 100) -> torch.Tensor:
    """Björck's iteration as riannevdberg/sylvester-flows writes it (update, then test)."""
    tolerance = 1e-5 if a.shape[-1] == a.shape[-2] else 1e-6
    a = a / a.flatten(-2).norm(dim=-1)[..., None, None]
    eye = torch.eye(a.shape[-1], dtype=a.dtype)
    for _ in range(rounds):
        a = a @ (eye + 0.5 * (eye - a.transpose(-1, -2) @ a))
        with torch.no_grad():
            if float((a.transpose(-1, -2) @ a - eye).flatten(-2).norm(dim=-1).max()) <= tolerance:
                break
    return a


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--steps", type=int, default=5, help="training steps per timed call")
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    head = posteriors.make_posterior("sylvester", latent_dim=64, features=300, steps=4,
                                     kind="orthogonal", vectors=8)
    encoder = nn.Sequential(nn.Linear(784, 300), nn.Tanh(), nn.Linear(300, 300), nn.Tanh())
    decoder = nn.Sequential(nn.Linear(64, 300), nn.Tanh(), nn.Linear(300, 300), nn.Tanh(), nn.Linear(300, 784))
    x = torch.rand(250, 784).bernoulli()
    vaekits = posteriors._orthonormal_columns

    def steps(orthonormalise) -> None:
        posteriors._orthonormal_columns = orthonormalise
        try:
            for _ in range(args.steps):
                q = head(encoder(x))
                z = q.rsample()
                log_px = torch.distributions.Bernoulli(logits=decoder(z)).log_prob(x).sum(-1)
                (q.log_prob(z) - log_px + 0.5 * z.pow(2).sum(-1)).mean().backward()
        finally:
            posteriors._orthonormal_columns = vaekits

    results = interleave({"reference layout": lambda: steps(reference_layout),
                          "vaekit": lambda: steps(vaekits)}, repeats=args.rounds)
    ref, new = results["reference layout"], results["vaekit"]
    ratios = sorted(a / b for a, b in zip(ref.seconds, new.seconds, strict=True))
    print(machine())
    for m in (ref, new):
        print(f"{m.name:>17}: {m.median / args.steps * 1000:.1f} ms a step (others up to {m.contention:.0%})")
    print(f"vaekit / reference speed: median {statistics.median(ratios):.2f}x, "
          f"rounds {ratios[0]:.2f}-{ratios[-1]:.2f}")


if __name__ == "__main__":
    main()
