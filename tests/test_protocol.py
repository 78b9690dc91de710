"""Any model keeping vaekit's protocol (docs/models.md), and the checks made before a
model is trained: each silent mistake of issue 23 refused (or warned about) in one line."""

import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.distributions import Bernoulli, Independent, Normal

import vaekit
from vaekit.errors import VaekitError
from vaekit.model import VAE, diagonal_normal
from vaekit.posteriors import make_posterior
from vaekit.protocol import LogitsWarning, check_model


class PytorchExamplesVAE(nn.Module):
    """The VAE class of pytorch/examples (vae/main.py), as published: fc1/fc21/fc22/fc3/fc4,
    encode returns (mu, logvar), decode ends in a sigmoid."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(784, 400)
        self.fc21 = nn.Linear(400, 20)
        self.fc22 = nn.Linear(400, 20)
        self.fc3 = nn.Linear(20, 400)
        self.fc4 = nn.Linear(400, 784)

    def encode(self, x):
        h1 = F.relu(self.fc1(x))
        return self.fc21(h1), self.fc22(h1)

    def reparameterize(self, mu, logvar):
        std = torch.exp(0.5 * logvar)
        eps = torch.randn_like(std)
        return mu + eps * std

    def decode(self, z):
        h3 = F.relu(self.fc3(z))
        return torch.sigmoid(self.fc4(h3))

    def forward(self, x):
        mu, logvar = self.encode(x.view(-1, 784))
        z = self.reparameterize(mu, logvar)
        return self.decode(z), mu, logvar


class Examples(nn.Module):
    """The adapter of docs/models.md, verbatim."""

    num_classes = 0
    event_shape = (1, 28, 28)

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net
        self.latent_dim = net.fc21.out_features

    def encode(self, x):
        return diagonal_normal(*self.net.encode(x.flatten(1)))

    def decode(self, z):
        # decode() without its final sigmoid: vaekit's Bernoulli takes logits
        logits = self.net.fc4(F.relu(self.net.fc3(z)))
        return Independent(Bernoulli(logits=logits.unflatten(-1, self.event_shape)), 3)

    @property
    def prior(self):
        zero = self.net.fc21.bias.new_zeros(self.latent_dim)
        return Independent(Normal(zero, zero + 1), 1)


def _mnist_like(n: int = 12) -> torch.Tensor:
    return torch.bernoulli(torch.full((n, 1, 28, 28), 0.2), generator=torch.Generator().manual_seed(0))


def test_the_pytorch_examples_vae_is_evaluated_through_the_adapter():
    torch.manual_seed(0)
    net = PytorchExamplesVAE()
    adapted, x = Examples(net), _mnist_like()
    with warnings.catch_warnings():
        warnings.simplefilter("error", LogitsWarning)
        check_model(adapted, x)
    report = vaekit.evaluate(adapted, x, importance_samples=20, mi_examples=12)
    assert math.isfinite(report["log_likelihood"]) and report["nll"] > 0
    # the same weights inside vaekit.VAE give the same numbers (the same draws)

    class Encoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1, self.fc21, self.fc22 = net.fc1, net.fc21, net.fc22

        def forward(self, x):
            h = F.relu(self.fc1(x.flatten(1)))
            return self.fc21(h), self.fc22(h)

    decoder = nn.Sequential(net.fc3, nn.ReLU(), net.fc4, nn.Unflatten(1, (1, 28, 28)))
    native = VAE(Encoder(), decoder, "bernoulli", latent_dim=20)
    same = vaekit.evaluate(native, x, importance_samples=20, mi_examples=12)
    for key in ("elbo", "log_likelihood", "gap", "kl", "mutual_information"):
        assert report[key] == pytest.approx(same[key], rel=1e-5, abs=1e-5), key
    assert report["active_units"] == same["active_units"]


def test_a_decoder_ending_in_a_sigmoid_gets_a_warning_naming_it():
    torch.manual_seed(0)
    net = PytorchExamplesVAE()

    class Naive(Examples):  # the mistake: decode()'s probabilities handed over as logits
        def decode(self, z):
            probabilities = self.net.decode(z)
            return Independent(Bernoulli(logits=probabilities.unflatten(-1, self.event_shape)), 3)

    with pytest.warns(LogitsWarning, match=r"nn\.Sigmoid.*|logits"):
        check_model(Naive(net), _mnist_like())
    model = VAE(nn.Linear(16, 4), nn.Sequential(nn.Linear(2, 16), nn.Sigmoid()), latent_dim=2)
    with pytest.warns(LogitsWarning) as caught:
        check_model(model, torch.rand(5, 16))
    assert "nn.Sigmoid" in str(caught[0].message) and "logits" in str(caught[0].message)
    with warnings.catch_warnings():
        warnings.simplefilter("error", LogitsWarning)
        check_model(VAE(nn.Linear(16, 4), nn.Linear(2, 16), latent_dim=2), torch.rand(5, 16))


def test_a_network_that_is_not_a_module_is_refused_naming_nn_module():
    class Plain:
        def encode(self, x):
            return diagonal_normal(x[:, :2], x[:, 2:4])

    with pytest.raises(VaekitError, match="nn.Module"):
        check_model(Plain(), torch.rand(4, 16))
    weights = nn.Linear(16, 4)
    model = VAE(lambda x: weights(x), nn.Linear(2, 16), latent_dim=2)  # noqa: PLW0108 - the mistake
    with pytest.raises(VaekitError, match="encoder is a function, not an nn.Module"):
        check_model(model, torch.rand(4, 16))

    class Frozen(nn.Module):  # keeps the protocol but nothing in it can be trained
        prior = Independent(Normal(torch.zeros(2), torch.ones(2)), 1)

        def encode(self, x):
            return diagonal_normal(x[:, :2], x[:, 2:4])

        def decode(self, z):
            return Independent(Bernoulli(logits=(z - 0.5).repeat_interleave(8, -1)), 1)

    with pytest.raises(VaekitError, match="no trainable parameters"):
        check_model(Frozen(), torch.rand(4, 16))
    check_model(Frozen(), torch.rand(4, 16), trainable=False)


def test_an_encoder_width_that_does_not_fit_is_refused_with_both_numbers():
    model = VAE(nn.Linear(16, 6), nn.Linear(2, 16), latent_dim=2)
    with pytest.raises(VaekitError, match="6 features .* latent_dim 2 needs 4"):
        check_model(model, torch.rand(4, 16))
    head = make_posterior("householder", 2)  # reads [μ, log σ², v]: 6 wide
    check_model(VAE(nn.Linear(16, 6), nn.Linear(2, 16), posterior=head), torch.rand(4, 16))
    with pytest.raises(VaekitError, match="gives 5 features per example but the householder posterior needs 6"):
        check_model(VAE(nn.Linear(16, 5), nn.Linear(2, 16), posterior=make_posterior("householder", 2)),
                    torch.rand(4, 16))


def test_a_decoder_output_that_does_not_match_the_data_is_refused():
    model = VAE(nn.Linear(16, 4), nn.Linear(2, 15), latent_dim=2)
    with pytest.raises(VaekitError, match=r"describes data shaped \[15\].*shaped \[16\]"):
        check_model(model, torch.rand(4, 16))
    flat = VAE(nn.Sequential(nn.Flatten(), nn.Linear(16, 4)), nn.Linear(2, 16), latent_dim=2)
    with pytest.raises(VaekitError, match=r"shaped \[16\] per example .* shaped \[1, 4, 4\]"):
        check_model(flat, torch.rand(4, 1, 4, 4))


def test_a_prior_over_other_coordinates_is_refused():
    class Wide(nn.Module):
        def forward(self):
            return Independent(Normal(torch.zeros(3), torch.ones(3)), 1)

    model = VAE(nn.Linear(16, 4), nn.Linear(2, 16), latent_dim=2, prior=Wide())
    with pytest.raises(VaekitError, match=r"event shape \[3\].*over 2 latent coordinates"):
        check_model(model, torch.rand(4, 16))


def test_check_model_leaves_the_model_and_random_state_alone():
    model = VAE(nn.Linear(16, 4), nn.Linear(2, 16), num_classes=0, latent_dim=2)
    model.train()
    x = torch.rand(4, 16)
    state = torch.random.get_rng_state()
    check_model(model, x)
    assert model.training and torch.equal(state, torch.random.get_rng_state())
