"""Pythae 0.1.2 on the same model and data (optional: `pip install 'vaekit[bench]'`).

Its BaseTrainer is timed one ``train_step`` (one epoch) at a time, after ``prepare_training``,
so set-up is excluded just as it is for the other contenders. Its ``get_nll`` is the
importance-sampled log-likelihood the evaluation benchmark compares against.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile

import torch
from torch import nn


def _pythae_vae(latent: int = 20):
    from pythae.models import VAE, VAEConfig
    from pythae.models.base.base_utils import ModelOutput
    from pythae.models.nn import BaseDecoder, BaseEncoder

    class Encoder(BaseEncoder):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Linear(784, 400), nn.ReLU())
            self.mu, self.logvar = nn.Linear(400, latent), nn.Linear(400, latent)

        def forward(self, x):
            h = self.body(x.reshape(x.shape[0], -1))
            return ModelOutput(embedding=self.mu(h), log_covariance=self.logvar(h))

    class Decoder(BaseDecoder):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Linear(latent, 400), nn.ReLU(), nn.Linear(400, 784), nn.Sigmoid())

        def forward(self, z):
            return ModelOutput(reconstruction=self.body(z).reshape(z.shape[0], 1, 28, 28))

    config = VAEConfig(input_dim=(1, 28, 28), latent_dim=latent, reconstruction_loss="bce")
    return VAE(config, encoder=Encoder(), decoder=Decoder())


def pythae_epoch_runner(x: torch.Tensor, max_epochs: int = 1000):
    """A callable that runs one epoch (``train_step``) of Pythae's BaseTrainer, set up once
    (``prepare_training``) beforehand, so set-up is excluded as it is for the others."""
    from pythae.data.datasets import BaseDataset
    from pythae.trainers import BaseTrainer, BaseTrainerConfig

    torch.manual_seed(0)
    model = _pythae_vae()
    out = tempfile.mkdtemp(prefix="vaekit-bench-pythae-")
    atexit.register(shutil.rmtree, out, ignore_errors=True)
    config = BaseTrainerConfig(output_dir=out, num_epochs=max_epochs, learning_rate=1e-3,
                               per_device_train_batch_size=128, optimizer_cls="Adam", no_cuda=True)
    data = BaseDataset(x, torch.zeros(len(x)))  # pythae's own dataset type, as its docs use
    trainer = BaseTrainer(model, train_dataset=data, training_config=config)
    trainer.prepare_training()
    # its per-batch progress bars and console printer would flood the benchmark's table
    handler = trainer.callback_handler
    handler.callbacks = [c for c in handler.callbacks if type(c).__name__ not in
                         ("ProgressBarCallback", "MetricConsolePrinterCallback")]
    counter = iter(range(1, max_epochs))
    return lambda: trainer.train_step(next(counter))


def pythae_nll_seconds(x: torch.Tensor, k: int, n_examples: int) -> float:
    """Seconds Pythae's ``get_nll`` takes for ``n_examples`` images with ``k`` samples."""
    import time

    torch.manual_seed(0)
    model = _pythae_vae().eval()
    start = time.perf_counter()
    model.get_nll(x[:n_examples], n_samples=k, batch_size=100)
    return time.perf_counter() - start
