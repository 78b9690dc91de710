"""vaekit as a library: your own networks and data through ``vaekit.fit``, run directories
written by it, killed and resumed, loaded into your own module, and evaluated; the API's
functions are real functions; library calls leave process-wide state alone."""

from __future__ import annotations

import inspect
import json
import math
import os
import pickle
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import vaekit
from conftest import SRC
from vaekit.rundir import RunDirectory

# A user's own conv encoder/decoder, written as a module so a second process can import it.
NETS = textwrap.dedent('''
    import torch
    from torch import nn

    import vaekit

    LATENT = 4


    class Encoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Sequential(nn.Conv2d(1, 8, 3, stride=2, padding=1), nn.ReLU())
            self.out = nn.Linear(8 * 4 * 4, 2 * LATENT)

        def forward(self, x):  # x: [B, 1, 8, 8]
            assert x.dim() == 4 and x.shape[1:] == (1, 8, 8)
            return self.out(self.conv(x).flatten(1))


    class Decoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.inp = nn.Sequential(nn.Linear(LATENT, 8 * 4 * 4), nn.ReLU())
            self.deconv = nn.ConvTranspose2d(8, 1, 4, stride=2, padding=1)

        def forward(self, z):  # logits shaped like the images
            return self.deconv(self.inp(z).view(-1, 8, 4, 4))


    def model():
        return vaekit.VAE(encoder=Encoder(), decoder=Decoder(), likelihood="bernoulli", latent_dim=LATENT)


    def images():
        from sklearn.datasets import load_digits

        return torch.tensor(load_digits().images[:600], dtype=torch.float32).unsqueeze(1) / 16.0


    def data(kind):
        x = images()
        train, val = x[:500], x[500:]
        if kind == "tensor":
            return train, val
        if kind == "dataset":
            return torch.utils.data.TensorDataset(train), val
        return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(train), batch_size=64, shuffle=True), val


    def train(out, kind, epochs, resume=False, kill_at=None):
        class Kill(vaekit.Callback):
            def on_step_end(self, loop, loss):
                if (loop.epoch, loop.step) == kill_at:
                    import os, signal
                    os.kill(os.getpid(), signal.SIGKILL)

        torch.manual_seed(1)
        m = model()
        train_data, val = data(kind)
        minutes = 1e-9 if kind != "loader" else 10.0  # a checkpoint after every step
        return m, vaekit.fit(m, train_data, validation=val, epochs=epochs, batch_size=64, seed=3,
                             dynamic_binarization=True, out=out, resume=resume, device="cpu",
                             checkpointing=vaekit.Checkpointing(minutes=minutes),
                             callbacks=[Kill()] if kill_at else [])
''')


@pytest.fixture
def nets(tmp_path, monkeypatch):
    (tmp_path / "user_nets.py").write_text(NETS)
    monkeypatch.syspath_prepend(str(tmp_path))
    import importlib

    import user_nets

    importlib.reload(user_nets)
    return user_nets


def _kill_in_subprocess(tmp_path: Path, out: Path, kind: str, kill_at: tuple[int, int]) -> None:
    code = f"import user_nets; user_nets.train({str(out)!r}, {kind!r}, 3, kill_at={kill_at!r})"
    env = dict(os.environ, PYTHONPATH=f"{SRC}{os.pathsep}{tmp_path}", OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == -signal.SIGKILL, done.stderr  # a real SIGKILL, not an exit


@pytest.mark.parametrize("kind", ["tensor", "dataset", "loader"])
def test_custom_conv_networks_resume_bit_exactly_after_sigkill(nets, tmp_path, kind):
    torch.set_num_threads(1)
    reference, history = nets.train(tmp_path / "ref", kind, 3)
    assert len(history) == 3 and history.out == tmp_path / "ref"
    _kill_in_subprocess(tmp_path, tmp_path / "killed", kind, (2, 3))
    meta = json.loads((tmp_path / "killed" / "run.json").read_text())
    assert meta["event_shape"] == [1, 8, 8]
    resumed, history = nets.train(tmp_path / "killed", kind, 3, resume=True)
    assert [r["epoch"] for r in history.epochs] == [1, 2, 3]
    # tensors and Datasets resume mid-epoch (vaekit draws their order); a DataLoader from the
    # end of epoch 1, drawing its shuffle from the restored generator: bit-exact either way
    for (name, a), b in zip(reference.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    ref_rows = [json.loads(line) for line in (tmp_path / "ref" / "metrics.jsonl").read_text().splitlines()]
    new_rows = [json.loads(line) for line in (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()]
    for a, b in zip(ref_rows, new_rows, strict=True):
        a.pop("seconds"), b.pop("seconds")
        assert a == b


def test_load_into_own_module_and_evaluate_against_independent_monte_carlo(nets, tmp_path):
    torch.set_num_threads(1)
    nets.train(tmp_path / "run", "tensor", 3)
    model = nets.model()
    RunDirectory(tmp_path / "run").load_weights(model)  # the weights into one's own module
    model.eval()
    x = torch.bernoulli(nets.images()[500:560], generator=torch.Generator().manual_seed(0))
    result = vaekit.evaluate(model, x, importance_samples=200, seed=5)

    # the ELBO by hand: z = μ + σ ε, Bernoulli log-likelihood summed over pixels, KL closed form
    g = torch.Generator().manual_seed(11)
    with torch.no_grad():
        h = model.encoder(x)
        mu, logvar = h.chunk(2, dim=-1)
        sigma = torch.exp(0.5 * logvar)
        draws = 4000
        z = mu + sigma * torch.randn(draws, *mu.shape, generator=g)
        logits = model.decoder(z.reshape(-1, mu.shape[-1])).reshape(draws, len(x), -1)
        rec = (x.reshape(1, len(x), -1) * logits - torch.nn.functional.softplus(logits)).sum(-1)
        kl = 0.5 * (mu**2 + sigma**2 - 1 - logvar).sum(-1)
        per_example = rec.mean(0) - kl
        se = float(rec.var(0).div(draws).sum().sqrt() / len(x))
    mine = float(per_example.mean())
    tolerance = 4 * math.hypot(se, result["elbo_se"])
    assert abs(result["elbo"] - mine) < tolerance, (result["elbo"], mine, tolerance)
    assert result["log_likelihood"] >= result["elbo"] - 4 * result["gap_se"]


def test_fit_takes_an_objective_returning_per_example_values_and_custom_callbacks(nets):
    seen = []

    class Record(vaekit.Callback):
        def on_epoch_end(self, loop, record):
            seen.append((loop.epoch, record["train_elbo"]))

    model = nets.model()
    history = vaekit.fit(model, nets.images()[:200], epochs=2, batch_size=50, device="cpu",
                         objective=vaekit.objectives.elbo, callbacks=[Record()])
    assert [e for e, _ in seen] == [1, 2]
    assert all(math.isfinite(v) for _, v in seen)
    assert history[1]["train_elbo"] == seen[1][1]


def test_an_iwae_objective_logs_its_bound_as_train_objective_and_keeps_train_elbo_the_elbo(nets):
    import functools

    history = vaekit.fit(nets.model(), nets.images()[:100], epochs=1, batch_size=50, device="cpu",
                         objective=functools.partial(vaekit.objectives.iwae_objective, k=5))
    record = history[0]
    assert record["train_objective"] > record["train_elbo"]  # L_5 ≥ the mean log-weight of its own draws
    plain = vaekit.fit(nets.model(), nets.images()[:100], epochs=1, batch_size=50, device="cpu",
                       objective=lambda model, batch: vaekit.objectives.iwae_bound(model, batch.x, 5))
    assert math.isfinite(plain[0]["train_objective"]) and plain[0]["train_elbo"] != plain[0]["train_elbo"]


def test_a_metric_a_callback_adds_to_the_epoch_record_reaches_metrics_jsonl(nets, tmp_path):
    class Sharpness(vaekit.Callback):
        def on_epoch_end(self, loop, record):
            record["weight_norm"] = float(sum(p.detach().norm() ** 2 for p in loop.model.parameters()) ** 0.5)

    history = vaekit.fit(nets.model(), nets.images()[:100], epochs=2, batch_size=50, device="cpu",
                         out=tmp_path / "run", callbacks=[Sharpness()])
    written = vaekit.rundir.read_metrics(tmp_path / "run")
    assert [r["weight_norm"] for r in written] == [r["weight_norm"] for r in history.epochs]


def test_early_stopping_stops_and_restores_the_best_weights(nets):
    model = nets.model()
    x = nets.images()
    history = vaekit.fit(model, x[:100], validation=x[100:200], epochs=50, batch_size=50, lr=0.05,
                         device="cpu", callbacks=[vaekit.EarlyStopping(patience=2)])
    best = history.best["epoch"]
    assert history.stopped_early and len(history) == best + 2


def test_a_conditional_user_model_gets_labels_as_its_networks_second_argument():
    calls = []

    class Enc(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(4 + 3, 4)

        def forward(self, x, y):
            calls.append(y.dtype)
            return self.lin(torch.cat([x, torch.nn.functional.one_hot(y, 3).float()], -1))

    class Dec(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(2 + 3, 4)

        def forward(self, z, y):
            return self.lin(torch.cat([z, torch.nn.functional.one_hot(y, 3).float()], -1))

    model = vaekit.VAE(Enc(), Dec(), "gaussian", latent_dim=2, num_classes=3)
    x, labels = torch.randn(30, 4), torch.arange(30) % 3
    vaekit.fit(model, (x, labels), epochs=1, batch_size=10, device="cpu")
    assert calls and set(calls) == {torch.int64}
    with pytest.raises(vaekit.VaekitError, match="labels"):
        vaekit.fit(model, x, epochs=1, device="cpu")


def test_api_functions_show_their_signatures_and_pickle():
    fit_params = inspect.signature(vaekit.fit).parameters
    for name in ("model", "train_data", "validation", "epochs", "batch_size", "objective", "optimizer",
                 "device", "precision", "out", "resume", "callbacks"):
        assert name in fit_params
    assert "importance_samples" in inspect.signature(vaekit.evaluate).parameters
    for function in (vaekit.fit, vaekit.evaluate):
        assert pickle.loads(pickle.dumps(function)) is function
        assert inspect.isfunction(function)


GLOBAL_STATE = textwrap.dedent('''
    import random, sys
    import numpy as np
    import torch
    import matplotlib
    import sklearn.datasets  # importing it draws from Python's generator: not vaekit's doing

    torch.set_num_threads(2)
    x = (torch.rand(120, 1, 8, 8, generator=torch.Generator().manual_seed(0)) > 0.5).float()
    enc = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 4))  # initialised from the
    dec = torch.nn.Sequential(torch.nn.Linear(2, 64), torch.nn.Unflatten(1, (1, 8, 8)))  # global generator
    before = (matplotlib.get_backend(), torch.get_num_threads(), torch.get_rng_state().clone(),
              np.random.get_state()[1].copy(), random.getstate())
    import vaekit

    model = vaekit.VAE(enc, dec, "bernoulli", latent_dim=2)
    vaekit.fit(model, x[:100], validation=x[100:], epochs=2, out=sys.argv[1] + "/fit", figures=True, device="cpu")
    vaekit.evaluate(model, x, importance_samples=20)
    after = (matplotlib.get_backend(), torch.get_num_threads(), torch.get_rng_state(),
             np.random.get_state()[1], random.getstate())
    assert after[0] == before[0], ("backend", before[0], after[0])
    assert after[1] == before[1], ("threads", before[1], after[1])
    assert torch.equal(after[2], before[2]), "torch's global generator moved"
    assert (after[3] == before[3]).all(), "numpy's global generator moved"
    assert after[4] == before[4], "Python's global generator moved"
    assert model.training, "fit/evaluate left the model in eval mode"
    print("ok")
''')


def test_library_calls_leave_process_wide_state_as_it_was(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(SRC), MPLBACKEND="svg")  # not the Agg vaekit used to force
    done = subprocess.run([sys.executable, "-c", GLOBAL_STATE, str(tmp_path)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.stdout.strip().endswith("ok"), done.stderr
    assert (tmp_path / "fit" / "manifold.png").is_file()


def test_bf16_training_is_close_to_fp32(nets):
    x = nets.images()[:300]
    elbos = {}
    for precision in ("fp32", "bf16"):
        torch.manual_seed(0)
        model = nets.model()
        vaekit.fit(model, x, epochs=3, batch_size=50, device="cpu", precision=precision, seed=0,
                   dynamic_binarization=True)
        elbos[precision] = vaekit.evaluate(model, torch.bernoulli(x, generator=torch.Generator().manual_seed(1)),
                                           importance_samples=10)["elbo"]
    assert abs(elbos["bf16"] - elbos["fp32"]) < 0.05 * abs(elbos["fp32"]), elbos


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_device_cuda_without_cuda_is_one_clear_error():
    with pytest.raises(vaekit.VaekitError, match="CUDA"):
        vaekit.fit(vaekit.VAE(torch.nn.Linear(4, 4), torch.nn.Linear(2, 4), "gaussian"), torch.randn(8, 4),
                   device="cuda")
