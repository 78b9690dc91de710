"""Faithful re-implementations of the alternatives vaekit is measured against.

``ExamplesVAE`` and ``examples_epoch`` follow the pytorch/examples VAE recipe: a
784-400-20 MLP, sigmoid outputs with binary cross-entropy *summed* over pixels and the
batch on grey levels, the analytic KL, Adam(lr=1e-3) with its default (for-each)
implementation, batch 128, and a DataLoader over a TensorDataset (or, in the per-item
variant, over a map-style Dataset that returns one example at a time, as a torchvision
dataset does). Written here from the recipe's description, not copied.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset


class ExamplesVAE(nn.Module):
    def __init__(self, d: int = 784, hidden: int = 400, latent: int = 20):
        super().__init__()
        self.fc1, self.fc21, self.fc22 = nn.Linear(d, hidden), nn.Linear(hidden, latent), nn.Linear(hidden, latent)
        self.fc3, self.fc4 = nn.Linear(latent, hidden), nn.Linear(hidden, d)
        self.d = d

    def forward(self, x):
        h = F.relu(self.fc1(x.view(-1, self.d)))
        mu, logvar = self.fc21(h), self.fc22(h)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        return torch.sigmoid(self.fc4(F.relu(self.fc3(z)))), mu, logvar


def examples_loss(recon, x, mu, logvar):
    bce = F.binary_cross_entropy(recon, x.view(-1, recon.shape[-1]), reduction="sum")
    kld = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
    return bce + kld


class BurdaVAE(nn.Module):
    """Burda et al.'s one-layer model: 784-200-200-[50] tanh, mirrored decoder, Bernoulli."""

    def __init__(self, d: int = 784, hidden: int = 200, latent: int = 50):
        super().__init__()
        self.enc = nn.Sequential(nn.Linear(d, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh(),
                                 nn.Linear(hidden, 2 * latent))
        self.dec = nn.Sequential(nn.Linear(latent, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh(),
                                 nn.Linear(hidden, d))
        self.d = d

    def forward(self, x):
        mu, logvar = self.enc(x.view(-1, self.d)).chunk(2, -1)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        return torch.sigmoid(self.dec(z)), mu, logvar


class PerItem(Dataset):
    """A map-style dataset doing per-example Python work, as torchvision's MNIST does."""

    def __init__(self, x: torch.Tensor):
        self.x = x

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i].clone(), 0


def make_loader(x: torch.Tensor, batch_size: int, per_item: bool = False, seed: int = 0) -> DataLoader:
    data = PerItem(x) if per_item else TensorDataset(x, torch.zeros(len(x)))
    return DataLoader(data, batch_size=batch_size, shuffle=True,
                      generator=torch.Generator().manual_seed(seed))


def examples_epoch(model, optimizer, loader, max_steps: int | None = None) -> float:
    """One epoch of the recipe's training loop; returns the mean loss per example."""
    model.train()
    total, seen = 0.0, 0
    for step, (x, _) in enumerate(loader):
        if max_steps is not None and step >= max_steps:
            break
        optimizer.zero_grad()
        recon, mu, logvar = model(x)
        loss = examples_loss(recon, x, mu, logvar)
        loss.backward()
        total += loss.item()
        seen += len(x)
        optimizer.step()
    return total / max(seen, 1)


@torch.no_grad()
def examples_elbo(model, x: torch.Tensor, batch_size: int = 1000) -> float:
    """Per-example ELBO (nats) of a reference model on grey levels, M = 1, analytic KL."""
    model.eval()
    total = 0.0
    for i in range(0, len(x), batch_size):
        xb = x[i : i + batch_size]
        recon, mu, logvar = model(xb)
        total -= float(examples_loss(recon, xb, mu, logvar))
    return total / len(x)
