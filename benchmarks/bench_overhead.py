"""vaekit's per-step overhead: its training loop (`vaekit.fit`, one epoch per call) against a bare loop with the
same maths (same MLP, reparameterised draw, logit Bernoulli, closed-form KL, fused Adam)
and none of vaekit's bookkeeping (distribution objects, finiteness check, statistics),
timed in turns in one process.

    python benchmarks/bench_overhead.py                 # batch 20 (Burda's model), 1 thread
    python benchmarks/bench_overhead.py --batch 128 --threads 2   # the pytorch/examples recipe
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
from bench_train import vaekit_setup  # noqa: E402

from vaekit.app.config import Config  # noqa: E402
from vaekit.app.data import load_data  # noqa: E402


def bare_loop(config: Config, x: torch.Tensor):
    """One epoch of the same model and objective in plain PyTorch, as a callable."""
    torch.manual_seed(0)
    act = nn.Tanh if config.activation == "tanh" else nn.ReLU

    def mlp(width_in: int, hidden: list[int], width_out: int) -> nn.Sequential:
        layers: list[nn.Module] = []
        for h in hidden:
            layers += [nn.Linear(width_in, h), act()]
            width_in = h
        return nn.Sequential(*layers, nn.Linear(width_in, width_out))

    latent = config.latent_dim
    enc, dec = mlp(784, config.hidden, 2 * latent), mlp(latent, config.hidden[::-1], 784)
    opt = torch.optim.Adam([*enc.parameters(), *dec.parameters()], lr=config.lr, fused=True)
    flat, batch = x.reshape(len(x), -1), config.batch_size
    dynamic = config.binarize == "dynamic"

    def epoch() -> None:
        order = torch.randperm(len(flat))
        for start in range(0, len(flat), batch):
            b = flat[order[start : start + batch]]
            if dynamic:
                b = torch.bernoulli(b)
            mu, logvar = enc(b).chunk(2, -1)
            logits = dec(mu + torch.exp(0.5 * logvar) * torch.randn_like(mu))
            kl = 0.5 * (mu * mu + logvar.exp() - 1 - logvar).sum(-1)
            loss = (F.softplus(logits).sum(-1) - (b * logits).sum(-1) + kl).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    return epoch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=20, choices=(20, 128))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--data-dir", default=str(common.MNIST_DIR))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.batch == 20:
        config = Config(hidden=[200, 200], activation="tanh", latent_dim=50, batch_size=20, seed=0)
        n = 20 * 1500
    else:
        config = Config(hidden=[400], latent_dim=20, binarize="none", batch_size=128, seed=0)
        n = 128 * 300
    x = load_data("mnist", args.data_dir).train.x[:n]
    measured = common.interleave({"vaekit": vaekit_setup(config, x)[1], "bare loop": bare_loop(config, x)},
                                 args.rounds)
    steps = n // config.batch_size
    ours, bare = measured["vaekit"], measured["bare loop"]
    print(f"batch {config.batch_size}, {args.threads} thread(s): vaekit {steps / ours.median:.0f} steps/s, "
          f"bare loop {steps / bare.median:.0f} steps/s; vaekit's overhead "
          f"{100 * (ours.median / bare.median - 1):.0f} % of a bare step; others' CPU ≤ "
          f"{100 * max(ours.contention, bare.contention):.0f} %")


if __name__ == "__main__":
    main()
