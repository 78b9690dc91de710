"""Evaluation: per-example scores of a trained model on fixed data, and their summaries.

Every figure is per example, in nats; a summary is the mean over the N examples together
with its standard error *due to Monte-Carlo sampling for this fixed data* (``*_se``), so
two runs' numbers can be compared honestly.

Estimators, all from the same K draws z_k ~ q(z|x) per example (taken in chunks):

* ``elbo`` = E_q[log p(x|z)] − KL(q(z|x) ‖ p(z)): the reconstruction term averaged over the
  K draws, the KL in closed form where it exists (else the mean of log q − log p).
* ``log_likelihood`` = log (1/K) Σ_k p(x, z_k)/q(z_k|x) (importance sampling; a streaming
  logsumexp over chunks). Its expectation is the IWAE bound L_K ≤ log p(x): it rises with
  K towards log p(x) and is slightly low for finite K.
* ``iwae_bound``: L_k for a smaller k, the mean of the K // k values from disjoint groups.
* ``gap`` = log_likelihood − elbo: the estimated KL(q(z|x) ‖ p(z|x)).
* With ``gap_decomposition``: ``elbo_local``, the ELBO of a q*(z) of the posterior's own
  family optimised for each example (Cremer, Li & Duvenaud 2018), ``amortisation_gap`` =
  elbo_local − elbo and ``approximation_gap`` = log_likelihood − elbo_local. The family: the
  posterior head's amortised parameters refitted per example (a flow's shared weights, e.g.
  IAF's MADEs, stay as trained); a diagonal Gaussian for the default posterior and, over
  the stacked [z1, z2], for the two-layer model.

Any prior and posterior (mixtures, VampPrior, flows): q is scored only at its own draws;
the KL is in closed form where torch registers one (``kl`` ``analytic`` or ``auto``), else
the mean of log q − log p over the K draws. The mutual information needs q(z|x_n) at other
examples' draws, so it is not computed (null) for a flow without an inverse (planar,
Sylvester). Active units use E_q[z|x], by Monte Carlo (256 draws) where q has no closed-form
mean (flows).

Memory: draws are taken about ``ROWS`` decoder rows (examples × draws) at a time, and an
example's K log-weights are kept until its estimates are formed, with at most ``VALUES``
of them held at once (fewer examples per batch when K is large), so memory stays bounded
whatever K is (up to K = ``VALUES``).

Standard errors. Draws are independent across examples, so the Monte-Carlo variance of a
mean over examples is Σ_i Var(estimate_i) / N²; each example's variance is estimated from
its own draws, as follows.

* A mean of draws (reconstruction, ELBO, a Monte-Carlo KL): sample variance / K.
* A mean over G ≥ 2 disjoint groups (``iwae_bound``, the curve's points): the sample
  variance of the G group values / G.
* A single K-draw estimate (``log_likelihood``, ``gap``; an L_k with one group): the
  jackknife over the K draws, (K − 1)/K Σ_j (T_(j) − T_(·))², each T_(j) the estimate with
  draw j left out. For the log-mean of weights the delta method, Var(w)/(K E[w]²), is
  the textbook choice, but with the heavy-tailed weights of a real VAE (an MNIST model with
  a 5-nat gap) it came out 1.6 times too small against the scatter of repeated runs, while
  the jackknife, conservative by the Efron–Stein inequality, matched within noise.
  Undefined for K = 1 (reported as null).
* Mutual information: the sample standard deviation of its per-draw terms / √n.

``tests/test_evaluate.py`` checks these against the scatter of repeated runs with other seeds.

Random streams and processes: each batch of examples draws from a stream of its own (the
first from the generator as the caller left it, batch b from one seeded by that state and
b), so an example's scores do not depend on which process scores its batch. Under an
initialised ``torch.distributed`` process group (``torchrun``) the batches are shared out,
batch b to rank b mod W, and the per-example scores gathered on every rank exactly: the
summaries are then the numbers one process computes (docs/distributed.md).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.distributions import Distribution
from torch.distributions import kl_divergence as _torch_kl

from vaekit import distributed, sources
from vaekit.devices import evaluation_mode, forked_rng, mixed_seed, model_device, seed_draws
from vaekit.errors import VaekitError
from vaekit.estimators import log_prob_at_own_sample
from vaekit.model import PointMass, TwoStage, _factorises, diagonal_normal, labelled
from vaekit.objectives import weight_terms

DEFAULT_K = 1000  # importance samples; published MNIST numbers use 5000
DEFAULT_IWAE_K = 50
ACTIVE_THRESHOLD = 0.01  # Burda et al.: a unit is active when Cov_x(E_q[u]) > 0.01
MI_EXAMPLES = 1000  # draws for the mutual information (one each from this many examples)
LOCAL_STEPS = 200  # Adam steps of the per-example Gaussian in the gap decomposition
LOCAL_LR = 0.1  # in posterior standard deviations (see optimise_local)
LOCAL_SAMPLES = 8  # reparameterised draws per step of that optimisation
ROWS = 8192  # decoder rows (examples × draws) per chunk
VALUES = 1 << 21  # log-weights held at once (K × examples per batch): 2 × 16 MiB in float64
_BLOCK = 32  # examples per block of the statistics computed from them
_PAIRS = 1 << 22  # latent values per chunk of the aggregate-posterior computation

# Keys that only exist for a model with a likelihood (null for the autoencoder).
LIKELIHOOD_KEYS = (
    "log_likelihood", "gap", "iwae_bound", "nll", "bits_per_dim", "active_units",
    "mutual_information", "marginal_kl",
)  # (and their _se; also mutual_information_max, active_units_per_dim)
# Per-example scores written by ``--per-example``, in this order where present.
PER_EXAMPLE_COLUMNS = (
    "elbo", "reconstruction", "kl", "log_likelihood", "log_likelihood_se", "gap", "iwae_bound",
    "elbo_local",
)


# ---------------------------------------------------------------------- per example
def chunk_size(batch: int) -> int:
    """Draws per chunk for ``batch`` examples: about ``ROWS`` decoder rows at a time."""
    return max(1, ROWS // max(1, batch))


def examples_per_batch(batch_size: int, k_total: int) -> int:
    """``batch_size``, or fewer so that K × examples stays within ``VALUES``."""
    return max(1, min(batch_size, VALUES // k_total))


def curve_points(k_max: int) -> list[int]:
    """1, 2, 5, 10, 20, 50, … below ``k_max``, then ``k_max``: the K of the likelihood curve."""
    points, decade = [], 1
    while decade < k_max:
        points += [k for k in (decade, 2 * decade, 5 * decade) if k < k_max]
        decade *= 10
    return points + [k_max]


@torch.no_grad()
def per_example(
    model,
    x: torch.Tensor,
    *,
    importance_samples: int = DEFAULT_K,
    iwae_k: int | None = None,
    batch_size: int = 1000,
    kl: str = "analytic",
    curve: bool = False,
    gap_decomposition: bool = False,
    local_steps: int = LOCAL_STEPS,
    on_progress: Callable[[int], None] | None = None,
    labels: torch.Tensor | None = None,
    scored: Mapping[str, torch.Tensor] | None = None,
    on_batch: Callable[[int, Mapping[str, torch.Tensor]], None] | None = None,
) -> dict[str, torch.Tensor]:
    """Scores of every row of ``x``, each a float64 tensor [N]; Monte-Carlo figures come with
    their per-example variance as ``<key>_var`` (see the module docstring).

    Keys: ``elbo``, ``reconstruction``, ``kl``, ``log_likelihood`` (K = ``importance_samples``),
    ``gap``, ``iwae_bound`` (k = ``iwae_k``, default min(50, K)); with ``curve`` also
    ``iwae_k<k>`` for every k of :func:`curve_points`; with ``gap_decomposition`` also
    ``elbo_local``, ``amortisation_gap`` and ``approximation_gap``. For the autoencoder only
    ``reconstruction``, log p(x | z = f(x)), exists. ``on_progress`` is called after every
    chunk with the work done in examples (fractions of a batch; a gap decomposition scores
    every example twice). Draws use torch's global generator: seed it (:func:`evaluate` does,
    in a forked generator state); each batch reseeds it from its entry state and its index,
    and it is left seeded from that state and the number of batches. Under torch.distributed
    this process scores its share of the batches and returns every row. ``labels``: every
    row's class, for a conditional model (its numbers are then log p(x | y)). Batches go to
    the model's device; results are on the CPU.

    Resuming (one process): ``on_batch(rows, scores)`` is called after each batch with the
    number of leading rows scored so far and the scores (their first ``rows`` entries are
    final); ``scored``, such a prefix of every key from an interrupted call with the same
    model, data, generator state and settings, is taken as it is and its batches are not drawn
    again. Each batch's stream depends only on the entry state and its index, so the result
    is the one an uninterrupted call gives, bit for bit.
    """
    k_total, iwae_k = check_samples(importance_samples, iwae_k)
    if batch_size < 1:
        raise VaekitError(f"batch size must be at least 1, got {batch_size}")
    with evaluation_mode(model):
        return _per_example(model, x, k_total, iwae_k, batch_size, kl, curve, gap_decomposition,
                            local_steps, on_progress, labels, scored, on_batch)


def _scored_rows(scored: Mapping[str, torch.Tensor] | None, n: int, batch_size: int) -> int:
    """How many leading rows ``scored`` holds: whole batches (or all ``n``), every key alike."""
    if not scored:
        return 0
    lengths = {key: tuple(value.shape) for key, value in scored.items()}
    if len(set(lengths.values())) != 1 or len(next(iter(lengths.values()))) != 1:
        raise VaekitError(f"scores to resume from must be 1-D and of one length; got shapes {lengths}")
    rows = len(next(iter(scored.values())))
    if rows > n or (rows % batch_size and rows != n):
        raise VaekitError(f"scores to resume from cover {rows} rows: not whole batches of {batch_size} "
                          f"out of {n} examples")
    if distributed.current() is not None:
        raise VaekitError("resuming a partial evaluation runs in one process, not under torch.distributed")
    return rows


def _per_example(model, x, k_total, iwae_k, batch_size, kl, curve, gap_decomposition, local_steps,
                 on_progress, labels, scored=None, on_batch=None) -> dict[str, torch.Tensor]:
    ks = curve_points(k_total) if curve else []
    device = model_device(model)
    group = distributed.current()
    rank, world = (0, 1) if group is None else (group.rank, group.world)
    result: dict[str, torch.Tensor] = {}
    batch_size = examples_per_batch(batch_size, k_total)
    starts = range(0, len(x), batch_size)
    done = _scored_rows(scored, len(x), batch_size)
    # Each batch draws from a stream of its own: the first from the generator as the caller
    # left it, batch b from one seeded by (that state, b). A batch's numbers then do not
    # depend on which process scores it, so a sharded evaluation equals one process's.
    base = _stream_base(device)
    # One buffer for every batch's log-weights, taken before the decoder's large temporaries:
    # allocating it per batch let glibc's heap grow to gigabytes over a 10k-image run.
    buffer = None
    for b, start in enumerate(starts):
        if b % world != rank:
            continue
        if start < done:  # scored before an interruption: taken as it was, not drawn again
            for key, value in scored.items():
                result.setdefault(key, torch.zeros(len(x), dtype=value.dtype))[start : start + batch_size] = (
                    value[start : start + batch_size])
            if on_progress is not None:
                on_progress(min(batch_size, len(x) - start) * (1 + gap_decomposition))
            continue
        if b:
            seed_draws(device, mixed_seed(base, b))
        xb = x[start : start + batch_size].to(device)  # a tensor (x may be a lazily read array)
        yb = None if labels is None else labels[start : start + batch_size].to(device)
        if buffer is None:
            buffer = torch.empty(2, k_total, len(xb), dtype=torch.float64, device=device)
        q = model.encode(xb, *labelled(yb))
        if isinstance(q, PointMass):  # the autoencoder: its reconstruction term is all there is
            rec = model.decode(q.mean, *labelled(yb)).log_prob(xb).double()
            scores = {"reconstruction": rec, "reconstruction_var": torch.zeros_like(rec)}
            if on_progress is not None:
                on_progress(len(xb))
        else:
            scores = score_batch(model, xb, q, k_total, iwae_k, ks, kl, on_progress, buffer, yb)
            if gap_decomposition:
                scores.update(
                    _decompose(model, xb, q, scores, k_total, kl, local_steps, on_progress, buffer, yb))
        if done and set(scores) != set(scored):
            raise VaekitError(f"the scores to resume from have {sorted(scored)}; this evaluation makes "
                              f"{sorted(scores)}: not the same settings")
        for key, value in scores.items():
            if key not in result:  # filled in place: many small tensors would pin the heap
                result[key] = torch.zeros(len(x), dtype=value.dtype)
            result[key][start : start + len(xb)] = value.cpu()
        if on_batch is not None and group is None:
            on_batch(start + len(xb), result)
    seed_draws(device, mixed_seed(base, len(starts)))  # what follows draws alike on every rank
    return result if group is None else _gather(result, len(x), group)


def _stream_base(device: torch.device) -> int:
    """A seed summarising the generator state evaluation starts from."""
    h = hashlib.sha256(torch.get_rng_state().numpy().tobytes())
    if device.type == "cuda":
        h.update(torch.cuda.get_rng_state(device).numpy().tobytes())
    return int.from_bytes(h.digest()[:8], "little")


def _gather(result: dict[str, torch.Tensor], n: int, group) -> dict[str, torch.Tensor]:
    """Every rank's rows of every score, on every rank: each rank's tensors hold zeros where
    another rank scored, so one all-reduce (a sum with zeros: exact) assembles them."""
    layout = [[key, str(value.dtype).removeprefix("torch.")] for key, value in result.items()]
    layouts = [json.loads(text) for text in distributed.exchange(json.dumps(layout).encode(), group)]
    layout = next((entry for entry in layouts if entry), [])
    stacked = torch.zeros(len(layout), n, dtype=torch.float64)
    for i, (key, _) in enumerate(layout):
        if key in result:
            stacked[i] = result[key]
    stacked = distributed.all_sum(stacked, group)
    return {key: stacked[i].to(getattr(torch, dtype)) for i, (key, dtype) in enumerate(layout)}


def share(n: int, batch_size: int, importance_samples: int) -> int:
    """How many of ``n`` examples this process scores (all of them outside torch.distributed)."""
    group = distributed.current()
    if group is None:
        return n
    size = examples_per_batch(batch_size, importance_samples)
    return sum(min(size, n - s) for b, s in enumerate(range(0, n, size)) if b % group.world == group.rank)


def check_samples(importance_samples: int, iwae_k: int | None) -> tuple[int, int]:
    """(K, k) after checking them; k defaults to min(50, K)."""
    if importance_samples < 1:
        raise VaekitError(f"importance samples K must be at least 1, got {importance_samples}")
    if iwae_k is None:
        iwae_k = min(DEFAULT_IWAE_K, importance_samples)
    if not 1 <= iwae_k <= importance_samples:
        raise VaekitError(
            f"the IWAE bound's k must be between 1 and the importance samples K = "
            f"{importance_samples}, got {iwae_k}"
        )
    return importance_samples, iwae_k


def score_batch(
    model, x: torch.Tensor, q: Distribution, k_total: int, iwae_k: int,
    curve_ks: list[int] = (), kl: str = "analytic", on_progress: Callable | None = None,
    buffer: torch.Tensor | None = None, y: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """ELBO, IS log-likelihood, IWAE bound (and curve points) of one batch under proposal
    ``q``, from ``k_total`` draws taken in chunks; per-example values and variances.
    ``buffer`` ([2, K, ≥ B] float64), if given, holds the log-weights."""
    prior = model.prior
    closed_kl = _closed_form_kl(q, prior) if kl in ("analytic", "auto") else None
    if buffer is None:
        buffer = torch.empty(2, k_total, len(x), dtype=torch.float64, device=x.device)
    log_px, log_ratio = buffer[0, :, : len(x)], buffer[1, :, : len(x)]
    step = chunk_size(len(x))
    for done in range(0, k_total, step):
        z, log_q = log_prob_at_own_sample(q, (min(step, k_total - done),))
        log_px[done : done + len(z)], log_ratio[done : done + len(z)] = weight_terms(
            model, q, x, z, y, log_q=log_q, prior=prior)
        if on_progress is not None:
            on_progress(len(x) * len(z) / k_total)
    # Statistics a few examples at a time: small temporaries keep the heap from fragmenting.
    blocks = [
        _statistics(log_px[:, j : j + _BLOCK], log_ratio[:, j : j + _BLOCK],
                    None if closed_kl is None else closed_kl[j : j + _BLOCK], iwae_k, curve_ks)
        for j in range(0, len(x), _BLOCK)
    ]
    return {key: torch.cat([block[key] for block in blocks]) for key in blocks[0]}


def _statistics(log_px, log_ratio, closed_kl, iwae_k, curve_ks) -> dict[str, torch.Tensor]:
    """Per-example estimates and variances from the draws' log p(x|z) and log p(z)/q(z|x)."""
    k_total = len(log_px)
    log_w = log_px + log_ratio
    rec, rec_var = log_px.mean(0), _variance_of_mean(log_px)
    if closed_kl is not None:
        # The KL is exact, so the ELBO's only Monte-Carlo part is the reconstruction term.
        kl_value, kl_var, integrand = closed_kl.double(), torch.zeros_like(rec), log_px
    else:
        kl_value, kl_var, integrand = -log_ratio.mean(0), _variance_of_mean(log_ratio), log_w
    elbo, elbo_var = rec - kl_value, _variance_of_mean(integrand)
    ll, deviations = _log_mean_exp(log_w)
    out = {
        "elbo": elbo, "elbo_var": elbo_var,
        "reconstruction": rec, "reconstruction_var": rec_var,
        "kl": kl_value, "kl_var": kl_var,
        "log_likelihood": ll, "log_likelihood_var": _jackknife(deviations, ll),
        "gap": ll - elbo, "gap_var": _jackknife(deviations, ll),
    }
    if deviations is not None:
        # Leaving draw j out also moves the ELBO's mean, by −(f_j − f̄)/(K − 1).
        spread = integrand - integrand.mean(0)
        out["gap_var"] = _jackknife(deviations + spread / (k_total - 1), ll)
    out["iwae_bound"], out["iwae_bound_var"] = _grouped(log_w, iwae_k)
    for k in curve_ks:
        out[f"iwae_k{k}"], out[f"iwae_k{k}_var"] = _grouped(log_w, k)
    return out


# ---------------------------------------------------------------------- gap decomposition
def optimise_local(
    model, x: torch.Tensor, q: Distribution, steps: int = LOCAL_STEPS, lr: float = LOCAL_LR,
    samples: int = LOCAL_SAMPLES, y: torch.Tensor | None = None,
) -> Distribution:
    """q*(z) for each row of ``x``, of the posterior's own family, fitted to that example's
    ELBO by Adam from the encoder's output q, batched: the summed loss gives every example its
    own gradient and Adam's update is elementwise, so the optimisations are independent.

    The family: with a posterior head (``model.posterior_parameters``), the head's parameter
    vector per example; otherwise N(μ, diag σ²) from q's moments; for the two-layer model,
    q(z1|x) so and q(z2|z1) with a per-example shift and scale (:func:`_two_stage_family`). The base Gaussian is
    measured in the encoder's units, μ = μ₀ + σ₀ ⊙ δ and log σ = log σ₀ + η, so ``lr`` is a
    fraction of a posterior standard deviation whatever the latent scale (a flow's other
    parameters move in their own units); it decays linearly to 0 so the stochastic
    optimisation settles. The model's parameters receive no gradient."""
    make, start = _local_family(model, x, q, y)
    delta = torch.zeros_like(start, requires_grad=True)
    optimiser = torch.optim.Adam([delta], lr=lr)
    decay = torch.optim.lr_scheduler.LambdaLR(optimiser, lambda t: 1 - t / steps)
    prior = model.prior
    with torch.enable_grad():
        for _ in range(steps):
            local = make(delta)
            z, log_q = log_prob_at_own_sample(local, (samples,))
            log_px, log_ratio = weight_terms(model, local, x, z, y, log_q=log_q, prior=prior)
            closed_kl = _closed_form_kl(local, prior)
            # The closed-form KL, where one exists, gives lower-variance gradients.
            kl_term = -log_ratio.mean(0) if closed_kl is None else closed_kl
            elbo = log_px.mean(0) - kl_term
            delta.grad, = torch.autograd.grad(-elbo.sum(), [delta])
            optimiser.step()
            decay.step()
    with torch.no_grad():
        return make(delta.detach())


def _local_family(model, x, q, y) -> tuple[Callable[[torch.Tensor], Distribution], torch.Tensor]:
    """(δ ↦ q_δ, a zero-shaped start for δ): the family the gap decomposition refits per
    example, with δ = 0 the encoder's own q."""
    if isinstance(q, TwoStage):
        return _two_stage_family(model, x, q, y)
    params = getattr(model, "posterior_parameters", None)
    params = None if params is None else params(x, y)
    if params is not None:
        head, start = model.posterior, params.detach()
        L = head.latent_dim
        base_sd = torch.exp(0.5 * start[..., L:2 * L].clamp(-20.0, 20.0))
        unit = torch.cat([base_sd, torch.full_like(base_sd, 2.0), torch.ones_like(start[..., 2 * L:])], -1)
        return (lambda d: head.from_parameters(start + unit * d)), torch.zeros_like(start)
    if not _factorises(q):
        raise VaekitError(
            f"the gap decomposition refits the posterior's own family per example, and vaekit does "
            f"not know the family of this {type(q).__name__}: give the model a posterior head "
            "(vaekit.posteriors) instead of an encoder that returns its own distribution")
    mean, scale = (t.detach() for t in _moments(q))
    log_scale = scale.log()
    width = mean.shape[-1]

    def make(d: torch.Tensor) -> Distribution:
        return diagonal_normal(mean + scale * d[..., :width], 2 * (log_scale + d[..., width:]))

    return make, torch.zeros(*mean.shape[:-1], 2 * width, device=mean.device)


def _two_stage_family(model, x, q: TwoStage, y) -> tuple[Callable[[torch.Tensor], Distribution], torch.Tensor]:
    """The two-layer posterior's own family, q(z1|x) q(z2|z1): q(z1|x) refitted by the
    one-layer rule (its head's parameters, or a diagonal Gaussian), and q(z2|z1) the network's
    conditional with a per-example shift and scale of its mean and standard deviation, so the
    dependence of z2 on z1 stays (a diagonal Gaussian over [z1, z2] would drop it, and could
    fit worse than the encoder: a negative amortisation gap)."""
    make_first, start = _local_family(model, x, q.first, y)
    first_width, b_dim = start.shape[-1], q.event_shape[-1] - q.first.event_shape[-1]

    def make(d: torch.Tensor) -> Distribution:
        shift, log_scale = d[..., first_width:first_width + b_dim], d[..., first_width + b_dim:]

        def then(a: torch.Tensor) -> Distribution:
            conditional = q.then(a).base_dist
            return diagonal_normal(conditional.loc + conditional.scale * shift,
                                   2 * (conditional.scale.log() + log_scale))

        return TwoStage(make_first(d[..., :first_width]), then, b_dim, q.first_goes_last)

    return make, torch.cat([start, start.new_zeros(*start.shape[:-1], 2 * b_dim)], -1)


def _decompose(model, x, q, scores, k_total, kl, steps, on_progress, buffer, y) -> dict[str, torch.Tensor]:
    local = optimise_local(model, x, q, steps, y=y)
    # Fresh draws under q*, independent of the amortised ones: the variances simply add.
    fitted = score_batch(model, x, local, k_total, k_total, [], kl, on_progress, buffer, y)
    elbo_local, var = fitted["elbo"], fitted["elbo_var"]
    return {
        "elbo_local": elbo_local, "elbo_local_var": var,
        "amortisation_gap": elbo_local - scores["elbo"],
        "amortisation_gap_var": var + scores["elbo_var"],
        "approximation_gap": scores["log_likelihood"] - elbo_local,
        "approximation_gap_var": var + scores["log_likelihood_var"],
    }


# ---------------------------------------------------------------------- dataset-level
@torch.no_grad()
def active_units(
    model, x: torch.Tensor, batch_size: int = 1000, threshold: float = ACTIVE_THRESHOLD,
    labels: torch.Tensor | None = None,
) -> tuple[int, list[float]]:
    """Burda et al.'s count: A_u = Cov_x(E_q[z_u|x]) over the rows of ``x``, active when
    A_u > ``threshold``; returns (count, every A_u)."""
    device = model_device(model)
    with evaluation_mode(model):
        means = torch.cat([
            _moments(model.encode(x[i : i + batch_size].to(device),
                                  *labelled(_rows(labels, slice(i, i + batch_size), device))))[0].flatten(1).cpu()
            for i in range(0, len(x), batch_size)])
    spread = means.double().var(0) if len(x) > 1 else torch.zeros_like(means[0], dtype=torch.float64)
    return int((spread > threshold).sum()), spread.tolist()


@torch.no_grad()
def mutual_information(
    model, x: torch.Tensor, examples: int = MI_EXAMPLES, batch_size: int = 1000,
    labels: torch.Tensor | None = None,
) -> tuple[float, float]:
    """I_q(x; z) under the aggregate posterior q(z) = (1/N) Σ_n q(z|x_n) of the rows of
    ``x`` (Hoffman & Johnson, "ELBO surgery"), and its standard error.

    I_q = E_n E_{q(z|x_n)}[log q(z|x_n) − log q(z)]. q(z) is the exact N-component mixture;
    the outer expectation takes one draw from each of ``examples`` examples chosen at random
    (all of them when N ≤ examples; the SE then also counts the spread between examples, so
    it errs on the large side). The estimate cannot exceed log N. The average KL splits as
    KL = I_q + KL(q(z) ‖ p(z)), which gives the marginal KL. (None, None) where q(z|x_n) is
    a flow without an inverse (its density at other examples' draws is not defined), and for
    ``examples`` = 0 (not computed: it scores ``examples`` × N pairs, and an IAF posterior's
    density away from its own draws takes latent_dim sequential passes each).
    """
    if examples < 0:
        raise VaekitError(f"the mutual information's examples must be 0 (skip it) or more, got {examples}")
    if examples == 0:
        return None, None
    with evaluation_mode(model):
        terms = _mutual_information_terms(model, x, examples, batch_size, labels)
    if terms is None:
        return None, None
    se = float(terms.std() / math.sqrt(len(terms))) if len(terms) > 1 else None
    return float(terms.mean()), se


def _mutual_information_terms(model, x, examples, batch_size, labels) -> torch.Tensor | None:
    device = model_device(model)
    n = len(x)
    probe = model.encode(x[:1].to(device), *labelled(_rows(labels, slice(0, 1), device)))
    if not getattr(probe, "invertible", True):
        return None
    chosen = torch.arange(n) if n <= examples else torch.randperm(n)[:examples].sort().values
    draws, own = [], []
    for i in range(0, len(chosen), batch_size):
        rows = chosen[i : i + batch_size]
        q = model.encode(x[rows].to(device), *labelled(_rows(labels, rows, device)))
        z, log_q = log_prob_at_own_sample(q)
        draws.append(z)
        own.append(log_q)
    z, log_own = torch.cat(draws), torch.cat(own).double()
    mixture = torch.full_like(log_own, -math.inf)
    size = z[0].numel()
    for i in range(0, n, batch_size):
        q = model.encode(x[i : i + batch_size].to(device), *labelled(_rows(labels, slice(i, i + batch_size), device)))
        step = max(1, _PAIRS // (size * min(batch_size, n - i)))
        for j in range(0, len(z), step):
            log_q = q.log_prob(z[j : j + step].unsqueeze(1)).double()  # [draws, examples]
            mixture[j : j + step] = torch.logaddexp(mixture[j : j + step], log_q.logsumexp(1))
    return (log_own - (mixture - math.log(n))).cpu()


def summarise(model, x: torch.Tensor, scores: dict[str, torch.Tensor], *,
              importance_samples: int | None = None, iwae_k: int | None = None,
              batch_size: int = 1000, mi_examples: int = MI_EXAMPLES,
              labels: torch.Tensor | None = None) -> dict:
    """The report: ``n``, each score's mean over examples with its ``_se``, ``nll``,
    ``bits_per_dim``, active units, mutual information and the marginal KL. Likelihood-based
    keys are null for the autoencoder."""
    result: dict = {"n": len(x)}
    for key in ("elbo", "reconstruction", "kl", "log_likelihood", "gap", "iwae_bound"):
        result[key], result[f"{key}_se"] = _mean_and_se(scores, key)
    result["iwae_k"] = iwae_k
    if "elbo" not in scores:
        # An autoencoder has no ELBO and no likelihood: its reconstruction term is all there is.
        for key in ("elbo", "kl", *LIKELIHOOD_KEYS):
            result[key] = None
            if key != "active_units":
                result[f"{key}_se"] = None
        result.update({"iwae_k": None, "bits_per_dim_note": None, "active_units_per_dim": None,
                       "mutual_information_max": None, "importance_samples": None})
        return result
    d = math.prod(x.shape[1:])
    nll, nll_se = -result["log_likelihood"], result["log_likelihood_se"]
    bits, note = bits_per_dim(model, x, nll, None if labels is None else labels[:1])
    result.update({
        "nll": nll, "nll_se": nll_se, "bits_per_dim": bits,
        "bits_per_dim_se": None if bits is None or nll_se is None else nll_se / (d * math.log(2)),
        "bits_per_dim_note": note,
    })
    result["active_units"], result["active_units_per_dim"] = active_units(model, x, batch_size, labels=labels)
    mi, mi_se = mutual_information(model, x, mi_examples, batch_size, labels=labels)
    result["mutual_information"], result["mutual_information_se"] = mi, mi_se
    # The estimator cannot exceed log N: near it, the posteriors barely overlap and the true
    # I_q may be larger (Hoffman & Johnson); the ceiling is reported so that shows.
    result["mutual_information_max"] = math.log(len(x))
    result["marginal_kl"] = None if mi is None else result["kl"] - mi
    result["marginal_kl_se"] = None if mi_se is None else math.hypot(mi_se, result["kl_se"] or 0.0)
    result["importance_samples"] = importance_samples
    if "elbo_local" in scores:
        for key in ("elbo_local", "amortisation_gap", "approximation_gap"):
            result[key], result[f"{key}_se"] = _mean_and_se(scores, key)
    ks = sorted(int(key[6:]) for key in scores if key.startswith("iwae_k") and key[6:].isdigit())
    if ks:
        result["curve"] = [dict(zip(("k", "estimate", "se"), (k, *_mean_and_se(scores, f"iwae_k{k}")),
                                    strict=True)) for k in ks]
    return result


def evaluate(
    model, data, *, importance_samples: int = DEFAULT_K, iwae_k: int | None = None,
    batch_size: int = 1000, kl: str = "analytic", curve: bool = False,
    gap_decomposition: bool = False, local_steps: int = LOCAL_STEPS,
    mi_examples: int = MI_EXAMPLES, on_progress: Callable[[int], None] | None = None,
    labels: torch.Tensor | None = None, seed: int = 0,
    scored: Mapping[str, torch.Tensor] | None = None,
    on_batch: Callable[[int, Mapping[str, torch.Tensor]], None] | None = None,
) -> dict:
    """The full report on ``data`` (what ``vaekit evaluate --json`` prints, less ``split``
    and ``seed``): :func:`per_example` followed by :func:`summarise`, as plain values.

    ``data``: a tensor [N, ...], an ``(x, labels)`` pair, a ``torch.utils.data.Dataset`` or a
    ``DataLoader`` (read once, in order). ``labels`` (or the data's own) go to a conditional
    model. Monte-Carlo draws come from a generator seeded with ``seed`` inside a forked RNG
    state, so the numbers are reproducible and torch's global generators are left as they
    were. Batches run on the model's device; the model's training mode is restored after.
    ``scored`` and ``on_batch`` resume an interrupted evaluation (see :func:`per_example`)."""
    x, labels = sources.as_tensors(data, labels)
    k_total, iwae_k = check_samples(importance_samples, iwae_k)
    with forked_rng(model_device(model), seed):
        scores = per_example(
            model, x, importance_samples=k_total, iwae_k=iwae_k, batch_size=batch_size, kl=kl,
            curve=curve, gap_decomposition=gap_decomposition, local_steps=local_steps,
            on_progress=on_progress, labels=labels, scored=scored, on_batch=on_batch,
        )
        return summarise(model, x, scores, importance_samples=k_total, iwae_k=iwae_k,
                         batch_size=batch_size, mi_examples=mi_examples, labels=labels)


def _rows(labels: torch.Tensor | None, rows, device: torch.device) -> torch.Tensor | None:
    return None if labels is None else labels[rows].to(device)


@torch.no_grad()
def bits_per_dim(model, x: torch.Tensor, nll: float | None,
                 labels: torch.Tensor | None = None) -> tuple[float | None, str]:
    """NLL / (D ln 2), and a note saying what that number is for this likelihood and data.

    A discrete likelihood on data in its support gives bits of a probability; a continuous
    density gives bits of a density of the data as given, with no dequantisation, which is
    not comparable with discrete results; a discrete likelihood on data outside its support
    (Bernoulli on grey levels) is not a normalised probability, so no number is given."""
    d = math.prod(x.shape[1:])
    if nll is None:
        return None, "no log-likelihood"
    device = model_device(model)
    y = None if labels is None else labels[:1].to(device)
    support = model.decode(model.prior.sample((1,)), *labelled(y)).support
    bits = nll / (d * math.log(2))
    if not support.is_discrete:
        return bits, (
            "continuous density of the data as given (no dequantisation): bits per unit of the "
            "data's scale; not comparable with bits/dim of discrete (e.g. 8-bit) data, which "
            "would need uniform dequantisation first (for [0,1]-scaled 8-bit images add 8)"
        )
    inside = all(bool(support.check(x[i : i + 4096]).all()) for i in range(0, len(x), 4096))
    if not inside:
        return None, ("data outside the likelihood's discrete support (e.g. grey levels under "
                      "a Bernoulli): not a normalised probability, so no bits/dim")
    return bits, "discrete likelihood of the data as given: bits of a probability per dimension"


# ---------------------------------------------------------------------- output
def write_per_example(
    scores: dict[str, torch.Tensor], path: str | Path, labels: torch.Tensor | None = None,
    extra: dict[str, Sequence] | None = None,
) -> Path:
    """Per-example scores (anomaly scores: low log-likelihood = unusual) to ``.csv`` (a header
    row) or ``.npy`` (a structured array with named fields; loads with allow_pickle=False).
    ``extra``: further columns after the scores (e.g. each example's row in its file, its
    file name, its class name), numbers or strings."""
    columns: dict[str, Sequence] = {"index": np.arange(len(next(iter(scores.values()))))}
    if labels is not None:
        columns["label"] = labels.cpu().numpy().astype(np.int64)
    scores = dict(scores)
    if "log_likelihood_var" in scores:
        scores["log_likelihood_se"] = scores["log_likelihood_var"].sqrt()
    for key in PER_EXAMPLE_COLUMNS:
        if key in scores:
            columns[key] = scores[key].cpu().numpy()
    return write_table(path, {**columns, **(extra or {})})


def write_table(path: str | Path, columns: dict[str, Sequence], float_format: str = "%.10g") -> Path:
    """Columns of equal length (numbers or strings) to ``.csv`` (a header row, quoted where a
    value needs it) or ``.npy`` (a structured array; loads with allow_pickle=False), written
    atomically."""
    import csv
    import io

    from vaekit.rundir import write_output

    path = Path(path)
    arrays = {k: np.asarray(v) for k, v in columns.items()}
    arrays = {k: v.astype(str) if v.dtype.kind == "O" else v for k, v in arrays.items()}
    n = len(next(iter(arrays.values())))
    if path.suffix.lower() == ".npy":
        table = np.zeros(n, dtype=[(k, v.dtype) for k, v in arrays.items()])
        for key, value in arrays.items():
            table[key] = value
        write_output(path, lambda f: np.save(f, table))
        return path

    def cell(v) -> str:
        if isinstance(v, np.integer | np.bool_):
            return str(int(v))
        if isinstance(v, np.floating):
            return float_format % v
        return str(v)

    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(arrays)
    for i in range(n):
        writer.writerow([cell(v[i]) for v in arrays.values()])
    write_output(path, lambda f: f.write(text.getvalue().encode()))
    return path


_ROWS = (
    ("elbo", "", "E_q log p(x|z) − KL"),
    ("reconstruction", "  ", "E_q log p(x|z)"),
    ("kl", "  ", "KL(q(z|x) ‖ p(z)), averaged over x"),
    ("mutual_information", "    ", "I_q(x; z) under the aggregate q(z), ≤ log N = {logn:.2f}"),
    ("marginal_kl", "    ", "KL(q(z) ‖ p(z))"),
    ("log_likelihood", "", "importance-sampled, K = {K}"),
    ("gap", "", "log_likelihood − elbo ≈ KL(q(z|x) ‖ p(z|x))"),
    ("iwae_bound", "", "L_k, k = {k}"),
    ("nll", "", "−log_likelihood"),
    ("bits_per_dim", "", "nll / (D ln 2)"),
    ("elbo_local", "", "ELBO of q's own family refitted to each example"),
    ("amortisation_gap", "  ", "elbo_local − elbo"),
    ("approximation_gap", "  ", "log_likelihood − elbo_local"),
)


def format_table(result: dict) -> str:
    """The report as a short table: value ± standard error, per-example means in nats."""
    lines = [f"{result.get('split', 'data')}: {result['n']} examples; per-example means in nats "
             "± Monte-Carlo standard error (for this fixed data)"]
    if result.get("weights"):
        lines[0] += f"; {result['weights']} weights (epoch {result.get('epoch')})"
    for key, indent, meaning in _ROWS:
        if result.get(key) is None:  # not computed, or meaningless (an autoencoder has no ELBO)
            continue
        value, se = result[key], result.get(f"{key}_se")
        shown = f"{value:11.4f}" + (f" ± {se:.4f}" if se is not None else "")
        meaning = meaning.format(K=result.get("importance_samples"), k=result.get("iwae_k"),
                                 logn=result.get("mutual_information_max") or math.nan)
        lines.append(f"{indent + key:<23}{shown:<24}{meaning}")
    if result.get("elbo") is None and result.get("reconstruction") is not None:
        lines.append("(a deterministic autoencoder: no posterior or prior, so no ELBO, KL or likelihood; "
                     "reconstruction is log p(x | z = encoder(x)))")
    if result.get("active_units") is not None:
        shown = f"{result['active_units']:>6} of {len(result['active_units_per_dim'])}"
        lines.append(f"{'active_units':<23}{shown:<24}A_u = Cov_x(E_q[z_u]) > {ACTIVE_THRESHOLD}")
    if result.get("bits_per_dim_note"):
        lines.append(f"bits_per_dim: {result['bits_per_dim_note']}")
    return "\n".join(lines)


# ---------------------------------------------------------------------- helpers
def _closed_form_kl(q: Distribution, prior: Distribution) -> torch.Tensor | None:
    """The closed-form KL where torch registers one; ``None`` (Monte-Carlo instead) otherwise,
    e.g. for the two-layer model's hierarchical prior."""
    try:
        return _torch_kl(q, prior)
    except NotImplementedError:
        return None


def _moments(q: Distribution, draws: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, standard deviation) of q, by Monte Carlo where no closed form exists."""
    try:
        return q.mean, q.stddev
    except NotImplementedError:
        z = q.rsample((draws,))
        return z.mean(0), z.std(0)


def _mean_and_se(scores: dict[str, torch.Tensor], key: str) -> tuple[float | None, float | None]:
    if key not in scores:
        return None, None
    value = scores[key]
    mean = float(value.mean())
    var = scores.get(f"{key}_var")
    if var is None or not bool(torch.isfinite(var).all()):
        return mean, None
    return mean, float(var.sum().sqrt() / len(value))


def _variance_of_mean(draws: torch.Tensor) -> torch.Tensor:
    """Sample variance / K of the draws [K, B] (NaN for K = 1)."""
    if len(draws) < 2:
        return torch.full_like(draws[0], math.nan)
    return draws.var(0) / len(draws)


def _log_mean_exp(log_w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """log (1/k) Σ w for log-weights [k, B], and the leave-one-out estimates' deviations from
    their mean, for :func:`_jackknife` (None for k = 1)."""
    k = len(log_w)
    total = log_w.logsumexp(0)
    if k == 1:
        return total, None
    # Without draw j: log(Σw − w_j) − log(k − 1) = total + log(1 − w_j/Σw) − log(k − 1). The
    # clamp keeps a weight that holds all the mass finite (a huge, honest variance).
    left_out = torch.log(-torch.expm1((log_w - total).clamp(max=-1e-300)))
    return total - math.log(k), left_out - left_out.mean(0)


def _jackknife(deviations: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    """(k − 1)/k Σ_j deviation_j², per example; NaN (undefined) without deviations."""
    if deviations is None:
        return torch.full_like(like, math.nan)
    k = len(deviations)
    return (k - 1) / k * (deviations**2).sum(0)


def _grouped(log_w: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """L_k from disjoint groups of k draws (an incomplete last group is dropped): the mean of
    the group values, with its variance (between groups, or the jackknife for one group)."""
    groups = len(log_w) // k
    if groups == 1:
        estimate, deviations = _log_mean_exp(log_w[:k])
        return estimate, _jackknife(deviations, estimate)
    values = log_w[: groups * k].reshape(groups, k, -1).logsumexp(1) - math.log(k)
    return values.mean(0), _variance_of_mean(values)


@torch.no_grad()
def validation_terms(model, source: sources.Source, device: torch.device, batch_size: int = 1000,
                     binarize_seed: int | None = None, group: distributed.Group | None = None,
                     stream=None) -> dict[str, float]:
    """Per-example means of ELBO, reconstruction and KL over ``source`` (one draw per
    example, the KL in closed form where there is one; fp32, no gradients): what training
    reports for its validation data. With ``binarize_seed`` the data are binarised by one
    fixed draw (binary data stay as they are). With ``group`` each rank scores every
    ``world``-th batch and the sums are all-reduced; the binarisation draws are made on every
    rank alike, and with a keyed ``stream`` (:class:`vaekit.noise.Stream`) so are the
    reparameterisation draws, so the numbers are one process's."""
    from vaekit.objectives import elbo_terms

    draws = None if binarize_seed is None else torch.Generator().manual_seed(binarize_seed)
    rank, world = (0, 1) if group is None else (group.rank, group.world)
    example = None
    if draws is not None and world > 1 and source.kind != "loader":
        x0, _ = source.first_batch(1)
        example = (tuple(x0.shape[1:]), x0.dtype)
    totals, n = torch.zeros(3, dtype=torch.float64), 0
    batches = (source.part_in_order(batch_size, rank, world) if world > 1
               else ((x, y, len(x)) for x, y in source.in_order(batch_size)))
    with evaluation_mode(model):
        for index, (x, y, size) in enumerate(batches):
            if draws is not None:
                shape, dtype = ((size, *example[0]), example[1]) if x is None else (x.shape, x.dtype)
                x = sources.binarize(x, draws, shape, dtype=dtype)  # drawn on every rank
            if x is None:
                continue
            x = x.to(device)
            labels = None if not getattr(model, "num_classes", 0) else torch.as_tensor(y).long().to(device)
            with contextlib.nullcontext() if stream is None else stream.batch(index, len(x)):
                terms = elbo_terms(model, x, 1, "auto", labels)
            totals += torch.stack([terms[k].double().sum() for k in ("elbo", "reconstruction", "kl")]).cpu()
            n += len(x)
    if world > 1:
        summed = distributed.all_sum(torch.cat([totals, torch.tensor([float(n)], dtype=torch.float64)]), group)
        totals, n = summed[:3], float(summed[-1])
    return dict(zip(("elbo", "reconstruction", "kl"), (totals / n).tolist(), strict=True))
