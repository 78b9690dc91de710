"""The VAE variants side by side: same data, same budget (epochs, batch size, learning
rate, deterministic layers), each scored by the same estimators.

For every variant: the true ELBO (β = 1, no floor; 10 Monte-Carlo samples, closed-form KL
where it exists), the log-likelihood by importance sampling with K = 1000 posterior draws
(L_1000, computed in chunks of 100 with one logsumexp), and the median seconds per epoch
with the share of the CPU other processes took meanwhile (the machine is shared: timings
are approximate). The CVAE's numbers are log p(x | y): given the label, so not comparable.

Then the ex-post density sampler: samples E[x|z] with z from the prior vs from a Gaussian
mixture fitted to the training posterior means, scored by a digit classifier trained on the
real images: its mean confidence (max class probability) and the Fréchet distance between
its hidden-layer features of the samples and of held-out real images (an FID-like number;
lower is better), with real training images as the reference row.

    python benchmarks/bench_variants.py --epochs 300 --json /tmp/variants.json
    python benchmarks/bench_variants.py --data mnist --data-dir ../shared/data/mnist \
        --validation-split test --latent-dim 50 --epochs 10 --eval-n 2000 --json /tmp/mnist.json
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

from vaekit.app.config import Config  # noqa: E402
from vaekit.app.data import run_splits  # noqa: E402
from vaekit.app.runs import (
    labels_for,  # noqa: E402
    train,  # noqa: E402
)
from vaekit.objectives import elbo_terms, log_importance_weights  # noqa: E402
from vaekit.rundir import read_metrics  # noqa: E402

HVAE = {"model": "hvae", "kl": "mc"}
VARIANTS: dict[str, dict] = {
    "vae (mlp)": {},
    "vae (conv 32,64)": {"architecture": "conv", "channels": [32, 64]},
    "iwae k=50": {"objective": "iwae", "k": 50},
    "β = 2": {"beta": 2.0},
    "β = 0.5": {"beta": 0.5},
    "KL warm-up": {"kl_warmup": "EPOCHS/3"},
    "free bits λ=0.25": {"free_bits": 0.25},
    "two layers": dict(HVAE),
    "two layers + iwae k=50": {**HVAE, "objective": "iwae", "k": 50},
    "cvae (log p(x|y))": {"model": "cvae"},
    # controls for the two-layer model: its MC KL estimator on the one-layer model, KL warm-up
    # (which did not get the tanh model out of its plateau with the output bias at 0), relu,
    # and Glorot-uniform weights (Burda et al.'s, with --output-bias data)
    "vae, MC KL": {"kl": "mc"},
    "two layers + KL warm-up": {**HVAE, "kl_warmup": "EPOCHS/3"},
    "vae (relu)": {"activation": "relu"},
    "two layers (relu)": {**HVAE, "activation": "relu"},
    "two layers, glorot": {**HVAE, "init": "glorot"},
}


@torch.no_grad()
def scores(model, data, k: int = 1000, chunk: int = 100, batch: int = 500) -> dict:
    """Mean true ELBO (10 samples) and L_k over ``data``, per example, in nats."""
    model.eval()
    kl = "mc" if hasattr(model, "z1_dim") else "analytic"
    labels = labels_for(model, data)
    elbos, lls = [], []
    for i in range(0, len(data), batch):
        x = data.x[i : i + batch]
        y = None if labels is None else labels[i : i + batch]
        elbos.append(elbo_terms(model, x, 10, kl, y)["elbo"])
        log_w = torch.cat([log_importance_weights(model, x, chunk, y) for _ in range(k // chunk)])
        lls.append(torch.logsumexp(log_w.double(), 0) - math.log(k))
    return {"elbo": float(torch.cat(elbos).double().mean()), "log_likelihood": float(torch.cat(lls).mean())}


def run_variants(base: Config, out: Path, epochs: int, only: list[str] | None, eval_n: int) -> list[dict]:
    rows = []
    for name, settings in VARIANTS.items():
        if only and name not in only:
            continue
        settings = {k: (max(1, epochs // 3) if v == "EPOCHS/3" else v) for k, v in settings.items()}
        config = base.override(settings)
        slug = "".join(c if c.isalnum() else "-" for c in name)
        torch.manual_seed(0)
        with common.timed() as region:
            run = train(config, out / slug, overwrite=True, quiet=True, figures=False)
        from vaekit.app.runs import load

        model = load(run)
        split = run_splits(config)
        data = split["test"] if split["test"] is not None else split["validation"]
        if eval_n:
            data = data.subset(torch.arange(min(eval_n, len(data))))
        torch.manual_seed(1)
        row = {"variant": name, **scores(model, data),
               "seconds_per_epoch": statistics.median(m["seconds"] for m in read_metrics(run)),
               "others_cpu": region.others, "split": "test" if split["test"] is not None else "validation",
               "n": len(data), "settings": settings}
        rows.append(row)
        print(f"{name:<26} ELBO {row['elbo']:9.3f}  L_1000 {row['log_likelihood']:9.3f}  "
              f"{row['seconds_per_epoch']:.3f} s/epoch (others {100 * region.others:.0f} % CPU)", flush=True)
    return rows


def likelihood_rows(base: Config, out: Path, levels: int) -> list[dict]:
    """The grey-level likelihoods on the unbinarised data (same network and budget). Only
    the discretised logistic is a probability of the (discrete) data; the others are
    densities, comparable with each other but not with it (bits/dim only for it)."""
    rows = []
    families = {
        "bernoulli on grey levels (cross-entropy, not normalised)": {"likelihood": "bernoulli"},
        "continuous bernoulli": {"likelihood": "continuous-bernoulli"},
        "gaussian, per-dim σ": {"likelihood": "gaussian", "sigma": "per-dim", "sigma_min": 0.01},
        "laplace, per-dim scale": {"likelihood": "laplace", "sigma": "per-dim", "sigma_min": 0.01},
        f"discretised logistic, {levels} levels": {"likelihood": "logistic", "levels": levels},
    }
    from vaekit.app.runs import load

    for name, settings in families.items():
        config = base.override({"binarize": "none", **settings})
        slug = "lik-" + "".join(c if c.isalnum() else "-" for c in name)
        torch.manual_seed(0)
        run = train(config, out / slug, overwrite=True, quiet=True, figures=False)
        split = run_splits(config)
        data = split["test"] if split["test"] is not None else split["validation"]
        torch.manual_seed(1)
        row = {"likelihood": name, **scores(load(run), data)}
        if settings["likelihood"] == "logistic":
            d = math.prod(data.event_shape)
            row["bits_per_dim"] = {k: -row[k] / (d * math.log(2)) for k in ("elbo", "log_likelihood")}
        rows.append(row)
        bits = row.get("bits_per_dim")
        extra = f"  ({bits['elbo']:.3f} / {bits['log_likelihood']:.3f} bits/dim)" if bits else ""
        print(f"{name:<58} ELBO {row['elbo']:9.3f}  L_1000 {row['log_likelihood']:9.3f}{extra}", flush=True)
    return rows


# ---------------------------------------------------------------------- sample quality
def _frechet(a: np.ndarray, b: np.ndarray) -> float:
    from scipy import linalg

    mu_a, mu_b = a.mean(0), b.mean(0)
    eye = 1e-6 * np.eye(a.shape[1])  # keeps sqrtm well defined for rank-deficient sets
    cov_a, cov_b = np.cov(a, rowvar=False) + eye, np.cov(b, rowvar=False) + eye
    root = linalg.sqrtm(cov_a @ cov_b).real
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a + cov_b - 2 * root))


def _features(classifier, images: np.ndarray) -> np.ndarray:
    """The classifier's hidden-layer activations (tanh: no dead units, full-rank features)."""
    return np.tanh(images @ classifier.coefs_[0] + classifier.intercepts_[0])


def sample_quality(base: Config, out: Path, epochs: int, n: int = 1000) -> list[dict]:
    from sklearn.neural_network import MLPClassifier

    from vaekit.app.commands.sample import fit_gmm_for_run
    from vaekit.app.data import load_data
    from vaekit.app.runs import load
    from vaekit.sampling import decode_latents, sample_gmm_latents

    split = run_splits(base)
    train_x = split["train"].x.reshape(len(split["train"]), -1).numpy()
    # the classifier sees grey levels: the reference statistics are those of the grey
    # training images; real held-out images (unbinarised) give the row to compare with

    raw = load_data(base.data, base.data_dir)
    raw_held = raw.test if raw.test is not None else None
    if raw_held is None:  # digits: the validation rows of the raw data, as the split drew them
        from vaekit.app.data import split_validation

        _, raw_held = split_validation(raw.train, base.validation_fraction, base.seed)
    held_x = raw_held.x.reshape(len(raw_held), -1).numpy()
    classifier = MLPClassifier((32,), activation="tanh", max_iter=1000, random_state=0)
    classifier.fit(train_x, split["train"].labels.numpy())
    real_feat = _features(classifier, train_x)
    rows = [{"model": f"real held-out images (n = {len(held_x)})", "sampler": "-",
             "confidence": float(classifier.predict_proba(held_x).max(1).mean()),
             "frechet": _frechet(_features(classifier, held_x), real_feat)}]
    print(f"{rows[0]['model']}: confidence {rows[0]['confidence']:.3f}  Fréchet {rows[0]['frechet']:.2f}")
    print(f"held-out accuracy of the classifier: {classifier.score(held_x, raw_held.labels.numpy()):.3f}")
    for latent in (2, 16):
        for beta in (1.0,):
            config = base.override({"latent_dim": latent, "beta": beta})
            run = train(config, out / f"gmm-l{latent}", overwrite=True, quiet=True, figures=False)
            model = load(run)
            for sampler in ("prior", "gmm"):
                conf, fd = [], []
                for seed in range(3):
                    torch.manual_seed(seed)
                    if sampler == "prior":
                        z = model.prior.sample((n,))
                    else:
                        z = sample_gmm_latents(fit_gmm_for_run(model, config, 10, seed), n, seed)
                    images = decode_latents(model, z).reshape(n, -1).numpy()
                    conf.append(float(classifier.predict_proba(images).max(1).mean()))
                    fd.append(_frechet(_features(classifier, images), real_feat))
                row = {"model": f"vae, latent {latent}", "sampler": sampler,
                       "confidence": statistics.mean(conf), "confidence_sd": statistics.stdev(conf),
                       "frechet": statistics.mean(fd), "frechet_sd": statistics.stdev(fd)}
                rows.append(row)
                print(f"latent {latent:>2} {sampler:<5} confidence {row['confidence']:.3f} ± "
                      f"{row['confidence_sd']:.3f}  Fréchet {row['frechet']:.2f} ± {row['frechet_sd']:.2f}",
                      flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="digits")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--epochs", type=int, default=300)
    parser.add_argument("--latent-dim", type=int, default=16)
    parser.add_argument("--out", type=Path, default=Path("/tmp/vaekit-variants"))
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--only", nargs="*", default=None, help="variant names to run")
    parser.add_argument("--skip-gmm", action="store_true")
    parser.add_argument("--eval-n", type=int, default=0, help="score the first N test examples (0: all)")
    parser.add_argument("--validation-split", default="fraction", help="fraction | test")
    parser.add_argument("--output-bias", default="zero", help="zero (the default) | data")
    parser.add_argument("--init", default="default", help="default | glorot | normal:SD")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--likelihoods", type=int, default=0, metavar="LEVELS",
                        help="only the grey-level likelihood table (the data's grey levels: 17 for digits)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    base = Config(data=args.data, data_dir=args.data_dir, binarize="dynamic", hidden=[200, 200],
                  activation="tanh", latent_dim=args.latent_dim, latent_dim2=args.latent_dim // 2,
                  hidden2=[100, 100], epochs=args.epochs, batch_size=100, lr=1e-3, seed=args.seed,
                  output_bias=args.output_bias, init=args.init,
                  validation_split=args.validation_split, checkpoint_every=0, save_best=False).validate()
    start = time.time()
    if args.likelihoods:
        result = {"base": base.to_dict(), "likelihoods": likelihood_rows(base, args.out, args.likelihoods)}
        if args.json:
            args.json.write_text(json.dumps(result, indent=2) + "\n")
        return
    result = {"base": base.to_dict(),
              "variants": run_variants(base, args.out, args.epochs, args.only, args.eval_n)}
    if not args.skip_gmm:
        result["sample_quality"] = sample_quality(base, args.out, args.epochs)
    result["wall_seconds"] = time.time() - start
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
